"""PrometheusErrorRate against a small local server that answers in the query API's format."""

import asyncio
import contextlib
import threading
from collections.abc import Callable
from urllib.parse import parse_qs, urlparse

import pytest

import driftgate
from driftgate import PrometheusErrorRate, RolloutConfig, RolloutManager
from servers import json_server

pytestmark = pytest.mark.integration

QUERY = (
    "sum(rate(guardian_enforcement_failed_total[1h])) / sum(rate(guardian_enforcement_total[1h]))"
)


class FakePrometheus:
    """Answers /api/v1/query with whatever `answer` holds; records the queries it got."""

    def __init__(self):
        self.answer: tuple[int, dict] = (200, {})
        self.queries: list[str] = []
        self.release = threading.Event()
        self.stall = False
        self.rate_for: Callable[[str], str] | None = None  # the rate to answer, by query
        self._server = contextlib.ExitStack()
        self.url = self._server.enter_context(json_server(self._reply))

    def _reply(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        url = urlparse(path)
        if method != "GET" or url.path != "/api/v1/query":
            return 404, {"status": "error", "error": "not found"}
        query = parse_qs(url.query)["query"][0]
        self.queries.append(query)
        if self.stall:
            self.release.wait(5)
        if self.rate_for is not None:
            self.vector(self.rate_for(query))
        return self.answer

    def vector(self, value: str) -> None:
        self.answer = (
            200,
            {
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, value]}]},
            },
        )

    def stop(self) -> None:
        self.release.set()
        self._server.close()


@pytest.fixture
def prometheus():
    fake = FakePrometheus()
    yield fake
    fake.stop()


@pytest.fixture
def manager(tmp_path, registry, prometheus):
    def make(source):
        clock = driftgate.ManualClock(1_700_000_000.0)
        rollout = RolloutManager(
            RolloutConfig.default(),
            registry=registry,
            clock=clock,
            state_path=tmp_path / "state.json",
            error_rate_source=source,
        )
        rollout.manual_clock = clock  # the tests move its time
        return rollout

    return make


def test_reads_a_vector_result(prometheus):
    prometheus.vector("0.0025")
    assert PrometheusErrorRate(prometheus.url, QUERY)() == 0.0025
    assert prometheus.queries == [QUERY]


def test_reads_a_scalar_result(prometheus):
    prometheus.answer = (
        200,
        {"status": "success", "data": {"resultType": "scalar", "result": [1, "0.5"]}},
    )
    assert PrometheusErrorRate(prometheus.url, QUERY)() == 0.5


@pytest.mark.parametrize(
    "answer",
    [
        (200, {"status": "error", "errorType": "bad_data", "error": "parse error"}),
        (200, {"status": "success", "data": {"resultType": "vector", "result": []}}),
        (200, {"status": "success", "data": {"resultType": "matrix", "result": []}}),
        (200, {"status": "success", "data": {"resultType": "scalar", "result": [1, "NaN"]}}),
        (200, {"status": "success", "data": {"resultType": "scalar", "result": [1, "7"]}}),
        (500, {}),
    ],
)
def test_anything_but_one_rate_is_an_error(prometheus, answer):
    prometheus.answer = answer
    with pytest.raises(Exception):  # noqa: B017  (each shape fails its own way)
        PrometheusErrorRate(prometheus.url, QUERY)()


def test_manager_rolls_back_on_a_high_prometheus_rate(prometheus, manager):
    prometheus.vector("0.02")
    rollout = manager(PrometheusErrorRate(prometheus.url, QUERY))
    rollout.manual_advance("ops")
    advanced, message = asyncio.run(rollout.check_and_advance())
    assert not advanced
    assert message.startswith("Rolled back due to high error rate: 2.000%")


def test_manager_holds_on_a_low_rate_before_the_duration(prometheus, manager):
    prometheus.vector("0.0001")
    rollout = manager(PrometheusErrorRate(prometheus.url, QUERY))
    advanced, message = asyncio.run(rollout.check_and_advance())
    assert not advanced
    assert message.startswith("Stage duration not met")


def test_a_slow_prometheus_means_hold(prometheus, manager, registry):
    prometheus.stall = True
    prometheus.vector("0.9")
    rollout = manager(PrometheusErrorRate(prometheus.url, QUERY, timeout=0.1))
    rollout.manual_advance("ops")
    advanced, message = asyncio.run(rollout.check_and_advance())
    assert (advanced, message) == (False, "Holding: error-rate source failed (ReadTimeout)")
    assert rollout.get_status()["current_stage"]["name"] == "quarter"
    assert 'guardian_rollout_analysis_errors_total{rollout="default"} 1' in registry.exposition()


