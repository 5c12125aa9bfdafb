"""The rollout status: one model for `RolloutManager.get_status()`, the HTTP status endpoint
and `driftgate status`, and the one place where its times and durations are formatted."""

from __future__ import annotations

import enum
import functools
from datetime import datetime, timedelta, timezone
from typing import Any

try:
    # pydantic (the router's response model) takes only typing_extensions' TypedDict before
    # Python 3.12; the fastapi extra brings it with pydantic. The base package needs neither.
    from typing_extensions import TypedDict
except ImportError:  # pragma: no cover - only without the fastapi extra
    from typing import TypedDict

__all__ = [
    "ApprovalStatus",
    "BudgetStatus",
    "LastCheck",
    "RolloutState",
    "RolloutStatus",
    "StageStatus",
    "StoreStatus",
    "TransitionStatus",
    "WaitingFor",
    "build_status",
    "elapsed_time",
    "entity_tag",
    "format_duration",
    "format_time",
]


class RolloutState(str, enum.Enum):
    """Where a rollout stands as a whole; the value is its wire name."""

    #: Moving through its stages.
    ACTIVE = "active"
    #: Rolled back from the first stage: nothing enforced until a person's advance resumes it.
    ABORTED = "aborted"
    #: At the final stage.
    COMPLETED = "completed"

    def __str__(self) -> str:
        return self.value


class WaitingFor(str, enum.Enum):
    """What keeps a rollout where it is, as the next automatic check sees it (the core's own
    rule applied to the last reading of the current stage); the value is its wire name."""

    #: Nothing: the next check moves it (advances, or rolls back above the stage's limit).
    CHECK = "check"
    #: A person: the next stage needs approval (`driftgate advance`).
    APPROVAL = "approval"
    #: The stage's minimum duration is not over.
    DURATION = "duration"
    #: Fewer requests in this stage than `min_requests`.
    DATA = "data"
    #: The stage's error rate (with `confidence`, its upper bound) is above its limit.
    ERROR_RATE = "error_rate"
    #: Aborted: only a person's advance resumes it.
    RESUME = "resume"
    #: Completed: nothing is left to do.
    NOTHING = "nothing"
    #: The shared state store has not been read yet.
    STORE = "store"

    def __str__(self) -> str:
        return self.value


class StageStatus(TypedDict):
    name: str
    percentage: float
    max_error_rate: float
    requires_approval: bool


# "from" is a keyword, hence the functional form.
TransitionStatus = TypedDict(
    "TransitionStatus",
    {"time": str, "actor": str, "from": str, "to": str, "reason": str, "operation": str},
)


class ApprovalStatus(TypedDict):
    """Approvals gathered to enter the next stage, when it needs several people."""

    stage: str
    required: int
    approved_by: list[str]


class BudgetStatus(TypedDict):
    """The fleet's readiness budget as this replica's last heartbeat saw it: how many replicas
    may fail readiness for drift at once, which hold an unready slot, how many are registered,
    and whether this one holds a slot now."""

    max_unready_replicas: int
    unready_replicas: list[str]
    registered_replicas: int
    this_replica_unready: bool


class StoreStatus(TypedDict):
    """A shared state store as one replica sees it."""

    description: str
    synced: bool
    replica: str | None
    evaluator: str | None
    readiness_budget: BudgetStatus | None
    #: What is wrong with the store's auxiliary keys (a foreign value in the evaluation lease,
    #: the fence or the last check, which holds automatic moves); empty when nothing is.
    problems: list[str]
    #: Why the store is behind what this replica has seen (lost, flushed or failed over),
    #: which holds every move until the state is restored; None while it is not.
    regressed: str | None


class LastCheck(TypedDict):
    """The last automatic check this replica made: when, what it decided (a DecisionAction
    name in lower case) and whether it failed to read the error rate."""

    time: str
    action: str
    failed: bool
    message: str


class RolloutStatus(TypedDict):
    """Where a rollout stands. `elapsed_time` and `min_duration` read as Python's
    `str(timedelta)` ("1 day, 2:00:00"); times are ISO 8601 UTC; `transitions` are the newest
    ones, oldest first. `waiting_for` says what keeps the rollout where it is and
    `waiting_reason` why, as the next automatic check would decide on the last reading of this
    stage (`stage_requests` requests of the `min_requests` it needs); `awaiting_approval` is
    true only when that is a person. `last_check` is None until this replica has checked (with
    a shared store, only the replica that holds the evaluation lease checks). `etag` is the
    status's entity tag, `"<incarnation>.<version>"` (quotes included), which a move's If-Match
    names; `incarnation` is None for a state that has not been written since before
    incarnations existed."""

    current_stage: StageStatus
    stage_index: int
    total_stages: int
    elapsed_time: str
    min_duration: str
    started_at: str
    state: RolloutState
    enforced_percentage: float
    # False while enforce_enabled is off (the kill switch): every request is shadow only,
    # whatever the stage's percentage says.
    enforcing: bool
    last_error_rate: float | None
    version: int
    etag: str
    incarnation: str | None
    restore_generation: int
    transitions: list[TransitionStatus]
    store: StoreStatus | None
    approvals: ApprovalStatus | None
    next_stage: StageStatus | None
    awaiting_approval: bool
    waiting_for: WaitingFor
    waiting_reason: str
    stage_requests: int | None
    min_requests: int
    last_check: LastCheck | None


