"""Several rollouts in one service: each governs its policies with its own stages, over HTTP,
the command line and live reload."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

import driftgate
from driftgate.identity import token_file_line
from driftgate.service import Service
from driftgate.testing import metric_value

TWO_STAGES = [
    {"name": "canary", "percentage": 10, "duration_seconds": 3600, "max_error_rate": 0.01},
    {"name": "full", "percentage": 100, "max_error_rate": 0.01},
]
VALUES: dict[str, Any] = {
    "enforce_enabled": True,
    "enforce_rollout_percent": 0,
    "rollouts": {
        "orders": {"policies": ["orders.v2"], "stages": TWO_STAGES},
        "lksg": {
            "policies": ["lksg.v1", "lksg.v2"],
            "stages": [
                {"name": "pilot", "percentage": 25, "duration_seconds": 3600},
                {"name": "all", "percentage": 100},
            ],
        },
        "kyc": {"policies": ["kyc.v1"], "stages": TWO_STAGES, "cohort": "shared"},
    },
}
OPS = "ops-token-" + "o" * 40
ORDERS_ONLY = "orders-token-" + "x" * 40


@pytest.fixture
def service(tmp_path: Path) -> Service:
    tokens = tmp_path / "approvers.tokens"
    tokens.write_text(
        token_file_line("ops", OPS, ["rollout:advance", "rollout:rollback"])
        + "\n"
        + token_file_line("olga", ORDERS_ONLY, ["rollout:advance:orders"])
        + "\n"
    )
    tokens.chmod(0o600)
    values = {**VALUES, "admin": {"token_file": str(tokens)}}
    return Service.from_values(
        values, state_dir=tmp_path / "state", clock=driftgate.ManualClock(1e9)
    )


def app_of(service: Service) -> FastAPI:
    app = FastAPI()
    service.install(app)
    return app


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_each_policy_is_enforced_on_its_own_rollouts_percentage(service):
    enforcer = service.enforcer
    assert set(service.rollouts) == {"orders", "lksg", "kyc"}
    n = 100_000
    for policy, percent in (("orders.v2", 10), ("lksg.v1", 25), ("lksg.v2", 25), ("kyc.v1", 10)):
        inside = sum(enforcer.in_rollout(f"k{i}", policy) for i in range(n))
        spread = 4 * math.sqrt(n * percent / 100 * (1 - percent / 100))
        assert abs(inside - n * percent / 100) < spread, (policy, inside)
    # a policy no rollout governs: enforce_rollout_percent
    assert sum(enforcer.in_rollout(f"k{i}", "other.v1") for i in range(1000)) == 0
    assert enforcer.rollout_percent_of("lksg.v2") == 25
    assert enforcer.rollout_percent_of("other.v1") == 0


def test_independent_cohorts_are_drawn_apart_and_shared_ones_nest(service):
    enforcer = service.enforcer
    keys = [f"key-{i}" for i in range(50_000)]
    orders = {k for k in keys if enforcer.in_rollout(k, "orders.v2")}
    kyc = {k for k in keys if enforcer.in_rollout(k, "kyc.v1")}
    # both 10 %: independent draws overlap near 1 %, not 10 %
    assert 0.005 < len(orders & kyc) / len(keys) < 0.02
    # kyc's shared cohort is the unsalted one: the cohort of a policy no rollout governs
    service.enforcer.set_options(rollout_percent=10)
    unsalted = {k for k in keys if enforcer.in_rollout(k, "other.v1")}
    assert kyc == unsalted


def test_rollouts_move_apart_over_http_with_scopes_limited_to_one(service):
    with TestClient(app_of(service)) as client:
        listed = client.get("/api/guardian/rollouts").json()["rollouts"]
        assert [line["name"] for line in listed] == ["kyc", "lksg", "orders"]
        assert {line["name"]: line["policies"] for line in listed}["lksg"] == ["lksg.v1", "lksg.v2"]
        moved = client.post("/api/guardian/rollouts/orders/advance", headers=auth(ORDERS_ONLY))
        assert moved.status_code == 200, moved.text
        assert moved.json()["new_stage"] == "full"
        refused = client.post("/api/guardian/rollouts/lksg/advance", headers=auth(ORDERS_ONLY))
        assert refused.status_code == 403 and refused.json()["detail"].startswith("MISSING_SCOPE")
        rolled = client.post("/api/guardian/rollouts/lksg/rollback", headers=auth(OPS))
        assert rolled.status_code == 200 and rolled.json()["action"] == "aborted"
        missing = client.get("/api/guardian/rollouts/nope/status")
        assert missing.status_code == 404 and missing.json()["detail"] == "UNKNOWN_ROLLOUT"
        assert client.get("/api/guardian/rollout/status").json()["detail"] == "NO_ROLLOUT"
        status = client.get("/api/guardian/rollouts/orders/status")
        assert status.headers["etag"] == status.json()["etag"]
        stale = client.post(
            "/api/guardian/rollouts/orders/rollback",
            headers={**auth(OPS), "If-Match": '"0.1"'},
        )
        assert stale.status_code == 412
        metrics = client.get("/api/v1/metrics").text
    assert service.enforcer.rollout_percent_of("orders.v2") == 100
    assert service.enforcer.rollout_percent_of("lksg.v1") == 0  # aborted
    assert service.enforcer.rollout_percent_of("kyc.v1") == 10  # untouched
    assert metric_value(metrics, "guardian_rollout_stage", {"rollout": "orders"}) == 1
    assert metric_value(metrics, "adapt_enforce_rollout_percent", {"rollout": "lksg"}) == 0
    assert metric_value(metrics, "adapt_enforce_rollout_percent", {"rollout": "kyc"}) == 10
    state = json.loads(Path(service.rollouts["orders"].state_path).read_text())
    assert state["stage_name"] == "full"


def test_one_rollouts_errors_never_move_another(service):
    enforcer = service.enforcer
    for i in range(400):
        enforcer.decide("orders.v2", f"k{i}", "ok", lambda: (_ for _ in ()).throw(RuntimeError()))
        enforcer.decide("lksg.v1", f"k{i}", "ok", "ok")
    orders = service.rollouts["orders"].error_rate_source
    lksg = service.rollouts["lksg"].error_rate_source
    assert orders()[0] > 0  # type: ignore[misc,operator]
    assert lksg()[0] == 0  # type: ignore[misc,operator]


def test_a_rollout_added_live_serves_and_one_removed_is_refused(tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump({**VALUES, "rollouts": {"orders": VALUES["rollouts"]["orders"]}})
    )
    service = Service.from_values(values, state_dir=tmp_path / "state", watch=False)
    with TestClient(app_of(service)) as client:
        assert [r["name"] for r in client.get("/api/guardian/rollouts").json()["rollouts"]] == [
            "orders"
        ]
        values.write_text(yaml.safe_dump(VALUES))
        added = service.reload()
        assert added.success, added.message
        assert set(added.changed) >= {"rollouts.lksg", "rollouts.kyc"}
        assert client.get("/api/guardian/rollouts/lksg/status").status_code == 200
        assert service.enforcer.rollout_percent_of("lksg.v1") == 25
        values.write_text(
            yaml.safe_dump({**VALUES, "rollouts": {"orders": VALUES["rollouts"]["orders"]}})
        )
        removed = service.reload()
        assert not removed.success
        assert "rollouts.kyc: removed (or disabled) while it runs" in removed.message or (
            "rollouts.lksg: removed" in removed.message
        )
        retargeted = {**VALUES, "rollouts": {**VALUES["rollouts"], "orders": {
            **VALUES["rollouts"]["orders"], "policies": ["orders.v9"]}}}  # fmt: skip
        values.write_text(yaml.safe_dump(retargeted))
        refused = service.reload()
        assert not refused.success and "rollouts.orders.policies" in refused.message
    assert set(service.rollouts) == {"orders", "lksg", "kyc"}


def test_more_policies_than_the_tracker_admits_stop_the_start_naming_the_rollout(tmp_path):
    many = {"rollouts": {"big": {"policies": [f"p{i}" for i in range(300)]}}}
    with pytest.raises(driftgate.settings.SettingsError, match=r"^rollouts\.big\.policies: "):
        Service.from_values(many, state_dir=tmp_path)
