"""Live configuration: a values file reloads without a restart (folder change, SIGHUP, admin
endpoint), a bad one never takes effect, and a request sees one configuration or the other."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import driftgate
from driftgate.fastapi import create_router
from driftgate.identity import token_digest, token_file_line
from driftgate.reload import SETTLE_READS, SETTLE_SECONDS, ConfigReloader, LiveSettings
from driftgate.rollout import RolloutManager, run_rollout_monitor
from driftgate.settings import Settings, load_settings, values_key
from servers import free_port, wait_for

TOKEN = "reload-token"
SUCCESSFUL = "driftgate_config_last_reload_successful"
TIMESTAMP = "driftgate_config_last_reload_success_timestamp_seconds"
RELOADS = "driftgate_config_reloads_total"


def values(drift: float = 0.005, **more: str) -> str:
    lines = [f"drift_max_ratio: {drift}"] + [f"{key}: {value}" for key, value in more.items()]
    return "\n".join(lines) + "\n"


def metric_values(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def metric(exposition: str, name: str, **labels: str) -> float | None:
    return metric_values(exposition).get((name, tuple(sorted(labels.items()))))


# -- the Kubernetes atomic writer ------------------------------------------------------------


class ConfigMapFolder:
    """A folder as the kubelet maintains a ConfigMap volume: the data in a timestamped folder,
    `..data` a symlink to it, and `values.yaml` a symlink to `..data/values.yaml`. An update
    writes a new timestamped folder and renames a new `..data` over the old one (one atomic
    step), then removes the old folder."""

    def __init__(self, folder: Path, text: str, name: str = "values.yaml"):
        self.folder = folder
        self.name = name
        folder.mkdir(parents=True)
        self.generation = 0
        self._current = self._write(text)
        os.symlink(self._current, folder / "..data")
        os.symlink(f"..data/{name}", folder / name)

    @property
    def values_file(self) -> Path:
        return self.folder / self.name

    def _write(self, text: str) -> str:
        self.generation += 1
        name = f"..2026_01_01_00_00_00.{self.generation:06d}"
        (self.folder / name).mkdir()
        (self.folder / name / self.name).write_text(text)
        return name

    def swap(self, text: str) -> None:
        old, self._current = self._current, self._write(text)
        os.symlink(self._current, self.folder / "..data_tmp")
        os.rename(self.folder / "..data_tmp", self.folder / "..data")
        (self.folder / old / self.name).unlink()
        (self.folder / old).rmdir()


def test_configmap_folder_swaps_the_file_behind_the_symlink(tmp_path):
    config = ConfigMapFolder(tmp_path / "config", "a: 1\n")
    config.swap("a: 2\n")
    assert config.values_file.read_text() == "a: 2\n"
    assert sorted(p.name for p in config.folder.iterdir()) == [
        "..2026_01_01_00_00_00.000002",
        "..data",
        "values.yaml",
    ]


# -- a real service --------------------------------------------------------------------------


class Service:
    def __init__(self, base: str, process: subprocess.Popen[bytes], log: Path):
        self.base = base
        self.process = process
        self.log = log

    def metrics(self) -> str:
        return httpx.get(f"{self.base}/api/v1/metrics", timeout=5).text

    def value(self, name: str, **labels: str) -> float | None:
        return metric(self.metrics(), name, **labels)

    def wait_for_value(self, name: str, expected: float, timeout: float = 10.0, **labels: str):
        return wait_for(
            lambda: True if self.value(name, **labels) == expected else None,
            f"{name}{labels or ''} == {expected}",
            timeout,
        )

    def reload(self, token: str | None = TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(f"{self.base}/api/v1/admin/reload", headers=headers, timeout=10)


@contextmanager
def serve(
    config: Path,
    state_dir: Path,
    *,
    launcher: Sequence[str] = ("-m", "driftgate.cli"),
    log_level: str = "warning",
    starting: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> Iterator[Service]:
    """`driftgate serve --config CONFIG` on 127.0.0.1 (`python LAUNCHER serve ...`), its log
    in a file; stopped on exit. `starting(process)` is called while it is not serving yet."""
    port = free_port()
    env = {**os.environ, "DRIFTGATE_ADMIN_TOKEN": TOKEN}
    log = state_dir.parent / f"serve-{port}.log"
    command = [
        *(sys.executable, *launcher, "serve", "--config", str(config)),
        *("--state-dir", str(state_dir), "--port", str(port), "--log-level", log_level),
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool | None:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode}: {log.read_text()}")
        if starting is not None:
            starting(process)
        try:
            return httpx.get(f"{base}/api/v1/healthz", timeout=1).status_code == 200 or None
        except httpx.TransportError:
            return None

    try:
        wait_for(up, "the demo service")
        yield Service(base, process, log)
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.slow
@pytest.mark.integration
def test_a_configmap_swap_changes_the_drift_limit_within_two_seconds(tmp_path):
    config = ConfigMapFolder(tmp_path / "config", values(0.005))
    with serve(config.values_file, tmp_path / "state") as service:
        assert service.value("adapt_drift_max_ratio") == 0.005
        assert service.value(SUCCESSFUL) == 1
        for limit in (0.02, 0.03):  # the second swap is seen as well
            config.swap(values(limit))
            service.wait_for_value("adapt_drift_max_ratio", limit, timeout=2.0)
        exposition = service.metrics()
        assert metric(exposition, RELOADS, outcome="success") == 2
        assert metric(exposition, RELOADS, outcome="failure") == 0
        assert metric(exposition, SUCCESSFUL) == 1


ALICE = "alice-" + "a" * 40
BOB = "bob-" + "b" * 40


def approvers(*names: str) -> str:
    tokens = {"alice": ALICE, "bob": BOB}
    return "".join(
        token_file_line(name, tokens[name], ["rollout:read", "rollout:advance"]) + "\n"
        for name in names
    )


@pytest.mark.slow
@pytest.mark.integration
def test_a_token_removed_from_a_mounted_secret_is_refused_within_seconds(tmp_path):
    # The token file is a Secret mounted apart from the values' ConfigMap: a change of its
    # own folder reloads, and the revoked token is refused from the next request.
    secret = ConfigMapFolder(tmp_path / "secret", approvers("alice", "bob"), "approvers.tokens")
    token_file = json.dumps(str(secret.values_file))
    config = ConfigMapFolder(
        tmp_path / "config",
        values(0.01)
        + "rollout: {enabled: true}\n"
        + f"admin: {{token_file: {token_file}, protect_status: true}}\n",
    )

    def status(token: str) -> int:
        url = f"{service.base}/api/guardian/rollout/status"
        return httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5).status_code

    with serve(config.values_file, tmp_path / "state") as service:
        assert (status(ALICE), status(BOB)) == (200, 200)
        secret.swap(approvers("bob"))
        wait_for(lambda: True if status(ALICE) == 403 else None, "alice refused", 5.0)
        assert status(BOB) == 200
        assert service.value(RELOADS, outcome="success") == 1
        # a token file that cannot be used keeps the approvers in force
        secret.swap(approvers("bob").replace("bob  ", "carol\u00a0", 1) + approvers("alice"))
        service.wait_for_value(RELOADS, 1, outcome="failure")
        assert service.value(SUCCESSFUL) == 0
        assert (status(ALICE), status(BOB)) == (403, 200)
    log = service.log.read_text()
    assert f"admin.token_file: {secret.values_file}:1: contains U+00A0 (NO-BREAK SPACE)" in log
    assert ALICE not in log and token_digest(ALICE).removeprefix("sha256:") not in log


BAD_FILES = {
    "bad YAML": ("drift_max_ratio: [0.5\n", "not valid YAML"),
    "unknown key": (values(0.5) + "drift_max_ration: 0.5\n", "unknown key 'drift_max_ration'"),
    "out of range": (values(1.5), "drift_max_ratio: expected a number in [0, 1], got 1.5"),
}


@pytest.mark.slow
@pytest.mark.integration
def test_an_invalid_swap_keeps_the_old_configuration_until_a_valid_one(tmp_path):
    config = ConfigMapFolder(tmp_path / "config", values(0.01))
    with serve(config.values_file, tmp_path / "state") as service:
        for failures, (name, (text, fault)) in enumerate(BAD_FILES.items(), start=1):
            config.swap(text)
            service.wait_for_value(RELOADS, failures, outcome="failure")
            exposition = service.metrics()
            assert metric(exposition, SUCCESSFUL) == 0, name
            assert metric(exposition, "adapt_drift_max_ratio") == 0.01, name
            log = service.log.read_text()
            assert fault in log, f"{name}: the log does not name the fault:\n{log}"
        stamp = service.value(TIMESTAMP)
        config.swap(values(0.04))
        service.wait_for_value(SUCCESSFUL, 1)
        exposition = service.metrics()
        assert metric(exposition, "adapt_drift_max_ratio") == 0.04
        assert metric(exposition, TIMESTAMP) >= stamp
        assert metric(exposition, RELOADS, outcome="success") == 1
    refusals = [line for line in service.log.read_text().splitlines() if "refused" in line]
    assert len(refusals) == 3 and all("values.yaml" in line for line in refusals), refusals


@pytest.mark.slow
@pytest.mark.integration
def test_sighup_and_the_admin_endpoint_reload(tmp_path):
    # values.yaml links to a file in another folder: edits of that file are no event in the
    # watched folder, so only a SIGHUP or the endpoint can apply them.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "real.yaml").write_text(values(0.01))
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "values.yaml").symlink_to(elsewhere / "real.yaml")
    with serve(tmp_path / "config" / "values.yaml", tmp_path / "state") as service:
        (elsewhere / "real.yaml").write_text(values(0.02))
        service.process.send_signal(signal.SIGHUP)
        service.wait_for_value("adapt_drift_max_ratio", 0.02)
        assert service.value(RELOADS, outcome="success") == 1

        (elsewhere / "real.yaml").write_text(values(0.03, enforce_enabled="true"))
        assert service.reload(token=None).status_code == 401
        assert service.reload(token="wrong").status_code == 403
        assert service.value("adapt_drift_max_ratio") == 0.02  # refused requests changed nothing
        response = service.reload()
        assert response.status_code == 200, response.text
        assert response.json()["changed"] == ["enforce_enabled", "drift_max_ratio"]
        assert service.value("adapt_drift_max_ratio") == 0.03  # applied before the answer

        (elsewhere / "real.yaml").write_text(values(0.03, enforce_enabled="yes please"))
        response = service.reload()
        assert response.status_code == 400
        assert (
            "enforce_enabled: expected true or false, got 'yes please'" in response.json()["detail"]
        )
        assert service.value(SUCCESSFUL) == 0
        assert service.process.poll() is None  # SIGHUP did not end the service


# A values file is built, the store and the state file are read, uvicorn is imported: a SIGHUP
# in those seconds, before the reloader's handler exists, once ended the service.
SIGHUP_WHILE_THE_APP_IS_BUILT = """
import os, signal, sys
import driftgate.demo
from driftgate.cli import main
build = driftgate.demo.create_demo_app
def build_after_a_sighup(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGHUP)
    return build(*args, **kwargs)
