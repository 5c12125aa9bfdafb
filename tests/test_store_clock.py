"""One clock for a fleet: every replica dates and times the shared rollout by Redis's clock
(TIME), read into a StoreClock at start and at every poll; a replica whose wall clock is off
says so (log and `driftgate_clock_skew_seconds`), and automatic moves wait while Redis's clock
is unknown. Unit tests on a ManualClock, then replicas of `driftgate serve` two days ahead and
two days behind (libfaketime) against a real redis-server."""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import driftgate
from driftgate.rollout import DecisionAction, RolloutManager
from driftgate.store import CLOCK_SKEW, RedisStateStore, StateStoreError, StoreClock
from fleet_servers import ErrorRates, Fleet, RedisServer, Replica, fleet, until, values_yaml
from servers import require_tool

DAY = 86400.0
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
_keys = itertools.count()


# -- the clock -------------------------------------------------------------------------------


def test_a_store_clock_is_the_stores_time_carried_on_by_the_monotonic_clock():
    base = driftgate.ManualClock(100.0)
    clock = StoreClock(base)
    assert (clock.wall(), clock.age(), clock.skew()) == (100.0, None, None)
    clock.observe(1_700_000_000.0, 100.0)
    base.advance(7.0)
    assert clock.wall() == 1_700_000_007.0
    assert clock.now() == 107.0
    assert clock.age() == 7.0
    assert clock.skew() == 107.0 - 1_700_000_007.0
    assert clock.base is base
    assert repr(clock) == "StoreClock(ManualClock(107.0))"
    with pytest.raises(ValueError, match="store_wall"):
        clock.observe(math.nan, 107.0)


def test_a_store_clock_without_a_base_follows_the_system_clock():
    clock = StoreClock()
    assert isinstance(clock.base, driftgate.SystemClock)
    assert abs(clock.wall() - time.time()) < 1


# -- reading Redis's clock -------------------------------------------------------------------


class FakeRedis:
    """Answers TIME with `store` seconds; each answer takes `delay` seconds of `clock`."""

    def __init__(self, clock: driftgate.ManualClock, store: float, delay: float = 0.0):
        self.clock = clock
        self.store = store
        self.delay = delay
        self.down = False

    def time(self) -> tuple[int, int]:
        if self.down:
            raise ConnectionError("refused")
        self.clock.advance(self.delay)
        answer = self.store + self.delay / 2  # the server answered half way through
        self.store += self.delay
        whole = math.floor(answer)
        return whole, round((answer - whole) * 1e6)


def store_on(fake: FakeRedis, **options: Any) -> RedisStateStore:
    store = RedisStateStore("redis://127.0.0.1:1/0", **options)  # never connected to
    store._client = fake
    store._errors = (*store._errors, ConnectionError)
    return store


def test_the_store_reads_redis_time_as_of_the_middle_of_the_round_trip():
    base = driftgate.ManualClock(5_000.0)  # wall == now: this machine says unix time 5000
    fake = FakeRedis(base, store=1_700_000_000.0, delay=0.2)
    store = store_on(fake)
    clock = store.clock_for(StoreClock(base))
    assert clock.age() is not None  # read once when the manager asks for its clock
    assert clock.wall() == pytest.approx(1_700_000_000.2)
    base.advance(10.0)
    assert clock.wall() == pytest.approx(1_700_000_010.2)
    assert store.read_clock() == pytest.approx(5_010.3 - 1_700_000_010.3)


def test_an_answer_too_slow_to_place_keeps_the_last_reading():
    base = driftgate.ManualClock(5_000.0)
    fake = FakeRedis(base, store=1_700_000_000.0)
    store = store_on(fake, max_clock_skew_seconds=0.5)
    clock = store.clock_for(StoreClock(base))
    fake.store += 3600  # Redis's clock jumped, but the answer took longer than the bound
    fake.delay = 0.6
    assert store.read_clock() is None
    assert clock.wall() == pytest.approx(1_700_000_000.6)
    assert clock.age() == pytest.approx(0.6)


