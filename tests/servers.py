"""Real servers for tests, started on 127.0.0.1 and stopped by the test: the demo service under
uvicorn (`driftgate serve`), Debian's Prometheus, and small JSON endpoints in a thread."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

import driftgate

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Polls `check` until it returns something other than None (a server coming up, a scrape
    landing: real processes, so real time)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def cohort_keys(count: int, percent: float = 10, prefix: str = "subject") -> list[str]:
    """Subject ids inside a `percent` cohort (seed 0), found with the published hash."""
    keys, i = [], 0
    while len(keys) < count:
        if driftgate.sampling_bucket(f"{prefix}-{i}") < percent * 100:
            keys.append(f"{prefix}-{i}")
        i += 1
    return keys


def _answers(url: str) -> bool | None:
    try:
        httpx.get(url, timeout=1)
        return True
    except httpx.TransportError:
        return None


@contextmanager
def demo_service(
    folder: Path, values: str, token: str | None = None, env: dict[str, str] | None = None
) -> Iterator[str]:
    """`driftgate serve` with the given values file under uvicorn, `env` added to its
    environment; yields its base URL."""
    extra = env or {}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "values.yaml").write_text(values)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DRIFTGATE_ADMIN_TOKEN"}
    if token is not None:
        env["DRIFTGATE_ADMIN_TOKEN"] = token
    env.update(extra)
    command = [
        *(sys.executable, "-m", "driftgate.cli", "serve"),
        *("--config", str(folder / "values.yaml"), "--state-dir", str(folder / "state")),
        *("--port", str(port), "--log-level", "warning"),
    ]
    process = subprocess.Popen(command, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: process.poll() is not None or _answers(f"{base}/api/v1/healthz"),
            "the demo service",
        )
        if process.poll() is not None:
            raise RuntimeError(f"the demo service exited with {process.returncode}")
        yield base
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def json_server(
    answer: Callable[[str, str, bytes], tuple[int, Any]], host: str = "127.0.0.1"
) -> Iterator[str]:
    """An HTTP server on `host` that answers every GET and POST with JSON:
    `answer(method, path, body)` gives (status, value). Yields its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def reply(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, value = answer(self.command, self.path, body)
            payload = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = reply

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            # A client that gave up (a test of timeouts) is no error of the server's; printed,
            # its traceback would land in the stderr the test reads.
            if not isinstance(sys.exc_info()[1], ConnectionError):
                super().handle_error(request, client_address)

    server = Server((host, 0), Handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def require_tool(name: str, package: str = "prometheus") -> str:
    """The path of a Debian tool the test needs. Missing, it skips the test on a developer's
    machine and fails it where DRIFTGATE_REQUIRE_PROMETHEUS=1 (as scripts/test.sh sets, having
    installed every package the tests need)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found (Debian package: {package})"
        if os.environ.get("DRIFTGATE_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


class Prometheus:
    """A Prometheus server on 127.0.0.1 with its own config and storage, queried over HTTP."""

    def __init__(self, folder: Path, targets: list[str], rule_files: list[Path]):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        hosts = ", ".join(f'"{t.removeprefix("http://")}"' for t in targets)
        rules = "".join(f"\n  - {path}" for path in rule_files)
        # scrape and evaluate every second so a test waits seconds, not minutes
        (folder / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files:{rules or ' []'}\n"
            "scrape_configs:\n"
            "  - job_name: verifier\n"
            "    metrics_path: /api/v1/metrics\n"
            f"    static_configs: [{{targets: [{hosts}]}}]\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = require_tool("prometheus")
        with (self.folder / "prometheus.log").open("wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={self.folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        wait_for(lambda: True if self.ready() else None, "Prometheus")

    def ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            log = (self.folder / "prometheus.log").read_text(errors="replace")
            raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{log}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)

    def value(self, expr: str) -> float | None:
        """The single number `expr` gives now, or None while it gives no series."""
        samples = self.query(expr)
        if not samples:
            return None
        assert len(samples) == 1, f"{expr!r} gave {len(samples)} series"
        return float(samples[0]["value"][1])

    def query(self, expr: str) -> list[dict]:
        """The instant vector `expr` evaluates to now (a scalar comes back as one sample)."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{expr!r}: {body.get('errorType')}: {body.get('error')}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]
