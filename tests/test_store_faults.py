"""The shared store under the faults production brings, against a real redis-server: commits
whose answer is lost (a busy script, a stopped server), a store that forgets (FLUSHALL, a restart
without its data, a failover that lost commits), and the export/restore that repairs it."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import driftgate
from driftgate import cli
from driftgate.notify import Event, Notification, Notifier
from driftgate.rollout import DecisionAction, RolloutManager
from driftgate.store import RedisStateStore, StateOutcomeUnknown, StateStoreError
from fleet_servers import URL_ENV, RedisServer, until, values_yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STAGES = [
    driftgate.RolloutStage("canary", 10, 0, 0.05),
    driftgate.RolloutStage("quarter", 25, 0, 0.05),
    driftgate.RolloutStage("half", 50, 0, 0.05),
    driftgate.RolloutStage("full", 100, 0, 0.05),
]
_keys = itertools.count()

# Keeps the server busy for ARGV[1] microseconds: nothing else runs meanwhile.
BUSY = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
while true do
  t = redis.call('TIME')
  if t[1] * 1000000 + t[2] - start > tonumber(ARGV[1]) then return 1 end
end
"""


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def key() -> str:
    return f"test:faults:{next(_keys)}"


@pytest.fixture
def replicas(redis_server: RedisServer, key: str) -> Iterator[list[RolloutManager]]:
    made: list[RolloutManager] = []
    yield made
    for manager in made:
        manager.close()


def replica(
    redis_server: RedisServer, key: str, made: list[RolloutManager], **options: object
) -> RolloutManager:
    store_options = {"sync_interval_seconds": 0.1, "socket_timeout": 0.25, **options}
    store = RedisStateStore(redis_server.url, key, **store_options)  # type: ignore[arg-type]
    manager = RolloutManager(
        driftgate.RolloutConfig(STAGES), store=store, registry=driftgate.MetricsRegistry()
    )
    made.append(manager)
    return manager


def values_file(folder: Path, key: str) -> Path:
    """The values of a service of this rollout, for the CLI's state commands."""
    stages = [
        {"name": s.name, "percentage": s.percentage, "duration_seconds": 0, "max_error_rate": 0.05}
        for s in STAGES
    ]
    path = folder / "values.yaml"
    path.write_text(values_yaml(key, stages))
    return path


def stored_history(redis_server: RedisServer, key: str) -> list[dict]:
    with redis_server.client() as client:
        document = client.hget(key, "doc")
    return [] if document is None else json.loads(document)["transitions"]


def ops_in(history: list[dict], operation: str) -> int:
    return sum(1 for step in history if step.get("op") == operation)


def stall(redis_server: RedisServer, seconds: float) -> threading.Thread:
    """Runs a busy script for `seconds` on a connection of its own."""

    def run() -> None:
        with redis_server.client() as client:
            client.connection_pool.connection_kwargs["socket_timeout"] = seconds + 10
            client.eval(BUSY, 0, int(seconds * 1_000_000))

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.05)  # the script runs now
    return thread


def stop_as_commits_are_sent(
    redis_server: RedisServer, manager: RolloutManager, monkeypatch: pytest.MonkeyPatch
) -> subprocess.Popen[bytes]:
    """Makes the manager's store stop the server (SIGSTOP) just before it sends a commit, once
    the commit's connection is open (opening one to a stopped server fails before anything is
    sent, and the pool opens one whenever its idle one is busy with the lease or a poll); the
    caller sends SIGCONT to the process returned."""
    process = redis_server.process
    store = manager.store
    assert process is not None and isinstance(store, RedisStateStore)
    send = store._send_commit
    pool = store._client.connection_pool
    get_connection = pool.get_connection
    committing = threading.local()

    def connected_then_stopped(*args, **kwargs):
        connection = get_connection(*args, **kwargs)
        if getattr(committing, "now", False):
            process.send_signal(signal.SIGSTOP)
        return connection

    def stopped_as_it_is_sent(keys, args, operation):
        committing.now = True
        try:
            return send(keys, args, operation)
        finally:
            committing.now = False

    monkeypatch.setattr(pool, "get_connection", connected_then_stopped)
    monkeypatch.setattr(store, "_send_commit", stopped_as_it_is_sent)
    return process


