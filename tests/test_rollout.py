"""The staged rollout: the seed's SG006 behaviours, a whole cycle, abort and resume, restarts,
and bad input."""

import asyncio
import itertools
import json
import threading
from datetime import datetime, timedelta, timezone

import pytest

import driftgate
from driftgate import (
    RolloutConfig,
    RolloutManager,
    RolloutStage,
    StateError,
)

HOUR = 3600.0
START = 1_700_000_000.0


@pytest.fixture
def make_manager(enforcer, rollout_clock, registry, tmp_path):
    def make(config=None, **kwargs):
        kwargs.setdefault("state_path", tmp_path / "rollout.json")
        return RolloutManager(
            config or RolloutConfig.default(),
            enforcer=enforcer,
            registry=registry,
            clock=rollout_clock,
            **kwargs,
        )

    return make


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


# -- RolloutConfig on its own (the seed's unit tests) -------------------------------------


def test_rollout_config_default():
    config = RolloutConfig.default()
    assert [s.name for s in config.stages] == ["canary", "quarter", "half", "most", "full"]
    assert [s.percentage for s in config.stages] == [10, 25, 50, 75, 100]
    assert [s.requires_approval for s in config.stages] == [False, True, True, False, True]
    assert [s.max_error_rate for s in config.stages] == [0.005, 0.004, 0.003, 0.002, 0.002]
    assert config.stages[2].duration == timedelta(hours=48)
    assert config.current_stage_index == 0
    assert config.current_stage().percentage == 10
    assert config.rollback_on_error


def test_rollout_can_advance_duration_not_met():
    config = RolloutConfig.default()
    config.current_stage_started_at = now_utc() - timedelta(hours=1)
    can_advance, reason = config.can_advance(error_rate=0.001)
    assert not can_advance
    assert reason.startswith("Stage duration not met (remaining: 22:59:5")


def test_rollout_can_advance_error_rate_exceeded():
    config = RolloutConfig.default()
    config.current_stage_started_at = now_utc() - timedelta(hours=25)
    assert config.can_advance(error_rate=0.01) == (
        False,
        "Error rate 1.000% exceeds threshold 0.500%",
    )


def test_rollout_can_advance_when_ready():
    config = RolloutConfig.default()
    config.current_stage_started_at = now_utc() - timedelta(hours=25)
    assert config.can_advance(0.001) == (True, "Ready to advance to quarter (requires approval)")


def test_naive_start_is_read_as_utc():
    naive = datetime(2026, 1, 1, 12, 0, 0)
    config = RolloutConfig(RolloutConfig.default().stages, 0, naive)
    assert config.current_stage_started_at == naive.replace(tzinfo=timezone.utc)


def test_rollout_advance_and_rollback():
    config = RolloutConfig.default()
    config.advance()
    assert config.current_stage().name == "quarter"
    assert config.current_stage().percentage == 25
    config.rollback()
    assert config.current_stage().name == "canary"
    assert config.current_stage().percentage == 10


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([], "at least one stage"),
        ([RolloutStage("a", 50, 0, 0.1), RolloutStage("b", 50, 0, 0.1)], "above the previous"),
        ([RolloutStage("a", 10, 0, 0.1), RolloutStage("a", 20, 0, 0.1)], "duplicate name"),
    ],
)
def test_invalid_stage_lists_are_rejected(stages, message):
    with pytest.raises(ValueError, match=message):
        RolloutConfig(stages)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("a", 101, 0, 0.1), "rollout_percent=101"),
        (("a", -1, 0, 0.1), "rollout_percent=-1"),
        (("a", 10, timedelta(seconds=-1), 0.1), "duration=-1"),
        (("a", 10, 0, 1.5), "max_error_rate=1.5"),
        (("a", 10, 0, float("nan")), "max_error_rate=nan"),
        (("bad name", 10, 0, 0.1), "'bad name'"),
    ],
)
def test_invalid_stages_are_rejected(args, message):
    with pytest.raises(ValueError, match=message):
        RolloutStage(*args)


def test_duration_must_be_a_timedelta_or_seconds():
    with pytest.raises(TypeError, match=r"duration must be a datetime\.timedelta"):
        RolloutStage("a", 10, "1h", 0.1)


def test_bad_error_rate_is_named():
    with pytest.raises(ValueError, match=r"error_rate=1\.5"):
        RolloutConfig.default().can_advance(1.5)


# -- RolloutManager -----------------------------------------------------------------------


