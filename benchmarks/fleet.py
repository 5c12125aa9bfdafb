"""Fleet figures: how fast three replicas sharing one rollout through Redis follow a transition,
with the commit's hint and with hints lost (only the poll finds it), and admin transitions per
second through Redis against the local state file, in one run.

    python benchmarks/fleet.py [--transitions 200] [--output docs/benchmarks.md]
    python benchmarks/fleet.py --smoke    # every step on a few transitions, no figures judged

The benchmark starts its own redis-server (appendonly yes, appendfsync always, as production
should run it) on 127.0.0.1 beside the state file, so both stores fsync to the same disk. The
three replicas are three RolloutManagers, each with its own RedisStateStore and connections, in
this process. A transition that does not commit, or a replica that does not apply it within
ten sync intervals, stops the run: no figure is reported from a run that failed.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import driftgate
from driftgate import DecisionAction, EnforceOptions, Enforcer, RolloutConfig, RolloutManager
from driftgate.store import RedisStateStore
from report import write_section

APPLIED = {DecisionAction.ADVANCED, DecisionAction.ROLLED_BACK}


class BenchmarkError(Exception):
    """The run cannot give a figure worth reporting."""


@dataclass(frozen=True)
class Profile:
    transitions: int  # per propagation variant
    throughput_transitions: int  # per store
    sync_interval: float
    smoke: bool


@dataclass
class Figure:
    name: str
    value: str
    target: str
    passed: bool


class Replica(RolloutManager):
    """A manager that notes when it first holds each version (its store's follower thread
    calls `follow` with every document it reads)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.applied: dict[int, float] = {}
        self.changed = threading.Condition()
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def follow(self, document: str, read_at: int | None = None) -> bool:
        moved = super().follow(document, read_at)
        version = self.version
        with self.changed:
            self.applied.setdefault(version, time.perf_counter())
            self.changed.notify_all()
        return moved

    def wait_for(self, version: int, timeout: float) -> float:
        """When this replica first held `version` (perf_counter seconds)."""
        with self.changed:
            if not self.changed.wait_for(lambda: version in self.applied, timeout):
                raise BenchmarkError(
                    f"a replica did not apply version {version} within {timeout:g} s "
                    f"(it holds {self.version})"
                )
            return self.applied[version]


class HintlessStore(RedisStateStore):
    """Publishes and listens on a channel of its own: no replica hears another's hint, so a
    commit is found only by the poll every sync interval."""

    @property
    def _channel(self) -> str:
        return f"{self.key}:changed:{id(self)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A redis-server on 127.0.0.1 with the durable settings; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchmarkError("redis-server not found (Debian package: redis-server)")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / "redis.log"
    process = subprocess.Popen(
        [
            *(binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder)),
            *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
            *("--logfile", str(log), "--daemonize", "no"),
        ]
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                raise BenchmarkError(f"redis-server exited with {process.returncode}: see {log}")
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise BenchmarkError("redis-server did not answer within 10 s") from None
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        process.terminate()
        process.wait(10)


def manager_for(store: RedisStateStore | None, state_path: Path | None, kind=RolloutManager):
    enforcer = Enforcer(EnforceOptions(enforce=True), driftgate.DriftTracker())
    return kind(RolloutConfig.default(), enforcer=enforcer, store=store, state_path=state_path)


def move(manager: RolloutManager, n: int) -> int:
    """Transition n: canary -> quarter on even n, back on odd n. Returns the version. A commit
    that hangs (a deadlock) ends the process with every thread's traceback."""
    faulthandler.dump_traceback_later(60, exit=True)
    try:
        if n % 2 == 0:
            decision = manager.manual_advance(actor="bench")
        else:
            decision = manager.manual_rollback(actor="bench", reason="bench")
    finally:
        faulthandler.cancel_dump_traceback_later()
    if not decision.success or decision.action not in APPLIED:
        raise BenchmarkError(f"transition {n} did not commit: {decision!r}")
    return decision.version


def propagation(url: str, key: str, profile: Profile, hints: bool, count: int = 3) -> list[float]:
    """Seconds from the advance call on one of `count` replicas to the last of them holding
    its version, for each transition; the committing replica rotates."""
    kind = RedisStateStore if hints else HintlessStore
    stores = [
        kind(url, key, sync_interval_seconds=profile.sync_interval, replica=f"replica-{i}")
        for i in range(count)
    ]
    replicas = [manager_for(store, None, Replica) for store in stores]
    rng = random.Random(7)
    timeout = 10 * profile.sync_interval + 5
    try:
        deadline = time.monotonic() + timeout
        while not all(r.synced and r.version == replicas[0].version for r in replicas):
            if time.monotonic() > deadline:
                raise BenchmarkError(f"the {count} replicas did not agree on a first version")
            time.sleep(0.01)
        if replicas[0].config.current_stage().name != "canary":
            raise BenchmarkError(f"the rollout at {key} does not start at canary")
        latencies = []
        for n in range(profile.transitions):
            if not hints:
                # a random phase against the replicas' polls, as a real commit has
                time.sleep(rng.uniform(0, profile.sync_interval))
            writer = replicas[n % count]
            start = time.perf_counter()
            version = move(writer, n)
            committed = time.perf_counter()  # the writer holds it once its call returns
            others = [r.wait_for(version, timeout) for r in replicas if r is not writer]
            latencies.append(max(committed, *others) - start)
        return latencies
    finally:
        for replica in replicas:
            replica.close()


def transitions_per_second(manager: RolloutManager, count: int) -> float:
    start = time.perf_counter()
    for n in range(count):
        move(manager, n)
    return count / (time.perf_counter() - start)