def move(manager: RolloutManager, operation: str) -> str:
    """The answer an admin move gets: 'ok', 'not committed' or 'unknown'."""
    try:
        decision = manager.manual_advance("alice", operation=operation)
    except StateOutcomeUnknown:
        return "unknown"
    except StateStoreError:
        return "not committed"
    assert decision.success, decision.message
    return "ok"


# -- every commit has one known outcome -------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.4, 0.8, 1.6])
def test_a_commit_stalled_past_the_socket_timeout_has_one_known_outcome(
    redis_server, key, replicas, seconds
):
    manager = replica(redis_server, key, replicas)
    busy = stall(redis_server, seconds)
    answer = move(manager, "op-stalled")
    busy.join()
    time.sleep(0.3)  # whatever was queued behind the script has run now
    landed = ops_in(stored_history(redis_server, key), "op-stalled")
    if answer == "ok":
        assert landed == 1
    elif answer == "not committed":
        assert landed == 0  # and it never will: the attempt was abandoned
    else:
        # Not known in time: a retry with the same id answers what happened, exactly once.
        assert move(manager, "op-stalled") == "ok"
        assert ops_in(stored_history(redis_server, key), "op-stalled") == 1
    assert move(manager, "op-stalled") == "ok"
    assert ops_in(stored_history(redis_server, key), "op-stalled") == 1
    assert manager.version == len(stored_history(redis_server, key))


def test_a_commit_sent_to_a_stopped_server_is_known_once_it_answers(
    redis_server, key, replicas, monkeypatch
):
    manager = replica(redis_server, key, replicas)
    other = replica(redis_server, key, replicas)
    process = stop_as_commits_are_sent(redis_server, manager, monkeypatch)
    try:
        answer = move(manager, "op-stopped")
    finally:
        process.send_signal(signal.SIGCONT)
    # The server stopped longer than the read-back's bound: nobody can know yet.
    assert answer == "unknown"
    time.sleep(0.3)
    landed = ops_in(stored_history(redis_server, key), "op-stopped")
    assert landed in (0, 1)
    # The retry reaches another replica: the first outcome if it landed, else applied now.
    retried = other.manual_advance("alice", operation="op-stopped")
    assert retried.success and retried.replayed == (landed == 1)
    assert ops_in(stored_history(redis_server, key), "op-stopped") == 1
    until(lambda: manager.version == other.version, "the replicas agree", 5)


class Collect:
    """A notification sink that keeps what it gets."""

    name = "collect"
    events = frozenset(Event)

    def __init__(self) -> None:
        self.got: list[Notification] = []

    def send(self, notification: Notification, timeout: float) -> None:
        self.got.append(notification)


def announcing_replica(
    redis_server: RedisServer, key: str, made: list[RolloutManager], sink: Collect
) -> RolloutManager:
    store = RedisStateStore(redis_server.url, key, sync_interval_seconds=0.1, socket_timeout=0.25)
    manager = RolloutManager(
        driftgate.RolloutConfig(STAGES),
        store=store,
        registry=driftgate.MetricsRegistry(),
        notifier=Notifier([sink], claim=store.claim),
    )
    made.append(manager)
    return manager


