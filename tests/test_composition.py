"""driftgate.service: a values file's service installed on an app of the user's own, in process."""

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import driftgate
from driftgate.service import CurrentService, Service, current_service
from driftgate.service.sinks import SINK_KINDS, build_notifier
from driftgate.service.stores import STORE_KINDS, store_environment
from driftgate.settings import SettingsError, parse_settings

ROLLOUT = {"enforce_enabled": True, "rollout": {"enabled": True, "check_interval_seconds": 60}}


def driftgate_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("driftgate-"))


def users_app(service: Service, events: list[str]) -> FastAPI:
    """A service of the user's own: its lifespan, its route, driftgate installed on it."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        events.append("user started")
        yield
        events.append("user stopped")

    app = FastAPI(lifespan=lifespan)

    @app.get("/decide/{subject}")
    def decide(subject: str, dg: CurrentService) -> dict[str, Any]:
        pair = dg.enforcer.decide("orders.v2", subject, "ok", "fail")
        return {"in_rollout": pair.in_rollout, "verdict": pair.enforced.name}

    service.install(app)
    return app


def test_a_service_from_values_runs_inside_the_users_app_and_lifespan(tmp_path):
    service = Service.from_values(ROLLOUT, state_dir=tmp_path)
    events: list[str] = []
    app = users_app(service, events)
    with TestClient(app) as client:
        assert events == ["user started"]
        assert client.get("/api/v1/readyz").json() == {"status": "ready"}
        status = client.get("/api/guardian/rollout/status").json()
        assert status["current_stage"]["name"] == "canary"
        answers = [client.get(f"/decide/subject-{i}").json() for i in range(400)]
        inside = sum(a["in_rollout"] for a in answers)
        assert 20 <= inside <= 70  # the canary's 10 % of 400, within binomial bounds
        assert all(a["verdict"] == ("FAIL" if a["in_rollout"] else "OK") for a in answers)
        assert service.tracker.counts("5m", "orders.v2") == (inside, 400)
    assert events == ["user started", "user stopped"]
    assert (tmp_path / "rollout.json").exists()  # state_dir placed the state file


def test_the_lifespan_stops_every_thread_the_service_started(tmp_path):
    before = driftgate_threads()
    service = Service.from_values(ROLLOUT, state_dir=tmp_path)
    app = users_app(service, [])
    with TestClient(app) as client:
        client.get("/api/v1/metrics")  # the metrics renderer's threads
        advanced = client.post("/api/guardian/rollout/advance")  # the move queue's thread
        assert advanced.status_code in (401, 403)  # no approver configured: refused
        running = driftgate_threads()
        assert any(name.startswith("driftgate-metrics") for name in running), running
    assert driftgate_threads() == before
    with TestClient(app) as client:  # the app runs again, as a test suite's clients do
        assert client.get("/api/guardian/rollout/status").status_code == 200
    assert driftgate_threads() == before
    service.close()
    with pytest.raises(RuntimeError, match="is closed"), TestClient(app):
        pass


def test_building_a_service_starts_no_thread(tmp_path):
    before = driftgate_threads()
    service = Service.from_values(ROLLOUT, state_dir=tmp_path)
    assert driftgate_threads() == before
    service.close()


def test_a_lifespan_given_to_the_app_and_the_router_runs_once(tmp_path):
    service = Service.from_values(ROLLOUT, state_dir=tmp_path)
    started: list[int] = []
    original = service.lifespan

    @contextlib.asynccontextmanager
    async def counting(app: Any) -> Any:
        async with original(app):
            started.append(len(asyncio.all_tasks()))
            yield

    app = FastAPI(lifespan=counting)
    service.install(app)  # the router's lifespan enters the service's again: nothing happens
    with TestClient(app) as client:
        assert client.get("/api/v1/healthz").status_code == 200
    assert len(started) == 1


def test_two_services_in_one_process_share_nothing(tmp_path):
    first = Service.from_values(ROLLOUT, state_dir=tmp_path / "a")
    second = Service.from_values({"enforce_enabled": True}, state_dir=tmp_path / "b")
    assert first.registry is not second.registry
    assert first.registry is not driftgate.default_registry()
    with TestClient(users_app(first, [])) as one, TestClient(users_app(second, [])) as two:
        one.get("/decide/alice")
        assert first.tracker.counts("5m") == (first.tracker.counts("5m")[0], 1)
        assert second.tracker.counts("5m") == (0, 0)
        assert "guardian_rollout_stage" in one.get("/api/v1/metrics").text
        assert "guardian_rollout_stage" not in two.get("/api/v1/metrics").text
        assert two.get("/api/guardian/rollout/status").status_code == 404
    assert second.rollout is None and second.rollouts == {}
    assert first.rollouts == {"default": first.rollout}


def test_the_dependency_answers_the_service_of_the_requests_app(tmp_path):
    service = Service.from_values(None, state_dir=tmp_path)
    app = FastAPI()

    @app.get("/which")
    def which(dg: CurrentService) -> dict[str, bool]:
        return {"same": dg is service}

    service.install(app)
    with TestClient(app) as client:
        assert client.get("/which").json() == {"same": True}
    assert current_service  # the function behind CurrentService is public too


def test_an_app_takes_one_service(tmp_path):
    app = FastAPI()
    Service.from_values(None, state_dir=tmp_path).install(app)
    with pytest.raises(ValueError, match="already has a driftgate Service"):
        Service.from_values(None, state_dir=tmp_path).install(app)


def test_a_prefix_places_every_endpoint(tmp_path):
    service = Service.from_values(ROLLOUT, state_dir=tmp_path)
    app = FastAPI()
    service.install(app, prefix="/ops")
    with TestClient(app) as client:
        assert client.get("/ops/api/v1/readyz").status_code == 200
        assert client.get("/ops/api/guardian/rollout/status").status_code == 200
        assert client.get("/api/v1/readyz").status_code == 404


def test_a_values_file_reloads_live_and_a_mapping_has_none(tmp_path):
    values = tmp_path / "values.yaml"
    values.write_text("enforce_enabled: true\nenforce_rollout_percent: 10\n")
    service = Service.from_values(values, state_dir=tmp_path, watch=False)
    assert service.enforcer.options.rollout_percent == 10
    values.write_text("enforce_enabled: true\nenforce_rollout_percent: 30\n")
    result = service.reload()
    assert result.success and result.changed == ("enforce_rollout_percent",)
    assert service.enforcer.options.rollout_percent == 30
    assert service.settings.enforce.rollout_percent == 30
    values.write_text("enforce_rollout_percent: 300\n")
    refused = service.reload()
    assert not refused.success and "enforce_rollout_percent" in refused.message
    assert service.enforcer.options.rollout_percent == 30  # the running configuration stays
    from_mapping = Service.from_values({"enforce_enabled": True})
    assert not from_mapping.reload().success


def test_the_values_as_a_mapping_are_checked_as_the_file_is(tmp_path):
    with pytest.raises(SettingsError, match=r"enforce_rollout_percent: expected a number"):
        Service.from_values({"enforce_rollout_percent": "ten"}, state_dir=tmp_path)
    with pytest.raises(SettingsError, match="unknown key 'rolout'"):
        Service.from_values({"rolout": {}}, state_dir=tmp_path)


def test_an_unset_variable_stops_the_build_with_nothing_left_running(tmp_path):
    before = driftgate_threads()
    values = {
        **ROLLOUT,
        "notifications": [{"kind": "slack", "url_env": "DRIFTGATE_TEST_UNSET_HOOK"}],
    }
    with pytest.raises(SettingsError, match=r"notifications\[0\]\.url_env names .* not set"):
        Service.from_values(values, state_dir=tmp_path, environ={})
    with pytest.raises(SettingsError, match=r"rollout.store.url_env names REDIS_NOWHERE"):
        Service.from_values(
            {**ROLLOUT, "rollout": {"enabled": True, "store": {"url_env": "REDIS_NOWHERE"}}},
            environ={},
        )
    with pytest.raises(SettingsError, match=r"admin.token_env names ORDERS_ADMIN_TOKEN"):
        Service.from_values({"admin": {"token_env": "ORDERS_ADMIN_TOKEN"}}, environ={})
    named = Service.from_values(
        {"admin": {"token_env": "ORDERS_ADMIN_TOKEN"}}, environ={"ORDERS_ADMIN_TOKEN": "t" * 32}
    )
    assert named.approvers is not None
    assert driftgate_threads() == before


def test_a_state_file_for_another_stage_list_serves_shadow_only_and_not_ready(tmp_path):
    (tmp_path / "rollout.json").write_text("{not json")
    service = Service.from_values(ROLLOUT, state_dir=tmp_path)
    assert service.rollout is None and service.problems == ["STATE_FILE"]
    assert service.enforcer.options.rollout_percent == 0
    with TestClient(users_app(service, [])) as client:
        answer = client.get("/api/v1/readyz")
        assert answer.status_code == 503 and answer.json()["reason"] == "STATE_FILE"
    assert (tmp_path / "rollout.json").read_text() == "{not json"  # never overwritten


def test_your_own_admin_dependency_and_error_rate_source(tmp_path):
    def ops() -> str:
        return "ops-team"

    service = Service.from_values(
        ROLLOUT, state_dir=tmp_path, admin=ops, error_rate_source=lambda: (0, 1000)
    )
    with TestClient(users_app(service, [])) as client:
        moved = client.post("/api/guardian/rollout/advance")
        assert moved.status_code == 200, moved.text
    assert service.rollout is not None
    assert service.rollout.error_rate_source() == (0, 1000)
    history = service.rollout.get_status()["transitions"]
    assert history[-1]["actor"] == "ops-team"


def test_every_store_and_sink_kind_is_built_in_one_place():
    assert set(STORE_KINDS) == {"redis"}
    assert set(SINK_KINDS) == {"slack", "webhook"}
    settings = parse_settings(
        {
            "rollout": {"enabled": True, "store": {"url_env": "R", "sentinel_password_env": "S",
                                                   "sentinels": ["h:1"],
                                                   "sentinel_service": "p"}},
            "notifications": [
                {"kind": "slack", "url_env": "SLACK"},
                {"kind": "webhook", "url_env": "HOOK", "secret_env": "SECRET"},
            ],
        }
    )  # fmt: skip
    assert settings.store is not None and settings.store.kind == "redis"
    assert store_environment(settings.store) == [
        ("rollout.store.url_env", "R"),
        ("rollout.store.sentinel_password_env", "S"),
    ]
    notifier = build_notifier(
        settings,
        environ={
            "SLACK": "http://127.0.0.1:9/slack",
            "HOOK": "http://127.0.0.1:9/hook",
            "SECRET": "s" * 16,
        },
    )
    assert notifier is not None
    try:
        assert [sink.name for sink in notifier.sinks] == ["slack", "webhook"]
    finally:
        notifier.close()
    assert build_notifier(parse_settings({})) is None


def test_a_store_kind_the_values_do_not_know_is_refused_naming_the_key():
    with pytest.raises(SettingsError, match=r"rollout.store.kind: expected 'redis'"):
        parse_settings({"rollout": {"enabled": True, "store": {"kind": "etcd"}}})


def test_the_demo_is_its_verify_endpoint_on_a_service(tmp_path):
    from driftgate.demo import create_demo_app

    app = create_demo_app(parse_settings(ROLLOUT), state_dir=tmp_path)
    assert isinstance(app.state.driftgate, Service)
    paths = {route.path for route in app.routes if hasattr(route, "path")}
    own = paths - {r.path for r in app.state.driftgate.router.routes if hasattr(r, "path")}
    assert "/verify" in own
    assert own <= {"/verify", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def test_a_path_source_names_its_file(tmp_path: Path):
    path = tmp_path / "values.yaml"
    path.write_text("enforce_rollout_percent: 101\n")
    with pytest.raises(SettingsError, match=rf"{path}: enforce_rollout_percent"):
        Service.from_values(path)


def test_sighup_reloads_every_service_of_the_process(tmp_path):
    import os
    import signal

    files = [tmp_path / "a.yaml", tmp_path / "b.yaml"]
    for file in files:
        file.write_text("enforce_enabled: true\nenforce_rollout_percent: 10\n")
    services = [Service.from_values(file, state_dir=tmp_path, watch=False) for file in files]
    before = signal.getsignal(signal.SIGHUP)

    async def reload_both() -> None:
        assert all(service.reloader is not None for service in services)
        async with services[0].reloader.running(), services[1].reloader.running():  # type: ignore[union-attr]
            for file in files:
                file.write_text("enforce_enabled: true\nenforce_rollout_percent: 40\n")
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(500):  # the reloads run on the loop's executor
                if all(s.enforcer.options.rollout_percent == 40 for s in services):
                    break
                await asyncio.sleep(0.01)

    asyncio.run(reload_both())
    assert [s.enforcer.options.rollout_percent for s in services] == [40, 40]
    assert signal.getsignal(signal.SIGHUP) is before  # handed back when both ended


def test_the_status_says_when_the_kill_switch_is_off(tmp_path):
    service = Service.from_values(
        {"enforce_enabled": False, "rollout": {"enabled": True}}, state_dir=tmp_path
    )
    with TestClient(users_app(service, [])) as client:
        status = client.get("/api/guardian/rollout/status").json()
        assert status["enforced_percentage"] == 10 and status["enforcing"] is False
        answers = [client.get(f"/decide/subject-{i}").json() for i in range(200)]
        assert not any(a["in_rollout"] for a in answers)
    on = Service.from_values(ROLLOUT, state_dir=tmp_path / "on")
    assert on.rollout is not None and on.rollout.get_status()["enforcing"] is True
