"""Mutation run of driftgate's rules: does every rule a decision depends on have a test that
fails when the rule changes?

Each mutant is one small change to a rule function (a comparison, an operator, a constant off
by one, a negated condition, a removed early return or check), generated from the source, so
the list follows the code when lines move. A C++ mutant is built incrementally in a build dir
of its own (the Catch2 tests and the `_core` extension from the same objects), then the plain
Catch2 suite runs, and the quick pytest suite only if Catch2 did not kill it. A Python mutant
runs the quick pytest suite. The source is restored after every mutant, on an exception and on
Ctrl-C too, and checked against its hash.

    .venv/bin/python scripts/mutation.py            # every mutant (hours on two cores)
    .venv/bin/python scripts/mutation.py --smoke    # the fixed subset CI runs
    .venv/bin/python scripts/mutation.py --list     # what would be run, nothing built
    .venv/bin/python scripts/mutation.py --only ID [ID ...]

A mutant that no test kills fails the run (exit 1) unless tests/mutation_equivalent.txt lists
its id with the reason no behaviour can tell it from the rule. Exit 2: the suites fail without
any mutant, or the lists name mutants that do not exist.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import tokenize
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT_FILE = ROOT / "tests" / "mutation_equivalent.txt"
SMOKE_FILE = ROOT / "tests" / "mutation_smoke.txt"

# -- what is mutated ---------------------------------------------------------------------------
# The rule functions (and the constants that are limits) of each file, by name: a reader who
# changes a rule finds its name here, and the mutants follow its lines wherever they move.
# C++ names are as written at the definition (`Class::method`, or the bare name of a free or
# inline member function); a name starting with `k` and a capital is a constant. Python names
# are dotted paths of functions, classes and module-level assignments.
RULES: dict[str, tuple[str, ...]] = {
    # sampling: the hash and the bucket against the basis points
    "cpp/src/sampling.cpp": ("murmur3_x86_32",),
    "cpp/include/driftgate/sampling.hpp": (
        "sampling_bucket",
        "kBasisPointsPerPercent",
        "kBasisPoints",
    ),
    # drift windows: the bucket rule, the window specs, the high-water mark
    "cpp/src/rolling_window.cpp": (
        "valid_window_name",
        "validate_windows",
        "bucket_index",
        "RollingWindow::for_each_counted",
        "RollingWindow::newest_event_into",
    ),
    # BucketCursor::bucket_at is left out: a memo of bucket_index whose range lies inside the
    # bucket by a margin, so that moving its comparisons or its margin changes nothing (and
    # each of its mutants rebuilds nearly every file)
    "cpp/include/driftgate/rolling_window.hpp": ("ratio",),
    "cpp/src/policy_windows.cpp": (
        "PolicyWindows::advance_to_bucket",
        "PolicyWindows::observe_now",
        "PolicyWindows::newest_event_leaves_in",
    ),
    "cpp/src/drift_tracker.cpp": (
        "DriftTracker::record",
        "DriftTracker::record_slot",
        "DriftTracker::record_batch",
        "DriftTracker::counts",
    ),
    # the batch's scan: drift counted and every code checked, in each SIMD width
    "cpp/src/verdict_batch.cpp": ("scan_scalar", "scan_sse2", "scan_avx2"),
    # the gate and its statistics
    "cpp/src/readiness_gate.cpp": (
        "require_ratio",
        "GateConfig::validate",
        "ReadinessGate::check",
        "ReadinessGate::reopens_within",
        "readiness_gate_ok",
    ),
    "cpp/src/statistics.cpp": ("validate_confidence", "wilson_bounds"),
    # enforcement: options and the cohort
    "cpp/src/enforcer.cpp": (
        "EnforceOptions::validate",
        "EnforceOptions::rollout_basis_points",
        "Enforcer::pack",
        "Enforcer::in_rollout",
        "Enforcer::in_cohort",
        "Enforcer::rollout_percent_of",
        "Enforcer::claim_share",
        "share_word",
        "Enforcer::evaluate",
        "Enforcer::decide",
        "Enforcer::update_options",
    ),
    # the rollout: stages, advance rules, decisions, approvals, preconditions, the state file
    "cpp/src/rollout_config.cpp": (
        "validate_error_rate",
        "validate_stages",
        "StagePlan::reachable",
        "StagePlan::percentage",
        "StagePlan::check_advance",
        "StagePlan::advanced",
        "StagePlan::advance_target",
        "StagePlan::rolled_back",
        "RolloutConfig::set_current_stage_index",
        "RolloutConfig::advance",
        "RolloutConfig::rollback",
    ),
    "cpp/include/driftgate/rollout_config.hpp": ("is_final", "ready", "kMaxApprovals"),
    "cpp/src/rollout_manager.cpp": (
        "judge",
        "RolloutManager::fresh_start",
        "RolloutManager::adopt_if_newer_locked",
        "RolloutManager::continues_history",
        "RolloutManager::follow",
        # a store that lost commits: told from the history, and from the commits announced
        "RolloutManager::holds_step",
        "RolloutManager::note_announced",
        "RolloutManager::lost_announced_locked",
        "RolloutManager::adopt_evidence",
        "RolloutManager::wall_now",
        "RolloutManager::persist_and_apply_locked",
        "RolloutManager::decide_locked",
        "RolloutManager::decide_moving_locked",
        "RolloutManager::evaluate_counts",
        "RolloutManager::precondition_locked",
        "RolloutManager::advance_locked",
        "RolloutManager::manual_rollback",
    ),
    "cpp/src/rollout_state.cpp": (
        "clean_reason",
        "decode_rollout",
        "check_writable",
        "encode_rollout",
    ),
    "cpp/include/driftgate/rollout_state.hpp": (
        "kSchemaVersion",
        "kMaxTransitions",
        "kMaxReasonLength",
        "kMaxFileBytes",
        "kMaxVersion",
    ),
    # the values file's bounds
    "python/driftgate/settings.py": (
        "MAX_VALUES_BYTES",
        "MAX_STAGE_SECONDS",
        "MAX_CHECK_INTERVAL_SECONDS",
        "MIN_CHECK_INTERVAL_SECONDS",
        "MAX_QUERY_TIMEOUT_SECONDS",
        "MAX_COUNT",
        "MAX_STAGES",
        "MAX_NESTING",
        "_Ratio",
        "_Percent",
        "_StageSeconds",
        "_CheckInterval",
        "_QueryTimeout",
        "_Count",
        "_Gate",
        "_Stage",
        "_host_port",
        "_Store",
        "_Rollout",
        "_Values",
        "_ValuesLoader._check_depth",
    ),
    # people: credentials of one person count once
    "python/driftgate/identity.py": ("People",),
    # HTTP preconditions
    "python/driftgate/fastapi/router.py": (
        "IfMatch",
        "_none_match",
        "create_router.expected_state",
        "create_router.moved",
    ),
    # notifications: once per rollout, state, version and event
    "python/driftgate/notify.py": ("Notification.key", "_LocalClaims", "Notifier.publish"),
}

# Where the tests of a file's rules live: run first, so a mutant they kill dies in seconds.
# Catch2 tests are tagged by file name (--filenames-as-tags).
CATCH2_FIRST: dict[str, tuple[str, ...]] = {
    "sampling": ("test_sampling", "test_enforcer"),
    "rolling_window": ("test_rolling_window", "test_policy_windows"),
    "policy_windows": ("test_policy_windows", "test_drift_tracker"),
    "drift_tracker": ("test_drift_tracker",),
    "verdict_batch": ("test_verdict_batch", "test_drift_tracker"),
    "readiness_gate": ("test_readiness_gate",),
    "statistics": ("test_statistics", "test_readiness_gate"),
    "enforcer": ("test_enforcer",),
    "rollout_config": ("test_rollout_config", "test_rollout_manager"),
    "rollout_manager": ("test_rollout_manager", "test_rollout_store"),
    "rollout_state": ("test_rollout_state", "test_rollout_manager"),
}
PYTEST_FIRST: dict[str, tuple[str, ...]] = {
    "sampling": ("test_boundaries.py", "test_sampling.py", "test_enforcer.py"),
    "rolling_window": ("test_boundaries.py", "test_bucket_rule_model.py", "test_drift_tracker.py"),
    "policy_windows": ("test_boundaries.py", "test_bucket_rule_model.py", "test_drift_tracker.py"),
    "drift_tracker": ("test_boundaries.py", "test_drift_tracker.py", "test_fuzz_inputs.py"),
    "verdict_batch": ("test_drift_tracker.py", "test_boundaries.py"),
    "readiness_gate": ("test_boundaries.py", "test_readiness_budget.py"),
    "statistics": ("test_boundaries.py", "test_stage_analysis.py"),
    "enforcer": ("test_boundaries.py", "test_enforcer.py"),
    "rollout_config": ("test_boundaries.py", "test_rollout.py"),
    "rollout_manager": ("test_boundaries.py", "test_rollout.py", "test_stage_analysis.py"),
    "rollout_state": ("test_boundaries.py", "test_state_file.py"),
    "settings": ("test_boundaries.py", "test_settings.py", "test_rollouts_values.py"),
    "identity": ("test_people.py", "test_four_eyes.py"),
    "router": ("test_preconditions.py", "test_http.py"),
    "notify": ("test_notify.py",),
}
PYTEST_MARKERS = "not slow and not integration"
# Tests the quick suite leaves out because they start another process, yet the only ones that
# reach a rule: the state file's write-back after a failed write needs a write that fails,
# which only strace's fault injection makes happen (the tests run as root, so no permission
# refuses one). They run after the quick suite, for a C++ mutant it lets live.
PYTEST_FAULTS: dict[str, tuple[str, ...]] = {
    "rollout_manager": ("test_state_file.py",),
    "rollout_state": ("test_state_file.py",),
}
FAULT_MARKERS = "integration and not slow"


# -- lexing ------------------------------------------------------------------------------------


def mask_cpp(text: str) -> str:
    """`text` with comments and string and character literals blanked (same length, newlines
    kept), so that operators are looked for in code only."""
    out = list(text)
    i, n = 0, len(text)

    def blank(start: int, end: int) -> None:
        for j in range(start, end):
            if out[j] != "\n":
                out[j] = " "

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            blank(i, end)
            i = end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            blank(i, end)
            i = end
        elif c == "R" and text.startswith('R"', i) and not (i and text[i - 1].isalnum()):
            delimiter = text[i + 2 : text.index("(", i)]
            end = text.index(")" + delimiter + '"', i) + len(delimiter) + 2
            blank(i, end)
            i = end
        elif c in "\"'":
            if c == "'" and i and (text[i - 1].isalnum()):  # a digit separator (1'000)
                i += 1
                continue
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            blank(i, j + 1)
            i = j + 1
        else:
            i += 1
    return "".join(out)


def mask_python(text: str) -> str:
    """`text` with comments and string literals blanked (same length, newlines kept)."""
    out = list(text)
    offsets = [0]
    for line in text.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type in (tokenize.STRING, tokenize.COMMENT) or token.type == getattr(
            tokenize, "FSTRING_MIDDLE", -1
        ):
            start = offsets[token.start[0] - 1] + token.start[1]
            end = offsets[token.end[0] - 1] + token.end[1]
            for j in range(start, end):
                if out[j] != "\n":
                    out[j] = " "
    return "".join(out)


# -- where the rules are -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Span:
    """The lines [first, last] (1-based) of one rule in a file, and which of them may be
    mutated: a function's body, a class's or constant's whole text."""

    name: str
    first: int
    last: int