def test_a_commit_whose_answer_was_lost_is_announced_once_by_the_fleet(
    redis_server, key, replicas, monkeypatch
):
    sink = Collect()
    first = announcing_replica(redis_server, key, replicas, sink)
    second = announcing_replica(redis_server, key, replicas, sink)
    process = stop_as_commits_are_sent(redis_server, first, monkeypatch)
    try:
        assert move(first, "op-announced") == "unknown"  # nothing announced yet
    finally:
        process.send_signal(signal.SIGCONT)
    monkeypatch.undo()
    time.sleep(0.3)
    # Retried on both replicas: the fleet announces the move once, whoever answers it.
    assert second.manual_advance("alice", operation="op-announced").success
    assert first.manual_advance("alice", operation="op-announced").replayed
    for manager in (first, second):
        assert manager.notifier is not None
        manager.notifier.join()
    advanced = [n for n in sink.got if n.event is Event.ADVANCED]
    assert [(n.version, n.to_stage) for n in advanced] == [(2, "quarter")]


def test_a_read_back_that_finds_the_commit_answers_it_and_applies_it(
    redis_server, key, replicas, monkeypatch
):
    manager = replica(redis_server, key, replicas)
    store = manager.store
    assert isinstance(store, RedisStateStore)
    sent = store._send_commit

    def answer_lost(keys, args, operation):  # the commit runs, its answer never arrives
        sent(keys, args, operation)
        return None

    monkeypatch.setattr(store, "_send_commit", answer_lost)
    decision = manager.manual_advance("alice", operation="op-lost")
    assert decision.success and not decision.replayed
    assert decision.version == 2 and manager.version == 2
    assert ops_in(stored_history(redis_server, key), "op-lost") == 1


def test_an_abandoned_attempt_never_commits_later(redis_server, key, replicas, monkeypatch):
    manager = replica(redis_server, key, replicas)
    store = manager.store
    assert isinstance(store, RedisStateStore)
    held: list[tuple] = []

    def never_sent(keys, args, operation):  # lost on the way: the read-back abandons it
        held.append((keys, args, operation))
        return None

    monkeypatch.setattr(store, "_send_commit", never_sent)
    assert move(manager, "op-late") == "not committed"
    monkeypatch.undo()
    keys, args, operation = held[0]
    answer = store._send_commit(keys, args, operation)  # it arrives after all
    assert answer[0] == b"abandoned"
    assert ops_in(stored_history(redis_server, key), "op-late") == 0
    assert manager.version == 1


def test_fewer_replicas_than_required_confirming_a_commit_is_an_unknown_outcome(
    redis_server, key, replicas
):
    plain = replica(redis_server, key, replicas)  # stores the rollout
    # This server has no replicas: WAIT times out with 0.
    manager = replica(redis_server, key, replicas, min_replicas_acked=1, replica_ack_timeout=0.05)
    with pytest.raises(StateOutcomeUnknown, match="0 of the 1 replicas"):
        manager.manual_advance("alice", operation="op-wait")
    # It is on the primary, but no replica has it: the retry is not answered done either.
    with pytest.raises(StateOutcomeUnknown, match="0 of the 1 replicas"):
        manager.manual_advance("alice", operation="op-wait")
    # A replica that asks for no acknowledgement answers it from the history.
    retried = plain.manual_advance("alice", operation="op-wait")
    assert retried.success and retried.replayed and retried.version == 2
    assert ops_in(stored_history(redis_server, key), "op-wait") == 1
    with pytest.raises(ValueError, match="min_replicas_acked=-1"):
        RedisStateStore(redis_server.url, key, min_replicas_acked=-1)