def test_the_manager_gets_a_store_clock_unless_it_brings_a_clock_of_its_own():
    fake = FakeRedis(driftgate.ManualClock(), store=1_700_000_000.0)
    assert isinstance(store_on(fake).clock_for(None), StoreClock)
    assert isinstance(store_on(fake).clock_for(driftgate.SystemClock()), StoreClock)
    manual = driftgate.ManualClock(3.0)
    other = store_on(fake)
    assert other.clock_for(manual) is manual
    assert other.clock_problem() is None  # a test's clock: nothing to wait for
    assert other.read_clock() is None


@pytest.mark.integration
@pytest.mark.slow
def test_a_store_serving_a_manager_gives_no_clock_to_another(redis_server: RedisServer):
    store = RedisStateStore(redis_server.url, f"test:clock:{next(_keys)}")
    stages = [driftgate.RolloutStage("full", 100, 0, 0.05)]
    manager = RolloutManager(driftgate.RolloutConfig(stages), store=store)
    try:
        clock = store._clock
        with pytest.raises(ValueError, match="already serves a RolloutManager"):
            RolloutManager(driftgate.RolloutConfig(stages), store=store)
        assert store._clock is clock  # the first manager's clock is the one still read
        assert store.read_clock() is not None and store.clock_problem() is None
    finally:
        manager.close()


def test_automatic_moves_wait_for_a_current_reading_of_redis_time():
    base = driftgate.ManualClock(5_000.0)
    fake = FakeRedis(base, store=1_700_000_000.0)
    fake.down = True
    # 10 ms at 500 ppm (the fastest NTP slews a clock) is 20 s, more than three polls.
    store = store_on(fake, sync_interval_seconds=5, max_clock_skew_seconds=0.01)
    store.clock_for(StoreClock(base))  # Redis away: read later
    assert store.clock_problem() == (
        f"Holding: the clock of {store.describe()} has not been read yet"
    )
    fake.down = False
    store.read_clock()
    assert store.clock_problem() is None
    assert store_on(fake).clock_current_seconds == 2000  # 1 s, the default bound
    base.advance(20.0)
    assert store.clock_problem() is None
    base.advance(1.0)
    assert store.clock_problem() == (
        f"Holding: the clock of {store.describe()} was last read 21 s ago "
        "(a reading counts for 20 s)"
    )
    with pytest.raises(StateStoreError, match="clock failed"):
        fake.down = True
        store.read_clock()


def test_a_skew_past_the_bound_is_logged_once_then_once_a_minute_and_when_it_ends(caplog):
    base = driftgate.ManualClock(1_700_000_000.0 + 2 * DAY)  # two days ahead
    fake = FakeRedis(base, store=1_700_000_000.0)
    store = store_on(fake, max_clock_skew_seconds=1.0)
    caplog.set_level(logging.INFO, logger="driftgate.store")
    store.clock_for(StoreClock(base))
    for _ in range(59):
        base.advance(1.0)
        fake.store += 1.0
        assert store.read_clock() == pytest.approx(2 * DAY)
    base.advance(1.0)
    fake.store += 1.0
    store.read_clock()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith(
        "this replica's wall clock is 172800.000 s ahead of the clock of Redis"
    )
    assert "rollout.store.max_clock_skew_seconds, 1 s" in lines[0]
    assert caplog.records[0].levelno == logging.WARNING
    fake.store = base.wall() + 0.5  # NTP fixed it; the store's clock is within the bound
    assert store.read_clock() == pytest.approx(-0.5)
    store.read_clock()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and lines[2].startswith(
        "this replica's wall clock is within 1 s of the clock of Redis"
    )


@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, 3601])
def test_the_skew_bound_is_checked(value: float):
    with pytest.raises(ValueError, match="max_clock_skew_seconds"):
        RedisStateStore("redis://127.0.0.1:1/0", max_clock_skew_seconds=value)


def test_the_values_file_carries_the_skew_bound_and_checks_it(tmp_path: Path):
    from driftgate.settings import SettingsError, load_settings

    def values(bound: str) -> Path:
        path = tmp_path / "values.yaml"
        path.write_text(
            "rollout:\n  enabled: true\n  stages: [{name: full, percentage: 100}]\n"
            f"  store: {{max_clock_skew_seconds: {bound}}}\n"
        )
        return path

    settings = load_settings(values("2.5"))
    assert settings.store is not None and settings.store.max_clock_skew_seconds == 2.5
    with pytest.raises(SettingsError, match="max_clock_skew_seconds"):
        load_settings(values("0"))