def throughput(url: str, folder: Path, profile: Profile) -> tuple[list[float], list[float]]:
    """Transitions per second of one manager through Redis, and on a local state file, each
    the median of three rounds run alternately."""
    store = RedisStateStore(url, "bench:throughput", sync_interval_seconds=profile.sync_interval)
    shared = manager_for(store, None)
    local = manager_for(None, folder / "rollout.json")
    redis_rates, file_rates = [], []
    try:
        rounds = 1 if profile.smoke else 3
        for _ in range(rounds):
            redis_rates.append(transitions_per_second(shared, profile.throughput_transitions))
            file_rates.append(transitions_per_second(local, profile.throughput_transitions))
    finally:
        shared.close()
    return redis_rates, file_rates


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def filesystem(path: Path) -> str:
    result = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def run(profile: Profile, folder: Path) -> tuple[list[Figure], float]:
    started = time.perf_counter()
    with redis_server(folder / "redis") as url:
        with_hints = propagation(url, "bench:hints", profile, hints=True)
        without = propagation(url, "bench:nohints", profile, hints=False)
        redis_rates, file_rates = throughput(url, folder, profile)
    redis_rate, file_rate = statistics.median(redis_rates), statistics.median(file_rates)
    interval_ms = profile.sync_interval * 1000
    figures = []
    for label, values, limit, target in (
        ("with hints", with_hints, 1000.0, "p99 <= 1 s"),
        # the interval plus 10 %: the time includes the commit and the poll's own read
        (
            "hints lost (poll only)",
            without,
            1.1 * interval_ms,
            f"p99 <= {1.1 * interval_ms:g} ms (the interval + 10 %)",
        ),
    ):
        ms = [v * 1000 for v in values]
        p50, p99 = statistics.median(ms), percentile(ms, 0.99)
        figures.append(
            Figure(
                f"commit to the last of three replicas applying it, {label}, "
                f"over {len(ms)} transitions",
                f"median {p50:.2f} ms, p99 {p99:.2f} ms, max {max(ms):.2f} ms",
                target,
                p99 <= limit,
            )
        )
    figures.append(
        Figure(
            "admin transitions per second, Redis (appendfsync always) / local state file",
            f"{redis_rate:.0f} / {file_rate:.0f} per s = {redis_rate / file_rate:.2f}x "
            f"(rounds: Redis {min(redis_rates):.0f}-{max(redis_rates):.0f}, "
            f"file {min(file_rates):.0f}-{max(file_rates):.0f})",
            "(for reference)",
            True,
        )
    )
    return figures, time.perf_counter() - started


def section(figures: list[Figure], profile: Profile, command: str, took: float, fs: str) -> str:
    rows = "\n".join(
        f"| {f.name} | {f.value} | {f.target} | {'yes' if f.passed else 'NO'} |" for f in figures
    )
    return f"""## Fleet (shared state in Redis)

- Command: `{command}`
- Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, \
driftgate {driftgate.__version__}; redis-server and the state file on {fs}; load average \
{os.getloadavg()[0]:.1f} at the end (the replicas share this machine's cores with the rest of it)
- Run took {took:.0f} s

| what | measured | target | met |
|---|---|---|---|
{rows}

Notes:
- Three `RolloutManager`s, each with its own `RedisStateStore` (its own connections and \
follower thread), in one process, with one redis-server on 127.0.0.1 that the benchmark \
starts with `appendonly yes` and `appendfsync always`. The time runs from the \
`manual_advance`/`manual_rollback` call on one replica (the writer rotates) to the moment the \
last of the other two holds the new version (their follower hands it to `follow`); it \
includes the commit itself.
- Hints lost: each store publishes and listens on a channel of its own, so the others find \
the commit by polling the version every `sync_interval_seconds` ({profile.sync_interval:g} s \
here; 5 s by default). Each transition waits a random part of an interval first, so commits \
fall at random points of the replicas' poll cycles. The time can pass the interval by the \
commit and the poll's own read (and a late wake-up of the polling thread on a busy machine), \
hence the 10 % in the target.
- Transitions per second: one manager moving canary <-> quarter as fast as it can, the \
median of alternating rounds of {profile.throughput_transitions} transitions. Each Redis \
transition is a read and a compare-and-set script that Redis appends and fsyncs before it \
answers; each file transition writes a temp file and fsyncs it and its folder. Either is far \
above what a rollout needs (a handful of transitions a day); the figure says what a commit \
costs.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=200, help="per variant (default 200)")
    parser.add_argument("--sync-interval", type=float, default=0.5, help="seconds (default 0.5)")
    parser.add_argument("--output", type=Path, help="write the section into this Markdown file")
    parser.add_argument("--smoke", action="store_true", help="a few transitions, nothing judged")
    args = parser.parse_args()
    if args.smoke:
        profile = Profile(6, 10, 0.2, True)
    else:
        if args.transitions < 2:
            parser.error(f"--transitions {args.transitions}: expected at least 2")
        if not 0.05 <= args.sync_interval <= 60:
            parser.error(f"--sync-interval {args.sync_interval}: expected 0.05 to 60 seconds")
        profile = Profile(args.transitions, 200, args.sync_interval, False)
    command = "python benchmarks/fleet.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="driftgate-fleet-bench-", dir=Path.cwd()) as tmp:
        folder = Path(tmp)
        try:
            figures, took = run(profile, folder)
        except BenchmarkError as error:
            print(f"fleet benchmark failed: {error}; no figures reported", file=sys.stderr)
            return 1
        fs = filesystem(folder)
    for figure in figures:
        print(f"{figure.name}: {figure.value} (target {figure.target})")
    if args.output is not None:
        write_section(args.output, "fleet", section(figures, profile, command.strip(), took, fs))
    if profile.smoke:
        print("smoke run: every fleet step ran")
        return 0
    return 0 if all(f.passed for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
