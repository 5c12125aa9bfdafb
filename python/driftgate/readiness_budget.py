"""The fleet's readiness budget: how many replicas may fail readiness for drift at once.

Drift usually comes from the code, not from one pod, so every replica's readiness gate closes
together, and a Kubernetes Service whose pods all fail readiness has no endpoints left. With a
shared store the replicas of a rollout register with a heartbeat, and at most `max_unready`
of them hold an *unready slot* at a time: only a replica holding one answers `/readyz` with 503
`DRIFT_GATE`. The others keep serving and answer 200 with the reason `DRIFT_GATE_BUDGET`; their
gate is still closed, and `adapt_readiness_gate_open` still says so.

The probe never calls the store: it reads the grant that the store's follower thread last
confirmed (`holds_slot`). A grant not confirmed within the slot's TTL, a store that cannot be
reached or never could, all count as no slot: availability first.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from driftgate._core import ROLLOUT_LABEL, Clock, MetricsRegistry, StateStoreError, SystemClock
from driftgate.reasons import ReasonCode
from driftgate.status import BudgetStatus

__all__ = [
    "MAX_UNREADY",
    "MAX_UNREADY_REPLICAS",
    "REPLICAS",
    "SLOT_HELD",
    "UNREADY_REPLICAS",
    "BudgetStatus",
    "ReadinessBudget",
    "SlotGrant",
    "UnreadySlots",
    "checked_max_unready",
]

MAX_UNREADY_REPLICAS = 1000
"""More replicas out of the Service at once than any fleet should lose to one cause: a typo."""

SLOT_HELD = (
    "driftgate_readiness_unready_slot_held",
    "1 while this replica holds one of the fleet's unready slots, so that /readyz answers 503 "
    "DRIFT_GATE while its gate is closed; 0 otherwise.",
)
UNREADY_REPLICAS = (
    "driftgate_readiness_unready_replicas",
    "Replicas of the rollout holding an unready slot, as this replica last saw the store.",
)
REPLICAS = (
    "driftgate_readiness_registered_replicas",
    "Replicas of the rollout registered in the store, as this replica last saw it.",
)
MAX_UNREADY = (
    "driftgate_readiness_max_unready_replicas",
    "How many replicas of the rollout may fail readiness for drift at once.",
)


@dataclass(frozen=True)
class SlotGrant:
    """The store's answer to one heartbeat: whether this replica holds an unready slot now,
    who holds one (replica names), and how many replicas are registered."""

    granted: bool
    holders: tuple[str, ...] = ()
    replicas: int = 0


class UnreadySlots(Protocol):
    """What a shared store provides for a readiness budget (`RedisStateStore` does). Each
    call is one atomic step in the store; a store that cannot be reached raises
    `StateStoreError`."""

    @property
    def replica(self) -> str:
        """This replica's name, as the slots list it."""
        ...

    @property
    def rollout(self) -> str:
        """The name of the rollout whose replicas these are: the `rollout` label of the
        budget's metrics."""
        ...

    @property
    def slot_ttl_seconds(self) -> float:
        """How long a registration and a slot live without a heartbeat."""
        ...

    def heartbeat(self, unready: bool, max_unready: int) -> SlotGrant:
        """Registers this replica for another TTL and, when `unready`, takes or renews an
        unready slot if fewer than `max_unready` are held (and at least one other registered
        replica holds none); when not `unready`, gives a held slot back."""
        ...

    def leave(self) -> None:
        """Gives this replica's registration and slot back (at shutdown)."""
        ...


