"""Replaying recorded decisions through an Enforcer: what `driftgate adapt` reports.

A decision file holds one record per request, as a JSON array or as JSON lines:

    {"key": "supplier-17", "shadow": "ok", "enforced": "fail"}
    {"key": "supplier-34", "shadow": "ok", "enforced": "ok", "time": 1700000000}

`key` is the cohort key (hashed, never exported), `shadow` and `enforced` are the verdicts both
evaluators gave (`ok`, `warn`, `fail`, any case), and the optional `time` (unix seconds, up to
the end of the year 9999) places the record in the rolling windows; records without one count
at the latest time seen. Other fields are ignored. The replay decides each record as the service
would with the given options: only the cohort's records can drift.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from driftgate._core import (
    DriftTracker,
    EnforceOptions,
    Enforcer,
    ManualClock,
    MetricsRegistry,
    Verdict,
    parse_verdict,
)
from driftgate._messages import shown

__all__ = ["Decision", "DecisionFileError", "read_decisions", "replay"]

_VERDICTS = "ok, warn or fail"
MAX_TIME = 253402300799  # 9999-12-31T23:59:59Z, the last second an ISO 8601 timestamp can name


class DecisionFileError(ValueError):
    """A decision file that cannot be replayed; the message names the file, the line or
    record, and the field."""


@dataclass(frozen=True)
class Decision:
    key: str
    shadow: Verdict
    enforced: Verdict
    time: float | None = None


def _decision(value: Any, where: str) -> Decision:
    if not isinstance(value, dict):
        raise DecisionFileError(
            f"{where}: expected an object with key, shadow and enforced, got {type(value).__name__}"
        )
    for field in ("key", "shadow", "enforced"):
        if field not in value:
            raise DecisionFileError(f"{where}: missing field {field!r}")
    key = value["key"]
    if not isinstance(key, str) or not key:
        raise DecisionFileError(
            f"{where}: field 'key': expected a non-empty string, got {shown(key)}"
        )
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:  # a "\ud800" escape: JSON allows it, UTF-8 cannot hold it
        raise DecisionFileError(
            f"{where}: field 'key': not valid Unicode (an unpaired surrogate), got {shown(key)}"
        ) from None
    verdicts = []
    for field in ("shadow", "enforced"):
        raw = value[field]
        try:
            if not isinstance(raw, str):
                raise ValueError
            verdicts.append(parse_verdict(raw))
        except ValueError:
            raise DecisionFileError(
                f"{where}: field {field!r}: unknown verdict {shown(raw)} (expected {_VERDICTS})"
            ) from None
    time = value.get("time")
    if time is not None and (
        isinstance(time, bool)
        or not isinstance(time, (int, float))
        or not 0 <= time <= MAX_TIME  # compared exactly: a 400-digit integer is no float
    ):
        raise DecisionFileError(
            f"{where}: field 'time': expected unix seconds in [0, {MAX_TIME}], got {shown(time)}"
        )
    return Decision(key, verdicts[0], verdicts[1], None if time is None else float(time))


class _Unreadable(Exception):
    """JSON that Python's parser cannot hold, though its grammar allows it."""


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # past sys.get_int_max_str_digits()
        raise _Unreadable(f"an integer of {len(text.lstrip('-'))} digits") from None


def _json(text: str) -> Any:
    """`json.loads`, but nesting past Python's recursion limit and integers of thousands of
    digits are `_Unreadable` instead of a RecursionError or a bare ValueError."""
    try:
        return json.loads(text, parse_int=_integer)
    except RecursionError:
        raise _Unreadable("nested too deeply") from None


def _json_lines(path: Path, text: str) -> Iterator[Decision]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = _json(line)
        except json.JSONDecodeError as error:
            raise DecisionFileError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        except _Unreadable as error:
            raise DecisionFileError(f"{path}:{number}: not readable JSON ({error})") from None
        yield _decision(value, f"{path}:{number}")


def read_decisions(path: str | Path) -> list[Decision]:
    """The records of a JSON (an array, or one object) or JSON-lines decision file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DecisionFileError(f"{path}: no such file") from None
    except OSError as error:
        raise DecisionFileError(f"{path}: cannot read ({error.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DecisionFileError(
            f"{path}:{line}: not UTF-8 (byte 0x{raw[error.start]:02x} at offset {error.start})"
        ) from None
    stripped = text.lstrip()
    first_line = text[: len(text) - len(stripped)].count("\n") + 1
    if stripped.startswith("["):
        try:
            values = _json(text)
        except json.JSONDecodeError as error:
            raise DecisionFileError(
                f"{path}:{error.lineno}: not valid JSON ({error.msg})"
            ) from None
        except _Unreadable as error:
            raise DecisionFileError(f"{path}:{first_line}: not readable JSON ({error})") from None
        decisions = [_decision(v, f"{path}: record {i}") for i, v in enumerate(values, start=1)]
    else:
        try:  # one pretty-printed object; anything else is JSON lines
            single = _json(text) if stripped.startswith("{") else None
        except json.JSONDecodeError:
            single = None
        except _Unreadable as error:
            raise DecisionFileError(f"{path}:{first_line}: not readable JSON ({error})") from None
        if isinstance(single, dict):
            decisions = [_decision(single, f"{path}:{first_line}")]
        else:
            decisions = list(_json_lines(path, text))
    if not decisions:
        raise DecisionFileError(f"{path}: no decision records")
    return decisions


def _ratio(events: int, total: int) -> float:
    return events / total if total else 0.0


def replay(
    decisions: Sequence[Decision], policy_id: str, options: EnforceOptions, seed: int = 0
) -> dict[str, Any]:
    """Decides every record with a fresh Enforcer and reports what the service would have
    seen: cohort size, drift events, drift ratio overall and per window, and the gate."""
    clock = ManualClock(0.0)
    tracker = DriftTracker(clock=clock, registry=MetricsRegistry())
    enforcer = Enforcer(options, tracker, seed=seed)
    cohort = drift = disagreements = 0
    for decision in decisions:
        if decision.time is not None:
            clock.set(max(clock.now(), decision.time))
        pair = enforcer.decide(policy_id, decision.key, decision.shadow, decision.enforced)
        cohort += pair.in_rollout
        drift += pair.drift
        disagreements += decision.shadow != decision.enforced
    windows = {}
    for window in ("5m", "15m", "60m"):
        events, total = tracker.counts(window, policy_id)
        windows[window] = {
            "requests": total,
            "drift_events": events,
            "ratio": _ratio(events, total),
        }
    ratio = _ratio(drift, len(decisions))
    return {
        "policy_id": policy_id,
        "options": {
            "enforce": options.enforce,
            "rollout_percent": options.rollout_percent,
            "drift_max_ratio": options.drift_max_ratio,
            "seed": seed,
        },
        "requests": len(decisions),
        "cohort_size": cohort,
        "drift_events": drift,
        "drift_ratio": ratio,
        "windows": windows,
        "disagreements": disagreements,
        "gate": "pass" if ratio <= options.drift_max_ratio else "fail",
    }