driftgate.demo.create_demo_app = build_after_a_sighup
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.integration
def test_a_sighup_while_serve_builds_the_app_is_a_reload_once_it_runs(tmp_path):
    config = tmp_path / "values.yaml"
    config.write_text(values(0.01))
    launcher = ("-c", SIGHUP_WHILE_THE_APP_IS_BUILT)
    with serve(config, tmp_path / "state", launcher=launcher, log_level="info") as service:
        service.wait_for_value(RELOADS, 1, outcome="success")
        assert service.process.poll() is None
    log = service.log.read_text()
    assert f"configuration reload (SIGHUP): {config}: applied (no change)" in log


def sighup_caught(pid: int) -> bool:
    """Whether the process has a handler for SIGHUP now, as the kernel says (SigCgt)."""
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/PID/status")
@pytest.mark.parametrize("attempt", range(3))
def test_sighups_while_serve_starts_never_end_it(tmp_path, attempt):
    # A SIGHUP before the interpreter runs any of driftgate's code ends any Python process, so
    # the first one goes out as soon as the kernel reports SIGHUP caught (the first thing serve
    # does), then one every 0.1 s until the service answers.
    config = tmp_path / "values.yaml"
    config.write_text(values(0.01))
    sent: list[float] = []

    def hang_up(process: subprocess.Popen[bytes]) -> None:
        while not sent and not sighup_caught(process.pid):
            if process.poll() is not None:
                return  # serve's own check reports how it ended
            time.sleep(0.002)
        process.send_signal(signal.SIGHUP)
        sent.append(time.monotonic())

    with serve(config, tmp_path / "state", log_level="info", starting=hang_up) as service:
        assert service.process.poll() is None
        assert httpx.get(f"{service.base}/api/v1/healthz", timeout=5).status_code == 200
    assert sent
    assert "configuration reload (SIGHUP)" in service.log.read_text()


