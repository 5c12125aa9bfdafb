"""Debian's Prometheus on 127.0.0.1 scraping two replicas of the demo service every second:
the dashboard's queries, the fleet recording rules, the alerts and PrometheusErrorRate against
a real server, then the manager's behaviour when that server is gone."""

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from driftgate import (
    DriftTracker,
    EnforceOptions,
    Enforcer,
    ManualClock,
    MetricsRegistry,
    PrometheusErrorRate,
    RolloutConfig,
    RolloutManager,
    sampling_bucket,
)
from servers import Prometheus, cohort_keys, demo_service, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "grafana" / "dashboards" / "verifier.json"
TOKEN = "prometheus-test-token"
VALUES = """
enforce_enabled: true
drift_max_ratio: 0.005
enforce_readiness_gate: {enabled: true, window: "5m", min_requests: 20}
rollout: {enabled: true, check_interval_seconds: 3600}
"""
ERROR_RATE = (
    'sum(guardian_enforcement_failed_total{job="verifier"})'
    ' / sum(guardian_enforcement_total{job="verifier"})'
)


class Replica:
    """One demo service and what was sent to it, counted from its answers."""

    def __init__(self, base: str):
        self.client = httpx.Client(base_url=base, timeout=5)
        self.instance = base.removeprefix("http://")
        self.requests = self.drift = self.enforced = self.errors = 0

    def verify(self, subject: str, **flags: bool) -> None:
        context = {"subject_id": subject, **flags}
        response = self.client.post("/verify", json={"policy_id": "lksg.v1", "context": context})
        assert response.status_code == 200
        result = response.json()["result"]
        self.requests += 1
        self.drift += result["drift"]
        self.enforced += result["in_rollout"]
        self.errors += result["in_rollout"] and flags.get("_demo_error", False)

    def window_counts(self) -> tuple[float, float]:
        """(events, requests) in its 5m window, as the replica itself exports them."""
        text = self.client.get("/api/v1/metrics").text
        values = {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.labels.get("window") == "5m"
        }
        return values["adapt_drift_window_events"], values["adapt_drift_window_requests"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Two replicas with traffic sent, and a Prometheus that has scraped all of it."""
    folder = tmp_path_factory.mktemp("fleet")
    with (
        demo_service(folder / "a", VALUES, TOKEN) as a_url,
        demo_service(folder / "b", VALUES, TOKEN) as b_url,
    ):
        a, b = Replica(a_url), Replica(b_url)
        # a: 80 canary requests, 12 drifting and 4 failing (a failure drifts too);
        # b: 40 clean canary requests and 60 outside the cohort.
        keys = cohort_keys(120)
        outside = [f"outside-{i}" for i in range(200) if sampling_bucket(f"outside-{i}") >= 1000]
        for i, subject in enumerate(keys[:80]):
            a.verify(subject, _demo_drift=i < 12, _demo_error=12 <= i < 16)
        for subject in keys[80:] + outside[:60]:
            b.verify(subject)
        a.verify(keys[0], _demo_unstable=True)  # two signatures for one input on a
        a.verify(keys[0], _demo_unstable=True)
        # the gate is read on /readyz: a is closed (drift 20 %), b open
        assert a.client.get("/api/v1/readyz").status_code == 503
        assert b.client.get("/api/v1/readyz").status_code == 200
        # a human moves a forward and back, so the transition counters move
        admin = {"Authorization": f"Bearer {TOKEN}"}
        assert a.client.post("/api/guardian/rollout/advance", headers=admin).status_code == 200
        assert a.client.post("/api/guardian/rollout/rollback", headers=admin).status_code == 200

        rules = sorted((ROOT / "prometheus").glob("*.rules.yml"))  # the server loads them all
        prometheus = Prometheus(folder / "prometheus", [a_url, b_url], rules)
        prometheus.start()
        try:
            total = a.requests + b.requests
            wait_for(
                lambda: (
                    prometheus.value('sum(adapt_drift_window_requests{window="5m"})') == total
                    or None
                ),
                "Prometheus to scrape both replicas",
            )
            yield prometheus, a, b
        finally:
            prometheus.stop()
            a.client.close()
            b.client.close()


def test_the_traffic_is_what_the_test_means(fleet):
    _, a, b = fleet
    assert (a.requests, a.enforced, a.drift, a.errors) == (82, 82, 16, 4)
    assert (b.requests, b.enforced, b.drift) == (100, 40, 0)


def test_prometheus_scrapes_the_gzipped_exposition(fleet):
    """Prometheus asks for gzip on every scrape (scrape configs compress by default); the
    replicas answer it gzipped, and the server reads it: both targets up, no scrape error."""
    prometheus, a, b = fleet
    for replica in (a, b):
        with replica.client.stream(
            "GET", "/api/v1/metrics", headers={"Accept-Encoding": "gzip"}
        ) as response:
            assert response.headers["content-encoding"] == "gzip"
            assert b"".join(response.iter_raw())[:2] == b"\x1f\x8b"
    targets = httpx.get(f"{prometheus.url}/api/v1/targets", timeout=5).json()["data"]
    active = {t["labels"]["instance"]: t for t in targets["activeTargets"]}
    assert set(active) == {a.instance, b.instance}
    for target in active.values():
        assert (target["health"], target["lastError"]) == ("up", "")
    assert prometheus.value('min(up{job="verifier"})') == 1


def test_the_server_loaded_every_rule_group(fleet):
    prometheus, _, _ = fleet
    groups = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert {group["name"] for group in groups} == {
        "driftgate.recording",
        "driftgate.alerts",
        "solver.canary.guardrails",
        "solver.canary.alerts",
    }
    assert all(rule["health"] == "ok" for group in groups for rule in group["rules"])


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [
        # the fleet's replicas serve one rollout, which is named default
        (panel["title"], target["expr"].replace("$job", "verifier").replace("$rollout", "default"))
        for panel in board["panels"]
        if panel["type"] != "row"
        for target in panel["targets"]
    ]


def test_every_dashboard_query_returns_a_series(fleet):
    prometheus, _, _ = fleet

    def empty() -> list[str]:
        return [
            f"{title}: {expr}" for title, expr in dashboard_queries() if not prometheus.query(expr)
        ]

    # rate() and increase() need two scrapes of a series: give them a few seconds
    try:
        wait_for(lambda: None if empty() else True, "every dashboard query to return a series")
    except TimeoutError:
        pytest.fail("queries with no series:\n" + "\n".join(empty()))


def test_fleet_drift_ratio_is_the_sum_over_replicas(fleet):
    prometheus, a, b = fleet
    expected = (a.drift + b.drift) / (a.requests + b.requests)
    recorded = wait_for(
        lambda: prometheus.value('job_window:adapt_drift_ratio:fleet{job="verifier",window="5m"}'),
        "the fleet recording rule",
    )
    assert recorded == pytest.approx(expected, rel=1e-9)
    # and each replica's own counts add up to it
    (a_events, a_requests), (b_events, b_requests) = a.window_counts(), b.window_counts()
    assert recorded == pytest.approx((a_events + b_events) / (a_requests + b_requests), rel=1e-9)
    # an average of the replicas' ratios would differ: the fleet rule weighs by volume
    assert recorded != pytest.approx((a_events / a_requests + b_events / b_requests) / 2)


def test_alerts_go_pending_on_the_live_metrics(fleet):
    prometheus, a, _ = fleet

    def pending() -> set[tuple[str, str]] | None:
        found = {
            (s["metric"]["alertname"], s["metric"].get("instance", ""))
            for s in prometheus.query('ALERTS{alertstate="pending"}')
        }
        return (
            found
            if {"DriftgateDriftAboveTwiceLimit", "DriftgateReadinessGateClosed"}
            <= {name for name, _ in found}
            else None
        )

    found = wait_for(pending, "the drift and gate alerts to go pending")
    assert ("DriftgateReadinessGateClosed", a.instance) in found
    assert ("DriftgateDriftAboveLimit", "") in found
    assert ("DriftgateReadinessGateClosedEverywhere", "") not in found  # b is still open


def manager_on(prometheus_url: str, query: str, tmp_path: Path) -> RolloutManager:
    clock = ManualClock(1_700_000_000)
    registry = MetricsRegistry()
    enforcer = Enforcer(EnforceOptions(enforce=True), DriftTracker(clock=clock, registry=registry))
    return RolloutManager(
        RolloutConfig.default(),
        enforcer=enforcer,
        registry=registry,
        state_path=tmp_path / "rollout.json",
        clock=clock,
        error_rate_source=PrometheusErrorRate(prometheus_url, query, timeout=2),
    )


def test_prometheus_error_rate_reads_the_fleet_rate(fleet):
    prometheus, a, b = fleet
    rate = PrometheusErrorRate(prometheus.url, ERROR_RATE)()
    assert rate == pytest.approx(a.errors / (a.enforced + b.enforced), rel=1e-9)


def test_manager_rolls_back_on_the_prometheus_rate(fleet, tmp_path):
    prometheus, a, b = fleet  # 4 failed of 122 enforced: 3.3 %, above quarter's 0.4 %
    manager = manager_on(prometheus.url, ERROR_RATE, tmp_path)
    manager.manual_advance(actor="ops")
    advanced, message = asyncio.run(manager.check_and_advance())
    assert not advanced
    rate = a.errors / (a.enforced + b.enforced)
    assert message.startswith(f"Rolled back due to high error rate: {rate:.3%}")
    assert manager.get_status()["current_stage"]["name"] == "canary"


def test_manager_holds_on_a_low_prometheus_rate(fleet, tmp_path):
    prometheus, _, b = fleet  # b alone had no failures; its failed series does not exist
    query = (
        f'sum(guardian_enforcement_failed_total{{instance="{b.instance}"}} or vector(0))'
        f' / sum(guardian_enforcement_total{{instance="{b.instance}"}})'
    )
    manager = manager_on(prometheus.url, query, tmp_path)
    advanced, message = asyncio.run(manager.check_and_advance())
    assert not advanced
    assert "Stage duration not met" in message
    assert manager.get_status()["current_stage"]["name"] == "canary"


def test_with_prometheus_stopped_the_manager_holds_and_counts(fleet, tmp_path):
    """Stops the module's Prometheus: keep this test last in the file."""
    prometheus, _, _ = fleet
    manager = manager_on(prometheus.url, ERROR_RATE, tmp_path)
    manager.manual_advance(actor="ops")
    prometheus.stop()
    advanced, message = asyncio.run(manager.check_and_advance())
    assert not advanced
    assert message == "Holding: error-rate source failed (ConnectError)"
    assert manager.get_status()["current_stage"]["name"] == "quarter"
    assert (
        'guardian_rollout_analysis_errors_total{rollout="default"} 1'
        in manager.registry.exposition()
    )
