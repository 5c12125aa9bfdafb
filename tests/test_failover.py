"""A Sentinel failover under a fleet of `driftgate serve` replicas, on real servers of
127.0.0.1: with `rollout.store.min_replicas_acked: 1` no move answered 200 is lost when the
primary dies mid-storm; with 0, the move the failover loses is reported (the store regressed)
and `driftgate state restore` repairs it. Also the values that set the acknowledgements."""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import driftgate
from driftgate.cli import main as cli
from driftgate.rollout import RolloutManager
from driftgate.settings import SettingsError, parse_settings
from driftgate.store import RedisStateStore, StateOutcomeUnknown
from fleet_servers import (
    ADMIN,
    ROLLOUT,
    URL_ENV,
    RedisServer,
    Replica,
    SentinelRedis,
    until,
    values_yaml,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Advances only, and more stages than a storm makes moves: every answer 200 adds one step to
# a history that keeps them all (the history keeps 100).
MANY_STAGES = [
    {"name": f"s{i}", "percentage": i, "duration_seconds": 86400} for i in range(1, 80)
] + [{"name": "full", "percentage": 100}]
KEY = "failover:rollout"


@dataclass
class Answer:
    key: str
    status: int
    detail: str


def _fleet(tmp_path: Path, stack: ExitStack, cluster: SentinelRedis, acked: int) -> list[Replica]:
    store = {**cluster.store(), "min_replicas_acked": acked, "replica_ack_timeout_seconds": 1}
    values = values_yaml(KEY, MANY_STAGES, store=store)
    replicas = [Replica(tmp_path, values, "redis://primary/0", f"r{i}") for i in (1, 2)]
    for replica in replicas:
        stack.callback(replica.stop)
        replica.launch()
    for replica in replicas:
        replica.start_wait()
    return replicas


def _advance(client: httpx.Client, replica: Replica, key: str) -> Answer:
    try:
        response = client.post(
            f"{replica.base}{ROLLOUT}/advance", headers={**ADMIN, "Idempotency-Key": key}
        )
    except httpx.TransportError as error:
        return Answer(key, 0, type(error).__name__)
    detail = response.json().get("detail", "") if response.status_code != 200 else ""
    return Answer(key, response.status_code, str(detail))


def _history(server: RedisServer) -> list[str]:
    """The operation ids of the stored history on `server`, oldest first."""
    with server.client() as client:
        document = client.hget(KEY, "doc")
    assert document is not None
    return [step["op"] for step in json.loads(document)["transitions"]]


def _stored_etag(server: RedisServer) -> str:
    with server.client() as client:
        document = json.loads(client.hget(KEY, "doc"))
    return f'"{document["incarnation"]}.{document["version"]}"'


def _check_storm(
    answers: list[Answer], history: list[str], retry: Callable[[str], Answer]
) -> dict[str, int]:
    """Every move answered 200 is in `history` (the new primary's), once; none refused with
    STATE_STORE is; a STATE_UNKNOWN one retried with its key is answered 200 and is there once.
    The count of each answer."""
    allowed = {
        (503, "STATE_STORE"),
        (503, "STATE_UNKNOWN"),
        (503, "MOVE_QUEUE_FULL"),
        (409, ""),
        (412, "VERSION_MISMATCH"),
    }
    counts: dict[str, int] = {}
    for answer in answers:
        counts[f"{answer.status} {answer.detail}".strip()] = (
            counts.get(f"{answer.status} {answer.detail}".strip(), 0) + 1
        )
        if answer.status == 200:
            assert history.count(answer.key) == 1, f"move {answer.key} answered 200 is lost"
        elif answer.detail == "STATE_STORE":
            assert answer.key not in history, f"move {answer.key} refused but committed"
        elif answer.detail == "STATE_UNKNOWN":
            again = retry(answer.key)
            assert again.status == 200, again
        else:
            assert answer.status in (0, 400) or (answer.status, answer.detail) in allowed, answer
    return counts


def test_with_one_replica_acknowledging_no_move_answered_200_is_lost_in_a_failover(tmp_path):
    with ExitStack() as stack:
        cluster = SentinelRedis(tmp_path, stack)
        replicas = _fleet(tmp_path, stack, cluster, acked=1)
        answers: list[Answer] = []
        lock = threading.Lock()
        stop = threading.Event()
        done = threading.Semaphore(0)

        def storm(thread: int) -> None:
            with httpx.Client(timeout=30) as client:
                for n in itertools.count():
                    if stop.is_set():
                        return
                    answer = _advance(client, replicas[n % 2], f"t{thread}-{n}")
                    with lock:
                        answers.append(answer)
                    if answer.status == 200:
                        done.release()
                    stop.wait(0.2)  # a storm that outlasts the failover within the stages

        threads = [threading.Thread(target=storm, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(8):  # moves confirmed by the standby before the primary dies
                assert done.acquire(timeout=15), answers
            cluster.primary.kill()
            took = until(lambda: cluster.named(cluster.standby), "the failover", 30)
            # Sentinel makes the old primary a replica of the new one when it is back.
            cluster.primary.start()
            for _ in range(8):  # moves committed on the new primary and its replica
                assert done.acquire(timeout=25), answers
        finally:
            stop.set()
            for thread in threads:
                thread.join(40)
        print(f"failover in {took:.1f} s")

        def retry(key: str) -> Answer:
            with httpx.Client(timeout=30) as client:
                deadline = time.monotonic() + 20
                while True:
                    again = _advance(client, replicas[0], key)
                    if again.status == 200 or time.monotonic() > deadline:
                        return again
                    time.sleep(0.2)

        counts = _check_storm(answers, _history(cluster.standby), retry)
        print(counts)
        history = _history(cluster.standby)
        for key in (a.key for a in answers if a.detail == "STATE_UNKNOWN"):
            assert history.count(key) == 1, key
        etag = _stored_etag(cluster.standby)
        for replica in replicas:
            until(lambda r=replica: r.status()["etag"] == etag, f"{replica.name} follows", 10)
            assert not replica.status()["store"].get("regressed"), replica.status()["store"]
            assert replica.metric("driftgate_state_store_regressed") == 0


def _no_retry(key: str) -> Answer:
    raise AssertionError(f"{key} retried")


def _lose_a_move(cluster: SentinelRedis, mover: Replica) -> tuple[str, float]:
    """A move answered 200 that only the primary has: the standby is stopped while it commits,
    the primary is killed, and the standby, continued, is made the primary. Its key and how
    long the failover took."""
    cluster.standby.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        # A stopped process still receives: the kernel would hold the commit for it. Cut the
        # link, which the stopped standby cannot open again.
        with cluster.primary.client() as client:
            assert client.client_kill_filter(_type="replica") == 1
        with httpx.Client(timeout=30) as client:
            lost = _advance(client, mover, "the-lost-move")
        assert lost.status == 200, lost
    finally:
        cluster.primary.kill()
        cluster.standby.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    took = until(lambda: cluster.named(cluster.standby), "the failover", 30)
    return lost.key, took


def test_with_no_acknowledgement_a_lost_move_is_reported_and_restore_repairs_it(
    tmp_path, monkeypatch
):
    with ExitStack() as stack:
        cluster = SentinelRedis(tmp_path, stack)
        replicas = _fleet(tmp_path, stack, cluster, acked=0)
        first, second = replicas
        assert first.move("advance").status_code == 200
        with cluster.primary.client(socket_timeout=15) as client:  # a loaded machine syncs slowly
            assert client.execute_command("WAIT", 1, 10_000) == 1  # the standby has version 2
        for replica in replicas:
            until(lambda r=replica: r.version() == 2, f"{replica.name} at version 2", 10)
        etag = _stored_etag(cluster.primary)
        values = tmp_path / "values.yaml"
        values.write_text((tmp_path / "r1" / "values.yaml").read_text())
        monkeypatch.setenv(URL_ENV, "redis://primary/0")
        export = tmp_path / "export.json"
        assert cli(["state", "export", "--config", str(values), "-o", str(export)]) == 0

        key, took = _lose_a_move(cluster, first)
        print(f"failover in {took:.1f} s")
        assert key not in _history(cluster.standby)
        with pytest.raises(AssertionError, match="the-lost-move answered 200 is lost"):
            _check_storm([Answer(key, 200, "")], _history(cluster.standby), _no_retry)
        for replica in replicas:
            until(
                lambda r=replica: r.status()["store"].get("regressed"),
                f"{replica.name} reports the store regressed",
                15,
            )
            assert replica.metric("driftgate_state_store_regressed") == 1
            refused = replica.move("advance")
            assert (refused.status_code, refused.json()["detail"]) == (503, "STATE_REGRESSED")

        # The store holds the export itself (the version the failover fell back to): the
        # restore writes it again with a raised generation, which the replicas take.
        restore = ["state", "restore", str(export), "--config", str(values)]
        assert cli(restore) == 0
        for replica in replicas:
            # The ETag alone would not do: a regressed replica answers the one it kept.
            until(
                lambda r=replica: not r.status()["store"].get("regressed"),
                f"{replica.name} restored",
                15,
            )
            assert replica.status()["etag"] == etag
            assert replica.metric("driftgate_state_store_regressed") == 0
        assert second.move("advance", if_match=etag).status_code == 200


# -- waiting for the replicas ----------------------------------------------------------------


def _standby_manager(tmp_path: Path, stack: ExitStack, **options: object) -> RolloutManager:
    """A manager whose store's primary has one replica, which is stopped (SIGSTOP): it never
    confirms a commit. The rollout is stored before it stops."""
    primary = RedisServer(tmp_path / "primary")
    stack.callback(primary.stop)
    primary.start()
    standby = RedisServer(
        tmp_path / "standby", args=["--replicaof", "127.0.0.1", str(primary.port)]
    )
    stack.callback(standby.stop)
    standby.start()
    with primary.client() as client:
        until(lambda: client.execute_command("WAIT", 1, 100) == 1, "the standby to sync", 10)
    store = RedisStateStore(primary.url, KEY, sync_interval_seconds=0.1, **options)  # type: ignore[arg-type]
    stages = [
        driftgate.RolloutStage("s0", 1, 0, 0.05),
        driftgate.RolloutStage("full", 100, 0, 0.05),
    ]
    manager = RolloutManager(driftgate.RolloutConfig(stages), store=store)
    stack.callback(manager.close)
    assert manager.version == 1
    with primary.client(socket_timeout=15) as client:  # a loaded machine syncs slowly
        assert client.execute_command("WAIT", 1, 10_000) == 1
    process = standby.process
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    stack.callback(process.send_signal, signal.SIGCONT)
    return manager


def test_a_replica_wait_longer_than_the_socket_timeout_is_never_taken_for_a_lost_answer(tmp_path):
    # The wait outlasts the socket timeout: its answer must be waited for, and an unconfirmed
    # commit is an unknown outcome, never a 200 read back from the primary alone.
    with ExitStack() as stack:
        manager = _standby_manager(
            tmp_path, stack, socket_timeout=0.5, min_replicas_acked=1, replica_ack_timeout=2.0
        )
        start = time.monotonic()
        with pytest.raises(StateOutcomeUnknown, match="0 of the 1 replicas"):
            manager.manual_advance("alice", operation="op-slow-replica")
        assert time.monotonic() - start >= 2.0  # the whole wait, not one socket timeout


# -- the values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "store, named",
    [
        ({"min_replicas_acked": 101}, "rollout.store.min_replicas_acked: expected an integer"),
        ({"min_replicas_acked": -1}, "rollout.store.min_replicas_acked: expected an integer"),
        ({"min_replicas_acked": True}, "rollout.store.min_replicas_acked: expected an integer"),
        ({"min_replicas_acked": "1"}, "rollout.store.min_replicas_acked: expected an integer"),
        ({"min_replicas_acked": 1.5}, "rollout.store.min_replicas_acked: expected an integer"),
        ({"replica_ack_timeout_seconds": 0}, "rollout.store.replica_ack_timeout_seconds:"),
        ({"replica_ack_timeout_seconds": 61}, "rollout.store.replica_ack_timeout_seconds:"),
        ({"replica_ack_timeout_seconds": "1"}, "rollout.store.replica_ack_timeout_seconds:"),
    ],
)
def test_acknowledgement_values_that_cannot_work_are_refused_naming_them(store, named):
    with pytest.raises(SettingsError) as refused:
        parse_settings({"rollout": {"enabled": True, "store": store}})
    assert str(refused.value).startswith(named), refused.value


def test_acknowledgement_values_reach_the_store(tmp_path, monkeypatch):
    from driftgate.service.stores import build_store

    settings = parse_settings(
        {
            "rollout": {
                "enabled": True,
                "store": {"min_replicas_acked": 2, "replica_ack_timeout_seconds": 0.25},
            }
        }
    )
    assert settings.store is not None
    assert (settings.store.min_replicas_acked, settings.store.replica_ack_timeout_seconds) == (
        2,
        0.25,
    )
    defaults = parse_settings({"rollout": {"enabled": True, "store": {}}}).store
    assert defaults is not None
    assert (defaults.min_replicas_acked, defaults.replica_ack_timeout_seconds) == (0, 1.0)
    with ExitStack() as stack:
        server = RedisServer(tmp_path / "redis")
        stack.callback(server.stop)
        server.start()
        monkeypatch.setenv("DRIFTGATE_REDIS_URL", server.url)
        store = build_store(settings.store)
        stack.callback(store.close)
        assert (store.min_replicas_acked, store.replica_ack_timeout) == (2, 0.25)