def cohort_bucket(key: str) -> float:
    return driftgate.sampling_bucket(key) / 100


@pytest.mark.slow
@pytest.mark.integration
def test_requests_during_100_reloads_see_one_configuration_or_the_other(tmp_path):
    # A: not enforcing (a 90 % cohort, unused); B: enforcing on 20 %. A mix of the two, enforcing
    # on 90 %, would put a key of bucket 20-90 % in the cohort, which neither configuration does.
    config_a = values(0.01, enforce_enabled="false", enforce_rollout_percent="90")
    config_b = values(0.02, enforce_enabled="true", enforce_rollout_percent="20")
    keys = [f"subject-{i}" for i in range(200)]
    low = [k for k in keys if cohort_bucket(k) < 20][:10]
    middle = [k for k in keys if 20 <= cohort_bucket(k) < 90][:10]
    assert len(low) == len(middle) == 10
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "real.yaml").write_text(config_a)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "values.yaml").symlink_to(elsewhere / "real.yaml")
    with serve(tmp_path / "config" / "values.yaml", tmp_path / "state") as service:
        done = threading.Event()
        seen: list[tuple[str, bool]] = []
        errors: list[str] = []

        def ask() -> None:
            with httpx.Client(base_url=service.base, timeout=10) as client:
                n = 0
                while not done.is_set():
                    key = (low + middle)[n % 20]
                    n += 1
                    body = {"policy_id": "p", "context": {"subject_id": key, "_demo_drift": True}}
                    response = client.post("/verify", json=body)
                    if response.status_code != 200:
                        errors.append(response.text)
                        continue
                    result = response.json()["result"]
                    if result["drift"] != result["in_rollout"]:
                        errors.append(f"{key}: {result}")
                    seen.append((key, result["in_rollout"]))

        threads = [threading.Thread(target=ask) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            for i in range(100):
                temporary = elsewhere / "real.yaml.tmp"
                temporary.write_text(config_b if i % 2 == 0 else config_a)
                temporary.replace(elsewhere / "real.yaml")
                response = service.reload()
                assert response.status_code == 200, response.text
        finally:
            done.set()
            for thread in threads:
                thread.join(30)
        assert not errors
        assert service.value(RELOADS, outcome="success") == 100
        assert service.value(RELOADS, outcome="failure") == 0
    mixed = [key for key, in_rollout in seen if in_rollout and key in middle]
    assert not mixed, f"decisions enforced on 90 %: {mixed[:5]}"
    low_answers = {in_rollout for key, in_rollout in seen if key in low}
    assert low_answers == {True, False}, "the requests did not see both configurations"
    assert len(seen) >= 100


STAGES = """\
rollout:
  enabled: true
  state_path: driftgate-state/rollout.json
  stages:
    - {name: canary, percentage: 10, duration_seconds: 3600, max_error_rate: 0.01}
    - {name: full, percentage: %s, max_error_rate: 0.01}
"""


@pytest.mark.slow
@pytest.mark.integration
def test_a_stage_list_the_state_file_was_not_written_for_is_refused(tmp_path):
    config = ConfigMapFolder(
        tmp_path / "config", values(0.01, enforce_enabled="true") + STAGES % 100
    )
    state = tmp_path / "state" / "rollout.json"
    with serve(config.values_file, tmp_path / "state") as service:
        before = state.read_bytes()
        config.swap(values(0.02, enforce_enabled="true") + STAGES % 90)
        service.wait_for_value(RELOADS, 1, outcome="failure")
        assert service.value(SUCCESSFUL) == 0
        assert service.value("adapt_drift_max_ratio") == 0.01  # nothing of the file applied
        assert service.value("adapt_enforce_rollout_percent", rollout="default") == 10
        assert state.read_bytes() == before
        response = service.reload()
        assert response.status_code == 400
        reason = response.json()["detail"]
        assert "rollout.stages: changed" in reason and str(state) in reason
        assert "at stage 'canary', index 0" in reason
        assert state.read_bytes() == before
        # Back to the list the state was written for, with a new limit: applied.
        config.swap(values(0.02, enforce_enabled="true") + STAGES % 100)
        service.wait_for_value(SUCCESSFUL, 1)
        assert service.value("adapt_drift_max_ratio") == 0.02
    assert "rollout.stages: changed" in service.log.read_text()


# -- serve --check ---------------------------------------------------------------------------


@pytest.mark.integration
def test_serve_check_validates_without_serving(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(values(0.01))
    bad.write_text(values(2))

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "driftgate.cli", "serve", "--config", str(path), "--check"],
            capture_output=True,
            text=True,
            timeout=60,
        )

    ok = check(good)
    assert (ok.returncode, ok.stdout.strip()) == (0, f"{good}: valid")
    refused = check(bad)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert "drift_max_ratio: expected a number in [0, 1], got 2" in refused.stderr