def test_a_stopped_prometheus_means_hold(prometheus, manager, registry):
    url = prometheus.url
    prometheus.stop()
    rollout = manager(PrometheusErrorRate(url, QUERY, timeout=1))
    rollout.manual_advance("ops")
    advanced, message = asyncio.run(rollout.check_and_advance())
    assert (advanced, message) == (False, "Holding: error-rate source failed (ConnectError)")
    assert rollout.get_status()["current_stage"]["name"] == "quarter"
    assert 'guardian_rollout_analysis_errors_total{rollout="default"} 1' in registry.exposition()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("localhost:9090", QUERY), "base_url='localhost:9090'"),
        (("http://127.0.0.1:9090", " "), "query must not be empty"),
        (("http://127.0.0.1:9090", QUERY, 0), "timeout=0"),
    ],
)
def test_bad_arguments_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        PrometheusErrorRate(*args)


# -- $window: each stage judged on its own requests ----------------------------------------

STAGE_QUERY = (
    "sum(rate(guardian_enforcement_failed_total[$window]))"
    " / sum(rate(guardian_enforcement_total[$window]))"
)


def test_window_is_the_time_in_stage_in_whole_seconds(prometheus, manager):
    prometheus.vector("0.0001")
    rollout = manager(PrometheusErrorRate(prometheus.url, STAGE_QUERY))
    rollout.manual_clock.advance(90.7)
    asyncio.run(rollout.check_and_advance())
    rollout.manual_clock.advance(86400)
    asyncio.run(rollout.check_and_advance())  # capped by the one-hour analysis window
    assert prometheus.queries == [
        STAGE_QUERY.replace("$window", "90s"),
        STAGE_QUERY.replace("$window", "3600s"),
    ]


def test_a_window_under_the_minimum_is_insufficient_data_and_asks_nothing(
    prometheus, manager, registry
):
    prometheus.vector("0.9")
    rollout = manager(PrometheusErrorRate(prometheus.url, STAGE_QUERY, min_window_seconds=60))
    rollout.manual_clock.advance(59.9)
    decision = asyncio.run(rollout.check_and_advance())
    assert decision.action == driftgate.DecisionAction.INSUFFICIENT_DATA
    assert decision.message == "Holding: insufficient data (the stage's window is 59 s, under 60 s)"
    assert prometheus.queries == []
    assert 'guardian_rollout_analysis_errors_total{rollout="default"} 0' in registry.exposition()
    rollout.manual_clock.advance(0.1)
    assert asyncio.run(rollout.check_and_advance()).action == driftgate.DecisionAction.ABORTED


def test_a_high_rate_rolls_back_once_when_the_query_follows_the_stage(prometheus, manager):
    """Prometheus keeps answering the last hour's high rate for the window it was asked about:
    once the stage changed, the new stage's window is asked, which holds its own requests."""
    rollout = manager(PrometheusErrorRate(prometheus.url, STAGE_QUERY))
    rollout.manual_advance("ops")
    rollout.manual_clock.advance(3600)
    # the errors lie an hour back: only a window that reaches them sees them
    prometheus.rate_for = lambda query: "0.02" if "[3600s]" in query else "0"
    assert asyncio.run(rollout.check_and_advance()).action == driftgate.DecisionAction.ROLLED_BACK
    for _ in range(3):
        rollout.manual_clock.advance(120)
        decision = asyncio.run(rollout.check_and_advance())
        assert (decision.action, decision.to_stage) == (driftgate.DecisionAction.HELD, "canary")


def test_a_query_without_window_takes_no_window(prometheus):
    assert PrometheusErrorRate(prometheus.url, QUERY).takes_window is False
    assert PrometheusErrorRate(prometheus.url, STAGE_QUERY).takes_window is True
    with pytest.raises(ValueError, match=r"has \$window but no window"):
        PrometheusErrorRate(prometheus.url, STAGE_QUERY)()
    with pytest.raises(ValueError, match="min_window_seconds=0"):
        PrometheusErrorRate(prometheus.url, STAGE_QUERY, min_window_seconds=0)
