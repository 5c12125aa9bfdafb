"""The apps benchmarks/load.py puts under wrk: the demo service, the endpoints a user would
write for the same answers without driftgate (the baselines), and a service whose registry
holds many policies, for the scrape."""

import asyncio
import concurrent.futures
import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI

from driftgate import DriftTracker, EnforceOptions, Enforcer, ManualClock, RolloutManager
from driftgate.demo import (
    VerifyRequest,
    VerifyResponse,
    _digest,
    _input_fingerprint,
    create_demo_app,
    verify_request,
)
from driftgate.fastapi import create_router
from driftgate.settings import parse_settings
from populated import populated_registry

# The rollout's first stage enforces half of the requests, as the demo's enforcement did
# before it had a rollout: /verify evaluates both verdicts for half of its requests.
VALUES = {
    "enforce_enabled": True,
    "enforce_rollout_percent": 50,
    "drift_max_ratio": 0.5,
    "enforce_readiness_gate": {"enabled": True, "min_requests": 100},
    "rollout": {
        "enabled": True,
        "check_interval_seconds": 3600,
        "stages": [
            {"name": "half", "percentage": 50, "duration_seconds": 86400, "max_error_rate": 0.5},
            {"name": "full", "percentage": 100, "max_error_rate": 0.5},
        ],
    },
}
POLICIES_ENV = "DRIFTGATE_LOAD_POLICIES"  # the scrape's registry: how many policies


def demo() -> FastAPI:
    """The demo service: enforcing, with the readiness gate on and a rollout at its first
    stage, its state in a folder of its own."""
    state = Path(tempfile.mkdtemp(prefix="driftgate-load-"))
    return create_demo_app(parse_settings(VALUES), state_dir=state)


def status_document() -> dict[str, Any]:
    """What the demo's rollout status answers once its monitor has made its first check, as
    plain JSON values: the baseline answers the same document."""
    settings = parse_settings(VALUES)
    assert settings.rollout is not None
    tracker = DriftTracker(clock=ManualClock(1_700_000_000.0))
    manager = RolloutManager(
        settings.rollout,
        enforcer=Enforcer(EnforceOptions(), tracker),
        min_requests=settings.rollout_min_requests,
    )
    # On a thread of its own: uvicorn calls the app's factory inside its running event loop.
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, manager.check_and_advance()).result()
    document: dict[str, Any] = json.loads(json.dumps(manager.get_status()))
    return document


def bare() -> FastAPI:
    """The same answers as the demo, as a user would write them without driftgate: probes and
    a status that answer what they hold, and /verify doing the same HTTP and application work
    (body reading and validation, the solution signature, the response model) with the shadow
    verdict as the answer, nothing decided, tracked or counted.

    The readiness probe is there three ways, each a row of its own: `async def` declared on
    the app (`@app.get`), what a user writes first; the same in an included APIRouter, as
    driftgate's router is included (FastAPI routes an included router's requests through a
    layer of its own); and a plain `def`, which FastAPI runs in its thread pool."""
    app = FastAPI()
    status = status_document()

    @app.get("/api/v1/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.get("/sync/api/v1/readyz")
    def readyz_sync() -> dict[str, str]:
        return {"status": "ready"}

    included = APIRouter()

    @included.get("/included/api/v1/readyz")
    async def readyz_included() -> dict[str, str]:
        return {"status": "ready"}

    app.include_router(included)

    @app.get("/api/guardian/rollout/status")
    async def rollout_status() -> dict[str, Any]:
        return status

    @app.post("/verify", response_model=VerifyResponse)
    def verify(body: Annotated[VerifyRequest, Depends(verify_request)]) -> dict[str, Any]:
        # The demo's answer with its signature computed the same way (the digest is the
        # application's work, not driftgate's), so both sides serialise the same response.
        signature = _digest(_input_fingerprint(body), "OK", "")
        return {
            "policy_id": body.policy_id,
            "verdict": "ok",
            "result": {
                "shadow": "ok",
                "enforced": "ok",
                "in_rollout": False,
                "drift": False,
                "solution_signature": signature,
            },
        }

    return app


def metrics() -> FastAPI:
    """driftgate's router over a registry with every family populated and as many policies as
    DRIFTGATE_LOAD_POLICIES says (2,048 by default), for the scrape."""
    registry, alive = populated_registry(int(os.environ.get(POLICIES_ENV, "2048")))
    tracker = alive[0]
    assert isinstance(tracker, DriftTracker)
    app = FastAPI()
    app.state.alive = alive  # the enforcer, manager, ... that the registry's families need
    app.include_router(create_router(tracker=tracker, registry=registry))
    return app