def test_a_replica_that_missed_a_restore_cannot_write_over_it(redis_server, key, replicas):
    a = replica(redis_server, key, replicas)
    late = replica(redis_server, key, replicas)
    assert a.manual_advance("alice").success
    until(lambda: late.version == 2, "late follows", 5)
    assert isinstance(late.store, RedisStateStore) and isinstance(a.store, RedisStateStore)
    late.store._follower.stop()  # it hears of nothing from now on  # type: ignore[union-attr]
    # The store's very state restored: the same version, a higher generation.
    with redis_server.client() as client:
        stored = client.hget(key, "doc").decode()
    restored = json.dumps({**json.loads(stored), "restore_generation": 1})
    assert a.store.replace(restored, stored)
    until(lambda: a.get_status()["restore_generation"] == 1, "a takes the restore", 5)
    # The late replica's move is decided on generation 0: it loses the commit, follows the
    # restore and moves on it, so the fleet stays on the restored line.
    moved = late.manual_advance("bob")
    assert moved.success and moved.version == 3
    with redis_server.client() as client:
        assert client.hget(key, "generation") == b"1"
        assert json.loads(client.hget(key, "doc"))["restore_generation"] == 1
    until(lambda: a.version == 3, "a follows", 5)
    assert a.regressed is None


# -- a store that forgets ---------------------------------------------------------------------


def test_a_flushed_store_is_reported_by_every_replica_and_nothing_is_rebuilt(
    redis_server, key, replicas
):
    fleet = [replica(redis_server, key, replicas) for _ in range(3)]
    assert fleet[0].manual_advance("alice").success
    until(lambda: all(m.version == 2 for m in fleet), "the fleet follows", 5)
    with redis_server.client() as client:
        client.flushall()
    until(lambda: all(m.regressed for m in fleet), "every replica reports the loss", 5)
    for manager in fleet:
        status = manager.get_status()
        assert status["store"]["regressed"] and "any more" in status["store"]["regressed"]
        assert status["waiting_for"] == "store"
        assert status["enforced_percentage"] == 25  # serving the last known state
        with pytest.raises(driftgate.StateRegressed):
            manager.manual_rollback("bob")
    text = fleet[0].registry.exposition()
    assert 'driftgate_state_store_regressed{rollout="default"} 1' in text
    with redis_server.client() as client:
        assert not client.exists(key)  # recreated by nobody


def test_a_store_restarted_empty_never_takes_a_stale_write_and_restore_brings_the_etag_back(
    redis_server, key, replicas, tmp_path
):
    fleet = [replica(redis_server, key, replicas) for _ in range(3)]
    assert fleet[0].manual_advance("alice").success
    assert fleet[1].manual_advance("bob").success  # version 3, half
    until(lambda: all(m.version == 3 for m in fleet), "the fleet follows", 5)
    before = fleet[0].get_status()["etag"]
    values = values_file(tmp_path, key)
    export = tmp_path / "export.json"
    environment = {URL_ENV: redis_server.url}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        assert cli.main(["state", "export", "--config", str(values), "-o", str(export)]) == 0
    assert json.loads(export.read_text())["version"] == 3

    # Redis comes back without its data; a replica started now stores a fresh rollout, which
    # people move to the same version number the fleet had seen.
    with redis_server.client() as client:
        client.flushall()
    fresh = replica(redis_server, key, replicas)
    assert fresh.manual_rollback("carol").action == DecisionAction.ABORTED
    assert fresh.manual_advance("carol").success  # version 3 of another incarnation
    until(lambda: all(m.regressed for m in fleet), "the old replicas report it", 5)
    with redis_server.client() as client:
        stored = client.hget(key, "doc")
    # An old replica's move, conditional on the version it saw, writes nothing.
    with pytest.raises(driftgate.StateRegressed):
        fleet[2].manual_advance("alice", expected_version=3)
    with redis_server.client() as client:
        assert client.hget(key, "doc") == stored

    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        assert cli.main(["state", "restore", str(export), "--config", str(values)]) == 0
    everyone = [*fleet, fresh]
    # (The old replicas answered the ETag all along: they kept the state they saw.)
    until(
        lambda: all(m.get_status()["restore_generation"] == 1 for m in everyone),
        "every replica takes the restore",
        5,
    )
    assert all(m.get_status()["etag"] == before for m in everyone)
    assert all(m.regressed is None for m in everyone)
    # Restored again while the store holds the export's state: written with the next
    # generation, the same ETag.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(URL_ENV, redis_server.url)
        assert cli.main(["state", "restore", str(export), "--config", str(values)]) == 0
    until(
        lambda: all(m.get_status()["restore_generation"] == 2 for m in everyone), "generation 2", 5
    )
    assert all(m.get_status()["etag"] == before for m in everyone)
    assert fleet[2].manual_advance("alice", expected_version=3).success


