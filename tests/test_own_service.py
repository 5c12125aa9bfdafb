"""A service of the user's own, as a new user builds it from the README: a project outside the
checkout, driftgate installed from the wheel, its app and tests taken from the README's blocks,
served by uvicorn with a Redis store, a token file, a webhook and live reload. And the command
line from a base install, with no extra."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from driftgate.notify import verify_signature
from fleet_servers import RedisServer
from servers import free_port, wait_for
from test_docs_run import project_files

pytestmark = [pytest.mark.slow, pytest.mark.integration]

HOOK_SECRET = "hook-secret-" + "s" * 20

# The README's values made a fleet's: the state in Redis, approvers in a token file, a signed
# webhook, the Redis URL and the webhook's URL and secret in the environment.
FLEET_VALUES = """\
enforce_enabled: true
rollout:
  enabled: true
  check_interval_seconds: 60
  store: {url_env: ORDERS_REDIS_URL, key: "orders:rollout", sync_interval_seconds: 0.5}
admin:
  token_file: secrets/approvers.tokens
notifications:
  - {kind: webhook, url_env: ORDERS_HOOK_URL, secret_env: ORDERS_HOOK_SECRET}
"""

# Wraps the README's app to see, after its lifespan has ended, what is left running.
SHUTDOWN_PROBE = """\
import asyncio
import json
import threading

from app import create_app

inner = create_app()


def left_running() -> None:
    threads = [t.name for t in threading.enumerate() if t.name.startswith("driftgate-")]
    # what runs besides uvicorn's server and this lifespan's own task
    current = asyncio.current_task()
    tasks = [
        repr(t)
        for t in asyncio.all_tasks()
        if t is not current and t.get_coro().__qualname__ != "Server.serve"
    ]
    with open("left-running.json", "w") as file:
        json.dump({"threads": threads, "tasks": tasks}, file)


async def app(scope, receive, send):
    if scope["type"] != "lifespan":
        return await inner(scope, receive, send)

    async def sent(message):
        if message["type"] == "lifespan.shutdown.complete":
            left_running()
        await send(message)

    await inner(scope, receive, sent)
"""


def venv_with(folder: Path, *requirements: str, index: bool = True) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    command = [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    if not index:
        command.append("--no-index")
    subprocess.run([*command, *requirements], check=True, timeout=600)
    return folder


@pytest.fixture(scope="module")
def full_venv(built_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return venv_with(
        tmp_path_factory.mktemp("own-venv"), f"{built_wheel}[fastapi,redis]", "pytest>=8"
    )


@pytest.fixture(scope="module")
def base_venv(built_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return venv_with(tmp_path_factory.mktemp("base-venv"), str(built_wheel), index=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The README's project: values.yaml, app.py, tests/test_app.py, written as the reader
    copies them."""
    folder = tmp_path / "orders"
    files = project_files("README.md")
    assert {"values.yaml", "app.py", "tests/test_app.py"} <= set(files), sorted(files)
    for name, code in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(code)
    return folder