def _matching(masked: str, start: int, opening: str, closing: str) -> int:
    depth = 0
    for i in range(start, len(masked)):
        if masked[i] == opening:
            depth += 1
        elif masked[i] == closing:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced {opening}{closing}")


def cpp_spans(masked: str, names: Sequence[str]) -> list[Span]:
    """Every definition of each name: the lines of its body (after the opening brace), or
    for a constant the line that gives its value."""
    line_of = _line_index(masked)
    spans = []
    for name in names:
        found = 0
        if re.fullmatch(r"k[A-Z]\w*", name):
            for m in re.finditer(rf"\b{name}\s*=[^;]*;", masked):
                spans.append(Span(name, line_of(m.start()), line_of(m.end() - 1)))
                found += 1
        else:
            pattern = rf"(?<![\w:.>~]){re.escape(name)}\s*\("
            for m in re.finditer(pattern, masked):
                close = _matching(masked, m.end() - 1, "(", ")")
                tail = re.match(r"[\s\w:&*<>,\->]*?\{", masked[close + 1 :])
                if not tail or ";" in tail.group(0) or "=" in tail.group(0).replace("->", ""):
                    continue  # a call or a declaration, not a definition
                brace = close + 1 + tail.end() - 1
                end = _matching(masked, brace, "{", "}")
                first = line_of(brace) + (
                    1 if masked[brace + 1 : _eol(masked, brace)].strip() == "" else 0
                )
                spans.append(Span(name, first, line_of(end)))
                found += 1
        if not found:
            raise ValueError(f"rule {name!r} not found")
    return spans