def test_restore_refuses_to_set_a_healthy_state_back_without_force(
    redis_server, key, replicas, tmp_path, capsys
):
    manager = replica(redis_server, key, replicas)
    values = values_file(tmp_path, key)
    export = tmp_path / "export.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(URL_ENV, redis_server.url)
        assert cli.main(["state", "export", "--config", str(values), "-o", str(export)]) == 0
        assert manager.manual_advance("alice").success  # the store moves past the export
        capsys.readouterr()
        assert cli.main(["state", "restore", str(export), "--config", str(values)]) == 1
        assert "Refusing without --force" in capsys.readouterr().err
        assert manager.version == 2
        assert cli.main(["state", "restore", str(export), "--config", "/nonexistent.yaml"]) == 2
        export.write_text("{}")
        assert cli.main(["state", "restore", str(export), "--config", str(values)]) == 1
        assert "nothing was changed" in capsys.readouterr().err
        assert manager.version == 2


def test_a_failover_that_lost_commits_is_a_regression_until_they_are_back(
    redis_server, key, replicas
):
    manager = replica(redis_server, key, replicas)
    with redis_server.client() as client:
        first = client.hgetall(key)
    assert manager.manual_advance("alice").success
    with redis_server.client() as client:
        second = client.hgetall(key)
        client.hset(key, mapping=first)  # what a replica that missed the commit holds
    until(lambda: manager.regressed is not None, "the loss is seen", 5)
    assert "older than version 2" in manager.regressed
    with redis_server.client() as client:
        client.hset(key, mapping=second)
    until(lambda: manager.regressed is None, "the state is back", 5)


def test_a_replica_that_heard_a_commit_it_could_not_read_reports_its_loss(
    redis_server, key, replicas, monkeypatch
):
    """Redis fails over right after a commit: the listener heard the commit's hint, but its
    reads failed until the new primary, which lacks the commit, answered. It reports the store
    regressed all the same, as the replica that committed does."""
    committer = replica(redis_server, key, replicas)
    # Polls once a minute: the hint is all it hears of the commit.
    listener = replica(redis_server, key, replicas, sync_interval_seconds=60)
    with redis_server.client() as client:
        before = client.hgetall(key)
    store = listener.store
    assert isinstance(store, RedisStateStore) and store._follower is not None
    follower = store._follower

    def listening() -> bool:
        with redis_server.client() as client:
            subscribed = dict(client.pubsub_numsub(f"{key}:changed"))[f"{key}:changed".encode()]
        return follower._last_sync is not None and subscribed == 2

    until(listening, "the listener subscribed and read the state", 5)
    reads_fail = threading.Event()
    load = store.load

    def failing_load() -> str | None:
        if reads_fail.is_set():
            raise StateStoreError(f"{store.describe()}: read failed (ConnectionError)")
        return load()

    monkeypatch.setattr(store, "load", failing_load)
    reads_fail.set()
    assert committer.manual_advance("alice").success
    with redis_server.client() as client:
        after = client.hgetall(key)
        client.hset(key, mapping=before)  # the new primary never had version 2
    reads_fail.clear()
    until(lambda: listener.regressed is not None, "the listener reports the loss", 5)
    assert "older than version 2 whose commit it announced" in listener.regressed
    assert listener.version == 1
    until(lambda: committer.regressed is not None, "the committer reports it", 5)
    with pytest.raises(driftgate.StateRegressed):
        listener.manual_advance("bob")
    # The commit is back (the old primary rejoined with it): both take it, the listener at
    # its next read.
    with redis_server.client() as client:
        client.hset(key, mapping=after)
    assert listener.refresh() == 2
    assert listener.regressed is None
    until(lambda: committer.regressed is None, "the committer sees it back", 5)


