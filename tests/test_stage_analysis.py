"""Each stage is judged on its own requests, and the status says what the rollout really waits
for: the rules of the core applied to the last reading of the current stage."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest

import driftgate
from driftgate import (
    DecisionAction,
    LocalErrorRate,
    RolloutConfig,
    RolloutManager,
    RolloutStage,
    RolloutState,
    WaitingFor,
)
from driftgate.notify import Event, Notification, Notifier

HOUR = 3600.0


def fail() -> driftgate.Verdict:
    raise RuntimeError("the enforced evaluator broke")


def serve(enforcer: driftgate.Enforcer, requests: int, failures: int = 0) -> None:
    """`requests` decisions in the enforced cohort, the first `failures` of them failing."""
    keys = (f"key-{i}" for i in range(1_000_000))
    cohort = [key for key in keys if enforcer.in_rollout(key)][:requests]
    for i, key in enumerate(cohort):
        assert enforcer.decide("p", key, "ok", fail if i < failures else "ok").in_rollout


def quick_stages() -> RolloutConfig:
    """Four stages of an hour (none at the final one), each tolerating 1 % errors."""
    return RolloutConfig(
        [
            RolloutStage("canary", 10, HOUR, 0.01, False),
            RolloutStage("half", 50, HOUR, 0.01, False),
            RolloutStage("most", 75, HOUR, 0.01, False),
            RolloutStage("full", 100, 0, 0.01, False),
        ]
    )


@pytest.fixture
def walked(enforcer, rollout_clock) -> RolloutManager:
    """A manager at `full`, on the local error rate of the enforcer."""
    manager = RolloutManager(quick_stages(), enforcer, clock=rollout_clock)
    for _ in range(3):
        assert manager.manual_advance("ops").success
    assert manager.get_status()["current_stage"]["name"] == "full"
    return manager


def check(manager: RolloutManager) -> driftgate.Decision:
    return asyncio.run(manager.check_and_advance())


def test_an_error_burst_rolls_back_one_stage_not_several(walked, enforcer, rollout_clock):
    serve(enforcer, 200, failures=20)  # 10 % at full
    rollout_clock.advance(60)
    first = check(walked)
    assert (first.action, first.to_stage) == (DecisionAction.ROLLED_BACK, "most")
    # The same errors are still in the 60m window, but they were served at full.
    for _ in range(5):
        rollout_clock.advance(60)
        again = check(walked)
        assert again.action == DecisionAction.HELD
        assert again.to_stage == "most"
    assert walked.get_status()["current_stage"]["name"] == "most"


def test_an_advance_after_an_abort_is_not_undone_by_old_errors(enforcer, rollout_clock):
    manager = RolloutManager(quick_stages(), enforcer, clock=rollout_clock)
    serve(enforcer, 100, failures=50)
    assert check(manager).action == DecisionAction.ABORTED
    rollout_clock.advance(5)
    assert manager.manual_advance("ops", "fix deployed").action == DecisionAction.RESUMED
    rollout_clock.advance(0.008)
    resumed = check(manager)  # 8 ms later, the 50 old failures still in every window
    assert resumed.action == DecisionAction.HELD
    assert manager.get_status()["state"] == RolloutState.ACTIVE
    serve(enforcer, 100, failures=5)  # new errors, served by the resumed stage, do count
    assert check(manager).action == DecisionAction.ABORTED


def test_the_local_source_counts_from_the_stage_start_until_a_window_has_passed(
    enforcer, rollout_clock
):
    enforcer.set_options(rollout_percent=100)
    source = LocalErrorRate(enforcer, window="5m")
    serve(enforcer, 10, failures=10)
    assert source() == (10, 10)  # no stage yet: the window
    source.stage_entered()
    serve(enforcer, 4, failures=1)
    assert source() == (1, 4)
    rollout_clock.advance(299.9)
    assert source() == (1, 4)
    rollout_clock.advance(0.1)  # a window after the stage began: the window is the stage's
    assert source() == enforcer.error_counts("5m") == (0, 0)


def test_a_stage_below_min_requests_is_insufficient_data_never_a_rollback(
    walked, enforcer, rollout_clock
):
    walked.min_requests = 50
    serve(enforcer, 49, failures=49)
    rollout_clock.advance(60)
    decision = check(walked)
    assert decision.action == DecisionAction.INSUFFICIENT_DATA
    assert decision.to_stage == "full"
    serve(enforcer, 1)
    assert check(walked).action == DecisionAction.ROLLED_BACK


class WindowRecorder:
    """A source that takes the analysis window and records what it was given."""

    def __init__(self) -> None:
        self.windows: list[timedelta] = []

    def __call__(self, window: timedelta) -> tuple[int, int]:
        self.windows.append(window)
        return (0, 1000)


def test_a_source_that_takes_a_window_gets_at_most_the_time_in_stage(enforcer, rollout_clock):
    source = WindowRecorder()
    manager = RolloutManager(
        quick_stages(), enforcer, clock=rollout_clock, error_rate_source=source
    )
    rollout_clock.advance(600)
    check(manager)
    assert source.windows == [timedelta(seconds=600)]
    rollout_clock.advance(2 * HOUR)
    check(manager)  # advanced to half at 7200 s
    assert source.windows[-1] == timedelta(hours=1)  # capped by the analysis window
    rollout_clock.advance(30)
    check(manager)
    assert source.windows[-1] == timedelta(seconds=30)  # half began 30 s ago


def test_a_source_is_not_asked_at_the_instant_a_stage_starts(enforcer, rollout_clock):
    source = WindowRecorder()
    manager = RolloutManager(
        quick_stages(), enforcer, clock=rollout_clock, error_rate_source=source
    )
    decision = check(manager)
    assert decision.action == DecisionAction.INSUFFICIENT_DATA
    assert source.windows == []


# -- What the status says the rollout waits for ------------------------------------------------


def approval_stages() -> RolloutConfig:
    return RolloutConfig(
        [
            RolloutStage("canary", 10, HOUR, 0.01, False),
            RolloutStage("quarter", 25, HOUR, 0.01, True),
            RolloutStage("full", 100, 0, 0.01, True, approvals_required=2),
        ]
    )


def test_held_by_confidence_is_not_awaiting_approval(enforcer, rollout_clock):
    manager = RolloutManager(approval_stages(), enforcer, clock=rollout_clock, confidence=0.95)
    rollout_clock.advance(HOUR)
    assert manager.evaluate_counts(1, 100).action == DecisionAction.HELD
    status = manager.get_status()
    assert status["awaiting_approval"] is False
    assert status["waiting_for"] == WaitingFor.ERROR_RATE
    assert status["waiting_reason"].startswith("Holding: error rate upper bound")
    assert manager.evaluate_counts(1, 2000).action == DecisionAction.WAITING_FOR_APPROVAL
    assert manager.get_status()["awaiting_approval"] is True


def test_insufficient_data_is_not_awaiting_approval(enforcer, rollout_clock):
    manager = RolloutManager(approval_stages(), enforcer, clock=rollout_clock, min_requests=100)
    rollout_clock.advance(HOUR)
    assert manager.evaluate_counts(0, 99).action == DecisionAction.INSUFFICIENT_DATA
    status = manager.get_status()
    assert status["awaiting_approval"] is False
    assert (status["waiting_for"], status["stage_requests"], status["min_requests"]) == (
        WaitingFor.DATA,
        99,
        100,
    )
    assert manager.evaluate_counts(0, 100).action == DecisionAction.WAITING_FOR_APPROVAL
    assert manager.get_status()["waiting_for"] == WaitingFor.APPROVAL


def test_the_status_after_a_rollback_judges_the_new_stage_afresh(enforcer, rollout_clock):
    manager = RolloutManager(approval_stages(), enforcer, clock=rollout_clock)
    manager.manual_advance("ops")
    rollout_clock.advance(HOUR)
    assert manager.evaluate(0.5).action == DecisionAction.ROLLED_BACK
    status = manager.get_status()
    assert status["last_error_rate"] == 0.5  # what the rollback was decided on
    assert status["waiting_for"] == WaitingFor.DURATION  # canary starts over, no reading yet
    assert status["stage_requests"] is None


def test_rollout_state_and_waiting_for_are_enums_with_wire_values():
    assert [s.value for s in RolloutState] == ["active", "aborted", "completed"]
    assert str(WaitingFor.APPROVAL) == "approval"
    assert RolloutState("aborted") is RolloutState.ABORTED


# -- What people are told -----------------------------------------------------------------------


class Collected:
    name = "collected"
    events = frozenset(Event)

    def __init__(self) -> None:
        self.sent: list[Notification] = []

    def send(self, notification: Notification, timeout: float) -> None:
        self.sent.append(notification)


def notified(enforcer, rollout_clock) -> tuple[RolloutManager, Collected, Notifier]:
    sink = Collected()
    notifier = Notifier([sink], sleep=lambda seconds: None)
    manager = RolloutManager(
        approval_stages(), enforcer, clock=rollout_clock, notifier=notifier, name="checkout"
    )
    return manager, sink, notifier


def test_waiting_for_approval_names_the_stage_to_enter_and_the_approvals_so_far(
    enforcer, rollout_clock
):
    manager, sink, notifier = notified(enforcer, rollout_clock)
    manager.manual_advance("alice")  # quarter
    rollout_clock.advance(HOUR)
    manager.manual_advance("bob")  # approval 1 of 2 to enter full
    assert manager.evaluate(0.0).action == DecisionAction.WAITING_FOR_APPROVAL
    notifier.close()
    waiting = [n for n in sink.sent if n.event is Event.WAITING_FOR_APPROVAL]
    assert len(waiting) == 1
    note = waiting[0]
    assert (note.from_stage, note.to_stage, note.to_percentage) == ("quarter", "full", 100)
    assert (note.approvals_given, note.approvals_required) == (1, 2)
    assert "waits for approval to enter full (100%) from quarter (1 of 2 approvals so far)" in (
        note.text()
    )


def test_a_persons_reason_is_kept_and_carried_by_the_notification(enforcer, rollout_clock):
    manager, sink, notifier = notified(enforcer, rollout_clock)
    decision = manager.manual_advance("alice", "canary looked clean <b>for 2 days</b>")
    assert decision.reason == "canary looked clean <b>for 2 days</b>"
    assert manager.get_status()["transitions"][-1]["reason"] == decision.reason
    manager.manual_rollback("bob", "latency\nspike")
    notifier.close()
    assert [n.comment for n in sink.sent] == [
        "canary looked clean <b>for 2 days</b>",
        "latency?spike",
    ]
    slack = driftgate.notify.SlackSink.payload(sink.sent[0])
    assert "<b>" not in str(slack) and "&lt;b&gt;" in slack["text"]


def test_an_automatic_move_carries_no_comment(enforcer, rollout_clock):
    manager, sink, notifier = notified(enforcer, rollout_clock)
    assert manager.evaluate(0.5).action == DecisionAction.ABORTED
    notifier.close()
    assert [(n.event, n.comment) for n in sink.sent] == [(Event.ABORTED, None)]


def test_a_move_without_a_reason_carries_no_comment(enforcer, rollout_clock):
    manager, sink, notifier = notified(enforcer, rollout_clock)
    manager.manual_advance("alice")
    manager.manual_rollback("bob")
    notifier.close()
    assert [(n.actor, n.comment) for n in sink.sent] == [("alice", None), ("bob", None)]


class HeldSource:
    """A source whose reading waits until the test lets it answer."""

    def __init__(self, reading: tuple[int, int]) -> None:
        self.reading = reading
        self.asked = threading.Event()
        self.answer = threading.Event()

    def __call__(self) -> tuple[int, int]:
        self.asked.set()
        assert self.answer.wait(5)
        return self.reading


def test_a_reading_taken_before_a_persons_move_is_not_judged(enforcer, rollout_clock):
    source = HeldSource((50, 100))  # failures of the stage being read: canary
    manager = RolloutManager(
        quick_stages(), enforcer, clock=rollout_clock, error_rate_source=source
    )

    async def check_while_a_person_moves() -> driftgate.Decision:
        checking = asyncio.create_task(manager.check_and_advance())
        await asyncio.to_thread(source.asked.wait, 5)
        manager.manual_advance("ops", "fix deployed")  # half, while canary's rate is read
        source.answer.set()
        return await checking

    decision = asyncio.run(check_while_a_person_moves())
    assert decision.action == DecisionAction.CONFLICT
    assert (decision.to_stage, manager.get_status()["current_stage"]["name"]) == ("half", "half")
    assert manager.get_status()["stage_requests"] is None  # canary's reading was not kept


def test_a_reloaded_source_counts_from_its_swap(enforcer, rollout_clock):
    manager = RolloutManager(quick_stages(), enforcer, clock=rollout_clock)
    serve(enforcer, 10, failures=10)
    fresh = LocalErrorRate(enforcer)
    manager.error_rate_source = fresh  # as a reload that changes the source does
    serve(enforcer, 20, failures=0)
    assert fresh() == (0, 20)


def test_racing_followers_mark_a_stage_once(enforcer, rollout_clock):
    marks: list[int] = []

    class Counting(LocalErrorRate):
        def stage_entered(self) -> None:
            marks.append(1)
            super().stage_entered()

    manager = RolloutManager(
        quick_stages(), enforcer, clock=rollout_clock, error_rate_source=Counting(enforcer)
    )
    marks.clear()
    manager.manual_advance("ops")
    threads = [threading.Thread(target=manager._note_stage) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert marks == [1]
