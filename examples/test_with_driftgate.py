"""Tests of a service that uses driftgate, written with driftgate's pytest fixtures and helpers.

Copy this file into your project's tests: with driftgate installed the `driftgate_` fixtures
are there without any conftest; the HTTP tests need ``pip install 'driftgate[fastapi]'``."""

from driftgate import DecisionAction
from driftgate.testing import advance_to_stage, metric_value, record_decisions


def test_drift_is_counted_per_policy(driftgate_enforcer, driftgate_tracker, driftgate_registry):
    drifting = record_decisions(driftgate_enforcer, "lksg.v1", 200, 0.05)

    assert drifting == 10
    assert driftgate_tracker.counts("5m", "lksg.v1") == (10, 200)
    assert (
        metric_value(driftgate_registry, "adapt_drift_events_total", {"policy_id": "lksg.v1"}) == 10
    )


def test_drift_leaves_the_5m_window_after_five_minutes(driftgate_tracker, driftgate_clock):
    record_decisions(driftgate_tracker, "lksg.v1", 100, 0.5)

    driftgate_clock.advance(301)

    assert driftgate_tracker.ratio("5m") == 0.0
    assert driftgate_tracker.ratio("60m") == 0.5


def test_rollout_reaches_half_with_a_low_error_rate(
    driftgate_rollout, driftgate_clock, driftgate_enforcer
):
    decision = advance_to_stage(driftgate_rollout, driftgate_clock, "half", error_rate=0.001)

    assert decision.to_stage == "half"
    assert driftgate_enforcer.options.rollout_percent == 50


def test_high_error_rate_rolls_back(driftgate_rollout, driftgate_clock):
    advance_to_stage(driftgate_rollout, driftgate_clock, "quarter")

    decision = driftgate_rollout.evaluate(0.05)

    assert decision.action == DecisionAction.ROLLED_BACK
    assert decision.to_stage == "canary"


def test_metrics_endpoint_shows_the_stage(driftgate_client, driftgate_rollout, driftgate_clock):
    advance_to_stage(driftgate_rollout, driftgate_clock, "quarter")

    body = driftgate_client.get("/api/v1/metrics").text

    assert metric_value(body, "guardian_rollout_stage", {"stage_name": "quarter"}) == 1