# -- in process ------------------------------------------------------------------------------


def live_service(tmp_path: Path, text: str, rollout: bool = False):
    path = tmp_path / "values.yaml"
    path.write_text(text)
    settings = load_settings(path)
    registry = driftgate.MetricsRegistry()
    tracker = driftgate.DriftTracker(registry=registry)
    enforcer = driftgate.Enforcer(settings.enforce, tracker)
    manager = None
    if rollout:
        manager = RolloutManager(
            settings.rollout,
            enforcer=enforcer,
            state_path=tmp_path / "rollout.json",
            min_requests=settings.rollout_min_requests,
        )
    live = LiveSettings(settings, tracker=tracker, enforcer=enforcer, manager=manager)
    reloader = ConfigReloader(
        path, live.apply, registry=registry, wall=lambda: 1234.0, sleep=no_wait
    )
    return path, registry, enforcer, manager, live, reloader


def no_wait(seconds: float) -> None:
    """The pause between the two reads of a values file: nobody writes it meanwhile."""


def test_a_reload_applies_the_live_keys_and_says_which_changed(tmp_path):
    path, registry, enforcer, _, live, reloader = live_service(tmp_path, values(0.01))
    gate_before = live.current.gate
    path.write_text(
        values(0.02, enforce_enabled="true", enforce_rollout_percent="30")
        + "enforce_readiness_gate: {enabled: true, window: 15m}\n"
    )
    result = reloader.reload("test")
    assert result.success, result.message
    assert result.changed == (
        "enforce_enabled",
        "drift_max_ratio",
        "enforce_rollout_percent",
        "enforce_readiness_gate",
    )
    assert enforcer.options == driftgate.EnforceOptions(True, 30, 0.02)
    gate = live.current.gate
    assert gate is not gate_before
    assert (gate.config.enabled, gate.config.window, gate.config.max_ratio) == (True, "15m", 0.02)
    assert live.current.settings.enforce == enforcer.options
    exposition = registry.exposition()
    assert metric(exposition, SUCCESSFUL) == 1 and metric(exposition, TIMESTAMP) == 1234
    assert reloader.reload("again").changed == ()  # the same file again changes nothing
    assert live.current.gate is gate  # an unchanged gate keeps its state