# -- a manager on a real Redis, in this process ----------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def redis_time(redis: RedisServer) -> float:
    with redis.client() as client:
        seconds, microseconds = client.time()
    return float(seconds) + microseconds / 1e6


def unix(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.mark.integration
@pytest.mark.slow
def test_a_manager_two_days_ahead_times_its_stage_by_redis_and_holds_without_its_clock(
    redis_server: RedisServer,
):
    stages = [
        driftgate.RolloutStage("canary", 10, 20, 0.05),
        driftgate.RolloutStage("full", 100, 0, 0.05),
    ]
    base = driftgate.ManualClock(time.time() + 2 * DAY)
    store = RedisStateStore(redis_server.url, f"test:clock:{next(_keys)}", sync_interval_seconds=60)
    manager = RolloutManager(
        driftgate.RolloutConfig(stages),
        store=store,
        clock=StoreClock(base),
        registry=driftgate.MetricsRegistry(),
    )
    try:
        # The follower's first reading is in (it publishes the skew), so no later one moves
        # the clock while this test moves it.
        until(lambda: CLOCK_SKEW in manager.registry.exposition(), "the first reading", 5)
        assert manager.registry.exposition().count(f'{CLOCK_SKEW}{{rollout="default"}} 172') == 1
        snapshot = manager._snapshot()
        assert abs(snapshot["started_at"] - redis_time(redis_server)) < 2
        base.advance(10.0)
        held = manager.evaluate(0.0)
        assert (held.action, held.to_stage) == (DecisionAction.HELD, "canary")
        base.advance(2000.0)  # the reading is stale: the duration is met, but by a guess
        held = manager.evaluate(0.0)
        assert held.action == DecisionAction.HELD
        assert "was last read 2010 s ago" in held.message
        # Read again, Redis's clock says the stage has run for a few seconds, not 2010.
        store.read_clock()
        held = manager.evaluate(0.0)
        assert (held.action, held.to_stage) == (DecisionAction.HELD, "canary")
        assert "clock" not in held.message
    finally:
        manager.close()


@pytest.mark.integration
@pytest.mark.slow
def test_an_admin_move_works_on_the_last_reading(redis_server: RedisServer):
    base = driftgate.ManualClock(time.time() - 2 * DAY)
    store = RedisStateStore(redis_server.url, f"test:clock:{next(_keys)}", sync_interval_seconds=60)
    stages = [driftgate.RolloutStage(name, p, 3600, 0.05) for name, p in [("a", 5), ("b", 50)]]
    manager = RolloutManager(
        driftgate.RolloutConfig(stages),
        store=store,
        clock=StoreClock(base),
        registry=driftgate.MetricsRegistry(),
    )
    try:
        until(lambda: CLOCK_SKEW in manager.registry.exposition(), "the first reading", 5)
        base.advance(2500.0)  # stale for automatic moves (2000 s for the default 1 s)
        held = manager.evaluate(0.0)
        assert (held.action, held.message.split(" was")[0]) == (
            DecisionAction.HELD,
            f"Holding: the clock of {store.describe()}",
        )
        moved = manager.manual_advance("admin", "by hand")
        assert moved.moved
        started = manager._snapshot()["started_at"]
        assert abs(started - (redis_time(redis_server) + 2500.0)) < 2
    finally:
        manager.close()


# -- replicas of `driftgate serve` under libfaketime -----------------------------------------

# Each stage waits 20 s by itself; the last one waits for a human.
STAGES = [
    {"name": name, "percentage": percentage, "duration_seconds": 20, "max_error_rate": 0.05}
    for name, percentage in [("first", 5), ("second", 25), ("third", 50)]
] + [{"name": "full", "percentage": 100, "requires_approval": True}]


def faked(offset: str, *, monotonic: bool) -> dict[str, str]:
    """libfaketime moving the wall clock by `offset`. By default it moves CLOCK_MONOTONIC too
    (to the faked wall time); a machine whose wall clock is wrong has a true monotonic clock,
    which FAKETIME_DONT_FAKE_MONOTONIC keeps. The store's clock is right either way."""
    require_tool("faketime", "faketime")
    env = {"LD_PRELOAD": LIBFAKETIME, "FAKETIME": offset}
    if not monotonic:
        env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
    return env


def redis_now(f: Fleet) -> float:
    return redis_time(f.redis)


def holder(f: Fleet, key: str, replica: Replica) -> bool:
    return f.lease_holder(key) is replica


@pytest.mark.integration
@pytest.mark.slow
def test_an_evaluator_two_days_ahead_leaves_a_stage_only_after_its_time_by_redis(tmp_path):
    rates = ErrorRates(0.0)
    key = "fleet:clock-ahead"
    with rates.serve() as prometheus, fleet(tmp_path) as f:
        values = values_yaml(key, STAGES, prometheus=prometheus)
        healthy = f.add(values)  # starts the rollout at "first", on a true clock
        until(lambda: f.stored(key) is not None, "the rollout stored", 10)
        started = unix(f.stored(key)["started_at"])
        assert abs(started - redis_now(f)) < 5
        healthy.stop()  # gives the lease up
        ahead = f.add(values, env=faked("+2d", monotonic=True))
        until(lambda: holder(f, key, ahead), "the replica two days ahead holding the lease", 10)
        checks = rates.queries
        until(lambda: rates.queries > checks + 1, "two checks by the replica ahead", 10)
        assert f.stored(key)["stage_name"] == "first"
        # It advances once 20 s have passed by Redis's clock, not before.
        until(lambda: f.stored(key)["stage_name"] == "second", "the advance", 30)
        left = redis_now(f)
        print(f"the replica two days ahead left a 20 s stage after {left - started:.2f} s")
        assert left - started >= 20
        document = f.stored(key)
        assert document["transitions"][-1]["actor"] == "auto"
        moved_at = unix(document["transitions"][-1]["time"])
        assert started + 20 <= moved_at <= left + 1  # dated by Redis's clock, not two days on
        assert abs(unix(document["started_at"]) - moved_at) < 1
        skew = ahead.metric(CLOCK_SKEW)
        assert skew is not None and abs(skew - 2 * DAY) < 5
        assert "s ahead of the clock of Redis" in ahead.log()
        assert "Traceback" not in ahead.log()


@pytest.mark.integration
@pytest.mark.slow
def test_a_stage_entered_by_a_replica_two_days_behind_starts_at_redis_time(tmp_path):
    rates = ErrorRates(0.0)
    key = "fleet:clock-behind"
    with rates.serve() as prometheus, fleet(tmp_path) as f:
        values = values_yaml(key, STAGES, prometheus=prometheus)
        evaluator = f.add(values)
        until(lambda: holder(f, key, evaluator), "the healthy replica holding the lease", 10)
        behind = f.add(values, env=faked("-2d", monotonic=False))
        until(lambda: behind.metric(CLOCK_SKEW) is not None, "the behind replica's reading", 10)
        moved = behind.move("advance", body={"reason": "entering second by hand"})
        assert moved.status_code == 200, moved.text
        entered = redis_now(f)
        document = f.stored(key)
        assert document["stage_name"] == "second"
        stamped = unix(document["started_at"]) - entered
        print(f"the replica two days behind started the stage at Redis's time {stamped:+.3f} s")
        assert abs(stamped) < 2
        # The evaluator checks every second and holds: 20 s of "second" have not passed.
        until(lambda: evaluator.version() == document["version"], "the evaluator following", 5)
        checks = rates.queries
        until(lambda: rates.queries >= checks + 3, "three checks by the evaluator", 10)
        assert f.stored(key)["stage_name"] == "second"
        assert evaluator.status()["last_check"]["action"] == "held"
        skew = behind.metric(CLOCK_SKEW)
        assert skew is not None and abs(skew + 2 * DAY) < 5
        assert "s behind the clock of Redis" in behind.log()
