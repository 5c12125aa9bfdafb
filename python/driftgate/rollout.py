"""The staged rollout: the C++ state machine plus what needs Python: reading error-rate
sources off the event loop, the monitor loop, and the status report."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, Literal, Union

from driftgate._core import (
    DEFAULT_ROLLOUT,
    Clock,
    ConfigOwnedError,
    Decision,
    DecisionAction,
    Enforcer,
    MetricsRegistry,
    RolloutConfig,
    RolloutStage,
    SharedStateStore,
    StateError,
    StateOutcomeUnknown,
    StateRegressed,
    StateStoreError,
    _RolloutManager,
    cohort_seed,
    validate_rollout_name,
)
from driftgate.notify import Count, Event, Notification, Notifier
from driftgate.status import RolloutState, RolloutStatus, WaitingFor, build_status

# What a status was built from but the clock: see RolloutManager._status_now.
StatusKey = tuple[int, float, str, bool, tuple[float, Decision] | None, int]

__all__ = [
    "DEFAULT_ROLLOUT",
    "Cohort",
    "ConfigOwnedError",
    "Decision",
    "DecisionAction",
    "ErrorRateSource",
    "FileStateStore",
    "InsufficientData",
    "LocalErrorRate",
    "PrometheusErrorRate",
    "RolloutConfig",
    "RolloutManager",
    "RolloutStage",
    "RolloutState",
    "SharedStateStore",
    "StateError",
    "StateOutcomeUnknown",
    "StateRegressed",
    "StateStoreError",
    "WaitingFor",
    "cohort_seed",
    "rollout_lifespan",
    "rollout_monitor",
    "run_rollout_monitor",
    "validate_rollout_name",
]

logger = logging.getLogger("driftgate.rollout")

ErrorRate = Union[float, "tuple[int, int]"]
#: A callable giving the error rate (a rate in [0, 1] or (failed, total)), sync or async,
#: called with no argument or with the analysis window (a timedelta).
ErrorRateSource = (
    Callable[[], ErrorRate | Awaitable[ErrorRate]]
    | Callable[[timedelta], ErrorRate | Awaitable[ErrorRate]]
)

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)

#: Which keys a rollout of some policies enforces on: "independent" (its own cohort, the
#: keys' hash salted by the rollout's name) or "shared" (the enforcer's, nested with every
#: other shared rollout's). docs/sampling.md has the rule.
Cohort = Literal["independent", "shared"]


def _policy_list(policies: Sequence[str] | None) -> list[str] | None:
    """`policies` as a list of ids, None staying None; TypeError for one string or for
    anything that is not a sequence of strings (the ids themselves are checked by the core)."""
    if policies is None:
        return None
    if isinstance(policies, (str, bytes)) or not isinstance(policies, Sequence):
        raise TypeError(f"policies={policies!r}: expected a list of policy ids, or None")
    for policy in policies:
        if not isinstance(policy, str):
            raise TypeError(f"policies={policies!r}: {policy!r} is not a policy id (a str)")
    return list(policies)


class InsufficientData(Exception):
    """Raised by an error-rate source that has too little to judge the stage on yet (e.g. a
    window shorter than its metrics' resolution): the check holds as INSUFFICIENT_DATA, which
    is not an analysis error. The message says why."""


def _takes_window(source: Any) -> bool:
    """Whether an error-rate source wants the analysis window: its `takes_window` attribute
    when it has one, else True for `source(window)` and False for `source()`; TypeError naming
    the expected signatures for anything else."""
    declared = getattr(source, "takes_window", None)
    if isinstance(declared, bool):
        return declared
    try:
        parameters = inspect.signature(source).parameters.values()
    except (TypeError, ValueError):  # no signature to read (some builtins): call it bare
        return False
    required = [p for p in parameters if p.default is inspect.Parameter.empty]
    positional = [p for p in required if p.kind in _POSITIONAL]
    if len(required) == len(positional) and len(positional) <= 1:
        return len(positional) == 1
    raise TypeError(
        f"error_rate_source {source!r} requires the arguments "
        f"({', '.join(p.name for p in required)}); expected source() or source(window), "
        "where window is the analysis window as a datetime.timedelta"
    )


class LocalErrorRate:
    """The enforced cohort's evaluation-error rate, from this process's own counts:
    (failed enforced evaluations, enforced decisions) in `window`, and never from before the
    current stage was entered; with `policies`, of those policies' decisions only (a rollout's
    own), else of every policy. A manager calls `stage_entered()` whenever its stage changes;
    until `window` has passed since then, the counts are those made since it."""

    def __init__(
        self, enforcer: Enforcer, window: str = "60m", policies: Sequence[str] | None = None
    ):
        self._policies: list[str | None] = [None]
        listed = _policy_list(policies)
        if listed is not None:
            if not listed:
                raise ValueError("policies=[]: expected at least one policy id, or None for all")
            self._policies = list(listed)
        for policy in self._policies:  # a bad window or policy id fails here, not later
            enforcer.error_counts(window, policy)
        self._enforcer = enforcer
        self._window = window
        self.policies: tuple[str, ...] | None = None if listed is None else tuple(listed)
        tracker = enforcer.tracker
        self._clock = tracker.clock
        self._span = next(w.span_seconds for w in tracker.windows if w.name == window)
        # (clock reading, failed, total) when the current stage was entered
        self._entered: tuple[float, int, int] | None = None

    def _lifetime(self) -> tuple[int, int]:
        counts = [self._enforcer.lifetime_error_counts(p) for p in self._policies]
        return sum(c[0] for c in counts), sum(c[1] for c in counts)

    def stage_entered(self) -> None:
        """Starts counting afresh: what was counted before belongs to another stage."""
        failed, total = self._lifetime()
        self._entered = (self._clock.now(), failed, total)

    def __call__(self) -> tuple[int, int]:
        entered = self._entered
        if entered is not None and self._clock.now() - entered[0] < self._span:
            failed, total = self._lifetime()
            return failed - entered[1], total - entered[2]
        # The window holds nothing older than the stage.
        counts = [self._enforcer.error_counts(self._window, p) for p in self._policies]
        return sum(c[0] for c in counts), sum(c[1] for c in counts)

    def __repr__(self) -> str:
        if self.policies is None:
            return f"LocalErrorRate(window={self._window!r})"
        return f"LocalErrorRate(window={self._window!r}, policies={list(self.policies)!r})"


WINDOW_PLACEHOLDER = "$window"
"""Where a Prometheus query takes the analysis window, e.g. ``[$window]``."""


class PrometheusErrorRate:
    """An error rate read from Prometheus's HTTP query API (`GET /api/v1/query`).

    `query` must evaluate to a single number in [0, 1], as a scalar or a one-element vector,
    for example ``sum(rate(guardian_enforcement_failed_total[$window])) /
    clamp_min(sum(rate(guardian_enforcement_total[$window])), 1e-9)``. Anything else raises,
    and the manager holds. Each ``$window`` is replaced by the analysis window the manager
    passes, `min(analysis_window, time in stage)` in whole seconds (``"3600s"``), so the rate
    covers the current stage alone; a window shorter than `min_window_seconds` (two scrape
    intervals, by default 60 s) is insufficient data. A query without ``$window`` is read as it
    is and cannot tell the stages apart."""

    def __init__(
        self, base_url: str, query: str, timeout: float = 5.0, min_window_seconds: float = 60.0
    ):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={base_url!r}: expected an http:// or https:// URL")
        if not query.strip():
            raise ValueError("query must not be empty")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout={timeout!r}: expected seconds > 0")
        if not (min_window_seconds >= 1 and math.isfinite(min_window_seconds)):
            raise ValueError(f"min_window_seconds={min_window_seconds!r}: expected seconds >= 1")
        self.base_url = base_url.rstrip("/")
        self.query = query
        self.timeout = timeout
        self.min_window_seconds = min_window_seconds

    @property
    def takes_window(self) -> bool:
        """Whether the query has a ``$window`` for the manager's analysis window."""
        return WINDOW_PLACEHOLDER in self.query

    def __call__(self, window: timedelta | None = None) -> float:
        import httpx  # only this source needs it

        query = self.query
        if self.takes_window:
            if window is None:
                raise ValueError(f"the query has {WINDOW_PLACEHOLDER} but no window was given")
            seconds = math.floor(window.total_seconds())
            if seconds < self.min_window_seconds:
                raise InsufficientData(
                    f"the stage's window is {seconds} s, under {self.min_window_seconds:g} s"
                )
            query = query.replace(WINDOW_PLACEHOLDER, f"{seconds}s")
        response = httpx.get(
            f"{self.base_url}/api/v1/query", params={"query": query}, timeout=self.timeout
        )
        response.raise_for_status()
        body = response.json()
        if body.get("status") != "success":
            raise ValueError(f"Prometheus answered status={body.get('status')!r}")
        data = body["data"]
        if data["resultType"] == "scalar":
            value = data["result"][1]
        elif data["resultType"] == "vector" and len(data["result"]) == 1:
            value = data["result"][0]["value"][1]
        else:
            raise ValueError(
                f"query gave {data['resultType']} with {len(data['result'])} series; "
                "expected one number"
            )
        rate = float(value)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"query gave {rate!r}; expected an error rate in [0, 1]")
        return rate

    def __repr__(self) -> str:
        return f"PrometheusErrorRate({self.base_url!r}, {self.query!r})"


