"""The FastAPI router and the demo service, through FastAPI's test client."""

import asyncio
import gzip
import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic_core import to_json

import driftgate
from driftgate import (
    DriftTracker,
    EnforceOptions,
    Enforcer,
    GateConfig,
    ManualClock,
    ReadinessGate,
    RolloutConfig,
    RolloutManager,
)
from driftgate.demo import create_demo_app
from driftgate.fastapi import MAX_BODY_BYTES, create_router
from driftgate.fastapi import router as router_module
from driftgate.fastapi.router import _STATUS, READY
from driftgate.settings import parse_settings

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def parts(tmp_path):
    clock = ManualClock(1_700_000_000.0)
    registry = driftgate.MetricsRegistry()
    tracker = DriftTracker(clock=clock, registry=registry)
    enforcer = Enforcer(EnforceOptions(enforce=True), tracker)
    manager = RolloutManager(
        RolloutConfig.default(),
        enforcer=enforcer,
        clock=clock,
        state_path=tmp_path / "rollout.json",
    )
    gate = ReadinessGate(GateConfig(enabled=True, min_requests=10, max_ratio=0.1), tracker)
    return {"tracker": tracker, "manager": manager, "gate": gate, "registry": registry}


@pytest.fixture
def client(parts, monkeypatch):
    monkeypatch.setenv("DRIFTGATE_ADMIN_TOKEN", TOKEN)
    app = FastAPI()
    app.include_router(create_router(**parts))
    return TestClient(app)