def test_a_document_an_older_release_wrote_is_followed_and_gets_an_incarnation(
    redis_server, key, replicas
):
    a = replica(redis_server, key, replicas)
    b = replica(redis_server, key, replicas)
    with redis_server.client() as client:
        document = json.loads(client.hget(key, "doc"))
        # An older release's write: no incarnation, no operation ids, and the hash field
        # unknown to it left as it was.
        document.pop("incarnation")
        document.pop("restore_generation")
        document["version"] = 2
        step = dict(document["transitions"][0], **{"from": "canary", "to": "quarter"})
        document["stage_index"], document["stage_name"] = 1, "quarter"
        document["transitions"] = [
            {k: v for k, v in s.items() if k != "op"} for s in [*document["transitions"], step]
        ]
        client.hset(key, mapping={"version": 2, "doc": json.dumps(document)})
    until(lambda: a.version == 2 and b.version == 2, "both follow it", 5)
    incarnation = a.get_status()["incarnation"]
    assert incarnation and a.regressed is None and b.regressed is None
    assert a.manual_advance("alice").success  # written with the incarnation it had
    until(lambda: b.version == 3, "b follows", 5)
    assert b.get_status()["incarnation"] == incarnation and b.regressed is None


def test_a_state_file_from_before_incarnations_loads_and_gets_one_at_its_next_write(
    tmp_path: Path,
):
    path = tmp_path / "state.json"
    manager = RolloutManager(driftgate.RolloutConfig(STAGES), state_path=str(path))
    document = json.loads(path.read_text())
    manager.close()
    del manager
    document.pop("incarnation")
    document.pop("restore_generation")
    for step in document["transitions"]:
        step.pop("op")
    path.write_text(json.dumps(document))
    manager = RolloutManager(driftgate.RolloutConfig(STAGES), state_path=str(path))
    assert manager.get_status()["etag"] == '"1"'
    assert manager.get_status()["incarnation"] is None
    assert manager.manual_advance("alice").success
    written = json.loads(path.read_text())
    assert len(written["incarnation"]) == 16
    assert manager.get_status()["etag"] == f'"{written["incarnation"]}.2"'


def test_a_state_file_exported_and_restored_gives_the_same_etag(tmp_path: Path, capsys):
    values = tmp_path / "values.yaml"
    stages = [
        {"name": s.name, "percentage": s.percentage, "duration_seconds": 0, "max_error_rate": 0.05}
        for s in STAGES
    ]
    values.write_text(json.dumps({"rollout": {"enabled": True, "stages": stages}}))
    folder = tmp_path / "state"
    folder.mkdir()
    path = folder / "rollout.json"
    manager = RolloutManager(driftgate.RolloutConfig(STAGES), state_path=str(path))
    assert manager.manual_advance("alice").success
    before = manager.get_status()["etag"]
    del manager
    export = tmp_path / "export.json"
    where = ["--config", str(values), "--state-dir", str(folder)]
    assert cli.main(["state", "export", *where, "-o", str(export)]) == 0
    path.unlink()  # the disk lost it
    assert cli.main(["state", "restore", str(export), *where]) == 0
    assert f"restored {before} into state file" in capsys.readouterr().out
    restored = RolloutManager(driftgate.RolloutConfig(STAGES), state_path=str(path))
    assert restored.get_status()["etag"] == before
    assert restored.get_status()["restore_generation"] == 1
    # The file now holds a later state than the export: restoring it again is refused.
    assert restored.manual_advance("alice").success
    del restored
    assert cli.main(["state", "restore", str(export), *where]) == 1
    assert cli.main(["state", "restore", str(export), *where, "--force"]) == 0
