"""Each rule a decision depends on, at its limit and on both sides of it, through the Python
API: a `<` that became `<=` in the core changes an answer here."""

from __future__ import annotations

import functools
import math

import pytest

import driftgate
from driftgate import EnforceOptions, GateConfig, ReadinessGate, Verdict, sampling_bucket


@functools.cache
def key_in_bucket(bucket: int) -> str:
    """The first `key-N` whose bucket (seed 0) is `bucket`."""
    i = 0
    while sampling_bucket(f"key-{i}") != bucket:
        i += 1
    return f"key-{i}"


def enforcer(percent: float) -> driftgate.Enforcer:
    return driftgate.Enforcer(EnforceOptions(enforce=True, rollout_percent=percent), tracker())


def tracker() -> driftgate.DriftTracker:
    return driftgate.DriftTracker(clock=driftgate.ManualClock(0.0))


@pytest.mark.parametrize(
    ("percent", "bucket", "inside"),
    [
        (25.0, 2499, True),
        (25.0, 2500, False),  # a bucket equal to the basis points stays out
        (25.01, 2500, True),  # the 0.01 % step
        (25.01, 2501, False),
        (0.0, 0, False),
        (0.01, 0, True),
        (0.01, 1, False),
        (99.99, 9998, True),
        (99.99, 9999, False),
        (100.0, 9999, True),
    ],
)
def test_boundary_cohort_bucket_against_basis_points(percent, bucket, inside):
    assert enforcer(percent).in_rollout(key_in_bucket(bucket)) is inside


def record(drift: driftgate.DriftTracker, requests: int, drifts: int) -> None:
    for i in range(requests):
        drift.record("p", Verdict.OK, Verdict.FAIL if i < drifts else Verdict.OK)


def gate_after(config: GateConfig, *batches: tuple[int, int]) -> list[bool]:
    """The gate's answer after each batch of (requests, drifts)."""
    drift = tracker()
    gate = ReadinessGate(config, drift)
    answers = []
    for requests, drifts in batches:
        record(drift, requests, drifts)
        answers.append(gate.check()[0])
    return answers


def test_boundary_gate_closes_above_max_ratio_not_at_it():
    config = GateConfig(enabled=True, max_ratio=0.005)
    assert gate_after(config, (200, 1), (1, 1)) == [True, False]  # 1/200 = 0.005, then 2/201


def test_boundary_gate_at_max_ratio_stays_open_with_a_lower_reopen_ratio():
    config = GateConfig(enabled=True, max_ratio=0.005, reopen_ratio=0.001)
    assert gate_after(config, (200, 1), (1, 1)) == [True, False]


def test_boundary_gate_reopens_at_reopen_ratio_not_above_it():
    config = GateConfig(enabled=True, max_ratio=0.10, reopen_ratio=0.05)
    # 11 %, then 11/220 = 5 % exactly; with one clean request less it is above
    assert gate_after(config, (100, 11), (119, 0), (1, 0)) == [False, False, True]


def test_boundary_gate_judges_from_min_requests_on():
    config = GateConfig(enabled=True, max_ratio=0.005, min_requests=100)
    assert gate_after(config, (99, 99), (1, 0)) == [True, False]


def wilson(events: int, total: int) -> tuple[float, float]:
    return driftgate.wilson_bounds(events, total, 0.95)


@pytest.mark.parametrize(
    ("reopen", "opens"),
    [(wilson(50, 1000)[1], True), (math.nextafter(wilson(50, 1000)[1], 0.0), False)],
)
def test_boundary_wilson_gate_reopens_at_an_upper_bound_equal_to_reopen_ratio(reopen, opens):
    config = GateConfig(enabled=True, max_ratio=0.2, reopen_ratio=reopen, confidence=0.95)
    assert gate_after(config, (100, 50), (900, 0)) == [False, opens]


@pytest.mark.parametrize(
    ("max_ratio", "open_"),
    [(wilson(50, 1000)[0], True), (math.nextafter(wilson(50, 1000)[0], 0.0), False)],
)
def test_boundary_wilson_gate_closes_above_max_ratio_not_at_it(max_ratio, open_):
    config = GateConfig(enabled=True, max_ratio=max_ratio, confidence=0.95)
    assert gate_after(config, (1000, 50)) == [open_]