def test_fresh_manager_stamps_the_first_stage_and_persists(make_manager, enforcer, tmp_path):
    manager = make_manager()
    status = manager.get_status()
    assert status["current_stage"]["name"] == "canary"
    assert status["started_at"] == datetime.fromtimestamp(START, timezone.utc).isoformat()
    assert status["elapsed_time"] == "0:00:00"
    assert status["min_duration"] == "1 day, 0:00:00"
    assert status["state"] == "active"
    assert enforcer.options.rollout_percent == 10
    saved = json.loads((tmp_path / "rollout.json").read_text())
    assert saved["stage_name"] == "canary"
    assert saved["version"] == 1
    assert saved["schema_version"] == 1
    assert saved["stages_fingerprint"] == RolloutConfig.default().fingerprint


def test_rollout_manager_auto_advance_stops_before_approval(make_manager, rollout_clock):
    manager = make_manager()
    rollout_clock.advance(25 * HOUR)
    advanced, message = manager.evaluate(0.001)
    assert not advanced
    assert "requires approval" in message.lower()
    assert manager.get_status()["stage_index"] == 0


def test_auto_advance_into_a_stage_without_approval(make_manager, rollout_clock):
    manager = make_manager()
    manager.manual_advance("ops")  # quarter
    manager.manual_advance("ops")  # half, 48 h
    rollout_clock.advance(49 * HOUR)
    assert manager.evaluate(0.001) == (True, "Advanced to stage most (75%)")
    assert manager.enforced_percentage == 75


def test_rollout_manager_rollback_on_error(make_manager, enforcer, registry):
    manager = make_manager()
    manager.manual_advance("ops")
    advanced, message = manager.evaluate(0.01)
    assert not advanced
    assert "rolled back" in message.lower()
    assert manager.config.current_stage().name == "canary"
    assert enforcer.options.rollout_percent == 10
    text = registry.exposition()
    assert (
        'guardian_rollout_rollback_total{from_stage="quarter",rollout="default",'
        'to_stage="canary"} 1' in text
    )
    assert 'guardian_rollout_error_rate{rollout="default"} 0.01' in text


def test_no_rollback_when_rollback_on_error_is_off(make_manager):
    config = RolloutConfig(RolloutConfig.default().stages, rollback_on_error=False)
    manager = make_manager(config)
    assert manager.evaluate(0.5) == (False, "Error rate 50.000% exceeds threshold 0.500%")
    assert manager.get_status()["state"] == "active"


def test_manual_advance_enters_an_approval_stage(make_manager, registry):
    manager = make_manager()
    assert manager.manual_advance("ops") == (True, "Manually advanced to stage quarter")
    assert manager.config.current_stage().name == "quarter"
    assert (
        'guardian_rollout_advancement_total{rollout="default",to_stage="quarter"} 1'
        in registry.exposition()
    )


def test_rollback_from_first_stage_aborts(make_manager, enforcer, registry):
    manager = make_manager()
    assert manager.manual_rollback("ops", "canary looks wrong") == (
        True,
        "Rolled back from canary: rollout aborted at 0%",
    )
    status = manager.get_status()
    assert status["state"] == "aborted"
    assert status["enforced_percentage"] == 0
    assert enforcer.options.rollout_percent == 0
    assert manager.evaluate(0.0)[0] is False
    assert manager.manual_rollback("ops") == (False, "Rollout already aborted")
    assert (
        'guardian_rollout_stage{rollout="default",stage_name="aborted"} -1' in registry.exposition()
    )


def test_manual_advance_resumes_an_aborted_rollout(make_manager, enforcer):
    manager = make_manager()
    manager.manual_rollback("ops")
    assert manager.manual_advance("ops") == (True, "Resumed rollout at stage canary (10%)")
    assert manager.get_status()["state"] == "active"
    assert enforcer.options.rollout_percent == 10


def test_whole_cycle_canary_to_full(make_manager, rollout_clock, enforcer):
    manager = make_manager()
    visited = [manager.get_status()["current_stage"]["name"]]
    while manager.get_status()["state"] != "completed":
        stage = manager.config.current_stage()
        rollout_clock.advance(stage.duration_seconds + 1)
        advanced, message = manager.evaluate(0.0001)
        if not advanced:
            assert "requires approval" in message
            assert manager.manual_advance("ops")[0]
        visited.append(manager.get_status()["current_stage"]["name"])
    assert visited == ["canary", "quarter", "half", "most", "full"]
    assert enforcer.options.rollout_percent == 100
    assert manager.manual_advance("ops") == (False, "Already at final stage")
    history = [(t["from"], t["to"]) for t in manager.get_status(transitions=100)["transitions"]]
    assert history == [
        ("", "canary"),
        ("canary", "quarter"),
        ("quarter", "half"),
        ("half", "most"),
        ("most", "full"),
    ]


