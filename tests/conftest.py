import os
import subprocess
import sys
from pathlib import Path

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


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory) -> Path:
    """The shipped wheel, built and repaired by scripts/build_wheel.sh once per test run, for
    every test that installs it in a venv of its own."""
    out_dir = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        ["bash", str(Path(__file__).resolve().parent.parent / "scripts" / "build_wheel.sh"),
         str(out_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return Path(result.stdout.splitlines()[-1])
