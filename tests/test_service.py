"""The real demo service under uvicorn on 127.0.0.1, driven over HTTP."""

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from servers import cohort_keys, demo_service

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TOKEN = "service-test-token"
VALUES = """
enforce_enabled: true
drift_max_ratio: 0.2
enforce_readiness_gate: {enabled: true, window: "5m", min_requests: 10}
rollout: {enabled: true, check_interval_seconds: 3600}
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    folder = tmp_path_factory.mktemp("service")
    with (
        demo_service(folder, VALUES, TOKEN) as base,
        httpx.Client(base_url=base, timeout=5) as client,
    ):
        yield client


def verify(client, subject, drift):
    response = client.post(
        "/verify",
        json={"policy_id": "lksg.v1", "context": {"subject_id": subject, "_demo_drift": drift}},
    )
    assert response.status_code == 200
    return response.json()


def test_readyz_closes_on_drift_and_reopens(service):
    assert service.get("/api/v1/readyz").status_code == 200
    for subject in cohort_keys(10):
        assert verify(service, subject, drift=True)["result"]["drift"] is True
    response = service.get("/api/v1/readyz")
    assert (response.status_code, response.json()["reason"]) == (503, "DRIFT_GATE")
    for subject in cohort_keys(40):
        verify(service, subject, drift=False)
    assert service.get("/api/v1/readyz").status_code == 200


def test_metrics_parse_and_carry_the_names(service):
    text = service.get("/api/v1/metrics").text
    names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    for name in [
        "adapt_drift_events_total",
        "adapt_drift_ratio",
        "adapt_drift_window_requests",
        "adapt_requests_total",
        "adapt_enforce_rollout_percent",
        "adapt_readiness_gate_open",
        "guardian_rollout_stage",
        "guardian_rollout_stage_started_at",
    ]:
        assert name in names, name


def test_admin_over_http(service):
    path = "/api/guardian/rollout/advance"
    assert service.post(path).status_code == 401
    assert service.post(path, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert service.get("/api/guardian/rollout/status").json()["current_stage"]["name"] == "canary"
    response = service.post(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.json()["new_stage"] == "quarter"
    status = service.get("/api/guardian/rollout/status").json()
    assert status["current_stage"]["name"] == "quarter"
    assert status["transitions"][-1]["actor"] == "admin-token"
    back = service.post(
        "/api/guardian/rollout/rollback",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={"reason": "test"},
    )
    assert back.json()["new_stage"] == "canary"
