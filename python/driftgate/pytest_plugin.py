"""pytest fixtures for services that use driftgate, registered through the ``pytest11`` entry
point, so they are there wherever driftgate is installed.

pytest loads this module in every project that has driftgate installed, so it imports only
pytest and the driftgate core (no fastapi, no prometheus_client), defines no autouse fixture
and touches no global state: a project that does not name a ``driftgate_`` fixture sees no
change. Each fixture builds fresh objects for one test::

    def test_drift_counted(driftgate_enforcer, driftgate_tracker):
        record_decisions(driftgate_enforcer, "lksg.v1", 100, 0.05)
        assert driftgate_tracker.counts("5m", "lksg.v1") == (5, 100)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import driftgate
from driftgate.testing import Approver, ApproverFile, ServiceFactory

if TYPE_CHECKING:
    from driftgate.service import Service

#: Where `driftgate_clock` starts: a realistic unix time, so rollout timestamps read as dates.
CLOCK_START = 1_700_000_000.0


@pytest.fixture
def driftgate_clock() -> driftgate.ManualClock:
    """A ManualClock at a fixed unix time; move it with ``driftgate_clock.advance(301)``."""
    return driftgate.ManualClock(CLOCK_START)


@pytest.fixture
def driftgate_registry() -> driftgate.MetricsRegistry:
    """A fresh MetricsRegistry (never the default one): ``driftgate_registry.exposition()``."""
    return driftgate.MetricsRegistry()


@pytest.fixture
def driftgate_tracker(
    driftgate_clock: driftgate.ManualClock, driftgate_registry: driftgate.MetricsRegistry
) -> driftgate.DriftTracker:
    """A DriftTracker on the test's clock and registry: ``driftgate_tracker.counts("5m")``."""
    return driftgate.DriftTracker(clock=driftgate_clock, registry=driftgate_registry)


@pytest.fixture
def driftgate_enforcer(
    driftgate_tracker: driftgate.DriftTracker, driftgate_registry: driftgate.MetricsRegistry
) -> driftgate.Enforcer:
    """An Enforcer on `driftgate_tracker`, enforcing on every request (100 %) until a rollout
    manager sets its percent: ``driftgate_enforcer.decide("p", "key", "ok", "fail").drift``."""
    options = driftgate.EnforceOptions(enforce=True, rollout_percent=100)
    return driftgate.Enforcer(options, driftgate_tracker, registry=driftgate_registry)


@pytest.fixture
def driftgate_rollout(
    driftgate_enforcer: driftgate.Enforcer,
    driftgate_clock: driftgate.ManualClock,
    driftgate_registry: driftgate.MetricsRegistry,
    tmp_path: Path,
) -> driftgate.RolloutManager:
    """A RolloutManager at the first stage of the default rollout (canary 10 % ... full 100 %),
    owning `driftgate_enforcer`, on `driftgate_clock`, persisted to a file in `tmp_path`:
    ``advance_to_stage(driftgate_rollout, driftgate_clock, "half")``."""
    config = driftgate.RolloutConfig.default(clock=driftgate_clock)
    return driftgate.RolloutManager(
        config,
        enforcer=driftgate_enforcer,
        registry=driftgate_registry,
        state_path=tmp_path / "driftgate-rollout.json",
        clock=driftgate_clock,
    )


def _test_actor() -> str:
    return "test"


@pytest.fixture
def driftgate_app(
    driftgate_tracker: driftgate.DriftTracker,
    driftgate_rollout: driftgate.RolloutManager,
    driftgate_registry: driftgate.MetricsRegistry,
) -> Any:
    """A FastAPI app with driftgate's router mounted on the fixtures above, its admin endpoints
    open to the actor "test"; needs the fastapi extra (skips without it):
    ``driftgate_app.url_path_for("driftgate:readyz")``."""
    fastapi = pytest.importorskip(
        "fastapi", reason="driftgate_app needs the fastapi extra: pip install 'driftgate[fastapi]'"
    )
    from driftgate.fastapi import create_router

    app = fastapi.FastAPI()
    app.include_router(
        create_router(
            tracker=driftgate_tracker,
            manager=driftgate_rollout,
            registry=driftgate_registry,
            admin=_test_actor,
        )
    )
    return app


@pytest.fixture
def driftgate_client(driftgate_app: Any) -> Iterator[Any]:
    """A fastapi TestClient on `driftgate_app`, closed after the test:
    ``driftgate_client.get("/api/v1/readyz").status_code``."""
    testclient = pytest.importorskip(
        "fastapi.testclient",
        reason="driftgate_client needs the fastapi extra: pip install 'driftgate[fastapi]'",
    )
    with testclient.TestClient(driftgate_app) as client:
        yield client


@pytest.fixture
def driftgate_approvers(tmp_path: Path) -> ApproverFile:
    """This test's approvers, in a token file of their own that the services
    `driftgate_service` builds accept: ``driftgate_approvers.make("alice", "rollout:advance")``
    (`driftgate_approver` is that call)."""
    return ApproverFile(tmp_path / "driftgate-approvers.tokens")


@pytest.fixture
def driftgate_approver(driftgate_approvers: ApproverFile) -> Callable[..., Approver]:
    """Makes a named approver with the scopes given: ``alice = driftgate_approver("alice",
    "rollout:advance")``, then ``client.post(..., headers=alice.headers)``. Make them before
    `driftgate_service` builds the service that should accept them."""
    return driftgate_approvers.make


@pytest.fixture
def driftgate_service(
    driftgate_clock: driftgate.ManualClock, driftgate_approvers: ApproverFile, tmp_path: Path
) -> Iterator[Callable[..., Service]]:
    """Builds your service's driftgate `Service` from your values (a file, a mapping of its
    keys, or Settings), on `driftgate_clock`, its state in `tmp_path`, with a fresh registry
    and the approvers `driftgate_approver` made; closed after the test. ``service =
    driftgate_service("values.yaml", stages=[{"name": "canary", "percentage": 10}])``, then
    ``create_app(service)``. Needs the fastapi extra (skips without it)."""
    pytest.importorskip(
        "fastapi",
        reason="driftgate_service needs the fastapi extra: pip install 'driftgate[fastapi]'",
    )
    factory = ServiceFactory(
        clock=driftgate_clock, state_dir=tmp_path / "driftgate-state", approvers=driftgate_approvers
    )
    try:
        yield factory.build
    finally:
        factory.close()
