"""One home for where a rollout stands: the manager owns the position, a config handed to it
is a live read-only view, every decision is a typed Decision, and code written against the
original rollout API (config objects, `get_current_error_rate(window)`, a FastAPI lifespan)
works as written."""

import asyncio
import logging
import threading
from datetime import datetime, timedelta, timezone

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import driftgate
from driftgate import (
    ConfigOwnedError,
    Decision,
    DecisionAction,
    ManualClock,
    RolloutConfig,
    RolloutManager,
    RolloutStage,
)

HOUR = 3600.0
START = 1_700_000_000.0


def ago(hours: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(hours=hours)


# -- the original request's tests, as its authors wrote them (fixtures made real) -----------


def test_original_auto_advance_holds_before_an_approval_stage(enforcer, registry):
    config = RolloutConfig.default()
    config.current_stage_started_at = ago(25)
    manager = RolloutManager(config, enforcer, registry)

    async def mock_error_rate(window):
        assert window == timedelta(hours=1)
        return 0.001

    manager.get_current_error_rate = mock_error_rate
    advanced, message = asyncio.run(manager.check_and_advance())
    assert not advanced
    assert "requires approval" in message.lower()


def test_original_rollback_on_error_moves_the_config_it_was_given(enforcer, registry):
    config = RolloutConfig.default()
    config.advance()  # start at quarter (25 %)
    config.current_stage_started_at = ago(1)
    manager = RolloutManager(config, enforcer, registry)

    async def mock_error_rate(window):
        return 0.01

    manager.get_current_error_rate = mock_error_rate
    advanced, message = asyncio.run(manager.check_and_advance())
    assert not advanced
    assert "rolled back" in message.lower()
    assert config.current_stage().name == "canary"


def test_original_manual_advance_moves_the_config_it_was_given(enforcer, registry):
    config = RolloutConfig.default()
    manager = RolloutManager(config, enforcer, registry)
    success, _ = manager.manual_advance()
    assert success
    assert config.current_stage().name == "quarter"


def test_original_full_cycle_reads_progress_from_the_config(enforcer, registry, rollout_clock):
    stages = [
        RolloutStage(
            s.name, s.percentage, timedelta(seconds=5), s.max_error_rate, s.requires_approval
        )
        for s in RolloutConfig.default().stages
    ]
    config = RolloutConfig(stages)
    manager = RolloutManager(config, enforcer, registry, clock=rollout_clock)

    async def mock_error_rate(window):
        return 0.0001

    manager.get_current_error_rate = mock_error_rate
    visited = [config.current_stage().name]
    for i in range(len(config.stages) - 1):
        rollout_clock.advance(6)
        if config.stages[i + 1].requires_approval:
            success, _ = manager.manual_advance()
            assert success
        else:
            advanced, _ = asyncio.run(manager.check_and_advance())
            assert advanced
        visited.append(config.current_stage().name)
    assert visited == ["canary", "quarter", "half", "most", "full"]
    assert config.current_stage().percentage == 100


# -- the config as a view --------------------------------------------------------------------


def test_manager_config_keeps_rollback_on_error(enforcer):
    stages = RolloutConfig.default().stages
    manager = RolloutManager(RolloutConfig(stages, rollback_on_error=False), enforcer)
    assert manager.config.rollback_on_error is False
    assert manager.evaluate(0.5).action == DecisionAction.HELD


def test_an_owned_config_refuses_to_move_and_names_the_manager_method(enforcer):
    config = RolloutConfig.default()
    manager = RolloutManager(config, enforcer)
    assert config.owned and manager.config.owned
    with pytest.raises(ConfigOwnedError, match=r"manager\.manual_advance\(\)"):
        config.advance()
    with pytest.raises(ConfigOwnedError, match=r"manager\.manual_rollback\(\)"):
        config.rollback()
    with pytest.raises(ConfigOwnedError, match="manual_advance"):
        config.current_stage_index = 3
    with pytest.raises(ConfigOwnedError, match="current_stage_started_at"):
        manager.config.current_stage_started_at = ago(30)
    assert config.current_stage().name == "canary"


def test_the_view_reads_the_managers_position_and_clock(enforcer, rollout_clock):
    config = RolloutConfig.default()
    manager = RolloutManager(config, enforcer, clock=rollout_clock)
    manager.manual_advance("ops")
    assert config.current_stage_index == 1
    assert config.current_stage_started_at == datetime.fromtimestamp(START, timezone.utc)
    rollout_clock.advance(HOUR)
    # can_advance on the view judges at the manager's clock: 23 h left of quarter's day.
    assert config.can_advance(0.0) == (False, "Stage duration not met (remaining: 23:00:00)")


def test_a_config_stands_alone_again_when_its_manager_is_gone(enforcer, rollout_clock):
    config = RolloutConfig.default()
    manager = RolloutManager(config, enforcer, clock=rollout_clock)
    manager.manual_advance("ops")
    del manager
    assert not config.owned
    assert config.current_stage().name == "quarter"
    config.advance()
    assert config.current_stage().name == "half"


def test_one_config_and_one_enforcer_belong_to_one_manager(enforcer, registry):
    config = RolloutConfig.default()
    first = RolloutManager(config, enforcer)
    with pytest.raises(ValueError, match="already belongs to a running RolloutManager"):
        RolloutManager(config)
    with pytest.raises(ValueError, match="already set by another RolloutManager"):
        RolloutManager(RolloutConfig.default(), enforcer)
    del first
    assert RolloutManager(RolloutConfig.default(), enforcer).enforced_percentage == 10


def test_a_standalone_config_uses_its_injected_clock():
    clock = ManualClock(START)
    config = RolloutConfig.default(clock=clock)
    config.current_stage_started_at = START
    clock.advance(HOUR)
    assert config.can_advance(0.0) == (False, "Stage duration not met (remaining: 23:00:00)")
    clock.advance(23 * HOUR)
    assert config.can_advance(0.0) == (True, "Ready to advance to quarter (requires approval)")
    config.advance()
    assert config.current_stage_started_at == datetime.fromtimestamp(
        START + 24 * HOUR, timezone.utc
    )


def test_the_enforcers_percent_belongs_to_the_manager(enforcer):
    manager = RolloutManager(RolloutConfig.default(), enforcer)
    enforcer.set_options(drift_max_ratio=0.01)  # other fields stay free
    assert enforcer.options.drift_max_ratio == 0.01
    with pytest.raises(ValueError, match="manual_advance"):
        enforcer.set_options(rollout_percent=50)
    assert enforcer.options.rollout_percent == manager.enforced_percentage == 10


# -- typed decisions -------------------------------------------------------------------------


def test_a_decision_unpacks_and_compares_as_the_classic_pair(enforcer):
    manager = RolloutManager(RolloutConfig.default(), enforcer)
    decision = manager.manual_advance("ops")
    assert isinstance(decision, Decision)
    success, message = decision
    assert (success, message) == (True, "Manually advanced to stage quarter")
    assert decision == (True, "Manually advanced to stage quarter")
    assert decision[0] is True and decision[1] == message and len(decision) == 2
    assert tuple(decision) == (True, message)


@pytest.mark.parametrize(
    ("steps", "action", "from_stage", "to_stage", "version_rise"),
    [
        (lambda m, c: m.manual_advance("ops"), DecisionAction.ADVANCED, "canary", "quarter", 1),
        (lambda m, c: m.manual_rollback("ops"), DecisionAction.ABORTED, "canary", "aborted", 1),
        (
            lambda m, c: (m.manual_rollback("ops"), m.manual_advance("ops"))[1],
            DecisionAction.RESUMED,
            "aborted",
            "canary",
            2,
        ),
        (
            lambda m, c: (m.manual_advance("ops"), m.evaluate(0.5))[1],
            DecisionAction.ROLLED_BACK,
            "quarter",
            "canary",
            2,
        ),
        (lambda m, c: m.evaluate(0.0), DecisionAction.HELD, "canary", "canary", 0),
        (
            lambda m, c: (c.advance(25 * HOUR), m.evaluate(0.0))[1],
            DecisionAction.WAITING_FOR_APPROVAL,
            "canary",
            "canary",
            0,
        ),
        (
            lambda m, c: (m.manual_rollback("ops"), m.manual_rollback("ops"))[1],
            DecisionAction.ALREADY_ABORTED,
            "aborted",
            "aborted",
            1,
        ),
    ],
)
def test_each_decision_names_what_happened(
    enforcer, rollout_clock, steps, action, from_stage, to_stage, version_rise
):
    manager = RolloutManager(RolloutConfig.default(), enforcer, clock=rollout_clock)
    decision = steps(manager, rollout_clock)
    assert decision.action == action
    assert (decision.from_stage, decision.to_stage) == (from_stage, to_stage)
    assert decision.version == 1 + version_rise
    assert decision.to_percentage == manager.enforced_percentage


def test_insufficient_data_and_final_stage_are_named(enforcer, rollout_clock):
    manager = RolloutManager(
        RolloutConfig.default(), enforcer, clock=rollout_clock, min_requests=100
    )
    assert manager.evaluate(0.0, requests=5).action == DecisionAction.INSUFFICIENT_DATA
    for _ in range(4):
        manager.manual_advance("ops")
    decision = manager.manual_advance("ops")
    assert (decision.success, decision.action) == (False, DecisionAction.AT_FINAL_STAGE)
    assert decision.state == "completed"


def test_a_failed_source_is_an_analysis_failure(enforcer):
    def broken():
        raise ConnectionError("prometheus is down")

    manager = RolloutManager(RolloutConfig.default(), enforcer, error_rate_source=broken)
    decision = asyncio.run(manager.check_and_advance())
    assert decision.action == DecisionAction.ANALYSIS_FAILED
    assert decision.message == "Holding: error-rate source failed (ConnectionError)"
    assert not decision.moved


def test_as_dict_is_json_ready(enforcer):
    manager = RolloutManager(RolloutConfig.default(), enforcer)
    decision = manager.manual_rollback("ops", "drift", operation="incident-7")
    assert decision.as_dict() == {
        "success": True,
        "message": "Rolled back from canary: rollout aborted at 0%",
        "action": "aborted",
        "from_stage": "canary",
        "to_stage": "aborted",
        "from_percentage": 10.0,
        "to_percentage": 0.0,
        "version": 2,
        "state": "aborted",
        "error_rate": None,
        "actor": "ops",
        "reason": "drift",
        "operation": "incident-7",
        "replayed": False,
    }


def test_the_monitor_logs_the_real_action(enforcer, caplog):
    manager = RolloutManager(RolloutConfig.default(), enforcer, error_rate_source=lambda: 0.5)

    async def one_check():
        async def stop(_seconds):
            raise asyncio.CancelledError

        with pytest.raises(asyncio.CancelledError):
            await driftgate.run_rollout_monitor(manager, sleep=stop)

    with caplog.at_level(logging.INFO, logger="driftgate.rollout"):
        asyncio.run(one_check())
    assert "rollout aborted: canary -> aborted (0%)" in caplog.text
    assert "checked" not in caplog.text


# -- error-rate sources ------------------------------------------------------------------------


def test_a_source_taking_the_window_gets_the_analysis_window(enforcer, rollout_clock):
    seen = []

    def source(window):
        seen.append(window)
        return 0.0

    manager = RolloutManager(
        RolloutConfig.default(),
        enforcer,
        clock=rollout_clock,
        error_rate_source=source,
        analysis_window=timedelta(minutes=30),
    )
    rollout_clock.advance(30 * 60 + 1)  # longer in the stage than the window
    asyncio.run(manager.check_and_advance())
    assert seen == [timedelta(minutes=30)]


@pytest.mark.parametrize(
    "source",
    [lambda window, other: 0.0, lambda *, window: 0.0],
    ids=["two-arguments", "keyword-only"],
)
def test_a_source_with_another_signature_is_refused_at_construction(enforcer, source):
    with pytest.raises(TypeError, match=r"expected source\(\) or source\(window\)"):
        RolloutManager(RolloutConfig.default(), enforcer, error_rate_source=source)


def test_setting_a_bad_source_later_is_refused(enforcer):
    manager = RolloutManager(RolloutConfig.default(), enforcer)
    with pytest.raises(TypeError, match="source"):
        manager.get_current_error_rate = lambda a, b: 0.0


# -- the lifespan ----------------------------------------------------------------------------


def test_rollout_lifespan_starts_under_starlette_as_documented(enforcer):
    checked = threading.Event()
    manager = RolloutManager(
        RolloutConfig.default(), enforcer, error_rate_source=lambda: checked.set() or 0.0
    )
    app = FastAPI(lifespan=driftgate.rollout_lifespan(manager))

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"pong": "yes"}

    with TestClient(app) as client:
        assert client.get("/ping").json() == {"pong": "yes"}
        assert checked.wait(10), "the monitor checks while the app runs"