def test_the_readiness_budget_changes_live_and_keeps_the_gate(tmp_path):
    gate = "enforce_readiness_gate: {enabled: true, max_unready_replicas: %d}\n"
    path, _, _, _, live, reloader = live_service(tmp_path, values(0.01) + gate % 1)
    gate_before = live.current.gate
    assert live.max_unready_replicas() == 1
    path.write_text(values(0.01) + gate % 3)
    result = reloader.reload("test")
    assert result.success, result.message
    assert result.changed == ("enforce_readiness_gate.max_unready_replicas",)
    assert live.max_unready_replicas() == 3
    assert live.current.gate is gate_before  # the gate's state is not reset by the budget
    path.write_text(values(0.01) + gate % 0)
    refused = reloader.reload("test")
    assert not refused.success
    assert "enforce_readiness_gate.max_unready_replicas: expected an integer in [1, 1000]" in (
        refused.message
    )
    assert live.max_unready_replicas() == 3


def test_a_refused_file_changes_nothing_and_says_why(tmp_path, caplog):
    path, registry, enforcer, _, live, reloader = live_service(tmp_path, values(0.01))
    before = live.current
    path.write_text(
        values(0.01, rollout="{prometheus: {url: 'http://ops:hunter2@x:99999', query: up}}")
    )
    result = reloader.reload("test")
    assert not result.success
    assert "rollout.prometheus.url" in result.message and str(path) in result.message
    assert "hunter2" not in result.message and "hunter2" not in caplog.text
    assert "http://***@x:99999" in caplog.text
    assert live.current is before and enforcer.options.drift_max_ratio == 0.01
    exposition = registry.exposition()
    assert metric(exposition, SUCCESSFUL) == 0
    assert metric(exposition, RELOADS, outcome="failure") == 1


def test_a_key_that_changes_only_with_a_restart_is_refused(tmp_path):
    path, _, _, _, live, reloader = live_service(tmp_path, values(0.01))
    before = live.current
    path.write_text(values(0.02, admin="{token_env: OTHER_TOKEN}"))
    result = reloader.reload("test")
    assert not result.success
    assert "admin.token_env: 'OTHER_TOKEN' differs from the running 'DRIFTGATE_ADMIN_TOKEN'" in (
        result.message
    )
    path.write_text(values(0.02, rollout="{enabled: true}"))
    assert "rollout.enabled: true differs" in reloader.reload("test").message
    assert live.current is before