def checked_max_unready(value: object, name: str = "max_unready") -> int:
    """`value` as a budget, or a ValueError naming `name`, the value and the range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r}: expected an integer from 1 to {MAX_UNREADY_REPLICAS}")
    if not 1 <= value <= MAX_UNREADY_REPLICAS:
        raise ValueError(f"{name}={value!r}: expected an integer from 1 to {MAX_UNREADY_REPLICAS}")
    return value


class ReadinessBudget:
    """The unready slot of one replica: `update()` (the store's follower calls it on every
    tick) asks the gate and takes, renews or gives back the slot; `holds_slot()` (the probe)
    reads the last confirmed grant.

    `check` is the readiness gate's check (`gate.check`, or the gate in force of a live
    configuration); `max_unready` an int or a callable giving the one in force. Thread-safe:
    updates are serialised, `holds_slot` and `excuses` take no lock and never call the store."""

    def __init__(
        self,
        slots: UnreadySlots,
        check: Callable[[], tuple[bool, str]],
        *,
        max_unready: int | Callable[[], int] = 1,
        clock: Clock | None = None,
        registry: MetricsRegistry | None = None,
    ) -> None:
        if not callable(max_unready):
            checked_max_unready(max_unready)
        self._slots = slots
        self._check = check
        self._max_unready = max_unready
        self._clock = clock or SystemClock()
        self._registry = registry
        self._lock = threading.Lock()
        # (clock reading before the heartbeat that confirmed the grant): one reference, so the
        # probe reads it whole without a lock. None: no slot.
        self._confirmed: float | None = None
        self._seen = SlotGrant(False)
        self._report(self._seen, self.max_unready)

    @property
    def max_unready(self) -> int:
        """The budget in force now."""
        value = self._max_unready() if callable(self._max_unready) else self._max_unready
        return checked_max_unready(value)

    @property
    def replica(self) -> str:
        return self._slots.replica

    def holds_slot(self) -> bool:
        """Whether this replica may fail readiness for drift now: its slot was granted by a
        heartbeat sent less than the slot's TTL ago."""
        confirmed = self._confirmed
        return (
            confirmed is not None and self._clock.now() - confirmed < self._slots.slot_ttl_seconds
        )

    def excuses(self, reason: str) -> bool:
        """Whether a not-ready `reason` is answered as ready: drift (`DRIFT_GATE`) while this
        replica holds no unready slot."""
        return reason == ReasonCode.DRIFT_GATE and not self.holds_slot()

    def update(self) -> SlotGrant:
        """One heartbeat: asks the gate, then takes or renews a slot while it is closed and
        gives it back once it is open. Any failure (the store away raises StateStoreError)
        drops the grant before it propagates."""
        with self._lock:
            try:
                ready, _ = self._check()
                limit = self.max_unready
                sent = self._clock.now()
                grant = self._slots.heartbeat(not ready, limit)
            except Exception:
                self._drop()
                raise
            self._confirmed = sent if grant.granted else None
            self._seen = grant
            self._report(grant, limit)
            return grant

    def lose(self) -> None:
        """Drops the grant at once (the store is away: a replica that cannot reach it never
        fails readiness for drift)."""
        with self._lock:
            self._drop()

    def release(self) -> None:
        """Gives the registration and the slot back (at shutdown); the store's `close()` does
        this. A store that cannot be reached lets them expire by themselves."""
        with self._lock:
            self._drop()
            with contextlib.suppress(StateStoreError):
                self._slots.leave()

    def status(self) -> BudgetStatus:
        """What the last heartbeat saw; no store call."""
        seen = self._seen
        return {
            "max_unready_replicas": self.max_unready,
            "unready_replicas": list(seen.holders),
            "registered_replicas": seen.replicas,
            "this_replica_unready": self.holds_slot(),
        }

    def _labels(self) -> dict[str, str]:
        # Read each time: a store learns its rollout's name when a manager takes it.
        return {ROLLOUT_LABEL: self._slots.rollout}

    def _drop(self) -> None:
        self._confirmed = None
        if self._registry is not None:
            self._registry.set_gauge(*SLOT_HELD, 0.0, self._labels())

    def _report(self, grant: SlotGrant, limit: int) -> None:
        registry = self._registry
        if registry is None:
            return
        labels = self._labels()
        registry.set_gauge(*SLOT_HELD, 1.0 if grant.granted else 0.0, labels)
        registry.set_gauge(*UNREADY_REPLICAS, float(len(grant.holders)), labels)
        registry.set_gauge(*REPLICAS, float(grant.replicas), labels)
        registry.set_gauge(*MAX_UNREADY, float(limit), labels)

    def __repr__(self) -> str:
        return f"ReadinessBudget(replica={self.replica!r}, max_unready={self._max_unready!r})"
