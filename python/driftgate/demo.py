"""The demo service: a driftgate `Service` (driftgate.service) installed on an app of its own,
next to a `POST /verify` that decides with mock evaluators. `driftgate serve` runs it under
uvicorn; it is also an example of a service of your own.

The mock evaluators agree unless the request's context asks otherwise:
- `"_demo_drift": true` makes the enforced evaluator answer FAIL where the shadow one says OK,
  so requests in the enforced cohort drift;
- `"_demo_error": true` makes the enforced evaluator raise (an evaluation error, FAIL);
- `"_demo_unstable": true` salts the solution signature at random, so the same request gets a
  different signature each time (what `driftgate probe` and the determinism metrics catch).
Requests outside the cohort never drift: only the shadow side runs there.

Each answer carries a `solution_signature`: a digest of the request and its verdict, the same
for the same request unless `_demo_unstable` is set. The service counts it in a SignatureLRU
(is it new among the last 5000?) and a DeterminismProbe (did this input give another one?).
"""

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI
from pydantic import BaseModel, Field

from driftgate._core import DeterminismProbe, SignatureLRU, Verdict
from driftgate.fastapi.router import ErrorBody, json_body, json_body_schema
from driftgate.service import CurrentService, Service
from driftgate.settings import Settings, load_settings


class VerifyRequest(BaseModel):
    model_config = {"extra": "forbid"}
    policy_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", examples=["lksg.v1"])
    context: dict[str, Any] = Field(
        description="The facts to decide on. `_demo_drift: true` makes the enforced verdict "
        "differ; `_demo_error: true` makes the enforced evaluator fail.",
        examples=[{"subject_id": "supplier-17", "_demo_drift": False}],
    )
    backend: Literal["mock"] = "mock"


class VerifyResult(BaseModel):
    shadow: str
    enforced: str
    in_rollout: bool
    drift: bool
    solution_signature: str = Field(
        description="Digest of the request and its verdict: equal for equal requests."
    )


class VerifyResponse(BaseModel):
    policy_id: str
    verdict: str = Field(description="The verdict in force: the enforced one.")
    result: VerifyResult


def _cohort_key(context: dict[str, Any]) -> str:
    """Who a request is about, for the sampling hash: `subject_id` when given, else the
    canonical JSON of the context."""
    subject = context.get("subject_id")
    if isinstance(subject, str) and subject:
        return subject
    return _canonical_json(context)


def _canonical_json(context: dict[str, Any]) -> str:
    return json.dumps(context, sort_keys=True, separators=(",", ":"), default=str)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def _input_fingerprint(body: VerifyRequest) -> str:
    return _digest(body.policy_id, _canonical_json(body.context))


verify_request = json_body(VerifyRequest)


def create_demo_app(
    settings: Settings | None = None,
    *,
    values_file: Path | None = None,
    state_dir: Path | None = None,
) -> FastAPI:
    """The demo service for `settings` (defaults: shadow only, no gate, no rollout): a
    driftgate `Service` installed on an app of its own, and `POST /verify`.

    With `values_file` (the file `settings` came from), the service reloads it while it runs:
    on a change of its folder, on SIGHUP and on `POST /api/v1/admin/reload`. `state_dir`
    replaces the folder of `rollout.state_path`, at start and in every reload."""
    service = Service(settings or Settings(), values_file=values_file, state_dir=state_dir)
    signatures = SignatureLRU(5000, registry=service.registry)
    determinism = DeterminismProbe(5000, registry=service.registry)
    app = FastAPI(
        title="driftgate demo",
        description="Shadow and enforced verdicts side by side, with drift gating and a "
        "staged rollout.",
    )
    service.install(app)

    @app.post(
        "/verify",
        response_model=VerifyResponse,
        responses={code: {"model": ErrorBody} for code in (400, 413, 422)},
        name="demo:verify",
        openapi_extra=json_body_schema(VerifyRequest, required=True),
    )
    def verify(
        body: Annotated[VerifyRequest, Depends(verify_request)], dg: CurrentService
    ) -> dict[str, Any]:
        context = body.context

        def shadow() -> Verdict:
            return Verdict.OK

        def enforced() -> Verdict:
            if context.get("_demo_error") is True:
                raise RuntimeError("mock enforced evaluator failed")
            return Verdict.FAIL if context.get("_demo_drift") is True else Verdict.OK

        pair = dg.enforcer.decide(body.policy_id, _cohort_key(context), shadow, enforced)
        fingerprint = _input_fingerprint(body)
        salt = secrets.token_hex(8) if context.get("_demo_unstable") is True else ""
        signature = _digest(fingerprint, pair.enforced.name, salt)
        signatures.is_new(signature)
        determinism.observe(fingerprint, signature)
        return {
            "policy_id": body.policy_id,
            "verdict": pair.enforced.name.lower(),
            "result": {
                "shadow": pair.shadow.name.lower(),
                "enforced": pair.enforced.name.lower(),
                "in_rollout": pair.in_rollout,
                "drift": pair.drift,
                "solution_signature": signature,
            },
        }

    return app


def app_from_environment() -> FastAPI:
    """For uvicorn's --factory: settings from DRIFTGATE_CONFIG (a values file, reloaded while
    the service runs), if set."""
    path = Path(os.environ["DRIFTGATE_CONFIG"]) if os.environ.get("DRIFTGATE_CONFIG") else None
    return create_demo_app(load_settings(path), values_file=path)