def _eol(text: str, i: int) -> int:
    end = text.find("\n", i)
    return len(text) if end < 0 else end


def _line_index(text: str):
    starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def line_of(offset: int) -> int:
        lo, hi = 0, len(starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1

    return line_of


def python_spans(text: str, names: Sequence[str]) -> list[Span]:
    """The lines of each named function (its body), class or module-level assignment."""
    tree = ast.parse(text)
    found: dict[str, Span] = {}

    def visit(body: Sequence[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + node.name
                if name in names:
                    first = node.body[0].lineno
                    if isinstance(node, ast.ClassDef):
                        first = node.lineno
                    elif _is_docstring(node.body[0]) and len(node.body) > 1:
                        first = node.body[1].lineno
                    found[name] = Span(name, first, node.end_lineno or node.lineno)
                visit(node.body, name + ".")
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and not prefix:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name) and target.id in names:
                        found[target.id] = Span(target.id, node.lineno, node.end_lineno or 0)

    visit(tree.body, "")
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"rules not found: {', '.join(missing)}")
    return [found[n] for n in names]


def _is_docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


# -- the operators -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mutant:
    id: str
    path: str  # relative to the root
    line: int  # 1-based, where the change starts
    rule: str
    operator: str
    old: str  # the text replaced, as written
    new: str
    start: int  # offset of the replaced text in the file
    end: int

    @property
    def language(self) -> str:
        return "python" if self.path.endswith(".py") else "cpp"

    @property
    def stem(self) -> str:
        return Path(self.path).stem

    def describe(self) -> str:
        old = " ".join(self.old.split())
        new = " ".join(self.new.split()) or "(removed)"
        if len(old) > 60:
            old = old[:57] + "..."
        if len(new) > 60:
            new = new[:57] + "..."
        return f"{self.path}:{self.line} {self.rule} [{self.operator}] {old!r} -> {new!r}"

    def apply(self, text: str) -> str:
        assert text[self.start : self.end] == self.old
        return text[: self.start] + self.new + text[self.end :]


RELATIONAL = {"<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "=="}
ARITHMETIC = {"+": "-", "-": "+", "*": "/", "/": "*", "+=": "-=", "-=": "+="}
CPP_LOGICAL = {"&&": "||", "||": "&&"}
PY_LOGICAL = {"and": "or", "or": "and"}
PY_MEMBERSHIP = {"in": "not in", "not in": "in", "is": "is not", "is not": "is"}
PY_BOUNDS = {"ge": "gt", "gt": "ge", "le": "lt", "lt": "le"}
# Lines that build a message: their `+` joins strings, and their numbers are text.
CPP_TEXT = re.compile(r'"|std::string|to_string|format_|quote\(|printable')
NUMBER = re.compile(
    r"(?<![\w.])(\d+\.\d*|\d*\.\d+|\d+)([eE][-+]?\d+)?([uU]?[lL]{0,2}|[fF])?(?![\w.])"
)


def _bump(literal: str) -> str | None:
    """The literal plus one, written like it (10 -> 11, 0.005 -> 1.005, 1e-6 -> 2e-6)."""
    m = NUMBER.fullmatch(literal)
    if not m:
        return None
    digits, exponent, suffix = m.group(1), m.group(2) or "", m.group(3) or ""
    if "." in digits:
        whole, _, fraction = digits.partition(".")
        bumped = f"{int(whole or '0') + 1}.{fraction}"
    else:
        bumped = str(int(digits) + 1)
    return bumped + exponent + suffix


def _statement_end(masked: str, start: int, terminators: str = ";") -> int:
    """The offset just past the statement starting at `start` (C++: its `;` at depth 0)."""
    depth = 0
    for i in range(start, len(masked)):
        c = masked[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c in terminators and depth == 0:
            return i + 1
    raise ValueError("statement without an end")


def cpp_sites(text: str, masked: str, span: Span, line_starts: list[int]) -> Iterator[tuple]:
    """(operator, start, end, new) of every mutation in a C++ rule's lines."""
    body_start = line_starts[span.first - 1]
    body_end = line_starts[span.last] if span.last < len(line_starts) else len(text)
    constant = bool(re.fullmatch(r"k[A-Z]\w*", span.name))
    throw_ranges = []
    for m in re.finditer(r"\bthrow\b", masked[body_start:body_end]):
        s = body_start + m.start()
        throw_ranges.append((s, _statement_end(masked, s)))

    def in_throw(offset: int) -> bool:
        return any(s <= offset < e for s, e in throw_ranges)

    for number in range(span.first, span.last + 1):
        ls = line_starts[number - 1]
        le = line_starts[number] - 1 if number < len(line_starts) else len(text)
        code = masked[ls:le]
        if not code.strip() or code.lstrip().startswith("#"):
            continue
        if in_throw(ls + len(code) - len(code.lstrip())) and in_throw(le - 1):
            continue
        texty = bool(CPP_TEXT.search(text[ls:le]))
        if constant:
            for m in NUMBER.finditer(code):
                bumped = _bump(m.group(0))
                if bumped:
                    yield ("constant", ls + m.start(), ls + m.end(), bumped)
            continue
        for m in re.finditer(r"(?<= )(<=|>=|==|!=|<|>)(?= )", code):
            yield ("relational", ls + m.start(), ls + m.end(), RELATIONAL[m.group(1)])
        if not texty:
            for m in re.finditer(r"(?<=\S )(\+=|-=|\+|-|\*|/)(?= )", code):
                yield ("arithmetic", ls + m.start(), ls + m.end(), ARITHMETIC[m.group(1)])
        for m in re.finditer(r"(?<= )(&&|\|\|)(?= )", code):
            yield ("logical", ls + m.start(), ls + m.end(), CPP_LOGICAL[m.group(1)])
        for m in re.finditer(r"!(?!=)", code):
            if in_throw(ls + m.start()):
                continue
            yield ("negation", ls + m.start(), ls + m.end(), "")
        for m in re.finditer(r"\b(if|while) \(", code):
            open_at = ls + m.end() - 1
            close_at = _matching(masked, open_at, "(", ")")
            condition = text[open_at + 1 : close_at]
            inside = masked[open_at + 1 : close_at]
            if (
                condition.lstrip().startswith("!")  # the negation operator removes it
                or re.search(r"(?<![=!<>])=(?!=)", inside)  # it declares a variable
                or _single_equality(inside, CPP_EQUALITY)  # the operator flip is the same
            ):
                continue
            yield ("condition", open_at, close_at + 1, f"(!({condition}))")
        if not texty:
            for m in NUMBER.finditer(code):
                if in_throw(ls + m.start()):
                    continue
                bumped = _bump(m.group(0))
                if bumped:
                    yield ("constant", ls + m.start(), ls + m.end(), bumped)
        for m in re.finditer(r"\breturn\b", code):
            start = ls + m.start()
            end = _statement_end(masked, start)
            if masked[end:body_end].strip() == "}" or not _early(masked, body_start, start):
                continue  # the function's last statement: nothing to return early from
            yield ("early-return", start, end, "{}")
        for m in re.finditer(r"\bthrow\b", code):
            start = ls + m.start()
            if not _guarded(masked, body_start, start):
                continue
            yield ("skip-check", start, _statement_end(masked, start), "{}")


CPP_EQUALITY = re.compile(r" (==|!=) ")
PY_EQUALITY = re.compile(r" (==|!=|is not|is|not in|in) ")
CPP_JOINS = re.compile(r"&&|\|\||\?")
PY_JOINS = re.compile(r"\b(and|or|if)\b")


def _single_equality(condition: str, equality: re.Pattern[str]) -> bool:
    """Whether a condition is one equality test, whose negation the operator flip already
    makes."""
    joins = CPP_JOINS if equality is CPP_EQUALITY else PY_JOINS
    return len(equality.findall(condition)) == 1 and not joins.search(condition)


def _early(masked: str, body_start: int, start: int) -> bool:
    """Whether the return at `start` is the body of a condition (an early return)."""
    before = masked[body_start:start].rstrip()
    return (
        before.endswith(")")
        or (before.endswith("{") and re.search(r"\b(if|else)\b[^;{}]*\{$", before) is not None)
        or before.endswith("else")
    )


def _guarded(masked: str, body_start: int, start: int) -> bool:
    """Whether the throw at `start` is the body of an `if` (a check, not a rethrow)."""
    before = masked[body_start:start].rstrip()
    return re.search(r"\bif\b[^;{}]*(\)|\{)$", before, re.S) is not None


def python_sites(text: str, masked: str, span: Span, line_starts: list[int]) -> Iterator[tuple]:
    """(operator, start, end, new) of every mutation in a Python rule's lines."""
    for number in range(span.first, span.last + 1):
        ls = line_starts[number - 1]
        le = line_starts[number] - 1 if number < len(line_starts) else len(text)
        code = masked[ls:le]
        stripped = code.strip()
        if not stripped or stripped.startswith(("def ", "@", "class ")):
            continue
        for m in re.finditer(r"(?<= )(<=|>=|==|!=|<|>)(?= )", code):
            yield ("relational", ls + m.start(), ls + m.end(), RELATIONAL[m.group(1)])
        for m in re.finditer(r"(?<= )(not in|is not|in|is)(?= )", code):
            if re.search(r"\bfor\b[^:]*$", code[: m.start()]) and m.group(1) == "in":
                continue  # a loop's `in`
            yield ("membership", ls + m.start(), ls + m.end(), PY_MEMBERSHIP[m.group(1)])
        for m in re.finditer(r"(?<=[\w)\]] )(\+|-|\*|//|<<)(?= )", code):
            new = {"//": "*", "<<": ">>"}.get(m.group(1)) or ARITHMETIC[m.group(1)]
            yield ("arithmetic", ls + m.start(), ls + m.end(), new)
        for m in re.finditer(r"(?<= )(and|or)(?= )", code):
            yield ("logical", ls + m.start(), ls + m.end(), PY_LOGICAL[m.group(1)])
        for m in re.finditer(r"(?<![\w.])not (?!in\b)", code):
            if code[: m.start()].endswith(("is ", " ")) and code[: m.start()].rstrip().endswith(
                "is"
            ):
                continue
            yield ("negation", ls + m.start(), ls + m.end(), "")
        for m in re.finditer(r"\b(ge|gt|le|lt)=", code):
            yield ("bound", ls + m.start(), ls + m.end() - 1, PY_BOUNDS[m.group(1)])
        for m in re.finditer(r"^(\s*)(el)?if (.*):\s*$", code):
            condition_start = ls + m.start(3)
            condition_end = ls + m.end(3)
            condition = text[condition_start:condition_end]
            if condition.startswith("not ") or _single_equality(
                masked[condition_start:condition_end], PY_EQUALITY
            ):
                continue
            yield ("condition", condition_start, condition_end, f"not ({condition})")
        for m in NUMBER.finditer(code):
            bumped = _bump(m.group(0))
            if bumped:
                yield ("constant", ls + m.start(), ls + m.end(), bumped)
    yield from _python_statement_sites(text, span, line_starts)


def _python_statement_sites(text: str, span: Span, line_starts: list[int]) -> Iterator[tuple]:
    """Early returns and checks (a `return` or `raise` that is an `if`'s body) replaced by
    `pass`."""
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if not isinstance(node, ast.If):
            continue
        for branch in (node.body, node.orelse):
            if len(branch) != 1 or not isinstance(branch[0], (ast.Return, ast.Raise)):
                continue
            statement = branch[0]
            if not span.first <= statement.lineno <= span.last:
                continue
            start = line_starts[statement.lineno - 1] + statement.col_offset
            end = line_starts[statement.end_lineno - 1] + statement.end_col_offset
            old = text[start:end]
            # the same number of lines, so that tracebacks of later lines stay right
            new = "pass" + "\n" * old.count("\n")
            kind = "early-return" if isinstance(statement, ast.Return) else "skip-check"
            yield (kind, start, end, new)


# -- the mutants -------------------------------------------------------------------------------


def mutants_of(path: str, text: str) -> list[Mutant]:
    """Every mutant of one file's rules, in file order, with ids that stay the same while the
    rule's line reads the same (wherever it moves)."""
    python = path.endswith(".py")
    masked = mask_python(text) if python else mask_cpp(text)
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
    spans = python_spans(text, RULES[path]) if python else cpp_spans(masked, RULES[path])
    sites = python_sites if python else cpp_sites
    out: list[Mutant] = []
    seen: set[tuple[int, int, str]] = set()
    occurrences: dict[str, int] = {}
    for span in spans:
        for operator, start, end, new in sites(text, masked, span, line_starts):
            if (start, end, new) in seen:
                continue  # two spans (overloads, nested rules) sharing a line
            seen.add((start, end, new))
            number = text.count("\n", 0, start) + 1
            line_text = " ".join(text[line_starts[number - 1] : _eol(text, start)].split())
            same_line = text[line_starts[number - 1] : start].count(text[start:end])
            key = f"{path}|{span.name}|{line_text}|{operator}|{text[start:end]}|{new}|{same_line}"
            n = occurrences.get(key, 0)
            occurrences[key] = n + 1
            digest = hashlib.sha1(f"{key}|{n}".encode()).hexdigest()[:10]
            out.append(
                Mutant(
                    id=f"{Path(path).name.replace('.', '_')}-{digest}",
                    path=path,
                    line=number,
                    rule=span.name,
                    operator=operator,
                    old=text[start:end],
                    new=new,
                    start=start,
                    end=end,
                )
            )
    out.sort(key=lambda m: (m.start, m.end, m.new))
    return out


def all_mutants(root: Path = ROOT) -> list[Mutant]:
    out: list[Mutant] = []
    for path in RULES:
        out.extend(mutants_of(path, (root / path).read_text()))
    ids = [m.id for m in out]
    if len(ids) != len(set(ids)):
        raise ValueError("two mutants share an id")
    return out


def read_id_list(path: Path) -> dict[str, str]:
    """id -> note, from lines `ID  what it is`, each followed by indented lines of its note (`#`
    starts a comment line)."""
    listed: dict[str, str] = {}
    if not path.exists():
        return listed
    last = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if raw[:1].isspace() and last is not None:
            listed[last] = f"{listed[last]} {line}".strip()
            continue
        last, _, note = line.partition(" ")
        listed[last] = note.strip()
    return listed


# -- applying a mutant -------------------------------------------------------------------------


class Interrupted(Exception):
    """SIGTERM or SIGHUP during the run: unwound like Ctrl-C, so the source is restored."""


@contextlib.contextmanager
def applied(root: Path, mutant: Mutant, keep: Path) -> Iterator[None]:
    """The mutant written into its file for the duration of the block; the original bytes
    are put back (with a fresh mtime, so every build sees the change) whatever happens, and
    checked against their hash. A copy of the original waits in `keep` meanwhile, so that a
    run killed outright is undone by the next one (recover())."""
    path = root / mutant.path
    original = path.read_bytes()
    digest = hashlib.sha256(original).hexdigest()
    mutated = mutant.apply(original.decode()).encode()
    keep.mkdir(parents=True, exist_ok=True)
    copy = keep / (mutant.path.replace("/", "__") + ".json")
    copy.write_text(
        json.dumps(
            {
                "path": mutant.path,
                "original": original.decode(),
                "mutated_sha256": hashlib.sha256(mutated).hexdigest(),
            }
        )
    )
    try:
        _write(path, mutated)
        yield
    finally:
        _write(path, original)
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise RuntimeError(f"{mutant.path} was not restored: check it with git diff")
        copy.unlink()


def recover(root: Path, keep: Path) -> list[str]:
    """Puts back the originals of a run that was killed with a mutant in place (only where
    the file still holds that mutant: an edit made since is left alone)."""
    restored = []
    for copy in sorted(keep.glob("*.json")) if keep.exists() else []:
        saved = json.loads(copy.read_text())
        path = root / saved["path"]
        if hashlib.sha256(path.read_bytes()).hexdigest() == saved["mutated_sha256"]:
            _write(path, saved["original"].encode())
            restored.append(saved["path"])
        copy.unlink()
    return restored


def _write(path: Path, data: bytes) -> None:
    """Replaces the file's content in place (an editor watching it sees an ordinary write);
    the mtime moves on even within one clock tick, so a build never takes it as unchanged."""
    before = path.stat().st_mtime_ns
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()
        f.flush()
        os.fsync(f.fileno())
    after = path.stat().st_mtime_ns
    if after <= before:
        os.utime(path, ns=(after, before + 1_000_000))


# -- building and testing ----------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    status: str  # killed, survived, equivalent, timeout, not-viable
    by: str = ""  # build, catch2, pytest
    detail: str = ""
    seconds: float = 0.0


class Workspace:
    """The mutation build: its own build dir (the Catch2 tests and the `_core` extension),
    and a package dir that puts python/driftgate next to that `_core`, first on PYTHONPATH."""

    def __init__(
        self, root: Path, build_dir: Path, jobs: int, build_type: str, catch2_only: bool = False
    ) -> None:
        self.root = root
        self.catch2_only = catch2_only
        self.build_dir = build_dir
        self.jobs = jobs
        self.build_type = build_type
        self.stage = build_dir / "package"
        self.keep = build_dir / "originals"
        self.catch2_seconds = 60.0
        self.pytest_seconds = 120.0
        # True while the build holds objects of a mutant that has been undone since
        self.stale = False
        self.flaky: set[str] = set()  # tests that failed once and passed alone

    def configure(self) -> None:
        """Configures the build dir unless it is configured already (CI hands the smoke run
        the plain ctest's)."""
        if (self.build_dir / "CMakeCache.txt").exists():
            return
        command = [
            "cmake",
            "-S",
            str(self.root),
            "-B",
            str(self.build_dir),
            "-G",
            "Ninja",
            f"-DCMAKE_BUILD_TYPE={self.build_type}",
            "-DDRIFTGATE_BUILD_TESTS=ON",
        ]
        if not self.catch2_only:
            import pybind11  # the test extra's: the extension is built here, not by pip

            command += [
                # the wheel's switch: the `_core` target is defined only in a Python build
                "-DSKBUILD=ON",
                f"-DPython_EXECUTABLE={sys.executable}",
                f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"cmake failed:\n{result.stdout}{result.stderr}")

    def build(self, extension: bool = True) -> tuple[bool, str]:
        """Builds the Catch2 tests and, unless told otherwise or the run is Catch2's alone,
        the extension; (whether it built, the log)."""
        targets = ["driftgate_tests"]
        if extension and not self.catch2_only:
            targets.append("_core")
        result = subprocess.run(
            [
                "cmake",
                "--build",
                str(self.build_dir),
                "--parallel",
                str(self.jobs),
                "--target",
                *targets,
            ],
            capture_output=True,
            text=True,
        )
        return result.returncode == 0, result.stdout + result.stderr

    def stage_package(self, installed: bool = False) -> Path:
        """build/…/package/driftgate: links to every entry of python/driftgate and to the
        built `_core` (or with `installed`, the one installed in this interpreter), so a
        mutant of either is what `import driftgate` loads. Returns the `_core` linked."""
        package = self.stage / "driftgate"
        if package.exists():
            shutil.rmtree(package)
        package.mkdir(parents=True)
        for entry in (self.root / "python" / "driftgate").iterdir():
            if entry.name == "__pycache__" or entry.name.startswith("_core."):
                continue
            (package / entry.name).symlink_to(entry)
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        if installed:
            spec = importlib.util.find_spec("driftgate._core")
            if spec is None or spec.origin is None:
                raise RuntimeError("driftgate is not installed in this interpreter")
            built = [Path(spec.origin)]
        else:
            built = list(self.build_dir.rglob(f"_core{suffix}"))
        if len(built) != 1:
            raise RuntimeError(f"expected one _core{suffix} in {self.build_dir}, found {built}")
        core = built[0].resolve()
        (package / built[0].name).symlink_to(core)
        return core

    @property
    def catch2_binary(self) -> Path:
        return self.build_dir / "cpp" / "driftgate_tests"

    def catch2(self, first: Sequence[str], timeout: float) -> tuple[str, str]:
        """("passed" | "failed" | "timeout", the failing test's output)."""
        tags = "".join(f"[#{name}]" for name in first)
        runs = []
        if first:
            runs.append([",".join(f"[#{name}]" for name in first)])
            runs.append([" ".join(f"~[#{name}]" for name in first)])
        else:
            runs.append([])
        del tags
        for spec in runs:
            status, output = self._test(
                [str(self.catch2_binary), "--filenames-as-tags", "-a", "-r", "compact", *spec],
                timeout,
            )
            if status != "passed":
                return status, output
        return "passed", ""

    def pytest_verdict(
        self, files: Sequence[Path], timeout: float, markers: str = PYTEST_MARKERS
    ) -> tuple[str, str]:
        """("passed" | "failed" | "timeout", the failing test) of the suite. A failure counts
        only if the failing test fails again when run alone: one that then passes is flaky (a
        timing test on a loaded machine), is left out from then on, and the suite goes on."""
        for _ in range(3):
            status, output = self.pytest(files, timeout, markers)
            failing = failed_test(output)
            if status != "failed" or failing is None:
                return status, failing or first_failure(output)
            again, _ = self.pytest([failing], timeout, markers)
            if again != "passed":
                return "failed", failing
            self.flaky.add(failing)
            print(f"    flaky, left out from now on: {failing}", flush=True)
        return "failed", failing

    def pytest(
        self, files: Sequence[Path | str], timeout: float, markers: str = PYTEST_MARKERS
    ) -> tuple[str, str]:
        with tempfile.TemporaryDirectory(prefix="driftgate-mutation-pyc-") as pycache:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                [str(self.stage)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
            )
            # compiled afresh each run: a mutant of the same size written in the same second
            # as the original would otherwise be read from a stale .pyc
            env["PYTHONPYCACHEPREFIX"] = pycache
            command = [
                sys.executable,
                "-m",
                "pytest",
                "-x",
                "-q",
                "--no-header",
                "-p",
                "no:cacheprovider",
                "-m",
                markers,
                *[f"--deselect={test}" for test in sorted(self.flaky)],
                *[str(f) for f in files],
            ]
            return self._test(command, timeout, env=env)

    def _test(self, command: list[str], timeout: float, env=None) -> tuple[str, str]:
        process = subprocess.Popen(
            command,
            cwd=self.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return "timeout", ""
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
        return ("passed" if process.returncode == 0 else "failed"), output


def failed_test(output: str) -> str | None:
    """The node id of the first test a pytest report names as failed."""
    m = re.search(r"^(?:FAILED|ERROR) (\S.*?)(?: - .*)?$", output, re.M)
    return m.group(1) if m else None


def first_failure(output: str) -> str:
    """The name of the first failing test in a Catch2 or pytest report."""
    for pattern in (r"^(?:FAILED|ERROR) (\S+)", r"^(\S+\.cpp:\d+): failed", r"^(\S+::\S+) FAILED"):
        m = re.search(pattern, output, re.M)
        if m:
            return m.group(1)
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""


# -- the run -----------------------------------------------------------------------------------


def run_mutant(workspace: Workspace, mutant: Mutant, pytest_scope: str) -> Outcome:
    """Builds and tests one mutant: Catch2 first for a C++ one, then (unless Catch2 killed it,
    or the run judges C++ mutants by Catch2 alone) pytest."""
    started = time.monotonic()

    def outcome(status: str, by: str = "", detail: str = "") -> Outcome:
        return Outcome(status, by, detail, time.monotonic() - started)

    if mutant.language == "python" and workspace.stale:
        ok, log = workspace.build()  # the Python rules run on the core as it is
        if not ok:
            raise RuntimeError(f"the restored tree does not build:\n{log}")
        workspace.stale = False
    with applied(workspace.root, mutant, workspace.keep):
        if mutant.language == "cpp":
            workspace.stale = True
            # the extension only if Catch2 lets the mutant live: most die before it is needed
            ok, log = workspace.build(extension=False)
            if not ok:
                return outcome("not-viable", "build", _compile_error(log))
            timeout = 4 * workspace.catch2_seconds + 60
            status, output = workspace.catch2(CATCH2_FIRST.get(mutant.stem, ()), timeout)
            if status != "passed":
                return outcome(_KILLED[status], "catch2", first_failure(output))
            if workspace.catch2_only:
                return outcome("survived")
            ok, log = workspace.build()
            if not ok:
                return outcome("not-viable", "build", _compile_error(log))
        files = pytest_files(workspace.root, mutant.stem, pytest_scope)
        if not files:
            return outcome("survived")
        status, failing = workspace.pytest_verdict(files, 4 * workspace.pytest_seconds + 60)
        faults = fault_files(workspace.root, mutant.stem)
        if status == "passed" and faults:
            status, failing = workspace.pytest_verdict(
                faults, 4 * workspace.pytest_seconds + 60, FAULT_MARKERS
            )
    if status != "passed":
        return outcome(_KILLED[status], "pytest", failing)
    return outcome("survived")


_KILLED = {"failed": "killed", "timeout": "timeout"}


def pytest_files(root: Path, stem: str, scope: str) -> list[Path]:
    """The test files a mutant of `stem` runs: every one, those of its rule first (scope
    "quick"), or those of its rule only (scope "first")."""
    tests = root / "tests"
    first = [tests / name for name in PYTEST_FIRST.get(stem, ()) if (tests / name).exists()]
    if scope == "first":
        return first
    # the runner's own tests read the rules' source: a mutant there is no failure of a rule
    rest = sorted(p for p in tests.glob("test_*.py") if p.name != "test_mutation_runner.py")
    return first + [p for p in rest if p not in first]


def fault_files(root: Path, stem: str) -> list[Path]:
    """The fault-injection test files a mutant of `stem` runs after the quick suite."""
    return [root / "tests" / name for name in PYTEST_FAULTS.get(stem, ())]


def _compile_error(log: str) -> str:
    m = re.search(r"^(\S+:\d+:\d+: error: .*)$", log, re.M)
    return m.group(1)[:200] if m else "build failed"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Mutation run of driftgate's rules (see docs/testing.md)."
    )
    parser.add_argument("--list", action="store_true", help="print the mutants and stop")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"the mutants tests/{SMOKE_FILE.name} lists, C++ ones judged by Catch2 alone "
        "and Python ones by their rule's own test files (what CI runs)",
    )
    parser.add_argument("--only", nargs="+", metavar="ID", help="only these mutants")
    parser.add_argument(
        "--file", action="append", metavar="PATH", help="only the mutants of this source file"
    )
    parser.add_argument(
        "--survivors-of",
        type=Path,
        metavar="RESULTS",
        help="only the mutants that survived in an earlier run's results file",
    )
    parser.add_argument(
        "--shard",
        type=_shard,
        metavar="K/N",
        help="only every N-th of the mutants selected, from the K-th on (1 <= K <= N): N runs, "
        "each in a clone of its own, share the work",
    )
    parser.add_argument(
        "--results",
        type=Path,
        help="each mutant's outcome, one JSON object a line (default: results.jsonl in the "
        "build dir)",
    )
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build" / "mutation")
    parser.add_argument("--build-type", default="RelWithDebInfo")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--pytest-scope",
        choices=("quick", "first"),
        help="quick: the whole quick suite, the rule's own test files first (default); first: "
        "the rule's own test files only (default with --smoke)",
    )
    parser.add_argument(
        "--catch2-only",
        action="store_true",
        help="judge C++ mutants by Catch2 alone: no extension built (default with --smoke)",
    )
    parser.add_argument(
        "--equivalent",
        type=Path,
        default=EQUIVALENT_FILE,
        help=f"the list of equivalent mutants (default: tests/{EQUIVALENT_FILE.name})",
    )
    args = parser.parse_args(argv)

    mutants = all_mutants(ROOT)
    by_id = {m.id: m for m in mutants}
    equivalent = read_id_list(args.equivalent)
    selected = mutants
    unknown: list[str] = []
    if args.smoke:
        smoke = read_id_list(SMOKE_FILE)
        unknown = [i for i in smoke if i not in by_id]
        selected = [by_id[i] for i in smoke if i in by_id]
    if args.only:
        unknown += [i for i in args.only if i not in by_id]
        selected = [m for m in selected if m.id in args.only]
    if args.file:
        selected = [m for m in selected if m.path in args.file]
    if args.survivors_of:
        earlier = [json.loads(line) for line in args.survivors_of.read_text().splitlines() if line]
        again = {r["id"] for r in earlier if r["status"] == "survived"}
        selected = [m for m in selected if m.id in again]
    if args.shard:
        k, n = args.shard
        selected = selected[k - 1 :: n]
    if unknown:
        print(
            f"no such mutant: {', '.join(unknown)} (its rule's line changed? "
            "`scripts/mutation.py --list` shows the ids of today's source)",
            file=sys.stderr,
        )
        return 2
    if args.list:
        for m in selected:
            note = "  (equivalent)" if m.id in equivalent else ""
            print(f"{m.id}  {m.describe()}{note}")
        print(f"{len(selected)} mutants", file=sys.stderr)
        return 0

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    workspace = Workspace(
        ROOT,
        args.build_dir.resolve(),
        args.jobs,
        args.build_type,
        catch2_only=args.catch2_only or args.smoke,
    )
    run = Run(
        workspace,
        selected,
        equivalent,
        pytest_scope=args.pytest_scope or ("first" if args.smoke else "quick"),
        results=args.results or workspace.build_dir / "results.jsonl",
        # a partial run cannot tell that a listed mutant no longer exists
        every_mutant=len(selected) == len(mutants) or args.shard is not None,
        known=set(by_id),
    )
    started = time.monotonic()
    try:
        return run.run()
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted: the source is restored", file=sys.stderr)
        return 130
    finally:
        print(f"==> mutation run: {time.monotonic() - started:.0f} s", flush=True)


def _shard(text: str) -> tuple[int, int]:
    """K/N as --shard takes it: (K, N) with 1 <= K <= N."""
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise argparse.ArgumentTypeError(f"{text!r} is not K/N with 1 <= K <= N")
    return int(m.group(1)), int(m.group(2))


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


@dataclasses.dataclass
class Run:
    workspace: Workspace
    selected: list[Mutant]
    equivalent: dict[str, str]
    pytest_scope: str
    results: Path
    every_mutant: bool
    known: set[str]

    def run(self) -> int:
        workspace = self.workspace
        for path in recover(workspace.root, workspace.keep):
            print(f"==> {path}: put back the original that an interrupted run left mutated")
        # Python first: they run on the baseline build, with nothing to rebuild in between;
        # headers last: each of their mutants rebuilds most of the core
        selected = sorted(
            self.selected, key=lambda m: (m.language != "python", m.path.endswith(".hpp"))
        )
        cpp = [m for m in selected if m.language == "cpp"]
        python = [m for m in selected if m.language == "python"]
        print(f"==> {len(selected)} mutants ({len(cpp)} C++, {len(python)} Python)", flush=True)
        if not self.baseline(cpp, python):
            return 2
        counts: dict[str, int] = {}
        survivors: list[Mutant] = []
        killed_but_listed: list[Mutant] = []
        self.results.parent.mkdir(parents=True, exist_ok=True)
        with self.results.open("w") as log:
            for i, mutant in enumerate(selected, 1):
                outcome = run_mutant(workspace, mutant, self.pytest_scope)
                if outcome.status == "survived" and mutant.id in self.equivalent:
                    outcome.status = "equivalent"
                elif outcome.status == "survived":
                    survivors.append(mutant)
                elif outcome.status != "not-viable" and mutant.id in self.equivalent:
                    killed_but_listed.append(mutant)
                counts[outcome.status] = counts.get(outcome.status, 0) + 1
                by = f" by {outcome.by}" if outcome.by else ""
                detail = f": {outcome.detail}" if outcome.detail else ""
                print(
                    f"[{i}/{len(selected)}] {mutant.id} {outcome.status}{by} "
                    f"({outcome.seconds:.0f} s){detail}\n    {mutant.describe()}",
                    flush=True,
                )
                record = {"id": mutant.id, "mutant": mutant.describe()}
                log.write(json.dumps(record | dataclasses.asdict(outcome)) + "\n")
                log.flush()
        if workspace.flaky:
            print(f"==> flaky tests left out: {', '.join(sorted(workspace.flaky))}")
        return self.report(counts, survivors, killed_but_listed)

    def baseline(self, cpp: list[Mutant], python: list[Mutant]) -> bool:
        """Builds the tree as it is and runs the suites the mutants will run: each must pass,
        or a failure would be taken for a kill."""
        workspace = self.workspace
        if cpp:
            print(f"==> baseline: building {workspace.build_dir}", flush=True)
            workspace.configure()
            ok, log = workspace.build()
            if not ok:
                print(log, file=sys.stderr)
                print("the tree does not build without a mutant", file=sys.stderr)
                return False
            started = time.monotonic()
            status, output = workspace.catch2((), timeout=1800)
            workspace.catch2_seconds = time.monotonic() - started
            if status != "passed":
                print(output, file=sys.stderr)
                print("the Catch2 suite fails without a mutant", file=sys.stderr)
                return False
        judged = python if workspace.catch2_only else python + cpp
        files = sorted(
            {f for m in judged for f in pytest_files(workspace.root, m.stem, self.pytest_scope)}
        )
        if files:
            core = workspace.stage_package(installed=workspace.catch2_only or not cpp)
            print(f"==> baseline: pytest on python/driftgate with {core}", flush=True)
            started = time.monotonic()
            status, failing = workspace.pytest_verdict(files, timeout=3600)
            workspace.pytest_seconds = time.monotonic() - started
            if status != "passed":
                print(f"the pytest suite fails without a mutant: {failing}", file=sys.stderr)
                return False
        faults = []
        if not workspace.catch2_only:
            faults = sorted({f for m in cpp for f in fault_files(workspace.root, m.stem)})
        if faults:
            status, failing = workspace.pytest_verdict(faults, 3600, FAULT_MARKERS)
            if status != "passed":
                print(f"the fault tests fail without a mutant: {failing}", file=sys.stderr)
                return False
        ran = [f"Catch2 {workspace.catch2_seconds:.0f} s"] if cpp else []
        if files:
            ran.append(f"pytest {workspace.pytest_seconds:.0f} s ({len(files)} files)")
        if faults:
            ran.append(f"fault tests ({len(faults)} files)")
        print(f"==> baseline passes: {', '.join(ran)}", flush=True)
        return True

    def report(
        self, counts: dict[str, int], survivors: list[Mutant], killed_but_listed: list[Mutant]
    ) -> int:
        killed = counts.get("killed", 0) + counts.get("timeout", 0)
        equivalent = counts.get("equivalent", 0)
        not_viable = counts.get("not-viable", 0)
        scored = len(self.selected) - not_viable - equivalent
        score = 100.0 * killed / scored if scored else 100.0
        print(
            f"==> {len(self.selected)} mutants: {killed} killed "
            f"({counts.get('timeout', 0)} by a timeout), {equivalent} equivalent, "
            f"{len(survivors)} survived, {not_viable} not viable (do not build); "
            f"score {score:.1f} % of {scored} non-equivalent mutants"
        )
        failed = False
        if survivors:
            failed = True
            print(
                "survivors that no test kills (add a test, or list them in "
                f"tests/{EQUIVALENT_FILE.name} with the reason no behaviour tells them apart):"
            )
            for m in survivors:
                print(f"    {m.id}  {m.describe()}")
        if killed_but_listed:
            failed = True
            print(f"killed, yet listed in tests/{EQUIVALENT_FILE.name} (remove them):")
            for m in killed_but_listed:
                print(f"    {m.id}  {m.describe()}")
        stale = sorted(set(self.equivalent) - self.known)
        if self.every_mutant and stale:
            failed = True
            print(f"tests/{EQUIVALENT_FILE.name} lists mutants the source no longer has:")
            for mutant_id in stale:
                print(f"    {mutant_id}")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
