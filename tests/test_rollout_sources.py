"""PrometheusErrorRate against a small local server that answers in the query API's format."""

import asyncio
import contextlib
import threading
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
        self._server = contextlib.ExitStack()
        self.url = self._server.enter_context(json_server(self._reply))

    def _reply(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        url = urlparse(path)
        if method != "GET" or url.path != "/api/v1/query":
            return 404, {"status": "error", "error": "not found"}
        self.queries.append(parse_qs(url.query)["query"][0])
        if self.stall:
            self.release.wait(5)
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
        return RolloutManager(
            RolloutConfig.default(),
            registry=registry,
            clock=driftgate.ManualClock(1_700_000_000.0),
            state_path=tmp_path / "state.json",
            error_rate_source=source,
        )

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
    assert "guardian_rollout_analysis_errors_total 1" in registry.exposition()


def test_a_stopped_prometheus_means_hold(prometheus, manager, registry):
    url = prometheus.url
    prometheus.stop()
    rollout = manager(PrometheusErrorRate(url, QUERY, timeout=1))
    rollout.manual_advance("ops")
    advanced, message = asyncio.run(rollout.check_and_advance())
    assert (advanced, message) == (False, "Holding: error-rate source failed (ConnectError)")
    assert rollout.get_status()["current_stage"]["name"] == "quarter"
    assert "guardian_rollout_analysis_errors_total 1" in registry.exposition()


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
