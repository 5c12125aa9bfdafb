"""The apps benchmarks/load.py puts under wrk: the demo service, and the same endpoints
without driftgate (the baselines)."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse

from driftgate.demo import (
    VerifyRequest,
    VerifyResponse,
    _digest,
    _input_fingerprint,
    create_demo_app,
    verify_request,
)
from driftgate.settings import parse_settings


def demo() -> FastAPI:
    """The demo service: enforcing on 50 % with the readiness gate on, no rollout."""
    return create_demo_app(
        parse_settings(
            {
                "enforce_enabled": True,
                "enforce_rollout_percent": 50,
                "drift_max_ratio": 0.5,
                "enforce_readiness_gate": {"enabled": True, "min_requests": 100},
            }
        )
    )


def bare() -> FastAPI:
    """The same routes doing the same HTTP and application work (body reading and validation,
    the solution signature, the response model), without driftgate: the shadow verdict is the
    answer, nothing is decided, tracked or counted."""
    app = FastAPI()
    # Served from an included APIRouter, as driftgate's probes are: FastAPI routes a request
    # to an included router through a layer of its own, which is the framework's cost for any
    # router an application includes, not driftgate's.
    probes = APIRouter()

    @probes.get("/api/v1/readyz")
    async def readyz() -> JSONResponse:
        # Answered the way driftgate's readyz answers (on the event loop, a ready-made
        # JSONResponse), so the figure is the gate's cost.
        return JSONResponse({"status": "ready"})

    app.include_router(probes)

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