def test_healthz(client):
    response = client.get("/api/v1/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_follows_the_gate(client, parts):
    assert client.get("/api/v1/readyz").json() == {"status": "ready"}
    for i in range(20):
        parts["tracker"].record("p", "ok", "fail" if i < 5 else "ok")
    response = client.get("/api/v1/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "not_ready",
        "reason": "DRIFT_GATE",
        "reopens_within_seconds": 300,
    }
    for _ in range(40):
        parts["tracker"].record("p", "ok", "ok")
    assert client.get("/api/v1/readyz").status_code == 200


def test_readyz_reopens_without_traffic_once_the_drift_has_left_its_window(client, parts):
    # A not-ready pod gets no traffic from its Service: the gate must not wait for requests.
    clock = parts["tracker"].clock
    for _ in range(20):
        parts["tracker"].record("p", "ok", "fail")
    clock.advance(120)
    closed = client.get("/api/v1/readyz")
    assert (closed.status_code, closed.json()["reopens_within_seconds"]) == (503, 180)
    clock.advance(179.5)
    closed = client.get("/api/v1/readyz")
    assert (closed.status_code, closed.json()["reopens_within_seconds"]) == (503, 1)
    clock.advance(0.5)
    opened = client.get("/api/v1/readyz")
    assert (opened.status_code, opened.json()) == (200, {"status": "ready"})
    assert "adapt_readiness_gate_open 1" in client.get("/api/v1/metrics").text


def test_readyz_reports_extra_checks(parts):
    app = FastAPI()
    app.include_router(create_router(**parts, readiness_checks=[lambda: "STATE_FILE"]))
    response = TestClient(app).get("/api/v1/readyz")
    assert (response.status_code, response.json()["reason"]) == (503, "STATE_FILE")


def test_metrics_is_one_valid_text_exposition(client, parts):
    parts["tracker"].record("lksg.v1", "ok", "fail")
    response = client.get("/api/v1/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {
        sample.name
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    assert {"adapt_drift_events_total", "adapt_drift_ratio", "guardian_rollout_stage"} <= samples
    assert "python_info" in samples  # prometheus_client's default registry, merged in
    names = [line.split()[2] for line in response.text.splitlines() if line.startswith("# TYPE")]
    assert len(names) == len(set(names)), "one TYPE line per family"


def test_metrics_type_lines_name_the_samples(client, parts):
    parts["tracker"].record("lksg.v1", "ok", "fail")
    text = client.get("/api/v1/metrics").text
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE"))
    assert types["adapt_drift_events_total"] == "counter"
    assert types["adapt_selection_latency_seconds"] == "histogram"
    assert not [name for name in types if name.endswith("_total_total")]
    families = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert families["adapt_drift_events"] == "counter"
    assert families["guardian_rollout_analysis_errors"] == "counter"


def test_metrics_negotiates_openmetrics(client):
    response = client.get(
        "/api/v1/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def raw_metrics(client, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """A scrape's status, headers and body as sent: the test client would undo gzip."""
    with client.stream("GET", "/api/v1/metrics", headers=headers) as response:
        return response.status_code, dict(response.headers), b"".join(response.iter_raw())


@pytest.mark.parametrize("accept", ["text/plain", "application/openmetrics-text; version=1.0.0"])
def test_metrics_are_gzipped_only_when_the_scraper_accepts_gzip(parts, accept):
    app = FastAPI()
    # Without prometheus_client's process metrics, two scrapes in a row answer the same body.
    app.include_router(create_router(**parts, include_process_metrics=False))
    client = TestClient(app)
    parts["tracker"].record("lksg.v1", "ok", "fail")
    status, plain_headers, plain = raw_metrics(
        client, **{"Accept": accept, "Accept-Encoding": "identity"}
    )
    assert status == 200
    assert "content-encoding" not in plain_headers
    assert plain.startswith(b"# HELP ")
    status, headers, gzipped = raw_metrics(
        client, **{"Accept": accept, "Accept-Encoding": "deflate, gzip"}
    )
    assert status == 200
    assert headers["content-encoding"] == "gzip"
    assert gzip.decompress(gzipped) == plain  # the same exposition
    assert int(headers["content-length"]) == len(gzipped)
    assert headers["content-type"] == plain_headers["content-type"]
    assert headers["content-type"].startswith(accept.split(";")[0])
    for answer in (headers, plain_headers):
        assert {"accept", "accept-encoding"} <= {
            v.strip().lower() for v in answer["vary"].split(",")
        }
    _, refused, body = raw_metrics(client, **{"Accept": accept, "Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused
    assert body == plain


def test_metrics_without_process_metrics(parts):
    app = FastAPI()
    app.include_router(create_router(**parts, include_process_metrics=False))
    text = TestClient(app).get("/api/v1/metrics").text
    assert "python_info" not in text
    assert "guardian_rollout_stage" in text


def test_rollout_status(client):
    body = client.get("/api/guardian/rollout/status").json()
    assert body["current_stage"]["name"] == "canary"
    assert body["total_stages"] == 5
    assert body["state"] == "active"
    assert body["transitions"][0]["to"] == "canary"


def test_rollout_status_answers_the_managers_report_as_json_with_its_etag(client, parts):
    manager = parts["manager"]
    manager.manual_advance("alice", "first look")
    response = client.get("/api/guardian/rollout/status")
    assert response.headers["content-type"] == "application/json"
    report = json.loads(json.dumps(manager.get_status()))  # as JSON values: enums by name
    assert response.json() == report
    assert response.headers["etag"] == report["etag"]


def status_as_sent(client) -> tuple[bytes, str]:
    response = client.get("/api/guardian/rollout/status")
    assert response.status_code == 200
    return response.content, response.headers["etag"]


def written_whole(manager) -> tuple[bytes, str]:
    """The manager's status now, written as the router writes a report it has just built."""
    report = manager.get_status()
    return _STATUS.dump_json(report), report["etag"]


def failing_source() -> float:
    raise RuntimeError("the error-rate source is away")


def test_the_status_is_written_anew_whenever_what_it_says_may_have_changed(client, parts):
    # The clock stands still between the request and the status written whole, so every
    # answer must be that status byte for byte: a piece kept from before a change would show.
    manager, enforcer, clock = parts["manager"], parts["manager"].enforcer, parts["tracker"].clock
    answers = []

    def answer() -> dict:
        sent = status_as_sent(client)
        assert sent == written_whole(manager)
        answers.append(sent[0])
        return json.loads(sent[0])

    first = answer()
    assert answer() == first  # nothing changed
    clock.advance(3600)  # the clock alone: the time elapsed, the time that remains
    assert answer()["elapsed_time"] == "1:00:00"
    clock.advance(86400)  # past the stage's minimum: it waits for something else now
    assert answer()["waiting_for"] != first["waiting_for"]
    manager.evaluate_counts(0, 40)  # new counts of the stage's requests
    assert answer()["stage_requests"] == 40
    manager.evaluate_counts(0, 90)
    assert answer()["stage_requests"] == 90
    manager.error_rate_source = lambda: 0.001
    asyncio.run(manager.check_and_advance())  # a check, which the status shows
    assert answer()["last_check"]["action"] == "waiting_for_approval"
    manager.error_rate_source = failing_source
    asyncio.run(manager.check_and_advance())  # a failed check, which moves nothing
    assert answer()["last_check"]["failed"] is True
    manager.manual_advance("alice")  # a move
    assert answer()["current_stage"]["name"] == "quarter"
    enforcer.set_options(enforce=False)  # as a reload of enforce_enabled does
    assert answer()["enforcing"] is False
    manager.min_requests = 500  # as a reload of rollout.min_requests does
    assert answer()["min_requests"] == 500
    manager.manual_rollback("alice", "too early")
    assert answer()["current_stage"]["name"] == "canary"
    assert len(set(answers)) == len(answers) - 1  # only the second answer repeated the first


def test_a_status_that_has_not_changed_is_not_built_again(client, parts, monkeypatch):
    manager = parts["manager"]
    manager.error_rate_source = lambda: 0.001
    asyncio.run(manager.check_and_advance())  # the status shows a last check
    status_as_sent(client)
    built = []
    snapshot = manager._snapshot
    monkeypatch.setattr(manager, "_snapshot", lambda: built.append(1) or snapshot())
    for _ in range(3):
        parts["tracker"].clock.advance(1)
        assert status_as_sent(client) == written_whole(manager)
    assert len(built) == 3  # the status written whole to compare, never the answer's
    manager.manual_advance("alice")
    built.clear()
    assert status_as_sent(client) == written_whole(manager)
    assert len(built) == 2  # the move: built again for the answer


@pytest.mark.parametrize("field", ["_ELAPSED", "_REASON"])
def test_a_status_whose_text_holds_the_mark_of_a_piece_is_written_whole(
    client, parts, monkeypatch, field
):
    # A reason cannot hold the marks themselves (its control characters are replaced): one
    # that a reason can hold stands in for them.
    mark = "marked here"
    monkeypatch.setattr(router_module, field, mark)
    monkeypatch.setattr(router_module, f"{field}_JSON", to_json(mark))
    manager, clock = parts["manager"], parts["tracker"].clock
    manager.manual_advance("alice", mark)
    for _ in range(2):
        clock.advance(60)
        body, tag = status_as_sent(client)
        assert (body, tag) == written_whole(manager)
        assert json.loads(body)["transitions"][-1]["reason"] == mark


def test_the_probes_answer_what_their_models_say(client):
    for path, body in (("/api/v1/healthz", {"status": "ok"}), ("/api/v1/readyz", READY)):
        response = client.get(path)
        assert (response.status_code, response.json()) == (200, body)
        assert response.headers["content-type"] == "application/json"
        assert response.content == json.dumps(body, separators=(",", ":")).encode()


def test_the_routes_asked_most_often_come_first(parts):
    # FastAPI tries an included router's routes in order, and each one passed over costs
    # every request that comes after it.
    names = [route.name for route in create_router(**parts).routes]
    assert names[:3] == ["driftgate:rollout_status", "driftgate:readyz", "driftgate:healthz"]
    assert names.index("driftgate:rollouts_status") > names.index("driftgate:rollout_rollback")


def test_the_status_first_takes_no_probes_request_under_one_prefix(parts):
    app = FastAPI()
    app.include_router(create_router(**parts, probe_prefix="/ops", rollout_prefix="/ops"))
    client = TestClient(app)
    assert client.get("/ops/healthz").json() == {"status": "ok"}
    assert client.get("/ops/readyz").json() == READY
    assert client.get("/ops/metrics").text.startswith("# HELP ")
    assert client.get("/ops/status").json()["current_stage"]["name"] == "canary"


def test_rollout_status_without_a_manager(parts):
    app = FastAPI()
    app.include_router(create_router(tracker=parts["tracker"]))
    response = TestClient(app).get("/api/guardian/rollout/status")
    assert (response.status_code, response.json()) == (404, {"detail": "NO_ROLLOUT"})


@pytest.mark.parametrize(
    "path", ["/api/guardian/rollout/advance", "/api/guardian/rollout/rollback"]
)
def test_admin_needs_the_right_token(client, parts, path):
    missing = client.post(path)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = client.post(path, headers={"Authorization": "Bearer nope"})
    assert (wrong.status_code, wrong.json()) == (403, {"detail": "INVALID_CREDENTIALS"})
    basic = client.post(path, headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    assert parts["manager"].get_status()["version"] == 1  # nothing moved


def test_admin_endpoints_refuse_without_a_token(parts, monkeypatch):
    monkeypatch.delenv("DRIFTGATE_ADMIN_TOKEN", raising=False)
    app = FastAPI()
    app.include_router(create_router(**parts))
    response = TestClient(app).post("/api/guardian/rollout/advance", headers=AUTH)
    assert (response.status_code, response.json()) == (403, {"detail": "ADMIN_DISABLED"})


def history_operation(manager) -> str:
    """The operation id of the newest step: one the service chose, when no key was sent."""
    operation: str = manager.get_status()["transitions"][-1]["operation"]
    assert len(operation) == 16
    return operation


def test_advance_and_rollback_with_the_token(client, parts):
    response = client.post("/api/guardian/rollout/advance", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == {
        "success": True,
        "message": "Manually advanced to stage quarter",
        "new_stage": "quarter",
        "new_percentage": 25.0,
        "action": "advanced",
        "previous_stage": "canary",
        "version": 2,
        "operation": history_operation(parts["manager"]),
        "replayed": False,
    }
    history = parts["manager"].get_status()["transitions"]
    assert history[-1]["reason"] == "manual advance"  # no body: the default reason
    again = client.post(
        "/api/guardian/rollout/advance", headers=AUTH, json={"reason": "fix in 1.4.2"}
    )
    assert again.json()["new_stage"] == "half"
    assert parts["manager"].get_status()["transitions"][-1]["reason"] == "fix in 1.4.2"
    response = client.post(
        "/api/guardian/rollout/rollback", headers=AUTH, json={"reason": "error spike"}
    )
    assert response.json()["new_stage"] == "quarter"
    history = parts["manager"].get_status()["transitions"]
    assert history[-1]["actor"] == "admin-token"
    assert history[-1]["reason"] == "error spike"
    assert client.post("/api/guardian/rollout/rollback", headers=AUTH).json()["new_stage"] == (
        "canary"
    )
    assert client.post("/api/guardian/rollout/rollback", headers=AUTH).json()["new_stage"] == (
        "aborted"
    )


def test_advance_at_the_final_stage_is_400(client, parts):
    for _ in range(4):
        parts["manager"].manual_advance("ops")
    response = client.post("/api/guardian/rollout/advance", headers=AUTH)
    assert (response.status_code, response.json()) == (400, {"detail": "Already at final stage"})


def test_custom_admin_dependency_names_the_actor(parts):
    app = FastAPI()
    app.include_router(create_router(**parts, admin=lambda: "alice.ops"))
    TestClient(app).post("/api/guardian/rollout/advance")
    assert parts["manager"].get_status()["transitions"][-1]["actor"] == "alice.ops"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", 422),
        (b'{"reason": 5}', 422),
        (b'{"reason": "ok", "extra": 1}', 422),
        (json.dumps({"reason": "x" * 201}).encode(), 422),
        (b"[]", 422),
    ],
)
def test_bad_rollback_bodies_change_nothing(client, parts, body, code):
    response = client.post(
        "/api/guardian/rollout/rollback",
        headers={**AUTH, "Content-Type": "application/json"},
        content=body,
    )
    assert response.status_code == code
    assert parts["manager"].get_status()["version"] == 1


def test_oversized_body_is_413(client, parts):
    response = client.post(
        "/api/guardian/rollout/rollback",
        headers={**AUTH, "Content-Type": "application/json"},
        content=b'{"reason": "' + b"x" * MAX_BODY_BYTES + b'"}',
    )
    assert (response.status_code, response.json()) == (413, {"detail": "BODY_TOO_LARGE"})
    assert parts["manager"].get_status()["version"] == 1


def test_openapi_documents_errors(client):
    schema = client.get("/openapi.json").json()
    advance = schema["paths"]["/api/guardian/rollout/advance"]["post"]["responses"]
    assert {"401", "403", "400"} <= set(advance)


# -- the demo service ------------------------------------------------------------------------


def demo(tmp_path, **values):
    values.setdefault("rollout", {"enabled": False})
    return TestClient(create_demo_app(parse_settings(values)))


def test_verify_with_and_without_drift(tmp_path):
    client = demo(
        tmp_path,
        enforce_enabled=True,
        enforce_rollout_percent=100,
        drift_max_ratio=0.1,
        enforce_readiness_gate={"enabled": True, "min_requests": 10},
    )
    plain = client.post("/verify", json={"policy_id": "lksg.v1", "context": {"subject_id": "a"}})
    assert plain.status_code == 200
    result = plain.json()["result"]
    assert len(result.pop("solution_signature")) == 32
    assert result == {"shadow": "ok", "enforced": "ok", "in_rollout": True, "drift": False}
    for i in range(10):
        drifted = client.post(
            "/verify",
            json={"policy_id": "lksg.v1", "context": {"subject_id": f"s{i}", "_demo_drift": True}},
        )
        assert drifted.json()["result"]["drift"] is True
        assert drifted.json()["verdict"] == "fail"
    assert client.get("/api/v1/readyz").json()["reason"] == "DRIFT_GATE"
    assert (
        'adapt_drift_events_total{policy_id="lksg.v1"} 10\n' in client.get("/api/v1/metrics").text
    )


def signature_metrics(client) -> dict[str, float]:
    text = client.get("/api/v1/metrics").text
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("solver_signature_")
    }


def test_verify_signature_is_stable_and_counted(tmp_path):
    client = demo(tmp_path)
    request = {"policy_id": "p", "context": {"subject_id": "a", "shift": 3}}
    reordered = {"policy_id": "p", "context": {"shift": 3, "subject_id": "a"}}
    first = client.post("/verify", json=request).json()["result"]["solution_signature"]
    assert client.post("/verify", json=reordered).json()["result"]["solution_signature"] == first
    other = {"policy_id": "p", "context": {"subject_id": "b", "shift": 3}}
    assert client.post("/verify", json=other).json()["result"]["solution_signature"] != first
    assert signature_metrics(client) == {
        "solver_signature_runs_total": 3.0,
        "solver_signature_unique_total": 2.0,
        "solver_signature_mismatch_total": 0.0,
    }


def test_verify_unstable_signature_is_a_determinism_mismatch(tmp_path):
    client = demo(tmp_path)
    request = {"policy_id": "p", "context": {"subject_id": "a", "_demo_unstable": True}}
    signatures = {
        client.post("/verify", json=request).json()["result"]["solution_signature"]
        for _ in range(3)
    }
    assert len(signatures) == 3
    counts = signature_metrics(client)
    assert counts["solver_signature_unique_total"] == 3.0
    assert counts["solver_signature_mismatch_total"] == 2.0


def test_verify_outside_the_cohort_never_drifts(tmp_path):
    client = demo(tmp_path)  # shadow only
    body = client.post("/verify", json={"policy_id": "p", "context": {"_demo_drift": True}}).json()
    assert body["result"]["in_rollout"] is False
    assert body["result"]["drift"] is False


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"policy_id": "bad id!", "context": {}}, 422),
        ({"policy_id": "p", "context": []}, 422),
        ({"policy_id": "p", "context": {}, "backend": "sap"}, 422),
        ({"policy_id": "p"}, 422),
        ({"policy_id": "p", "context": {}, "surprise": 1}, 422),
    ],
)
def test_bad_verify_bodies_count_nothing(tmp_path, body, code):
    client = demo(tmp_path)
    assert client.post("/verify", json=body).status_code == code
    assert client.post("/verify", content=b"{broken").status_code == 422
    assert "adapt_requests_total{" not in client.get("/api/v1/metrics").text