# Every Settings field, the values that change it from RESTART_BASE, and whether a reload
# applies them where the service hands over neither a notifier nor its approvers.
RESTART_BASE = "rollout: {enabled: true}\n"
EVERY_FIELD = {
    "enforce": (RESTART_BASE + "enforce_enabled: true\n", "live"),
    "gate": (RESTART_BASE + "enforce_readiness_gate: {enabled: true}\n", "live"),
    "rollout": ("rollout: {enabled: false}\n", "restart"),
    "state_path": ("rollout: {enabled: true, state_path: elsewhere.json}\n", "restart"),
    "check_interval_seconds": ("rollout: {enabled: true, check_interval_seconds: 60}\n", "live"),
    "rollout_min_requests": ("rollout: {enabled: true, min_requests: 5}\n", "live"),
    "error_rate_source": (
        "rollout: {enabled: true, prometheus: {url: 'http://127.0.0.1:9', query: up}}\n",
        "live",
    ),
    "admin_token_env": (RESTART_BASE + "admin: {token_env: OTHER_TOKEN}\n", "restart"),
    # read at start only (whether the variable must be set): a reload takes no notice
    "admin_token_required": (RESTART_BASE + "admin: {token_env: DRIFTGATE_ADMIN_TOKEN}\n", "live"),
    "store": ("rollout: {enabled: true, store: {key: 'other:rollout'}}\n", "restart"),
    "notifications": (RESTART_BASE + "notifications: [{kind: slack, url_env: HOOK}]\n", "restart"),
    "status_url": ("rollout: {enabled: true, status_url: 'https://ops.example'}\n", "restart"),
    "admin_token_file": (RESTART_BASE + "admin: {token_file: approvers.tokens}\n", "restart"),
    "admin_oidc": (
        RESTART_BASE + "admin: {oidc: {issuer: 'https://id.example', audience: a, "
        "jwks_url: 'https://id.example/certs'}}\n",
        "restart",
    ),
    "admin_protect_status": (RESTART_BASE + "admin: {protect_status: true}\n", "restart"),
    "admin_people": (RESTART_BASE + "admin: {people: {alice: [token_file:alice]}}\n", "restart"),
    "max_unready_replicas": (
        RESTART_BASE + "enforce_readiness_gate: {max_unready_replicas: 2}\n",
        "live",
    ),
    "log_level": (RESTART_BASE + "log_level: debug\n", "restart"),
    # from the one rollout to several: a restart (within rollouts:, see test_rollouts)
    "rollouts": ("rollouts: {orders: {policies: [orders.v2]}}\n", "restart"),
}


def test_every_settings_field_is_covered_by_the_reload_cases():
    assert set(EVERY_FIELD) == {field.name for field in dataclasses.fields(Settings)}


@pytest.mark.parametrize("field", sorted(EVERY_FIELD))
def test_a_refusal_names_the_values_key_as_written_in_the_file(tmp_path, field):
    text, outcome = EVERY_FIELD[field]
    path, _, _, _, live, reloader = live_service(tmp_path, RESTART_BASE, rollout=True)
    before = live.current
    path.write_text(text)
    assert load_settings(path) != before.settings  # the case changes the field
    result = reloader.reload("test")
    if outcome == "live":
        assert result.success, result.message
        return
    assert not result.success
    keys = values_key(field).split(", ")
    named = [key for key in keys if result.message.startswith(f"{path}: {key}: ")]
    assert named, f"{field}: {result.message!r} names none of {keys}"
    assert live.current is before


def test_the_rollout_keeps_the_percentage_and_takes_the_new_minimum(tmp_path, caplog):
    text = "enforce_enabled: true\nenforce_rollout_percent: 5\nrollout: {enabled: true, %s}\n"
    path, _, enforcer, manager, _, reloader = live_service(
        tmp_path, text % "min_requests: 10", rollout=True
    )
    assert enforcer.options.rollout_percent == 10  # canary
    caplog.set_level("INFO", logger="driftgate.reload")
    path.write_text(
        (text % "min_requests: 50, check_interval_seconds: 60").replace("5\n", "80\n", 1)
    )
    result = reloader.reload("test")
    assert result.success, result.message
    assert result.changed == ("rollout.min_requests", "rollout.check_interval_seconds")
    assert enforcer.options.rollout_percent == 10  # still the rollout's
    assert manager.min_requests == 50
    assert "enforce_rollout_percent: 80 is not applied: the rollout sets the percentage" in (
        caplog.text
    )