class FileStateStore:
    """The local state file as a store: what `state_path=` is the shorthand for. One process
    owns it; for replicas that share one rollout, use a shared store (`RedisStateStore`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def __repr__(self) -> str:
        return f"FileStateStore({self.path!r})"


class RolloutManager(_RolloutManager):
    """Walks a staged rollout: advances after each stage's minimum time while the error rate is
    low, rolls back by itself when it is high, waits for a human where a stage asks for
    approval, and persists every step before returning: to `state_path` (a local file), or to
    a shared `store` (e.g. `RedisStateStore`) that every replica of a service follows.

    The manager alone moves the rollout: the `config` it is given becomes a live, read-only
    view of where it stands, and its part of the enforcer is the manager's to set. Without
    `policies` that is the enforcer's rollout percent, which every policy no other rollout
    names is enforced at; with `policies`, a share of its own: those policies are enforced at
    this rollout's percent, on the keys of its `cohort` ("independent": hashed with a seed
    derived from the rollout's name; "shared": the enforcer's own). A policy belongs to one
    rollout, and a rollout without policies cannot share an enforcer with rollouts that have
    some (ValueError naming them). `rollout` names it: every metric it exports carries the
    label `rollout=<name>` (docs/metrics.md). Every
    decision is a `Decision`, which unpacks as `(success, message)`. `error_rate_source` is
    called as `source()` or, if it takes one argument, `source(analysis_window)`; without one,
    a manager with an enforcer reads `LocalErrorRate` over its policies. A shared store is
    followed from the start, or, with `follow=False`, once `store.follow(manager)` is called (a
    `driftgate.service.Service` does that while its app runs). `name` is the rollout's name in
    notifications: by default the rollout's, or for the rollout named "default" the store's
    key (else "rollout"). The enforcer's share and the name are given back when the manager is
    garbage collected. Thread-safe."""

    def __init__(
        self,
        config: RolloutConfig,
        enforcer: Enforcer | None = None,
        registry: MetricsRegistry | None = None,
        state_path: str | os.PathLike[str] | None = None,
        clock: Clock | None = None,
        error_rate_source: ErrorRateSource | None = None,
        min_requests: int = 0,
        confidence: float | None = None,
        source_timeout: float = 10.0,
        analysis_window: timedelta = timedelta(hours=1),
        store: SharedStateStore | FileStateStore | None = None,
        notifier: Notifier | None = None,
        name: str | None = None,
        analysis_failures_to_notify: int = 3,
        follow: bool = True,
        *,
        rollout: str = DEFAULT_ROLLOUT,
        policies: Sequence[str] | None = None,
        cohort: Cohort = "independent",
    ):
        if isinstance(store, FileStateStore):
            if state_path is not None:
                raise ValueError("give a RolloutManager a state_path or a store, not both")
            state_path, store = store.path, None
        if not (source_timeout > 0 and math.isfinite(source_timeout)):
            raise ValueError(f"source_timeout={source_timeout!r}: expected seconds > 0")
        if not (isinstance(analysis_window, timedelta) and analysis_window > timedelta(0)):
            raise ValueError(
                f"analysis_window={analysis_window!r}: expected a positive datetime.timedelta"
            )
        self.analysis_window = analysis_window
        self.source_timeout = source_timeout
        self._stage_lock = threading.Lock()
        # (version, (stage index, state, started_at)) of the stage last marked entered
        self._stage: tuple[int, tuple[Any, ...]] | None = None
        self.error_rate_source = error_rate_source  # checked before anything is started
        listed = _policy_list(policies)
        validate_rollout_name(rollout)
        # A shared store's replicas all date and time the rollout by the store's clock.
        clock_for = getattr(store, "clock_for", None)
        if callable(clock_for):
            clock = clock_for(clock, rollout=rollout)
        super().__init__(
            config,
            enforcer=enforcer,
            registry=registry,
            state_path=None if state_path is None else os.fspath(state_path),
            clock=clock,
            min_requests=min_requests,
            confidence=confidence,
            store=store,
            rollout=rollout,
            policies=listed,
            cohort=cohort,
        )
        self._store = store
        self.notifier = notifier
        if notifier is not None and notifier.count is None:
            notifier.count = self._notification_count()
        named = None if rollout == DEFAULT_ROLLOUT else rollout
        self.name = name or named or getattr(store, "key", None) or "rollout"
        if not 1 <= analysis_failures_to_notify <= 1000:
            raise ValueError(
                f"analysis_failures_to_notify={analysis_failures_to_notify!r}: expected 1 to 1000"
            )
        self.analysis_failures_to_notify = analysis_failures_to_notify
        self._analysis_failures = 0
        self._failure_streaks = 0
        self._wall: Callable[[], float] = time.time if clock is None else clock.wall
        self._last_check: tuple[float, Decision] | None = None
        if error_rate_source is None and enforcer is not None:
            self.error_rate_source = LocalErrorRate(enforcer, policies=listed)
        self._note_stage()
        follow_store = getattr(store, "follow", None)
        if follow and callable(follow_store):
            follow_store(self)

    @property
    def store(self) -> SharedStateStore | None:
        """The shared state store, or None for a local state file (or none)."""
        return self._store

    def _notification_count(self) -> Count:
        """The hook a notifier of this manager counts its outcomes with
        (driftgate_notifications_total). It holds the manager weakly: a notifier must not keep
        a manager that was dropped alive, since a dropped manager gives its enforcer's share
        back at once (a reload that refuses the rollouts it built drops them)."""
        manager = weakref.ref(self)

        def count(sink: str, event: str, outcome: str) -> None:
            alive = manager()
            if alive is not None:
                alive._count_notification(sink, event, outcome)

        return count

    def close(self) -> None:
        """Stops following a shared store and gives up its evaluation lease, and sends what
        the notifier has queued; `rollout_lifespan` calls it at shutdown."""
        close = getattr(self._store, "close", None)
        if callable(close):
            close()
        if self.notifier is not None:
            self.notifier.close()

    # Every decision passes through here, so each committed transition is announced once,
    # by the replica that committed it.

    def evaluate(
        self, error_rate: float, requests: int | None = None, *, read_at: int | None = None
    ) -> Decision:
        held = self._clock_hold()
        if held is not None:
            return held
        return self._announce(super().evaluate(error_rate, requests, read_at=read_at))

    def evaluate_counts(self, failed: int, total: int, *, read_at: int | None = None) -> Decision:
        held = self._clock_hold()
        if held is not None:
            return held
        return self._announce(super().evaluate_counts(failed, total, read_at=read_at))

    def _clock_hold(self) -> Decision | None:
        """A hold while the shared store's clock is unknown: an automatic move judges a
        stage's duration and dates the next stage, and must not do either on a guess."""
        problem = getattr(self._store, "clock_problem", None)
        why = problem() if callable(problem) else None
        return None if why is None else self._hold(why)

    def manual_advance(
        self,
        actor: str | None = None,
        reason: str | None = None,
        *,
        expected_version: int | None = None,
        expected_incarnation: str | None = None,
        operation: str | None = None,
        person: str | None = None,
    ) -> Decision:
        decision = super().manual_advance(
            actor,
            reason,
            expected_version=expected_version,
            expected_incarnation=expected_incarnation,
            operation=operation,
            person=person,
        )
        if decision.replayed:
            self._replayed(
                decision,
                (DecisionAction.ADVANCED, DecisionAction.RESUMED, DecisionAction.APPROVAL_RECORDED),
                "an advance",
            )
        return self._announce(decision, said=bool(reason))

    def manual_rollback(
        self,
        actor: str | None = None,
        reason: str | None = None,
        *,
        expected_version: int | None = None,
        expected_incarnation: str | None = None,
        operation: str | None = None,
    ) -> Decision:
        decision = super().manual_rollback(
            actor,
            reason,
            expected_version=expected_version,
            expected_incarnation=expected_incarnation,
            operation=operation,
        )
        if decision.replayed:
            self._replayed(
                decision, (DecisionAction.ROLLED_BACK, DecisionAction.ABORTED), "a rollback"
            )
        return self._announce(decision, said=bool(reason))

    def _replayed(self, decision: Decision, kinds: tuple[DecisionAction, ...], asked: str) -> None:
        """Checks a first outcome answered again: the operation id must have named this kind
        of move (ValueError otherwise: the id was reused for another move, nothing moves), and
        with `min_replicas_acked` its commit must be on that many Redis replicas."""
        if decision.action not in kinds:
            did = decision.action.name.lower().replace("_", " ")
            raise ValueError(
                f"operation {decision.operation} already {did} the rollout at version "
                f"{decision.version}: it is not {asked}; nothing was changed (use another "
                "Idempotency-Key for another move)"
            )
        confirm = getattr(self._store, "confirm_replicated", None)
        if callable(confirm):
            confirm(decision.operation)

    def follow(self, document: str, read_at: int | None = None) -> bool:
        adopted = super().follow(document, read_at)
        self._note_stage()
        return adopted

    def refresh(self) -> int:
        version = super().refresh()
        self._note_stage()
        return version

    def _note_stage(self) -> None:
        """Tells a source that counts by itself (`stage_entered`) when the stage changes, so
        that each stage is judged on its own requests; called after every decision and every
        state followed from a shared store. The state is read under the lock, and only a newer
        version can enter a stage, so callers racing each other mark a stage once."""
        with self._stage_lock:
            snapshot = self._snapshot()
            stage = (snapshot["stage_index"], snapshot["state"], snapshot["started_at"])
            if self._stage is not None and (
                stage == self._stage[1] or snapshot["version"] < self._stage[0]
            ):
                return
            self._stage = (snapshot["version"], stage)
            entered = getattr(self._source, "stage_entered", None)
            if callable(entered):
                entered()

    def _announce(self, decision: Decision, said: bool = False) -> Decision:
        """Notes a new stage, and announces a committed move or a wait for approval; `said`
        when a person gave the move a reason, which the notification carries."""
        self._note_stage()
        if decision.action != DecisionAction.ANALYSIS_FAILED:
            self._analysis_failures = 0
        if self.notifier is None:
            return decision
        event = _event_of(decision)
        if event is not None:
            automatic = decision.actor in ("", "auto")
            reason = "manual" if not automatic else _AUTOMATIC_REASONS[event]
            comment = decision.reason if said and not automatic and decision.reason else None
            self.notifier.publish(self._notification(decision, event, reason, comment=comment))
        return decision

    def _notification(
        self,
        decision: Decision,
        event: Event,
        reason: str,
        occurrence: int = 0,
        comment: str | None = None,
    ) -> Notification:
        to_stage, to_percentage = decision.to_stage, decision.to_percentage
        approvals_given: int | None = None
        approvals_required: int | None = None
        snapshot = self._snapshot()
        if event is Event.WAITING_FOR_APPROVAL:
            # The stage waiting to be entered, and who has approved entering it so far.
            target = snapshot["advance_target"]
            if target is not None:
                waiting = snapshot["stages"][target]
                to_stage, to_percentage = waiting.name, waiting.percentage
                approvals_given = len(snapshot["approvals"])
                approvals_required = waiting.approvals_required
        return Notification(
            event=event,
            rollout=self.name,
            version=decision.version,
            from_stage=decision.from_stage,
            to_stage=to_stage,
            from_percentage=decision.from_percentage,
            to_percentage=to_percentage,
            actor=decision.actor or "auto",
            reason=reason,
            error_rate=decision.error_rate,
            status_url=None if self.notifier is None else self.notifier.status_url,
            occurrence=occurrence,
            comment=comment,
            approvals_given=approvals_given,
            approvals_required=approvals_required,
            incarnation=snapshot["incarnation"],
            restore_generation=snapshot["restore_generation"],
        )

    def _analysis_failed(self, decision: Decision) -> Decision:
        self._analysis_failures += 1
        if self._analysis_failures == self.analysis_failures_to_notify:
            self._failure_streaks += 1
            if self.notifier is not None:
                self.notifier.publish(
                    self._notification(
                        decision, Event.ANALYSIS_FAILING, "source_failed", self._failure_streaks
                    )
                )
        return decision

    @property
    def error_rate_source(self) -> ErrorRateSource | None:
        """Where `check_and_advance` reads the error rate."""
        return self._source

    @error_rate_source.setter
    def error_rate_source(self, source: ErrorRateSource | None) -> None:
        if source is not None and not callable(source):
            raise TypeError(f"error_rate_source must be callable, got {source!r}")
        takes_window = source is not None and _takes_window(source)
        entered = getattr(source, "stage_entered", None)
        # A new source (e.g. after a reload) counts from now: nothing older is surely this
        # stage's. Under the stage lock, so a stage entered meanwhile is not marked twice.
        with self._stage_lock:
            self._source_takes_window = takes_window
            self._source = source
            if callable(entered):
                entered()

    # The name an error-rate hook has in code written for the original rollout manager.
    get_current_error_rate = error_rate_source

    @property
    def state_path(self) -> str | None:
        path: str | None = self._snapshot()["state_path"]
        return path

    def get_status(self, transitions: int = 10) -> RolloutStatus:
        """Where the rollout stands: the current stage, its index, elapsed and minimum time,
        `state`, the enforced percentage, the version and the last `transitions` transitions
        (oldest first)."""
        return self._status_and_key(transitions)[0]

    def _enforcing(self) -> bool:
        enforcer = self.enforcer
        return enforcer is not None and enforcer.options.enforce

    def _status_and_key(self, transitions: int = 10) -> tuple[RolloutStatus, StatusKey | None]:
        """get_status(), and the key of what it was built from but the clock (see
        `_status_now`); None with a shared store, whose own fields (its replicas, its budget,
        its problems) no key holds."""
        snapshot = self._snapshot()
        last_check = self._last_check
        enforcing = self._enforcing()
        report = build_status(snapshot, transitions, self._store, last_check, enforcing)
        if self._store is not None:
            return report, None
        key = (
            snapshot["publication"],
            snapshot["started_at"],
            snapshot["waiting_for"],
            enforcing,
            last_check,
            transitions,
        )
        return report, key

    def _status_now(self, transitions: int = 10) -> tuple[StatusKey, float, float, str] | None:
        """Without building the status: the key of what it would be built from but the clock,
        and the time, the stage's start and the waiting reason now (None with a shared store).
        Two statuses of equal keys differ in `elapsed_time` and `waiting_reason` alone: the
        key holds the publication of the manager's state (a new one at every change: a move,
        a reading of the stage, a new minimum of requests, an adopted state), the stage's
        start, what the rollout waits for (which the clock alone can change), whether the
        enforcer enforces, the last check and the number of transitions."""
        if self._store is not None:
            return None
        publication, now, started_at, waiting_for, reason = self._moment()
        key = (
            publication,
            started_at,
            waiting_for,
            self._enforcing(),
            self._last_check,
            transitions,
        )
        return key, now, started_at, reason

    async def check_and_advance(self) -> Decision:
        """Reads the error-rate source (a blocking one in a worker thread, with
        `source_timeout`), then decides as `evaluate` does. A source that fails, times out or
        answers nonsense means hold (action ANALYSIS_FAILED): nothing advances or rolls back,
        and guardian_rollout_analysis_errors_total counts it. The status shows the last check
        this manager made (`last_check`)."""
        decision = await self._check()
        self._last_check = (self._wall(), decision)
        await self._share_evidence()
        return decision

    async def _share_evidence(self) -> None:
        """With a shared store, hands this check's reading of the stage to the other replicas,
        so that the status says the same on every one of them."""
        share = getattr(self._store, "share_evidence", None)
        if not callable(share):
            return
        snapshot = self._snapshot()
        if snapshot["evidence"] is None:
            return  # nothing read in this stage (or the check moved the rollout on)
        stage = {
            "stage_index": snapshot["stage_index"],
            "state": snapshot["state"],
            "started_at": snapshot["started_at"],
        }
        try:
            await asyncio.to_thread(share, stage, snapshot["evidence"])
        except StateStoreError as error:
            logger.warning("could not share the stage's reading with the fleet: %s", error)

    async def _check(self) -> Decision:
        source = self.error_rate_source
        if source is None:
            return self._hold("Holding: no error-rate source")
        # The reading is judged only if the rollout is still where it was when it was taken.
        snapshot = self._snapshot()
        read_at: int = snapshot["version"]
        arguments: tuple[timedelta, ...] = ()
        if self._source_takes_window:
            # Only this stage's requests: never more than the time since it was entered (or
            # resumed), measured from the start the shared state records.
            in_stage = snapshot["now"] - snapshot["started_at"]
            if not in_stage > 0:
                return self._hold(
                    "Holding: insufficient data (the stage has only just started)",
                    DecisionAction.INSUFFICIENT_DATA,
                )
            arguments = (min(self.analysis_window, timedelta(seconds=in_stage)),)
        try:
            reading = await _within(self.source_timeout, _read(source, arguments))
            decide = _decision_for(self, reading, read_at)
        except asyncio.CancelledError:
            raise
        except InsufficientData as why:
            return self._hold(
                f"Holding: insufficient data ({why})", DecisionAction.INSUFFICIENT_DATA
            )
        except Exception as error:  # any failure of the source means hold
            self.record_analysis_error()
            logger.warning("rollout error-rate source failed (%s); holding", type(error).__name__)
            return self._analysis_failed(
                self._hold(
                    f"Holding: error-rate source failed ({type(error).__name__})",
                    DecisionAction.ANALYSIS_FAILED,
                )
            )
        # The decision may write and fsync the state file: off the event loop too.
        return await asyncio.to_thread(decide)