# datetime's range: every time a state file can hold is inside it.
_LAST_SECOND = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp()


def entity_tag(incarnation: str, version: int) -> str:
    """The entity tag of a rollout state, quoted: `"<incarnation>.<version>"`, or `"<version>"`
    for a state without an incarnation yet."""
    return f'"{incarnation}.{version}"' if incarnation else f'"{version}"'


# Remembered: a status names the same few times (the stage's start, the transitions) on every
# read, and formatting one costs more than the rest of its entry.
@functools.lru_cache(maxsize=512)
def format_time(unix_seconds: float) -> str:
    """Unix seconds as ISO 8601 UTC ("2026-11-23T12:00:00+00:00"); a reading outside the years
    1 to 9999 (only a test clock can give one) as "unix:<seconds>" rather than an error."""
    if not -62135596800.0 <= unix_seconds <= _LAST_SECOND:
        return f"unix:{unix_seconds:g}"
    return datetime.fromtimestamp(unix_seconds, timezone.utc).isoformat()


_LONGEST_SECONDS = timedelta.max.total_seconds() - 1


# Remembered too: a stage's minimum duration repeats on every read (the time elapsed does not,
# and the least recently used entries make room for it).
@functools.lru_cache(maxsize=512)
def format_duration(seconds: float) -> str:
    """Seconds as Python's str(timedelta) ("23:00:00", "2 days, 0:00:00"); negative durations
    read as 0:00:00, and the longest is timedelta.max's."""
    return str(timedelta(seconds=min(max(0.0, seconds), _LONGEST_SECONDS)))


def elapsed_time(now: float, started_at: float) -> str:
    """A status's `elapsed_time`: the stage's time so far, as format_duration writes it."""
    return format_duration(now - started_at)


# The members by wire name, looked up as a dict is: calling the enum class costs more.
_STATES = {state.value: state for state in RolloutState}
_WAITING_FOR = {reason.value: reason for reason in WaitingFor}


def _stage(stage: Any) -> StageStatus:
    return {
        "name": stage.name,
        "percentage": stage.percentage,
        "max_error_rate": stage.max_error_rate,
        "requires_approval": stage.requires_approval,
    }


def _budget_status(store: Any) -> BudgetStatus | None:
    budget = getattr(store, "budget", None)
    return None if budget is None else budget.status()


def build_status(
    snapshot: dict[str, Any],
    transitions: int,
    store: Any = None,
    last_check: tuple[float, Any] | None = None,
    enforcing: bool = True,
) -> RolloutStatus:
    """The status from a manager's snapshot, with the last `transitions` transitions; `store`
    is the manager's shared store, if any, `last_check` its last check, `(wall time,
    Decision)`, if any, and `enforcing` whether its enforcer enforces at all."""
    stages = snapshot["stages"]
    index = snapshot["stage_index"]
    stage = stages[index]
    following = stages[index + 1] if index + 1 < len(stages) else None
    target = snapshot["advance_target"]
    waiting = None if target is None else stages[target]
    history = snapshot["transitions"][-transitions:] if transitions > 0 else []
    waiting_for = _WAITING_FOR[snapshot["waiting_for"]]
    check: LastCheck | None = None
    if last_check is not None:
        when, decision = last_check
        action = decision.action.name.lower()
        check = {
            "time": format_time(when),
            "action": action,
            "failed": action == "analysis_failed",
            "message": decision.message,
        }
    return {
        "current_stage": _stage(stage),
        "stage_index": snapshot["stage_index"],
        "total_stages": len(snapshot["stages"]),
        "elapsed_time": elapsed_time(snapshot["now"], snapshot["started_at"]),
        "min_duration": format_duration(stage.duration_seconds),
        "started_at": format_time(snapshot["started_at"]),
        "state": _STATES[snapshot["state"]],
        "enforced_percentage": snapshot["enforced_percentage"],
        "enforcing": enforcing,
        "last_error_rate": snapshot["last_error_rate"],
        "version": snapshot["version"],
        "etag": entity_tag(snapshot["incarnation"], snapshot["version"]),
        "incarnation": snapshot["incarnation"] or None,
        "restore_generation": snapshot["restore_generation"],
        "transitions": [
            {
                "time": format_time(t["time"]),
                "actor": t["actor"],
                "from": t["from"],
                "to": t["to"],
                "reason": t["reason"],
                "operation": t["op"],
            }
            for t in history
        ],
        "approvals": None
        if waiting is None or waiting.approvals_required < 2
        else {
            "stage": waiting.name,
            "required": waiting.approvals_required,
            "approved_by": list(snapshot["approvals"]),
        },
        "store": None
        if snapshot["store"] is None
        else {
            "description": snapshot["store"],
            "synced": snapshot["synced"],
            "replica": getattr(store, "replica", None),
            "evaluator": getattr(store, "evaluator", None),
            "readiness_budget": _budget_status(store),
            "problems": list(getattr(store, "problems", ())),
            "regressed": snapshot["regressed"],
        },
        "next_stage": None if following is None else _stage(following),
        "awaiting_approval": waiting_for is WaitingFor.APPROVAL,
        "waiting_for": waiting_for,
        "waiting_reason": snapshot["waiting_reason"],
        "stage_requests": snapshot["stage_requests"],
        "min_requests": snapshot["min_requests"],
        "last_check": check,
    }
