"""The mutation run (scripts/mutation.py): its mutants come from the source and keep their ids
when lines move, a mutant never stays in the tree, a known mutant is killed, and a survivor
that tests/mutation_equivalent.txt does not list fails the run."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("mutation", ROOT / "scripts" / "mutation.py")
assert _spec is not None and _spec.loader is not None
mutation = importlib.util.module_from_spec(_spec)
sys.modules["mutation"] = mutation  # dataclasses look their module up by name
_spec.loader.exec_module(mutation)

GATE = "cpp/src/readiness_gate.cpp"
SETTINGS = "python/driftgate/settings.py"
CLOSE = "if (open_ && ratio > config_.max_ratio) open_ = false;"


def mutant(path: str, line: str, operator: str, old: str, new: str) -> mutation.Mutant:
    """The one mutant that replaces `old` by `new` with `operator` on the line holding
    `line`."""
    text = (ROOT / path).read_text()
    lines = text.splitlines()
    found = [
        m
        for m in mutation.mutants_of(path, text)
        if (m.operator, m.old, m.new) == (operator, old, new) and line in lines[m.line - 1]
    ]
    assert len(found) == 1, found
    return found[0]


def test_every_rule_is_found_and_every_mutant_has_its_own_id():
    mutants = mutation.all_mutants()
    assert {m.path for m in mutants} == set(mutation.RULES)
    assert {m.rule for m in mutants} >= {
        "ReadinessGate::check",
        "judge",
        "StagePlan::check_advance",
        "decode_rollout",
        "_Store",
        "IfMatch",
    }
    assert len({m.id for m in mutants}) == len(mutants)
    assert {m.operator for m in mutants} >= {
        "relational",
        "arithmetic",
        "logical",
        "negation",
        "condition",
        "constant",
        "early-return",
        "skip-check",
        "bound",
        "membership",
    }


def test_the_gate_close_at_max_ratio_is_a_mutant():
    close = mutant(GATE, CLOSE, "relational", ">", ">=")
    assert close.rule == "ReadinessGate::check"
    assert "ratio >= config_.max_ratio" in close.apply((ROOT / GATE).read_text())


def test_ids_stay_when_lines_move_and_change_with_the_line_they_mutate():
    text = (ROOT / GATE).read_text()
    before = {m.id: m for m in mutation.mutants_of(GATE, text)}
    moved = "// three lines\n// above\n// every rule\n" + text
    after = {m.id: m for m in mutation.mutants_of(GATE, moved)}
    assert after.keys() == before.keys()
    assert all(after[i].line == before[i].line + 3 for i in before)
    # an edit of one line renews the ids of that line's mutants only
    edited = text.replace(CLOSE, CLOSE.replace(" open_ = false;", " { open_ = false; }"))
    renewed = {m.id for m in mutation.mutants_of(GATE, edited)}
    line = mutant(GATE, CLOSE, "relational", ">", ">=").line
    assert before.keys() - renewed == {i for i, m in before.items() if m.line == line}


def copy_of(tmp_path: Path, *paths: str) -> Path:
    root = tmp_path / "tree"
    for path in paths:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, root / path)
    return root


def test_a_mutant_is_undone_when_the_block_raises_and_the_build_sees_the_change(tmp_path):
    root = copy_of(tmp_path, GATE)
    path = root / GATE
    original = path.read_bytes()
    before = path.stat().st_mtime_ns
    close = mutant(GATE, CLOSE, "relational", ">", ">=")
    keep = tmp_path / "originals"
    with (
        pytest.raises(RuntimeError, match="a test run that failed"),
        mutation.applied(root, close, keep),
    ):
        assert "ratio >= config_.max_ratio" in path.read_text()
        assert list(keep.iterdir())  # the copy a killed run is undone from
        raise RuntimeError("a test run that failed")
    assert path.read_bytes() == original
    # newer than any object built from the mutant, so the next build compiles the original
    assert path.stat().st_mtime_ns > before
    assert not list(keep.iterdir())


KILLED_WITH_A_MUTANT = """
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("mutation", sys.argv[1])
mutation = importlib.util.module_from_spec(spec)
sys.modules["mutation"] = mutation
spec.loader.exec_module(mutation)
root, keep = mutation.Path(sys.argv[2]), mutation.Path(sys.argv[3])
held = []  # a context left unreferenced would be closed, and its finally would run
for mutant_id in sys.argv[4:]:
    found = next(m for m in mutation.all_mutants(root) if m.id == mutant_id)
    held.append(mutation.applied(root, found, keep))
    held[-1].__enter__()