def test_the_projects_own_tests_pass_with_the_plugin(project: Path, full_venv: Path) -> None:
    result = subprocess.run(
        [str(full_venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout, result.stdout


class Hook:
    """A webhook receiver on 127.0.0.1 that keeps every delivery's headers and body."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.deliveries.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.deliveries]


@pytest.fixture
def hook() -> Iterator[Hook]:
    receiver = Hook()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def token_line(venv: Path, name: str, token: str, scopes: str) -> str:
    """The approver's line, as `driftgate token-hash` of the base install writes it."""
    result = subprocess.run(
        [str(venv / "bin" / "driftgate"), "token-hash", "--name", name, "--scopes", scopes],
        input=token,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_project_serves_its_route_and_driftgates_from_its_values(
    project: Path, full_venv: Path, base_venv: Path, redis: RedisServer, hook: Hook
) -> None:
    (project / "secrets").mkdir()
    alice = secrets.token_urlsafe(32)
    tokens = project / "secrets" / "approvers.tokens"
    tokens.write_text(token_line(base_venv, "alice", alice, "rollout:advance,rollout:rollback"))
    (project / "values_fleet.yaml").write_text(FLEET_VALUES)
    (project / "shutdown_probe.py").write_text(SHUTDOWN_PROBE)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "ORDERS_VALUES": "values_fleet.yaml",
        "ORDERS_REDIS_URL": redis.url,
        "ORDERS_HOOK_URL": hook.url,
        "ORDERS_HOOK_SECRET": HOOK_SECRET,
    }
    env.pop("DRIFTGATE_ADMIN_TOKEN", None)
    server = subprocess.Popen(
        [
            *(str(full_venv / "bin" / "python"), "-m", "uvicorn", "shutdown_probe:app"),
            *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
        ],
        cwd=project,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with httpx.Client(base_url=base, timeout=10) as client:

            def ready() -> bool | None:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                try:
                    return client.get("/api/v1/readyz").status_code == 200 or None
                except httpx.TransportError:
                    return None

            wait_for(ready, "the project's service")
            checked = client.post("/orders/check", json={"customer": "c-1", "total": 50})
            assert checked.status_code == 200 and checked.json()["verdict"] == "ok"
            status = client.get("/api/guardian/rollout/status")
            assert status.status_code == 200
            assert status.json()["current_stage"]["name"] == "canary"

            # A move by a named approver: committed to Redis, announced on the webhook.
            auth = {"Authorization": f"Bearer {alice}"}
            moved = client.post("/api/guardian/rollout/advance", headers=auth)
            assert moved.status_code == 200, moved.text
            assert moved.json()["new_stage"] == "quarter"
            with redis.client() as store:
                stored = json.loads(store.hget("orders:rollout", "doc"))
            assert stored["version"] == 2 and stored["transitions"][-1]["actor"] == "alice"
            wait_for(lambda: hook.events() or None, "the webhook's delivery", timeout=15)
            headers, body = hook.deliveries[0]
            assert verify_signature(
                HOOK_SECRET,
                body,
                headers["X-Driftgate-Timestamp"],
                headers["X-Driftgate-Signature"],
            )
            assert hook.events()[0]["event"] == "advanced"
            assert hook.events()[0]["actor"] == "alice"

            # The command line from a base install reaches the same service.
            cli = str(base_venv / "bin" / "driftgate")
            checked_status = subprocess.run(
                [cli, "status", "--url", base, "--check"], capture_output=True, text=True
            )
            assert checked_status.returncode == 0, checked_status.stderr
            assert "quarter" in checked_status.stdout

            # A values change applies live.
            (project / "values_fleet.new").write_text(
                FLEET_VALUES.replace("enforce_enabled: true", "enforce_enabled: true\n"
                                     "drift_max_ratio: 0.01")
            )  # fmt: skip
            os.replace(project / "values_fleet.new", project / "values_fleet.yaml")

            def reloaded() -> bool | None:
                text = client.get("/api/v1/metrics").text
                return 'driftgate_config_reloads_total{outcome="success"} 1' in text or None

            wait_for(reloaded, "the live reload", timeout=20)
    finally:
        server.send_signal(signal.SIGTERM)
        _, errors = server.communicate(timeout=30)
    # uvicorn shuts down gracefully, then raises the signal again for its parent to see
    assert server.returncode in (0, -signal.SIGTERM), errors
    left = json.loads((project / "left-running.json").read_text())
    assert left == {"threads": [], "tasks": []}, left


def test_a_base_install_runs_the_command_line_and_names_the_extra_serve_needs(
    base_venv: Path, tmp_path: Path
) -> None:
    cli = str(base_venv / "bin" / "driftgate")
    served = subprocess.run([cli, "serve", "--check"], capture_output=True, text=True)
    assert served.returncode == 2
    assert "pip install 'driftgate[fastapi]'" in served.stderr
    assert "Traceback" not in served.stderr
    nothing = subprocess.run(
        [cli, "status", "--url", f"http://127.0.0.1:{free_port()}"], capture_output=True, text=True
    )
    assert nothing.returncode == 2 and "cannot reach" in nothing.stderr
    assert "Traceback" not in nothing.stderr