def test_restart_resumes_the_same_stage_and_elapsed_time(make_manager, rollout_clock, enforcer):
    first = make_manager()
    first.manual_advance("ops")
    version = first.get_status()["version"]
    del first  # the process ends
    rollout_clock.advance(5 * HOUR)
    enforcer.set_options(rollout_percent=0)  # a fresh process's enforcer
    second = make_manager()
    status = second.get_status()
    assert status["current_stage"]["name"] == "quarter"
    assert status["elapsed_time"] == "5:00:00"
    assert enforcer.options.rollout_percent == 25
    assert status["version"] == version


def test_corrupt_state_file_refuses_to_start_and_is_kept(make_manager, tmp_path):
    path = tmp_path / "rollout.json"
    path.write_text('{"schema_version": 1, "stage_index": ')
    with pytest.raises(StateError, match=str(path)):
        make_manager()
    assert path.read_text() == '{"schema_version": 1, "stage_index": '


def test_state_file_for_other_stages_refuses_to_start(make_manager, tmp_path):
    make_manager()
    other = RolloutConfig(RolloutConfig.default().stages[:3])
    with pytest.raises(StateError, match="another stage list"):
        make_manager(other)


def test_unwritable_state_keeps_enforcement_from_rising(make_manager, enforcer, tmp_path):
    folder = tmp_path / "state"
    folder.mkdir()
    manager = make_manager(state_path=folder / "rollout.json")
    # The folder turns into a file: every write now fails, whoever runs the test.
    (folder / "rollout.json").unlink()
    folder.rmdir()
    folder.write_text("not a folder")
    with pytest.raises(StateError, match="could not be written"):
        manager.manual_advance("ops")
    assert enforcer.options.rollout_percent == 10  # not raised
    assert manager.get_status()["current_stage"]["name"] == "canary"
    with pytest.raises(StateError):
        manager.manual_rollback("ops")
    assert enforcer.options.rollout_percent == 0  # lowered anyway: fail closed


def test_min_requests_holds(make_manager, rollout_clock):
    manager = make_manager(min_requests=100)
    rollout_clock.advance(25 * HOUR)
    assert manager.evaluate(0.0, 10) == (False, "Holding: insufficient data (10 of 100 requests)")
    assert manager.evaluate_counts(0, 99)[1].startswith("Holding: insufficient data")


def test_confidence_needs_evidence_both_ways(make_manager):
    manager = make_manager(confidence=0.95)
    manager.manual_advance("ops")  # quarter: 0.4 %
    advanced, message = manager.evaluate_counts(1, 200)  # 0.5 %, weak evidence
    assert not advanced
    assert message.startswith("Holding: error rate upper bound")
    assert manager.get_status()["current_stage"]["name"] == "quarter"
    assert manager.evaluate_counts(60, 1000)[1].startswith("Rolled back")


@pytest.mark.parametrize("bad", [-0.1, 1.1, float("nan")])
def test_bad_error_rates_change_nothing(make_manager, bad):
    manager = make_manager()
    with pytest.raises(ValueError, match="error_rate="):
        manager.evaluate(bad)
    assert manager.get_status()["version"] == 1


def test_bad_actor_is_rejected(make_manager):
    manager = make_manager()
    with pytest.raises(ValueError, match=r"invalid actor 'jane@example\.com'"):
        manager.manual_advance("jane@example.com")
    assert manager.get_status()["current_stage"]["name"] == "canary"


def test_bad_confidence_and_min_requests_are_named(make_manager):
    with pytest.raises(ValueError, match=r"confidence=1\.5"):
        make_manager(confidence=1.5)
    with pytest.raises(ValueError, match="min_requests=-1"):
        make_manager(min_requests=-1)


def test_eight_threads_advancing_and_rolling_back(make_manager, enforcer):
    manager = make_manager()

    def work(t):
        for i in range(15):
            if (t + i) % 2:
                manager.manual_advance("ops")
            else:
                manager.manual_rollback("ops", "test")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    status = manager.get_status(transitions=100)
    history = status["transitions"]
    for before, after in itertools.pairwise(history):
        assert after["from"] == before["to"]
    # Every call that moved is in the history (100 kept) and the version counts them all.
    moves = status["version"] - 1
    assert len(history) == min(100, moves + 1)
    assert enforcer.options.rollout_percent == status["enforced_percentage"]


