"""A fleet on 127.0.0.1 for the shared-state tests: Debian's redis-server (append-only file,
fsync on every write, as the durability notes ask) and replicas of the demo service
(`driftgate serve`) sharing one rollout key, each started and stopped by the test through its
own process id. Also a Prometheus stand-in whose answers the test controls."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from servers import free_port, json_server, require_tool, wait_for

TOKEN = "fleet-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
ROLLOUT = "/api/guardian/rollout"
URL_ENV = "DRIFTGATE_TEST_REDIS_URL"

# Manual moves are always possible (no approvals); the day-long stages keep the evaluator
# from moving anything by itself, so every transition in a history is a request's.
MANUAL_STAGES = [
    {"name": name, "percentage": percentage, "duration_seconds": 86400}
    for name, percentage in [("s0", 1), ("s1", 5), ("s2", 10), ("s3", 25), ("s4", 50)]
] + [{"name": "full", "percentage": 100}]


def values_yaml(
    key: str,
    stages: list[dict[str, Any]] = MANUAL_STAGES,
    *,
    prometheus: str | None = None,
    sync_interval: float = 0.5,
    lease_ttl: float = 1.5,
    prometheus_timeout: float = 5,
    gate: dict[str, Any] | None = None,
    store: dict[str, Any] | None = None,
) -> str:
    """A values file for a replica of the fleet: JSON is YAML, and the file is read strictly.
    `gate` is the `enforce_readiness_gate` section, if any; `store` more `rollout.store` keys."""
    rollout: dict[str, Any] = {
        "enabled": True,
        "check_interval_seconds": 1,
        "stages": stages,
        "store": {
            "url_env": URL_ENV,
            "key": key,
            "sync_interval_seconds": sync_interval,
            "lease_ttl_seconds": lease_ttl,
            **(store or {}),
        },
    }
    if prometheus is not None:
        rollout["prometheus"] = {
            "url": prometheus,
            "query": "error_rate",
            "timeout_seconds": prometheus_timeout,
        }
    values: dict[str, Any] = {
        "enforce_enabled": True,
        "rollout": rollout,
    }
    if gate is not None:
        values["enforce_readiness_gate"] = gate
    return json.dumps(values, indent=1)


class RedisServer:
    """redis-server on a free port of 127.0.0.1 with its data in `folder`; killed and started
    again on the same port and data, as after a crash. With `tls` (a folder holding ca.crt,
    server.crt and server.key) it speaks TLS only on that port, client certificates optional;
    `args` are more redis-server arguments."""

    def __init__(
        self,
        folder: Path,
        *,
        tls: Path | None = None,
        args: Sequence[str] = (),
        bind: Sequence[str] = (),
    ):
        self.folder = folder
        # More addresses to listen on besides 127.0.0.1 (e.g. the root ends of veth links);
        # nobody else can reach those, so protected mode (loopback only) is turned off there.
        self.bind = list(bind)
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.args = list(args)
        self.url = f"{'rediss' if tls else 'redis'}://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def _listen(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            *("--port", "0", "--tls-port", str(self.port)),
            *("--tls-cert-file", str(self.tls / "server.crt")),
            *("--tls-key-file", str(self.tls / "server.key")),
            *("--tls-ca-cert-file", str(self.tls / "ca.crt")),
            *("--tls-auth-clients", "optional"),
        ]

    def start(self) -> None:
        binary = require_tool("redis-server", package="redis-server")
        with (self.folder / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    *("--bind", "127.0.0.1", *self.bind, *self._listen()),
                    *(("--protected-mode", "no") if self.bind else ()),
                    *("--dir", str(self.folder), "--save", ""),
                    *("--appendonly", "yes", "--appendfsync", "always"),
                    *("--daemonize", "no", "--loglevel", "warning"),
                    *self.args,
                ],
                stdout=log,
                stderr=log,
            )
        wait_for(lambda: True if self.answers() else None, "redis-server", timeout=15)

    def answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            log = (self.folder / "redis.log").read_text(errors="replace")
            raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{log}")
        try:
            with self.client() as client:
                return bool(client.ping())
        except OSError:
            return False
        except Exception as error:  # redis.ConnectionError and friends
            if type(error).__module__.startswith("redis"):
                return False
            raise

    def client(self, socket_timeout: float = 2) -> Any:
        import redis

        # The test's own client trusts the test's authority for any host name: a server whose
        # certificate names another host is for the store to refuse, not the test.
        tls = {}
        if self.tls is not None:
            tls = {"ssl_ca_certs": str(self.tls / "ca.crt"), "ssl_check_hostname": False}
            if (self.tls / "client.crt").exists():  # for a server that asks for one
                tls["ssl_certfile"] = str(self.tls / "client.crt")
                tls["ssl_keyfile"] = str(self.tls / "client.key")
        return redis.Redis.from_url(
            self.url, socket_timeout=socket_timeout, socket_connect_timeout=2, **tls
        )

    def kill(self) -> None:
        """SIGKILL, as a crash: only what reached the append-only file survives."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a stopped server cannot act on SIGTERM
            self.process.terminate()
            try:
                # A primary waits up to shutdown-timeout (10 s) for lagging replicas.
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class SentinelServer:
    """A Redis Sentinel (redis-server in sentinel mode) on a free port of 127.0.0.1, watching
    the primary at `primary_port` as `service`. Its timings are cut down so that a failover
    takes seconds: the primary is down after 1 s without an answer."""

    def __init__(self, folder: Path, primary_port: int, service: str = "primary"):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.service = service
        # Sentinel rewrites its file with what it learns: one file per sentinel.
        (folder / "sentinel.conf").write_text(
            f"bind 127.0.0.1\nport {self.port}\ndir {folder}\n"
            f"sentinel monitor {service} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {service} 1000\n"
            f"sentinel failover-timeout {service} 3000\n"
            f"sentinel parallel-syncs {service} 1\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = require_tool("redis-server", package="redis-server")
        with (self.folder / "sentinel.log").open("ab") as log:
            self.process = subprocess.Popen(
                [binary, str(self.folder / "sentinel.conf"), "--sentinel"],
                stdout=log,
                stderr=log,
            )

    def primary(self) -> int | None:
        """The port of the primary this sentinel names now (None: it does not answer)."""
        import redis

        try:
            with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1) as client:
                answer = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        except (redis.RedisError, OSError):
            return None
        return None if not answer else int(answer[1])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class Replica:
    """`driftgate serve` for one values file; its output goes to `log` for the test to read."""

    def __init__(
        self,
        folder: Path,
        values: str,
        redis_url: str,
        name: str,
        env: dict[str, str] | None = None,
        *,
        prefix: Sequence[str] = (),
        host: str = "127.0.0.1",
    ):
        self.folder = folder / name
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "values.yaml").write_text(values)
        self.name = name
        self.redis_url = redis_url
        self.env = env or {}  # added to its environment (e.g. libfaketime's)
        self.port = free_port()
        # `prefix` runs the command elsewhere (e.g. `ip netns exec NS`), where it listens on
        # `host`; the process it starts is the replica (ip netns exec execs it).
        self.prefix = list(prefix)
        self.host = host
        self.base = f"http://{host}:{self.port}"
        self.log_path = self.folder / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None
        # One connection pool: a client per request costs more than the request on a busy machine.
        self.http = httpx.Client(base_url=self.base, timeout=10)

    def launch(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != "DRIFTGATE_ADMIN_TOKEN"}
        env.update({"DRIFTGATE_ADMIN_TOKEN": TOKEN, URL_ENV: self.redis_url, **self.env})
        command = [
            *self.prefix,
            *(sys.executable, "-m", "driftgate.cli", "serve"),
            *("--config", str(self.folder / "values.yaml")),
            *("--state-dir", str(self.folder / "state")),
            *("--port", str(self.port), "--log-level", "warning"),
            *(("--host", self.host) if self.host != "127.0.0.1" else ()),
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        return self.process

    def start(self) -> Replica:
        self.launch()
        return self.start_wait()

    def start_wait(self) -> Replica:
        """Waits until the launched replica answers."""
        process = self.process
        assert process is not None

        def up() -> bool | None:
            if process.poll() is not None:
                raise RuntimeError(f"replica {self.name} exited:\n{self.log()}")
            try:
                httpx.get(f"{self.base}/api/v1/healthz", timeout=1)
                return True
            except httpx.TransportError:
                return None

        wait_for(up, f"replica {self.name}", timeout=30)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def stop(self) -> None:
        self.http.close()
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    # -- talking to it -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        response = self.http.get(f"{ROLLOUT}/status")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        state = f"{body['incarnation']}." if body["incarnation"] else ""  # none before a read
        assert response.headers["etag"] == body["etag"] == f'"{state}{body["version"]}"'
        return body

    def version(self) -> int:
        return int(self.status()["version"])

    def metric(self, name: str) -> float | None:
        """The value of a series at /api/v1/metrics with no label, or only the default
        rollout's (None: not exposed)."""
        text = self.http.get("/api/v1/metrics").text
        match = re.search(
            rf'^{re.escape(name)}(?:{{}}|{{rollout="default"}})? (\S+)$', text, re.MULTILINE
        )
        return None if match is None else float(match.group(1))

    def enforced_percent(self) -> float | None:
        return self.metric("adapt_enforce_rollout_percent")

    def move(
        self,
        action: str,
        *,
        if_match: int | str | None = None,
        body: dict[str, Any] | None = None,
        client: httpx.Client | None = None,
    ) -> httpx.Response:
        headers = dict(ADMIN)
        if isinstance(if_match, str):  # an ETag, as the status answered it
            headers["If-Match"] = if_match
        elif if_match is not None:  # a bare version, as older clients send
            headers["If-Match"] = f'"{if_match}"'
        url = f"{self.base}{ROLLOUT}/{action}"
        return (client or self.http).post(url, headers=headers, json=body)


class Fleet:
    """Redis and replicas of one values file, all stopped when the `fleet` context ends."""

    def __init__(self, folder: Path, redis: RedisServer, stack: ExitStack):
        self.folder = folder
        self.redis = redis
        self._stack = stack
        self.replicas: list[Replica] = []
        self._count = 0

    def add(
        self,
        values: str,
        *,
        start: bool = True,
        env: dict[str, str] | None = None,
        host: NetnsHost | None = None,
    ) -> Replica:
        """A replica of `values`; with `host`, run in that namespace and reaching Redis over its
        store link (Redis must listen on `host.store_gateway`)."""
        self._count += 1
        name = f"replica{self._count}"
        if host is None:
            replica = Replica(self.folder, values, self.redis.url, name, env)
        else:
            url = f"redis://{host.store_gateway}:{self.redis.port}/0"
            replica = Replica(
                self.folder, values, url, name, env, prefix=host.prefix, host=host.address
            )
        self._stack.callback(replica.stop)
        self.replicas.append(replica)
        return replica.start() if start else replica

    def by_pid(self, pid: int) -> Replica:
        return next(r for r in self.replicas if r.pid == pid)

    def lease_holder(self, key: str) -> Replica | None:
        """The replica holding the evaluation lease, read from Redis: the lease names its
        holder as "<fence>:<host>-<id>/<token>", and a replica built on its main thread (as
        `driftgate serve` builds it) names itself by that thread's id, its process id."""
        with self.redis.client() as client:
            held = client.get(f"{key}:lease")
        if held is None:
            return None
        holder = held.decode().split(":", 1)[1].split("/", 1)[0]
        pid = int(holder.rsplit("-", 1)[1])
        return next((r for r in self.replicas if r.pid == pid), None)

    def stored(self, key: str) -> dict[str, Any] | None:
        """The rollout document stored in Redis now."""
        with self.redis.client() as client:
            document = client.hget(key, "doc")
        return None if document is None else json.loads(document)


@contextmanager
def fleet(folder: Path) -> Iterator[Fleet]:
    """A running redis-server and room for replicas; everything stops at the end."""
    with ExitStack() as stack:
        redis = RedisServer(folder / "redis")
        stack.callback(redis.stop)
        redis.start()
        yield Fleet(folder, redis, stack)


class ErrorRates:
    """A Prometheus stand-in answering `GET /api/v1/query` with `rate` as a scalar. `hold_next()`
    makes the next query wait until `release()`, so its replica is caught mid-decision."""

    def __init__(self, rate: float = 0.0):
        self.rate = rate
        self.failing = False
        self.queries = 0
        self._lock = threading.Lock()
        self._hold = False
        self.held = threading.Event()  # a query is waiting
        self._release = threading.Event()
        self._held_rate = rate

    def hold_next(self, rate: float) -> None:
        with self._lock:
            self._hold, self._held_rate = True, rate
            self.held.clear()
            self._release.clear()

    def release(self) -> None:
        self._release.set()

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        if not path.startswith("/api/v1/query"):
            return 404, {"status": "error"}
        with self._lock:
            self.queries += 1
            hold, self._hold = self._hold, False
            rate = self._held_rate if hold else self.rate
            failing = self.failing and not hold
        if hold:
            self.held.set()
            self._release.wait(30)
        if failing:
            return 503, {"status": "error", "error": "unavailable"}
        return 200, {
            "status": "success",
            "data": {"resultType": "scalar", "result": [0, str(rate)]},
        }

    @contextmanager
    def serve(self, host: str = "127.0.0.1") -> Iterator[str]:
        with json_server(self.answer, host) as url:
            try:
                yield url
            finally:
                self.release()


def until(check: Any, what: str, timeout: float) -> float:
    """Polls `check` every 10 ms until it is true; returns the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.01)
    return time.monotonic() - start


class NetnsHost:
    """A host of its own for one replica: a network namespace joined to the root namespace by
    two veth pairs, each a /30 of 10.213.0.0/16. Over the store link (`store_gateway`, the
    root end) it reaches Redis; over the client link the test reaches its HTTP port
    (`address`) and it reaches the root end (`client_gateway`, e.g. a Prometheus stand-in
    listening there). `cut()` takes the store link down, so that Redis and the replica lose
    each other while its clients still reach it; `heal()` brings it back. Names carry the
    test process's id; `delete()` removes the namespace and links."""

    _made = 0

    def __init__(self) -> None:
        NetnsHost._made += 1
        number, pid = NetnsHost._made, os.getpid()
        self.namespace = f"dgnet-{pid}-{number}"
        self._devices = {kind: f"dg{pid}{kind}{number}" for kind in ("s", "c")}
        # A /24 per test process, two /30s per host: a pid's hosts never meet another's.
        prefix = f"10.213.{pid % 251}"
        base = (number * 8) % 256
        self.store_gateway, self._store_end = f"{prefix}.{base + 1}", f"{prefix}.{base + 2}"
        self.client_gateway, self.address = f"{prefix}.{base + 5}", f"{prefix}.{base + 6}"
        self.prefix = ["ip", "netns", "exec", self.namespace]

    @staticmethod
    def _ip(*args: str) -> None:
        result = subprocess.run(["ip", *args], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")

    def create(self) -> NetnsHost:
        self._ip("netns", "add", self.namespace)
        inside = ["-n", self.namespace]
        self._ip(*inside, "link", "set", "lo", "up")
        links = [
            (self._devices["s"], "store0", self.store_gateway, self._store_end),
            (self._devices["c"], "client0", self.client_gateway, self.address),
        ]
        for device, peer, gateway, end in links:
            self._ip("link", "add", device, "type", "veth", "peer", "name", peer,
                     "netns", self.namespace)  # fmt: skip
            self._ip("addr", "add", f"{gateway}/30", "dev", device)
            self._ip("link", "set", device, "up")
            self._ip(*inside, "addr", "add", f"{end}/30", "dev", peer)
            self._ip(*inside, "link", "set", peer, "up")
        return self

    def cut(self) -> None:
        self._ip("link", "set", self._devices["s"], "down")

    def heal(self) -> None:
        self._ip("link", "set", self._devices["s"], "up")

    def sockets_to(self, port: int) -> list[tuple[str, int, int]]:
        """The replica's TCP sockets to the store link's `port`, orphans too: (state, local
        port, bytes sent but not yet acknowledged)."""
        result = subprocess.run(
            [*self.prefix, "ss", "-tnH", "state", "all", "dst", f"{self.store_gateway}:{port}"],
            capture_output=True,
            text=True,
            check=True,
        )
        sockets = []
        for line in result.stdout.splitlines():
            state, _, unsent, local, *_ = line.split()
            sockets.append((state, int(local.rsplit(":", 1)[1]), int(unsent)))
        return sockets

    def delete(self) -> None:
        # Deleting the namespace deletes its veth ends, and with them the root ends.
        subprocess.run(["ip", "netns", "delete", self.namespace], capture_output=True)
        for device in self._devices.values():
            subprocess.run(["ip", "link", "delete", device], capture_output=True)


def netns_refused() -> str | None:
    """Why network namespaces cannot be made here (None: they can)."""
    if shutil.which("ip") is None:
        return "no `ip` command (Debian package iproute2)"
    name = f"dgnet-probe-{os.getpid()}"
    result = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if result.returncode != 0:
        return f"`ip netns add` refused: {result.stderr.strip()} (needs root)"
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    return None


class SentinelRedis:
    """A primary, one replica of it (`standby`) and three sentinels watching them as
    "primary", all on 127.0.0.1 and stopped when `stack` closes; ready once every sentinel
    knows the standby and the two other sentinels."""

    def __init__(self, folder: Path, stack: ExitStack):
        import redis

        self.primary = RedisServer(folder / "primary")
        stack.callback(self.primary.stop)
        self.primary.start()
        self.standby = RedisServer(
            folder / "standby", args=["--replicaof", "127.0.0.1", str(self.primary.port)]
        )
        stack.callback(self.standby.stop)
        self.standby.start()
        self.sentinels = [
            SentinelServer(folder / f"sentinel{i}", self.primary.port) for i in range(3)
        ]
        for sentinel in self.sentinels:
            stack.callback(sentinel.stop)
            sentinel.start()

        def knows_everyone(sentinel: SentinelServer) -> bool:
            try:
                with redis.Redis(port=sentinel.port, socket_timeout=1) as client:
                    state = client.sentinel_master("primary")
                    return state["num-slaves"] == 1 and state["num-other-sentinels"] == 2
            except (redis.RedisError, OSError):
                return False

        until(lambda: all(knows_everyone(s) for s in self.sentinels), "the sentinels to meet", 20)

    def store(self) -> dict[str, Any]:
        """The `rollout.store` keys that reach this primary through the sentinels."""
        return {
            "sentinels": [f"127.0.0.1:{s.port}" for s in self.sentinels],
            "sentinel_service": "primary",
        }

    def named(self, server: RedisServer) -> bool:
        """Whether every sentinel names `server` the primary."""
        return all(s.primary() == server.port for s in self.sentinels)