os._exit(9)  # killed outright: no finally runs
"""


def test_the_next_run_undoes_a_mutant_that_a_killed_run_left(tmp_path):
    root = copy_of(tmp_path, *mutation.RULES)
    keep = tmp_path / "originals"
    gate, settings = root / GATE, root / SETTINGS
    original = gate.read_bytes()
    close = mutant(GATE, CLOSE, "relational", ">", ">=")
    nesting = mutant(SETTINGS, "MAX_NESTING = 32", "constant", "32", "33")
    script = ROOT / "scripts" / "mutation.py"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WITH_A_MUTANT, script, root, keep, close.id, nesting.id],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == 9, killed.stderr
    assert "ratio >= config_.max_ratio" in gate.read_text()
    settings.write_text("# edited by hand since\n")
    assert mutation.recover(root, keep) == [GATE]
    assert gate.read_bytes() == original
    assert settings.read_text() == "# edited by hand since\n"  # left alone
    assert not list(keep.iterdir())


def run(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(tree / "scripts" / "mutation.py"), *args],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )


@pytest.mark.slow
@pytest.mark.integration
def test_a_killed_mutant_passes_the_run_and_an_unlisted_survivor_fails_it(tmp_path):
    tree = tmp_path / "tree"
    for folder in ("cpp", "examples", "python", "scripts", "tests"):
        shutil.copytree(ROOT / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", tree)
    nesting = mutant(SETTINGS, "MAX_NESTING = 32", "constant", "32", "33")
    args = ["--only", nesting.id, "--pytest-scope", "first", "--build-dir", str(tmp_path / "b")]

    killed = run(tree, *args)
    assert killed.returncode == 0, killed.stdout + killed.stderr
    assert f"{nesting.id} killed by pytest" in killed.stdout
    assert "score 100.0 % of 1 non-equivalent mutants" in killed.stdout
    assert (tree / SETTINGS).read_bytes() == (ROOT / SETTINGS).read_bytes()

    # Without the tests that kill it, it survives, and the run fails naming it...
    for name in mutation.PYTEST_FIRST["settings"]:
        (tree / "tests" / name).unlink()
    survived = run(tree, *args)
    assert survived.returncode == 1, survived.stdout + survived.stderr
    assert "survivors that no test kills" in survived.stdout
    assert f"    {nesting.id}  {nesting.describe()}" in survived.stdout

    # ...until it is listed as equivalent (which it is not: this only shows the list is read)
    listed = tmp_path / "equivalent.txt"
    listed.write_text(f"{nesting.id}  the tests that would tell are gone\n")
    excused = run(tree, *args, "--equivalent", str(listed))
    assert excused.returncode == 0, excused.stdout + excused.stderr
    assert "1 equivalent, 0 survived" in excused.stdout
    assert (tree / SETTINGS).read_bytes() == (ROOT / SETTINGS).read_bytes()


def test_an_unknown_smoke_or_only_id_is_refused_before_anything_runs(capsys):
    assert mutation.main(["--only", "readiness_gate_cpp-0000000000", "--list"]) == 2
    assert "no such mutant: readiness_gate_cpp-0000000000" in capsys.readouterr().err


def test_the_smoke_and_equivalent_lists_name_existing_mutants():
    known = {m.id for m in mutation.all_mutants()}
    smoke = mutation.read_id_list(mutation.SMOKE_FILE)
    assert set(smoke) <= known
    assert set(mutation.read_id_list(mutation.EQUIVALENT_FILE)) <= known
    # every rule file of the C++ core and each Python rule module has a smoke mutant
    paths = {m.path for m in mutation.all_mutants() if m.id in smoke}
    assert {p for p in mutation.RULES if p.endswith((".cpp", ".py"))} <= paths
    assert not set(smoke) & set(mutation.read_id_list(mutation.EQUIVALENT_FILE))


def test_shards_split_the_mutants_without_overlap_or_gap(capsys):
    def listed(*args: str) -> list[str]:
        assert mutation.main(["--list", *args]) == 0
        return [line.split()[0] for line in capsys.readouterr().out.splitlines()]

    every = listed()
    shards = [listed("--shard", f"{k}/3") for k in (1, 2, 3)]
    assert sorted(mutant for shard in shards for mutant in shard) == sorted(every)
    assert all(abs(len(shard) - len(every) / 3) < 1 for shard in shards)
    for bad in ("0/3", "4/3", "1/0", "1-3"):
        with pytest.raises(SystemExit):
            mutation.main(["--list", "--shard", bad])
        assert f"{bad!r} is not K/N with 1 <= K <= N" in capsys.readouterr().err
