"""The fleet's readiness budget: at most `max_unready` replicas of a rollout fail readiness for
drift at once; the others answer 200 DRIFT_GATE_BUDGET. The slot logic on a ManualClock with a
fake store, the store's rule against a real redis-server, and readyz through the router."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import driftgate
from driftgate import ManualClock, MetricsRegistry, ReasonCode, StateStoreError
from driftgate.fastapi import create_router
from driftgate.readiness_budget import (
    MAX_UNREADY_REPLICAS,
    ReadinessBudget,
    SlotGrant,
)
from driftgate.store import RedisStateStore
from fleet_servers import RedisServer, until

CLOSED = (False, ReasonCode.DRIFT_GATE.value)
OPEN = (True, ReasonCode.OK.value)
TTL = 15.0


class FakeSlots:
    """One replica's view of a store: grants what the test says, or fails like a store that
    cannot be reached."""

    def __init__(self, grant: bool = True) -> None:
        self.grant = grant
        self.failing = False
        self.beats: list[tuple[bool, int]] = []
        self.left = 0

    @property
    def replica(self) -> str:
        return "replica-a"

    @property
    def rollout(self) -> str:
        return "orders"

    @property
    def slot_ttl_seconds(self) -> float:
        return TTL

    def heartbeat(self, unready: bool, max_unready: int) -> SlotGrant:
        if self.failing:
            raise StateStoreError("Redis redis://127.0.0.1:1/0 key 'k': heartbeat failed")
        self.beats.append((unready, max_unready))
        granted = unready and self.grant
        return SlotGrant(granted, ("replica-a",) if granted else (), 3)

    def leave(self) -> None:
        self.left += 1
        if self.failing:
            raise StateStoreError("Redis redis://127.0.0.1:1/0 key 'k': leave failed")


class Gate:
    """A readiness gate check the test opens and closes."""

    def __init__(self, state: tuple[bool, str] = CLOSED) -> None:
        self.state = state

    def __call__(self) -> tuple[bool, str]:
        return self.state


def budget_on(
    slots: FakeSlots,
    gate: Callable[[], tuple[bool, str]] | None = None,
    clock: ManualClock | None = None,
    registry: MetricsRegistry | None = None,
    max_unready: int | Callable[[], int] = 1,
) -> ReadinessBudget:
    return ReadinessBudget(
        slots,
        gate or Gate(),
        max_unready=max_unready,
        clock=clock or ManualClock(100.0),
        registry=registry,
    )


def gauge(registry: MetricsRegistry, name: str) -> float:
    """The value of the budget's series, labelled with its slots' rollout."""
    for line in registry.exposition().splitlines():
        if line.startswith(f'{name}{{rollout="orders"}} '):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} is not exposed")


# -- the slot on a ManualClock ---------------------------------------------------------------


def test_a_grant_counts_until_one_ttl_after_the_heartbeat_that_confirmed_it():
    clock = ManualClock(100.0)
    budget = budget_on(FakeSlots(), clock=clock)
    assert budget.update().granted
    assert budget.holds_slot()
    clock.advance(TTL - 0.25)
    assert budget.holds_slot()
    clock.advance(0.25)  # exactly one TTL: the store may have given the slot to another
    assert not budget.holds_slot()
    assert budget.excuses(ReasonCode.DRIFT_GATE.value)


def test_the_grant_is_timed_from_before_the_heartbeat_was_sent():
    clock = ManualClock(100.0)
    slots = FakeSlots()
    heartbeat = slots.heartbeat

    def slow_heartbeat(unready: bool, max_unready: int) -> SlotGrant:
        clock.advance(2.0)  # the answer took two seconds
        return heartbeat(unready, max_unready)

    slots.heartbeat = slow_heartbeat
    budget = budget_on(slots, clock=clock)
    budget.update()
    clock.advance(TTL - 2.0 - 0.25)
    assert budget.holds_slot()
    clock.advance(0.25)
    assert not budget.holds_slot()


def test_a_renewed_grant_counts_from_the_renewal():
    clock = ManualClock(100.0)
    budget = budget_on(FakeSlots(), clock=clock)
    budget.update()
    clock.advance(TTL - 1)
    budget.update()
    clock.advance(TTL - 1)
    assert budget.holds_slot()


def test_a_slot_the_store_refuses_is_not_held():
    budget = budget_on(FakeSlots(grant=False))
    assert not budget.update().granted
    assert not budget.holds_slot()
    assert budget.excuses(ReasonCode.DRIFT_GATE.value)


def test_a_store_error_drops_the_grant_at_once():
    registry = MetricsRegistry()
    slots = FakeSlots()
    budget = budget_on(slots, registry=registry)
    budget.update()
    assert gauge(registry, "driftgate_readiness_unready_slot_held") == 1
    slots.failing = True
    with pytest.raises(StateStoreError):
        budget.update()
    assert not budget.holds_slot()
    assert gauge(registry, "driftgate_readiness_unready_slot_held") == 0


def test_a_gate_check_that_raises_drops_the_grant():
    gate = Gate()
    budget = budget_on(FakeSlots(), gate=gate)
    budget.update()

    def broken() -> tuple[bool, str]:
        raise RuntimeError("gate broke")

    budget._check = broken
    with pytest.raises(RuntimeError):
        budget.update()
    assert not budget.holds_slot()


def test_losing_the_store_drops_the_grant():
    budget = budget_on(FakeSlots())
    budget.update()
    budget.lose()
    assert not budget.holds_slot()


def test_a_replica_that_never_reached_the_store_holds_no_slot():
    budget = budget_on(FakeSlots())
    assert not budget.holds_slot()
    assert budget.excuses(ReasonCode.DRIFT_GATE.value)


def test_the_heartbeat_asks_for_a_slot_while_the_gate_is_closed_and_gives_it_back_when_open():
    gate = Gate(CLOSED)
    slots = FakeSlots()
    budget = budget_on(slots, gate=gate, max_unready=2)
    budget.update()
    gate.state = OPEN
    assert not budget.update().granted
    assert not budget.holds_slot()
    assert slots.beats == [(True, 2), (False, 2)]


def test_release_gives_the_slot_back_even_when_the_store_is_away():
    slots = FakeSlots()
    budget = budget_on(slots)
    budget.update()
    slots.failing = True
    budget.release()  # unreleased, the slot expires by itself
    assert slots.left == 1
    assert not budget.holds_slot()


def test_only_drift_is_excused():
    budget = budget_on(FakeSlots(grant=False))
    budget.update()
    assert budget.excuses("DRIFT_GATE")
    assert not budget.excuses("STATE_FILE")
    assert not budget.excuses("OK")


def test_a_live_budget_is_read_on_every_heartbeat():
    limit = [1]
    slots = FakeSlots()
    budget = budget_on(slots, max_unready=lambda: limit[0])
    budget.update()
    limit[0] = 3
    budget.update()
    assert [beat[1] for beat in slots.beats] == [1, 3]
    assert budget.status()["max_unready_replicas"] == 3


def test_the_gauges_say_what_the_last_heartbeat_saw():
    registry = MetricsRegistry()
    budget = budget_on(FakeSlots(), registry=registry, max_unready=2)
    assert gauge(registry, "driftgate_readiness_unready_slot_held") == 0
    assert gauge(registry, "driftgate_readiness_max_unready_replicas") == 2
    budget.update()
    assert gauge(registry, "driftgate_readiness_unready_slot_held") == 1
    assert gauge(registry, "driftgate_readiness_unready_replicas") == 1
    assert gauge(registry, "driftgate_readiness_registered_replicas") == 3
    assert budget.status() == {
        "max_unready_replicas": 2,
        "unready_replicas": ["replica-a"],
        "registered_replicas": 3,
        "this_replica_unready": True,
    }


@pytest.mark.parametrize("value", [0, -1, MAX_UNREADY_REPLICAS + 1, True, 1.0, "1", None])
def test_a_budget_outside_one_to_the_maximum_is_refused_naming_the_value(value):
    with pytest.raises(ValueError) as caught:
        budget_on(FakeSlots(), max_unready=value)
    assert f"max_unready={value!r}" in str(caught.value)
    assert f"1 to {MAX_UNREADY_REPLICAS}" in str(caught.value)


# -- readyz ------------------------------------------------------------------------------------


def readyz(budget: ReadinessBudget, **router: object) -> tuple[int, dict[str, str]]:
    tracker = driftgate.DriftTracker(clock=ManualClock(0.0), registry=MetricsRegistry())
    app = FastAPI()
    app.include_router(create_router(tracker=tracker, readiness_budget=budget, **router))
    response = TestClient(app).get("/api/v1/readyz")
    return response.status_code, response.json()


class ClosedGate:
    """A gate closed by drift, as ReadinessGate.check answers then."""

    def check(self) -> tuple[bool, str]:
        return CLOSED

    def reopens_within(self) -> float | None:
        return 120.0


def test_readyz_fails_for_drift_only_while_this_replica_holds_a_slot():
    budget = budget_on(FakeSlots())
    budget.update()
    assert readyz(budget, gate=ClosedGate()) == (
        503,
        {"status": "not_ready", "reason": "DRIFT_GATE", "reopens_within_seconds": 120},
    )
    budget.lose()
    assert readyz(budget, gate=ClosedGate()) == (
        200,
        {"status": "ready", "reason": "DRIFT_GATE_BUDGET"},
    )


def test_readyz_excuses_drift_from_a_readiness_check_but_no_other_reason():
    budget = budget_on(FakeSlots(grant=False))

    def drift() -> str:
        return "DRIFT_GATE"  # as LiveSettings.readiness answers while the gate is closed

    assert readyz(budget, readiness_checks=[drift]) == (
        200,
        {"status": "ready", "reason": "DRIFT_GATE_BUDGET"},
    )
    # Excused drift does not hide what comes after it.
    assert readyz(budget, readiness_checks=[drift, lambda: "STATE_FILE"]) == (
        503,
        {"status": "not_ready", "reason": "STATE_FILE"},
    )
    budget._slots.grant = True
    budget.update()
    assert readyz(budget, readiness_checks=[drift])[0] == 503


def test_readyz_without_drift_says_nothing_of_the_budget():
    budget = budget_on(FakeSlots(grant=False))
    assert readyz(budget, readiness_checks=[lambda: None]) == (200, {"status": "ready"})


# -- the store's rule, against a real redis-server --------------------------------------------

_keys = itertools.count()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


class Replica:
    """A store on one key with its readiness budget, driven by hand (no follower thread)."""

    def __init__(self, url: str, key: str, name: str, max_unready: int) -> None:
        self.gate = Gate(CLOSED)
        self.store = RedisStateStore(url, key, replica=name, lease_ttl_seconds=TTL)
        self.budget = self.store.readiness_budget(
            self.gate, max_unready=max_unready, clock=ManualClock(0.0)
        )

    def unready(self) -> bool:
        """Whether readyz fails for drift after one heartbeat."""
        self.budget.update()
        ready, reason = self.gate()
        return not ready and not self.budget.excuses(reason)


@pytest.fixture
def fleet_of(redis_server: RedisServer) -> Iterator[Callable[..., list[Replica]]]:
    made: list[Replica] = []

    def make(count: int, max_unready: int = 1) -> list[Replica]:
        key = f"test:budget:{next(_keys)}"
        replicas = [
            Replica(redis_server.url, key, f"replica{i}", max_unready) for i in range(count)
        ]
        made.extend(replicas)
        for replica in replicas:  # registered: each counts as a replica that can serve
            replica.gate.state = OPEN
            replica.budget.update()
            replica.gate.state = CLOSED
        return replicas

    yield make
    for replica in made:
        replica.store.close()


redis_test = pytest.mark.parametrize("max_unready", [1, 2])


@pytest.mark.slow
@pytest.mark.integration
@redis_test
def test_exactly_the_budget_fails_readiness_and_the_next_replica_keeps_serving(
    fleet_of, max_unready
):
    replicas = fleet_of(max_unready + 2, max_unready)
    answers = [replica.unready() for replica in replicas]
    assert answers == [True] * max_unready + [False, False]
    # Renewing changes nothing: the holders keep their slots, the others still serve.
    assert [replica.unready() for replica in replicas] == answers
    status = replicas[-1].budget.status()
    assert status["unready_replicas"] == [f"replica{i}" for i in range(max_unready)]
    assert status["registered_replicas"] == max_unready + 2
    assert not status["this_replica_unready"]


@pytest.mark.slow
@pytest.mark.integration
@redis_test
def test_a_holder_whose_gate_reopens_frees_its_slot_for_the_next(fleet_of, max_unready):
    replicas = fleet_of(max_unready + 2, max_unready)
    assert [r.unready() for r in replicas] == [True] * max_unready + [False, False]
    replicas[0].gate.state = OPEN
    assert not replicas[0].unready()
    assert replicas[-1].unready()
    assert not replicas[-2].unready()


@pytest.mark.slow
@pytest.mark.integration
def test_a_holder_that_stopped_beating_loses_its_slot_once_its_ttl_is_over(fleet_of, redis_server):
    first, second, third = fleet_of(3)
    assert (first.unready(), second.unready()) == (True, False)
    # The first replica died: its entries expire by Redis's clock (set here to the past,
    # rather than waiting a TTL).
    with redis_server.client() as client:
        for suffix in ("replicas", "unready"):
            client.zadd(f"{first.store.key}:{suffix}", {first.store._holder: 1})
    assert second.unready()
    assert not third.unready()
    assert second.budget.status()["registered_replicas"] == 2


@pytest.mark.slow
@pytest.mark.integration
def test_the_last_registered_replica_without_a_slot_keeps_serving(fleet_of):
    (alone,) = fleet_of(1, max_unready=3)
    assert not alone.unready()
    first, second = fleet_of(2, max_unready=3)
    assert (first.unready(), second.unready()) == (True, False)


@pytest.mark.slow
@pytest.mark.integration
def test_a_lowered_budget_takes_the_slot_of_the_holder_that_renews_first(fleet_of):
    replicas = fleet_of(4, max_unready=2)
    assert [r.unready() for r in replicas] == [True, True, False, False]
    for replica in replicas:
        replica.budget._max_unready = 1
    assert [r.unready() for r in replicas] == [False, True, False, False]


@pytest.mark.slow
@pytest.mark.integration
def test_close_takes_the_registration_and_the_slot_out(fleet_of, redis_server):
    first, second, _ = fleet_of(3)
    assert first.unready()
    first.store.close()
    with redis_server.client() as client:
        assert client.zcard(f"{first.store.key}:replicas") == 2
        assert client.zcard(f"{first.store.key}:unready") == 0
    assert second.unready()


@pytest.mark.slow
@pytest.mark.integration
def test_a_store_that_cannot_be_reached_grants_nothing(redis_server):
    from servers import free_port

    store = RedisStateStore(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5)
    try:
        budget = store.readiness_budget(Gate(CLOSED))
        with pytest.raises(StateStoreError):
            budget.update()
        assert budget.excuses("DRIFT_GATE")
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.integration
def test_a_store_keeps_one_readiness_budget(redis_server):
    store = RedisStateStore(redis_server.url, "test:budget:one")
    try:
        store.readiness_budget(Gate())
        with pytest.raises(ValueError, match="already keeps a readiness budget"):
            store.readiness_budget(Gate())
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.integration
def test_the_follower_keeps_the_slot_and_close_gives_it_back(redis_server):
    key = f"test:budget:{next(_keys)}"
    stores = [
        RedisStateStore(redis_server.url, key, replica=f"r{i}", lease_ttl_seconds=0.5)
        for i in range(2)
    ]
    managers = [
        driftgate.RolloutManager(driftgate.RolloutConfig.default(), store=store) for store in stores
    ]
    budgets = [store.readiness_budget(Gate(CLOSED)) for store in stores]
    try:
        until(
            lambda: sorted(b.holds_slot() for b in budgets) == [False, True],
            "one replica holding the slot",
            5,
        )
        holder = next(i for i, b in enumerate(budgets) if b.holds_slot())
        status = managers[holder].get_status()["store"]
        assert status is not None and status["readiness_budget"] == {
            "max_unready_replicas": 1,
            "unready_replicas": [f"r{holder}"],
            "registered_replicas": 2,
            "this_replica_unready": True,
        }
        managers[holder].close()
        with redis_server.client() as client:
            assert client.zcard(f"{key}:unready") == 0
    finally:
        for manager in managers:
            manager.close()


@pytest.mark.slow
@pytest.mark.integration
def test_a_gate_check_that_raises_is_logged_and_the_follower_goes_on(redis_server, caplog):
    def broken() -> tuple[bool, str]:
        raise RuntimeError("the gate broke")

    key = f"test:budget:{next(_keys)}"
    store = RedisStateStore(redis_server.url, key, replica="r0", lease_ttl_seconds=0.5)
    manager = driftgate.RolloutManager(driftgate.RolloutConfig.default(), store=store)
    budget = store.readiness_budget(broken)
    try:
        until(lambda: "readiness budget not kept" in caplog.text, "the failure logged", 5)
        assert "RuntimeError: the gate broke" in caplog.text
        assert not budget.holds_slot()
        assert store._follower is not None and store._follower._thread.is_alive()
        other = RedisStateStore(redis_server.url, key, replica="r1")
        try:
            assert other.load() is not None  # the follower stored the rollout and goes on
        finally:
            other.close()
    finally:
        manager.close()


@pytest.mark.slow
@pytest.mark.integration
def test_a_replica_that_loses_the_store_drops_its_slot_at_once_not_after_the_ttl(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    ttl = 30.0  # a grant left to go stale would count for half a minute
    stores = [
        RedisStateStore(
            server.url,
            "test:budget:lost",
            replica=f"r{i}",
            lease_ttl_seconds=ttl,
            socket_timeout=0.5,
        )
        for i in range(2)
    ]
    managers = [
        driftgate.RolloutManager(driftgate.RolloutConfig.default(), store=store) for store in stores
    ]
    budgets = [store.readiness_budget(Gate(CLOSED)) for store in stores]
    try:
        until(lambda: any(b.holds_slot() for b in budgets), "a replica holding the slot", 10)
        server.kill()
        took = until(lambda: not any(b.holds_slot() for b in budgets), "the slot dropped", 10)
        print(f"slot dropped {took * 1000:.0f} ms after Redis went away (TTL {ttl:g} s)")
    finally:
        for manager in managers:
            manager.close()
        server.stop()