def test_the_status_says_what_a_reload_changed_from_the_next_request_on(tmp_path):
    text = "enforce_enabled: %s\nrollout: {enabled: true, min_requests: %d}\n"
    path, registry, _, manager, _, reloader = live_service(
        tmp_path, text % ("true", 10), rollout=True
    )
    app = FastAPI()
    app.include_router(
        create_router(tracker=driftgate.DriftTracker(registry=registry), manager=manager)
    )
    client = TestClient(app)

    def status() -> dict:
        return client.get("/api/guardian/rollout/status").json()

    before = status()
    assert (before["enforcing"], before["min_requests"]) == (True, 10)
    assert status()["enforcing"] is True  # asked again, nothing changed
    path.write_text(text % ("false", 50))
    assert reloader.reload("test").success
    after = status()
    assert (after["enforcing"], after["min_requests"]) == (False, 50)
    path.write_text(text % ("true", 50))
    assert reloader.reload("test").success
    assert status()["enforcing"] is True


def test_decisions_during_reloads_see_one_configuration_or_the_other(tmp_path):
    config_a = values(0.01, enforce_enabled="false", enforce_rollout_percent="90")
    config_b = values(0.02, enforce_enabled="true", enforce_rollout_percent="20")
    path, _, enforcer, _, live, _ = live_service(tmp_path, config_a)
    settings = {0.01: load_settings(path)}
    path.write_text(config_b)
    settings[0.02] = load_settings(path)
    middle = [f"k{i}" for i in range(400) if 20 <= cohort_bucket(f"k{i}") < 90]
    done = threading.Event()
    mixed: list[str] = []

    def decide() -> None:
        while not done.is_set():
            for key in middle:
                if enforcer.decide("p", key, "ok", "fail").in_rollout:
                    mixed.append(key)

    threads = [threading.Thread(target=decide) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for i in range(1000):
            live.apply(settings[0.02 if i % 2 == 0 else 0.01])
            current = live.current.settings.enforce
            assert current.drift_max_ratio in settings
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert not mixed


def test_the_monitor_reads_a_live_check_interval_before_each_wait(tmp_path):
    path, _, _, manager, live, reloader = live_service(
        tmp_path, "rollout: {enabled: true, check_interval_seconds: 900}\n", rollout=True
    )
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 1:
            path.write_text("rollout: {enabled: true, check_interval_seconds: 60}\n")
            assert reloader.reload("test").success
        if len(waits) == 2:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run_rollout_monitor(manager, live.check_interval, sleep=sleep))
    assert waits == [900, 60]


def test_the_polling_fallback_reloads_a_changed_file(tmp_path):
    path, registry, enforcer, _, live, _ = live_service(tmp_path, values(0.01))

    async def run() -> None:
        loop = asyncio.get_running_loop()
        applied = asyncio.Event()

        def apply(settings):  # runs in a worker thread
            changed = live.apply(settings)
            loop.call_soon_threadsafe(applied.set)
            return changed

        reloader = ConfigReloader(path, apply, registry=registry, poll_interval=0.02, watch=False)
        async with reloader.running():
            path.write_text(values(0.03))
            await asyncio.wait_for(applied.wait(), 30)

    asyncio.run(run())
    assert enforcer.options.drift_max_ratio == 0.03
    assert metric(registry.exposition(), RELOADS, outcome="success") == 1


# -- a file written in place --------------------------------------------------------------


WHOLE = b"enforce_enabled: true\nenforce_rollout_percent: 100\n"
HALF = WHOLE[:-2]  # "enforce_rollout_percent: 10": half of the file, and it parses


def test_a_file_read_half_written_is_applied_once_two_reads_agree(tmp_path):
    path, registry, enforcer, _, live, _ = live_service(tmp_path, "enforce_enabled: true\n")
    reads = iter([HALF, WHOLE, WHOLE])
    waits: list[float] = []
    reloader = ConfigReloader(
        path, live.apply, registry=registry, read=lambda _: next(reads), sleep=waits.append
    )
    result = reloader.reload("test")
    assert result.success, result.message
    assert enforcer.options.rollout_percent == 100
    assert waits == [SETTLE_SECONDS, SETTLE_SECONDS]  # half != whole, then whole == whole