_AUTOMATIC_REASONS = {
    Event.ADVANCED: "duration_met",
    Event.COMPLETED: "duration_met",
    Event.ROLLED_BACK: "error_rate",
    Event.ABORTED: "error_rate",
    Event.WAITING_FOR_APPROVAL: "approval_needed",
}


def _event_of(decision: Decision) -> Event | None:
    """The notification a decision calls for: a committed move, or a wait for approval."""
    action = decision.action
    if action == DecisionAction.WAITING_FOR_APPROVAL:
        return Event.WAITING_FOR_APPROVAL
    if not decision.moved:
        return None
    if action in (DecisionAction.ADVANCED, DecisionAction.RESUMED):
        completed = decision.state == RolloutState.COMPLETED
        return Event.COMPLETED if completed else Event.ADVANCED
    if action == DecisionAction.ROLLED_BACK:
        return Event.ROLLED_BACK
    if action == DecisionAction.ABORTED:
        return Event.ABORTED
    return None


async def _within(seconds: float, awaitable: Awaitable[Any]) -> Any:
    """`awaitable` with a timeout. asyncio.wait_for before Python 3.12 can swallow a
    cancellation that arrives as the awaitable finishes, and a monitor that missed its
    cancellation would sleep through a shutdown; asyncio.timeout (3.11+) cannot."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


async def _read(source: Any, arguments: tuple[Any, ...]) -> Any:
    # An async function, or an object whose __call__ is one.
    if inspect.iscoroutinefunction(source) or inspect.iscoroutinefunction(type(source).__call__):
        return await source(*arguments)
    result = await asyncio.to_thread(source, *arguments)
    if inspect.isawaitable(result):
        return await result
    return result


def _decision_for(manager: RolloutManager, reading: Any, read_at: int) -> Callable[[], Decision]:
    """The evaluate call for a source's reading taken at version `read_at`, or ValueError for a
    reading that is neither a rate in [0, 1] nor a (failed, total) pair of counts."""
    if isinstance(reading, tuple) and len(reading) == 2:
        failed, total = reading
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in reading):
            raise ValueError(f"(failed, total) must be integers, got {reading!r}")
        if not 0 <= failed <= total:
            raise ValueError(f"(failed, total) must have 0 <= failed <= total, got {reading!r}")
        return lambda: manager.evaluate_counts(failed, total, read_at=read_at)
    if isinstance(reading, (int, float)) and not isinstance(reading, bool):
        rate = float(reading)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"error rate {rate!r} is outside [0, 1]")
        return lambda: manager.evaluate(rate, read_at=read_at)
    raise ValueError(f"error-rate source returned {type(reading).__name__}")


CheckInterval = timedelta | Callable[[], timedelta]
"""A check interval, or a callable giving the one in force (a live configuration's)."""


def _seconds(check_interval: CheckInterval) -> float:
    interval = check_interval() if callable(check_interval) else check_interval
    if not (isinstance(interval, timedelta) and interval.total_seconds() > 0):
        raise ValueError(f"check_interval={interval!r}: expected a positive duration")
    return interval.total_seconds()


async def run_rollout_monitor(
    manager: RolloutManager,
    check_interval: CheckInterval = timedelta(minutes=15),
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Checks the rollout every `check_interval` until cancelled. Logs each decision, and
    logs and survives any exception; cancellation ends it cleanly. A callable interval is read
    before each wait, so a new one applies from the next wait on.

    With a shared store the interval is the fleet's: only the replica holding the evaluation
    lease checks, and only when the last check by any replica is `check_interval` old."""
    _seconds(check_interval)
    store = manager.store
    claim = getattr(store, "claim_check", None)
    campaign = getattr(store, "campaign", None)
    logger.info("rollout monitor started (every %s)", timedelta(seconds=_seconds(check_interval)))
    if callable(campaign):
        campaign(True)
    try:
        while True:
            interval = _seconds(check_interval)
            wait = interval
            try:
                due = 0.0 if claim is None else await asyncio.to_thread(claim, interval)
                if due > 0:
                    wait = due
                else:
                    decision = await manager.check_and_advance()
                    logger.info(
                        "rollout %s: %s -> %s (%s%%): %s",
                        decision.action.name.lower(),
                        decision.from_stage,
                        decision.to_stage,
                        f"{decision.to_percentage:g}",
                        decision.message,
                    )
            except asyncio.CancelledError:
                raise
            except StateStoreError as error:
                logger.warning("rollout check skipped: %s", error)
                wait = min(interval, 1.0)
            except Exception:
                logger.exception("rollout monitor check failed; trying again next interval")
            await sleep(wait)
    except asyncio.CancelledError:
        logger.info("rollout monitor stopped")
        raise
    finally:
        if callable(campaign):
            campaign(False)


def rollout_lifespan(
    manager: RolloutManager, check_interval: CheckInterval = timedelta(minutes=15)
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """A FastAPI/Starlette `lifespan=` that runs the monitor while the app runs and cancels it
    on shutdown: ``FastAPI(lifespan=rollout_lifespan(manager))``. It yields no state, so it
    composes with an application's own."""
    _seconds(check_interval)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            async with rollout_monitor(manager, check_interval):
                yield
        finally:
            await asyncio.to_thread(manager.close)

    return lifespan


@contextlib.asynccontextmanager
async def rollout_monitor(
    manager: RolloutManager, check_interval: CheckInterval = timedelta(minutes=15)
) -> AsyncIterator[None]:
    """Runs `run_rollout_monitor` while inside, and cancels it (waiting until it has ended)
    on the way out; unlike `rollout_lifespan` it leaves the manager open."""
    _seconds(check_interval)
    task = asyncio.create_task(run_rollout_monitor(manager, check_interval))
    try:
        yield
    finally:
        # Cancelled again until it ends: on Python 3.10, asyncio.wait_for inside a check can
        # swallow one cancellation.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        with contextlib.suppress(asyncio.CancelledError):
            await task
