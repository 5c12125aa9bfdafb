import pytest

import driftgate


@pytest.fixture
def clock() -> driftgate.ManualClock:
    return driftgate.ManualClock(1_000.0)


@pytest.fixture
def registry() -> driftgate.MetricsRegistry:
    return driftgate.MetricsRegistry()


@pytest.fixture
def tracker(clock, registry) -> driftgate.DriftTracker:
    return driftgate.DriftTracker(clock=clock, registry=registry)


ROLLOUT_START = 1_700_000_000.0  # unix seconds: rollout timestamps read as real dates


@pytest.fixture
def rollout_clock() -> driftgate.ManualClock:
    return driftgate.ManualClock(ROLLOUT_START)


@pytest.fixture
def enforcer(rollout_clock, registry) -> driftgate.Enforcer:
    """An enforcer on the rollout clock that a RolloutManager can drive."""
    tracker = driftgate.DriftTracker(clock=rollout_clock, registry=registry)
    return driftgate.Enforcer(driftgate.EnforceOptions(enforce=True), tracker)