def test_two_reads_that_agree_at_once_apply_after_one_pause(tmp_path):
    path, registry, enforcer, _, live, _ = live_service(tmp_path, "enforce_enabled: true\n")
    reads = iter([HALF, HALF])
    waits: list[float] = []
    reloader = ConfigReloader(
        path, live.apply, registry=registry, read=lambda _: next(reads), sleep=waits.append
    )
    assert reloader.reload("test").success
    assert enforcer.options.rollout_percent == 10  # what held still is the file
    assert waits == [SETTLE_SECONDS]


def test_a_file_that_keeps_changing_is_not_applied(tmp_path):
    path, registry, enforcer, _, live, _ = live_service(tmp_path, "enforce_enabled: true\n")
    reads = iter([HALF, WHOLE] * SETTLE_READS)
    waits: list[float] = []
    reloader = ConfigReloader(
        path, live.apply, registry=registry, read=lambda _: next(reads), sleep=waits.append
    )
    result = reloader.reload("test")
    assert not result.success
    assert result.message == (
        f"{path}: changed between each of {SETTLE_READS + 1} reads {SETTLE_SECONDS:g} s apart: "
        "not applied until it holds still"
    )
    assert len(waits) == SETTLE_READS
    assert enforcer.options.rollout_percent == 0
    assert metric(registry.exposition(), SUCCESSFUL) == 0


def test_a_values_file_written_in_place_is_applied_whole(tmp_path):
    path, registry, enforcer, _, live, _ = live_service(tmp_path, "enforce_enabled: true\n")
    waits: list[float] = []
    inode = path.stat().st_ino
    with open(path, "wb") as file:  # in place: the same file, truncated, written in two parts
        file.write(HALF)
        file.flush()

        def writer_finishes(seconds: float) -> None:  # the pause between the two reads
            waits.append(seconds)
            if not file.closed:
                file.write(WHOLE[len(HALF) :])
                file.close()

        reloader = ConfigReloader(path, live.apply, registry=registry, sleep=writer_finishes)
        result = reloader.reload("test")
    assert path.stat().st_ino == inode
    assert result.success, result.message
    assert enforcer.options.rollout_percent == 100
    assert waits == [SETTLE_SECONDS, SETTLE_SECONDS]


def test_python_sets_gauges_and_counters_in_the_core_registry(registry):
    registry.set_gauge("x_value", "A value.", 2.5)
    registry.increment_counter("x_events_total", "Events.", {"kind": "a"}, 0)
    registry.increment_counter("x_events_total", "Events.", {"kind": "a"})
    exposition = registry.exposition()
    assert metric(exposition, "x_value") == 2.5
    assert metric(exposition, "x_events_total", kind="a") == 1
    with pytest.raises(ValueError):
        registry.set_gauge("x_events_total", "Events.", 1)  # registered as a counter
    with pytest.raises(ValueError):
        registry.set_gauge("not a name", "Bad.", 1)
    with pytest.raises(ValueError, match="amount"):
        registry.increment_counter("x_events_total", "Events.", {"kind": "a"}, -1)


def test_notification_sinks_change_live_and_an_unset_variable_refuses_the_file(
    tmp_path, monkeypatch
):
    from driftgate.service.sinks import build_notifier

    text = "rollout: {enabled: true, check_interval_seconds: 60}\n"
    path = tmp_path / "values.yaml"
    path.write_text(text)
    settings = load_settings(path)
    tracker = driftgate.DriftTracker(registry=driftgate.MetricsRegistry())
    enforcer = driftgate.Enforcer(settings.enforce, tracker)
    manager = RolloutManager(settings.rollout, enforcer=enforcer, state_path=tmp_path / "r.json")
    live = LiveSettings(
        settings,
        tracker=tracker,
        enforcer=enforcer,
        manager=manager,
        notifier=lambda new: build_notifier(new),
    )
    reloader = ConfigReloader(path, live.apply, registry=driftgate.MetricsRegistry())
    assert manager.notifier is None
    monkeypatch.setenv("HOOK_URL", "http://127.0.0.1:9/hook")
    path.write_text(text + "notifications: [{kind: slack, url_env: HOOK_URL}]\n")
    result = reloader.reload("test")
    assert result.success, result.message
    assert "notifications" in result.changed
    first = manager.notifier
    assert first is not None and [s.name for s in first.sinks] == ["slack"]
    path.write_text(text + "notifications: [{kind: slack, url_env: UNSET_HOOK_URL}]\n")
    refused = reloader.reload("test")
    assert not refused.success
    assert "UNSET_HOOK_URL, which is not set" in refused.message
    assert manager.notifier is first  # nothing changed
    path.write_text(text)
    assert reloader.reload("test").success
    assert manager.notifier is None
