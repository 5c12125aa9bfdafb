"""The HTTP contract: an OpenAPI document that validates and declares the admin security
scheme on the admin operations only, capped and validated bodies on every endpoint that reads
one, paths a service chooses, and reason codes from one enum."""

import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

import driftgate
from driftgate import ReasonCode, RolloutConfig, RolloutManager
from driftgate.demo import create_demo_app
from driftgate.fastapi import create_router
from driftgate.settings import parse_settings

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def app(monkeypatch, registry, clock):
    monkeypatch.setenv("DRIFTGATE_ADMIN_TOKEN", TOKEN)
    tracker = driftgate.DriftTracker(clock=clock, registry=registry)
    enforcer = driftgate.Enforcer(driftgate.EnforceOptions(enforce=True), tracker)
    manager = RolloutManager(RolloutConfig.default(), enforcer, clock=clock)
    app = FastAPI()
    app.include_router(create_router(tracker=tracker, manager=manager))
    app.state.manager = manager
    return app


def test_the_openapi_document_is_valid_and_declares_admin_security(app):
    schema = app.openapi()
    validate(schema)
    assert schema["components"]["securitySchemes"] == {
        "adminBearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "The admin token (DRIFTGATE_ADMIN_TOKEN) or an approver's token "
            "from the token file, as `Authorization: Bearer <token>`.",
        }
    }
    paths = schema["paths"]
    for path, scope in (
        ("/api/guardian/rollout/advance", "rollout:advance"),
        ("/api/guardian/rollout/rollback", "rollout:rollback"),
    ):
        operation = paths[path]["post"]
        assert operation["security"] == [{"adminBearer": [scope]}]
        assert {"401", "403"} <= set(operation["responses"])
        assert "requestBody" in operation and not operation["requestBody"]["required"]
    for path in ("/api/guardian/rollout/status", "/api/v1/healthz", "/api/v1/readyz"):
        operation = paths[path]["get"]
        assert "security" not in operation
        assert not {"401", "403"} & set(operation["responses"])


def test_the_demo_services_openapi_is_valid(tmp_path):
    settings = parse_settings(
        {"rollout": {"enabled": True, "state_path": str(tmp_path / "state.json")}}
    )
    validate(create_demo_app(settings).openapi())


def test_the_openapi_names_the_token_variable_the_values_configure(tmp_path, monkeypatch):
    monkeypatch.setenv("VERIFIER_ADMIN_TOKEN", "v" * 40)
    settings = parse_settings(
        {
            "rollout": {"enabled": True, "state_path": str(tmp_path / "state.json")},
            "admin": {"token_env": "VERIFIER_ADMIN_TOKEN"},
        }
    )
    schema = create_demo_app(settings).openapi()
    validate(schema)
    described = schema["components"]["securitySchemes"]["adminBearer"]["description"]
    assert described == (
        "The admin token (VERIFIER_ADMIN_TOKEN) or an approver's token from the token file, "
        "as `Authorization: Bearer <token>`."
    )


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'{"reason": 5}', b'{"reason": "ok", "extra": 1}', b"\xff\xfe"],
)
def test_a_garbage_advance_body_is_422_and_moves_nothing(app, body):
    client = TestClient(app)
    response = client.post("/api/guardian/rollout/advance", headers=AUTH, content=body)
    assert response.status_code == 422
    assert app.state.manager.get_status()["current_stage"]["name"] == "canary"


def test_a_two_mebibyte_chunked_advance_body_is_413_and_moves_nothing(app):
    def chunks():
        for _ in range(32):
            yield b"x" * 65536

    response = TestClient(app).post("/api/guardian/rollout/advance", headers=AUTH, content=chunks())
    assert (response.status_code, response.json()) == (413, {"detail": "BODY_TOO_LARGE"})
    assert app.state.manager.get_status()["current_stage"]["name"] == "canary"


def test_advance_takes_an_optional_reason_body(app):
    client = TestClient(app)
    response = client.post("/api/guardian/rollout/advance", headers=AUTH, json={"reason": "go"})
    assert (response.status_code, response.json()["new_stage"]) == (200, "quarter")
    assert client.post("/api/guardian/rollout/advance", headers=AUTH).status_code == 200


def test_probes_and_rollout_can_live_at_the_services_own_paths(registry, clock):
    tracker = driftgate.DriftTracker(clock=clock, registry=registry)
    manager = RolloutManager(RolloutConfig.default(), clock=clock)
    app = FastAPI()
    app.include_router(
        create_router(tracker=tracker, manager=manager, probe_prefix="", rollout_prefix="/rollout")
    )
    client = TestClient(app)
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.get("/metrics").status_code == 200
    assert client.get("/rollout/status").json()["current_stage"]["name"] == "canary"
    assert client.get("/api/v1/healthz").status_code == 404


@pytest.mark.parametrize("prefix", ["api", "/api/", "//api", "/a//b"])
def test_a_malformed_prefix_is_refused(tracker, prefix):
    with pytest.raises(ValueError, match="probe_prefix"):
        create_router(tracker=tracker, probe_prefix=prefix)


def test_reason_codes_live_in_one_enum_documented_in_one_table():
    table = (ROOT / "docs" / "http.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", table, re.M))
    assert documented == {code.value for code in ReasonCode}
    # No reason code is spelled as a string literal anywhere else in the package.
    package = ROOT / "python" / "driftgate"
    for source in package.rglob("*.py"):
        if source.name == "reasons.py":
            continue
        for code in ReasonCode:
            if code is ReasonCode.OK:
                continue
            assert f'"{code.value}"' not in source.read_text(), (source.name, code)
    # The gate's reason comes from the C++ core: the same text.
    gate = driftgate.ReadinessGate(
        driftgate.GateConfig(enabled=True, min_requests=1, max_ratio=0.0),
        tracker := driftgate.DriftTracker(registry=driftgate.MetricsRegistry()),
    )
    assert gate.check() == (True, ReasonCode.OK.value)
    tracker.record("p", "ok", "fail")
    assert gate.check() == (False, ReasonCode.DRIFT_GATE.value)