def test_verify_body_over_a_mebibyte_is_413(tmp_path):
    client = demo(tmp_path)
    big = {"policy_id": "p", "context": {"blob": "x" * MAX_BODY_BYTES}}
    assert client.post("/verify", json=big).status_code == 413


def test_corrupt_state_file_makes_the_demo_not_ready(tmp_path, monkeypatch):
    state = tmp_path / "rollout.json"
    state.write_text("{corrupt")
    client = demo(
        tmp_path,
        enforce_enabled=True,
        rollout={"enabled": True, "state_path": str(state)},
    )
    response = client.get("/api/v1/readyz")
    assert (response.status_code, response.json()["reason"]) == (503, "STATE_FILE")
    assert state.read_text() == "{corrupt"
    assert client.get("/api/guardian/rollout/status").status_code == 404


def test_concurrent_admin_answers_describe_their_own_transition(client, parts):
    """8 threads press advance and rollback at once: each 200 answer names the move its own
    request made (its version's entry in the history), never another request's."""
    import threading

    answers: list[tuple[str, dict]] = []
    lock = threading.Lock()

    def press(path: str) -> None:
        for _ in range(25):
            response = client.post(f"/api/guardian/rollout/{path}", headers=AUTH)
            if response.status_code == 200:
                with lock:
                    answers.append((path, response.json()))

    threads = [
        threading.Thread(target=press, args=("advance" if i % 2 else "rollback",)) for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    status = parts["manager"].get_status(transitions=100)
    history = status["transitions"]
    first_version = status["version"] - len(history) + 1
    versions = [answer["version"] for _, answer in answers]
    assert len(set(versions)) == len(versions)  # no transition answered twice
    recent = [(path, a) for path, a in answers if a["version"] >= first_version]
    assert len(recent) >= 50
    for path, answer in recent:  # the history keeps the last 100 transitions
        step = history[answer["version"] - first_version]
        assert (step["from"], step["to"]) == (answer["previous_stage"], answer["new_stage"])
        assert answer["action"] in (
            ("advanced", "resumed") if path == "advance" else ("rolled_back", "aborted")
        )
