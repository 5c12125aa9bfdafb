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
