"""The real demo service under uvicorn on 127.0.0.1, driven over HTTP."""

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from servers import cohort_keys, demo_service, require_tool

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


LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
SPEED = 30  # the service's clocks run 30 times as fast: its 5m window passes in 10 s


def test_a_gate_closed_by_drift_reopens_without_traffic(tmp_path):
    """A not-ready replica gets no traffic from its Service: five minutes of its own time after
    the last drift, with no request in between, it answers ready again."""
    require_tool("faketime", "faketime")
    values = VALUES.replace(
        "rollout: {enabled: true, check_interval_seconds: 3600}\n", "enforce_rollout_percent: 100\n"
    )
    faster = {"LD_PRELOAD": LIBFAKETIME, "FAKETIME": f"+0 x{SPEED}"}
    with (
        demo_service(tmp_path, values, env=faster) as base,
        httpx.Client(base_url=base, timeout=5) as client,
    ):
        for subject in cohort_keys(10, percent=100):
            assert verify(client, subject, drift=True)["result"]["drift"] is True
        closed = client.get("/api/v1/readyz")
        assert (closed.status_code, closed.json()["reason"]) == (503, "DRIFT_GATE")
        promised = closed.json()["reopens_within_seconds"]
        assert 250 <= promised <= 300  # the drift entered the window moments ago
        started = time.monotonic()
        answers = []
        while time.monotonic() - started < (promised + 30) / SPEED:
            answer = client.get("/api/v1/readyz")
            answers.append(answer.status_code)
            if answer.status_code == 200:
                break
            assert answer.json()["reopens_within_seconds"] <= promised
            time.sleep(0.2)
        assert answers[-1] == 200, f"still not ready {promised} service seconds later"
        waited = (time.monotonic() - started) * SPEED
        assert waited >= promised - 2 * SPEED  # it did wait for the drift to leave
        metrics = client.get("/api/v1/metrics").text
        assert 'adapt_drift_window_requests{window="5m"} 0' in metrics  # no traffic came
        assert "adapt_readiness_gate_open 1" in metrics