# -- check_and_advance and the monitor -------------------------------------------------------


def test_check_and_advance_reads_a_rate_source(make_manager, rollout_clock):
    manager = make_manager(error_rate_source=lambda: 0.02)
    advanced, message = asyncio.run(manager.check_and_advance())
    assert (advanced, message) == (
        False,
        "Rolled back due to high error rate: 2.000% "
        "(Rolled back from canary: rollout aborted at 0%)",
    )
    assert manager.get_status()["state"] == "aborted"


def test_check_and_advance_reads_counts_from_the_enforced_cohort(make_manager, enforcer):
    manager = make_manager()  # LocalErrorRate(enforcer) by default
    for i in range(200):
        enforcer.decide("p", f"k{i}", "ok", lambda: 1 / 0)  # every enforced evaluation fails
    advanced, message = asyncio.run(manager.check_and_advance())
    assert not advanced
    assert message.startswith("Rolled back due to high error rate: 100.000%")


def test_async_sources_are_awaited(make_manager, rollout_clock):
    async def source():
        return (0, 1000)

    manager = make_manager(error_rate_source=source)
    rollout_clock.advance(25 * HOUR)
    assert "requires approval" in asyncio.run(manager.check_and_advance())[1]


@pytest.mark.parametrize(
    "reading",
    [float("nan"), 1.5, -1, (5, 3), (1.0, 2), "0.1", None, (True, 3)],
)
def test_nonsense_readings_hold_and_count(make_manager, registry, reading):
    manager = make_manager(error_rate_source=lambda: reading)
    advanced, message = asyncio.run(manager.check_and_advance())
    assert (advanced, message) == (False, "Holding: error-rate source failed (ValueError)")
    assert manager.get_status()["version"] == 1
    assert 'guardian_rollout_analysis_errors_total{rollout="default"} 1' in registry.exposition()


def test_failing_source_holds_and_counts(make_manager, registry):
    def broken():
        raise ConnectionError("down")

    manager = make_manager(error_rate_source=broken)
    manager.manual_advance("ops")
    assert asyncio.run(manager.check_and_advance()) == (
        False,
        "Holding: error-rate source failed (ConnectionError)",
    )
    assert manager.get_status()["current_stage"]["name"] == "quarter"
    assert 'guardian_rollout_analysis_errors_total{rollout="default"} 1' in registry.exposition()


def test_slow_source_times_out_and_holds(make_manager, registry):
    async def stuck():
        await asyncio.Event().wait()  # never answers

    manager = make_manager(error_rate_source=stuck, source_timeout=0.05)
    manager.manual_advance("ops")
    assert asyncio.run(manager.check_and_advance()) == (
        False,
        "Holding: error-rate source failed (TimeoutError)",
    )
    assert manager.get_status()["current_stage"]["name"] == "quarter"
    assert 'guardian_rollout_analysis_errors_total{rollout="default"} 1' in registry.exposition()


def test_blocking_source_runs_off_the_event_loop(make_manager):
    loop_thread = []

    def source():
        loop_thread.append(threading.current_thread() is threading.main_thread())
        return 0.0

    asyncio.run(make_manager(error_rate_source=source).check_and_advance())
    assert loop_thread == [False]


def test_monitor_survives_exceptions_and_cancels_cleanly(make_manager, caplog):
    manager = make_manager()
    calls = []

    async def flaky_check():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return False, "held"

    manager.check_and_advance = flaky_check
    sleeps = []

    async def fake_sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 4:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(driftgate.run_rollout_monitor(manager, timedelta(minutes=15), sleep=fake_sleep))
    assert len(calls) == 4
    assert sleeps == [900.0] * 4
    assert "rollout monitor check failed" in caplog.text


def test_lifespan_starts_and_stops_the_monitor(make_manager):
    checked = threading.Event()
    manager = make_manager(error_rate_source=lambda: checked.set() or 0.0)

    async def main():
        async with driftgate.rollout_lifespan(manager, timedelta(hours=1))(None) as state:
            assert state is None  # nothing for Starlette to merge into the app's state
            assert await asyncio.to_thread(checked.wait, 10)
            (task,) = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            assert not task.done()
        return task

    assert asyncio.run(main()).cancelled()


def test_monitor_rejects_a_zero_interval(make_manager):
    with pytest.raises(ValueError, match="check_interval"):
        asyncio.run(driftgate.run_rollout_monitor(make_manager(), timedelta(0)))
