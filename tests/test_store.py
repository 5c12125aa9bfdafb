"""RedisStateStore in this process against a real redis-server on 127.0.0.1: compare-and-set,
fencing, following by hint and by polling, and a URL whose password never shows."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

import driftgate
from driftgate.rollout import DecisionAction, RolloutManager
from driftgate.store import RedisStateStore, StateStoreError, _RecurringProblem, redact_url
from fleet_servers import RedisServer, until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STAGES = [
    driftgate.RolloutStage("canary", 10, 0, 0.05),
    driftgate.RolloutStage("half", 50, 0, 0.05),
    driftgate.RolloutStage("full", 100, 0, 0.05),
]
_keys = itertools.count()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def key() -> str:
    return f"test:store:{next(_keys)}"


@pytest.fixture
def stores(redis_server: RedisServer) -> Iterator[list[RedisStateStore]]:
    """Every store a test makes through `make`, closed at its end."""
    made: list[RedisStateStore] = []
    yield made
    for store in made:
        store.close()


@pytest.fixture
def make(redis_server: RedisServer, stores: list[RedisStateStore], key: str):
    def make_store(**options) -> RedisStateStore:
        options.setdefault("sync_interval_seconds", 60.0)
        options.setdefault("key", key)
        store = RedisStateStore(redis_server.url, **options)
        stores.append(store)
        return store

    return make_store


@pytest.fixture
def managers():
    made: list[RolloutManager] = []
    yield made
    for manager in made:
        manager.close()


def manager_on(store: RedisStateStore, managers: list[RolloutManager], **options) -> RolloutManager:
    manager = RolloutManager(driftgate.RolloutConfig(STAGES), store=store, **options)
    managers.append(manager)
    return manager


# -- compare-and-set ------------------------------------------------------------------------


def test_a_commit_on_a_version_someone_else_moved_is_refused_with_the_stored_document(
    make, redis_server, key
):
    first, second = make(), make()
    assert first.commit(1, "one", False) == ("committed", None)
    # The second replica also read version 0 and decided: it loses, and learns what is stored.
    assert second.commit(1, "other one", False) == ("conflict", "one")
    assert second.commit(3, "three", False) == ("conflict", "one")
    assert first.load() == "one"
    assert first.commit(2, "two", False) == ("committed", None)
    with redis_server.client() as client:
        assert client.hget(key, "version") == b"2"


def test_two_managers_moving_from_the_same_version_move_the_rollout_once(make, managers):
    a = manager_on(make(), managers)
    b = manager_on(make(), managers)
    assert a.version == b.version == 1
    first = a.manual_advance("alice", expected_version=1)
    second = b.manual_advance("bob", expected_version=1)  # b may not have heard of it yet
    assert first.success and first.version == 2
    assert second.action == DecisionAction.CONFLICT and not second.success
    assert b.version == 2 and b.get_status()["current_stage"]["name"] == "half"
    assert [t["actor"] for t in b.get_status()["transitions"]] == ["system", "alice"]


def test_a_manager_that_lost_a_race_without_precondition_decides_again_on_the_new_state(
    make, managers
):
    a = manager_on(make(), managers)
    b = manager_on(make(), managers)
    a.manual_advance("alice")  # canary -> half, version 2; b still holds version 1 or 2
    moved = b.manual_advance("bob")
    assert moved.success and moved.version == 3
    assert (moved.from_stage, moved.to_stage) == ("half", "full")  # never canary -> half again


# -- the lease and fencing ------------------------------------------------------------------


def test_an_automatic_commit_is_fenced_once_the_lease_moved(make, redis_server, key):
    old, new = make(), make()
    assert old.renew_lease()
    assert not new.renew_lease()  # held by the other
    assert old.commit(1, "v1", True) == ("committed", None)
    with redis_server.client() as client:
        client.delete(f"{key}:lease")  # as if it expired while `old` was paused
    assert new.renew_lease()
    assert old.holds_lease  # it has not noticed yet
    assert old.commit(2, "stale", True) == ("fenced", None)
    assert new.commit(2, "v2", True) == ("committed", None)
    assert new.load() == "v2"
    # A human's move needs no lease: it is the version that guards it.
    assert old.commit(3, "manual", False) == ("committed", None)
    # Renewing tells the old holder it lost; from then on it does not even try.
    assert not old.renew_lease() and not old.holds_lease
    assert old.commit(4, "stale again", True) == ("fenced", None)


def test_an_expired_lease_no_one_took_fences_too(make, redis_server, key):
    holder = make()
    assert holder.renew_lease()
    with redis_server.client() as client:
        client.delete(f"{key}:lease")
    assert holder.commit(1, "v1", True) == ("fenced", None)
    assert holder.load() is None


def test_a_new_lease_carries_a_higher_fence(make, redis_server, key):
    a, b = make(), make()
    assert a.renew_lease()
    with redis_server.client() as client:
        first = client.get(f"{key}:lease")
        client.delete(f"{key}:lease")
        assert b.renew_lease()
        second = client.get(f"{key}:lease")
    assert int(second.split(b":")[0]) == int(first.split(b":")[0]) + 1


def test_a_manager_whose_lease_moved_refuses_its_automatic_decision(make, managers, redis_server):
    store = make()
    manager = manager_on(store, managers)
    store.campaign(True)
    until(lambda: store.holds_lease, "the lease taken", 5)
    rival = make()
    with redis_server.client() as client:
        client.delete(f"{store.key}:lease")
    assert rival.renew_lease()
    decision = manager.evaluate(0.0)  # would advance canary -> half
    assert decision.action == DecisionAction.CONFLICT
    assert "no longer holds the evaluation lease" in decision.message
    assert manager.version == 1 and store.stored_version() == 1


def test_the_check_interval_is_the_fleets(make):
    a, b = make(), make()
    assert a.claim_check(60) > 0  # no lease: ask again later
    assert a.renew_lease()
    assert a.claim_check(60) == 0  # due, and recorded
    assert 59 < a.claim_check(60) <= 60
    a.release_lease()
    assert b.renew_lease()
    assert 59 < b.claim_check(60) <= 60  # the other replica's check counts


# -- following -------------------------------------------------------------------------------


def test_a_manager_never_follows_an_older_version(make, managers, redis_server, key):
    source = manager_on(make(), managers)
    old_document = source.store.load()
    source.manual_advance("alice")
    source.manual_advance("alice")
    assert source.version == 3
    assert source.follow(old_document) is False
    assert source.version == 3 and source.enforced_percentage == 100
    # The store holding an older version (a Redis restored from an old backup): still not.
    with redis_server.client() as client:
        client.hset(key, mapping={"version": 1, "doc": old_document})
    assert source.refresh() == 3
    assert source.enforced_percentage == 100


def test_a_follower_learns_of_a_commit_by_hint_within_a_second(make, managers):
    leader = manager_on(make(), managers)
    enforcer = driftgate.Enforcer(driftgate.EnforceOptions(enforce=True), driftgate.DriftTracker())
    # Polls once a minute: only the hint can bring the news in time.
    follower = manager_on(make(sync_interval_seconds=60), managers, enforcer=enforcer)
    until(lambda: follower.synced and follower.version == 1, "the follower started", 5)
    times = []
    for _ in range(5):
        start = time.monotonic()
        decision = (
            leader.manual_advance("alice")
            if leader.version % 2
            else leader.manual_rollback("alice")
        )
        assert decision.success
        until(lambda: follower.version == leader.version, "the follower followed", 1.0)
        times.append(time.monotonic() - start)
        assert enforcer.options.rollout_percent == leader.enforced_percentage
    assert max(times) < 1.0


def test_a_follower_polls_when_no_hint_comes(make, managers, redis_server, key):
    # A document stored under another key by another manager of the same stage list.
    other = manager_on(make(key=f"{key}:elsewhere"), managers)
    other.manual_advance("alice")
    other.manual_advance("alice")
    follower = manager_on(make(sync_interval_seconds=0.2), managers)
    assert follower.version == 1
    # Of the follower's incarnation and history, as its own fleet's later commits would be.
    newer_state = json.loads(other.store.load())
    newer_state["incarnation"] = follower.get_status()["incarnation"]
    newer_state["transitions"][0]["op"] = follower.get_status()["transitions"][0]["operation"]
    newer = json.dumps(newer_state)
    with redis_server.client() as client:
        client.hset(key, mapping={"version": 3, "doc": newer})  # written, nothing published
    took = until(lambda: follower.version == 3, "the poll found the new version", 2.0)
    assert follower.get_status()["current_stage"]["name"] == "full"
    assert took < 1.0


def test_a_document_that_does_not_parse_is_not_followed_and_never_overwritten(
    make, managers, redis_server, key
):
    manager = manager_on(make(sync_interval_seconds=0.1), managers)
    with redis_server.client() as client:
        client.hset(key, mapping={"version": 7, "doc": "{not json"})
        # Its fields, not DUMP's bytes: a read may take a rehash step that reorders them.
        before = client.hgetall(key)
    with pytest.raises(driftgate.StateError):
        manager.refresh()
    assert manager.version == 1
    with pytest.raises(driftgate.StateError, match="not valid JSON"):
        manager.manual_advance("alice")  # conflicts with version 7, which it cannot read
    assert manager.version == 1
    with redis_server.client() as client:
        assert client.hgetall(key) == before


# -- reachability and secrets ---------------------------------------------------------------


def test_an_unreachable_store_raises_state_store_error_quickly(redis_server):
    dead = f"redis://:hunter2@127.0.0.1:{_free_port()}/0"
    store = RedisStateStore(dead, socket_timeout=0.5)
    try:
        start = time.monotonic()
        with pytest.raises(StateStoreError) as caught:
            store.load()
        assert time.monotonic() - start < 2
        assert "hunter2" not in str(caught.value)
        with pytest.raises(StateStoreError):
            store.commit(1, "x", False)
        with pytest.raises(StateStoreError):
            store.renew_lease()
        assert not store.holds_lease
    finally:
        store.close()


def _free_port() -> int:
    from servers import free_port

    return free_port()


def test_describe_and_repr_never_carry_the_password(redis_server):
    url = redis_server.url.replace("redis://", "redis://operator:hunter2@")
    store = RedisStateStore(url, "k")
    try:
        for text in (store.describe(), repr(store)):
            assert "hunter2" not in text and "operator" not in text
            assert f"127.0.0.1:{redis_server.port}" in text
    finally:
        store.close()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:hunter2@cache:6379/0", "redis://cache:6379/0"),
        ("rediss://:hunter2@cache.example/3", "rediss://cache.example/3"),
        ("redis://cache", "redis://cache"),
        ("redis://:hunter2@[::1]:6379/0", "redis://[::1]:6379/0"),
        ("redis://:hunter2@cache:port/0", "<unparsable URL>"),
    ],
)
def test_redact_url(url: str, shown: str):
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@cache:notaport/0",
        "redis://:hunter2@cache:99999/0",
        "http://:hunter2@cache:6379/0",
        "redis://:hunter2@/0",
        "redis://:hunter2@cache:6379/zero",
        "redis://:hunter2@cache:6379/0?password=hunter2",
        "redis://:hun/ter2@cache:6379/0",
        "redis://:hunter2#@cache:6379/0",
    ],
)
def test_a_malformed_url_is_refused_without_showing_the_password(url: str):
    with pytest.raises(ValueError) as caught:
        RedisStateStore(url)
    message = str(caught.value)
    assert "store URL" in message
    assert "hunter2" not in message and "hun" not in message and "ter2" not in message


def test_a_key_holding_something_else_is_reported_and_left_alone(make, redis_server, key):
    with redis_server.client() as client:
        client.set(key, "somebody else's")
    store = make()
    with pytest.raises(driftgate.StateError, match="not a driftgate rollout"):
        store.load()
    with pytest.raises(driftgate.StateError, match="nothing was written"):
        store.commit(1, json.dumps({}), False)
    with redis_server.client() as client:
        assert client.get(key) == b"somebody else's"


# -- foreign values in the auxiliary keys ----------------------------------------------------

# What a person or another program may leave in the lease or fence key: another Redis type, a
# string that is no lease or no fencing number, a lease without an expiry.
FOREIGN_LEASES = {
    "lease hash": ("lease", lambda c, k: c.hset(k, "holder", "me"), "a Redis hash"),
    "lease string": (
        "lease",
        lambda c, k: c.set(k, "garbage"),
        "a string that is not an evaluation lease",
    ),
    "lease without ttl": ("lease", lambda c, k: c.set(k, "7:x/1"), "a lease that never expires"),
    "fence list": ("fence", lambda c, k: c.rpush(k, "1"), "a Redis list"),
    "fence string": (
        "fence",
        lambda c, k: c.set(k, "seven"),
        "a string that is not a fencing number",
    ),
}


@pytest.mark.parametrize("case", sorted(FOREIGN_LEASES))
def test_a_foreign_lease_or_fence_holds_automatic_moves_and_is_left_alone(
    make, managers, redis_server, key, case, caplog
):
    caplog.set_level(logging.INFO, logger="driftgate.store")
    suffix, put, holds = FOREIGN_LEASES[case]
    aux = f"{key}:{suffix}"
    store = make()
    manager = manager_on(store, managers)
    with redis_server.client() as client:
        put(client, aux)
        before = client.dump(aux)
    for _ in range(5):
        assert store.renew_lease() is False  # no exception: Redis answers
        assert store.observe_lease() is None
    assert not store.holds_lease and store.claim_check(0.001) > 0  # nobody evaluates
    (problem,) = store.problems
    assert f"key {aux!r} holds {holds}" in problem and "left untouched" in problem
    assert manager.get_status()["store"]["problems"] == [problem]
    said = [r for r in caplog.records if aux in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR  # once, not once per call
    # An automatic decision is fenced; a person's move is not held. The stage started by the
    # store's clock (Redis TIME), which may run a few milliseconds ahead of this one: until this
    # clock reaches it, the stage's duration of 0 is not met and the decision holds.
    decision = manager.evaluate(0.0)
    deadline = time.monotonic() + 1.0
    while "Stage duration not met" in decision.message and time.monotonic() < deadline:
        time.sleep(0.005)
        decision = manager.evaluate(0.0)
    assert decision.action == DecisionAction.CONFLICT
    assert manager.manual_advance("alice").version == 2
    with redis_server.client() as client:
        assert client.dump(aux) == before  # never overwritten
        client.delete(aux)
    assert store.renew_lease() is True and store.problems == []
    assert store.claim_check(0.001) == 0
    assert manager.get_status()["store"]["problems"] == []
    ended = [r.getMessage() for r in caplog.records if "driftgate's again" in r.getMessage()]
    assert len(ended) == 1
    assert ended[0].startswith(
        f"{store.describe()}: the evaluation lease and fence keys are driftgate's again"
    )


@pytest.mark.parametrize(
    ("put", "holds"),
    [
        pytest.param(lambda c, k: c.sadd(k, "x"), "a Redis set", id="set"),
        pytest.param(
            lambda c, k: c.set(k, "yesterday"),
            "a string that is not a time in milliseconds",
            id="word",
        ),
        pytest.param(
            lambda c, k: c.set(k, "-1"),
            "a string that is not a time in milliseconds",
            id="negative",
        ),
    ],
)
def test_a_foreign_last_check_holds_automatic_checks_and_is_left_alone(
    make, managers, redis_server, key, put, holds, caplog
):
    caplog.set_level(logging.INFO, logger="driftgate.store")
    aux = f"{key}:last_check"
    store = make()
    manager = manager_on(store, managers)
    store.campaign(True)  # as its monitor does
    assert store.renew_lease()
    with redis_server.client() as client:
        put(client, aux)
        before = client.dump(aux)
    for _ in range(5):
        assert store.claim_check(0.001) > 0  # never due: no replica checks on its own
    assert store.holds_lease  # the lease is fine: the holder simply does not check
    (problem,) = store.problems
    assert f"key {aux!r} holds {holds}" in problem
    assert manager.get_status()["store"]["problems"] == [problem]
    assert len([r for r in caplog.records if aux in r.getMessage()]) == 1
    assert manager.manual_advance("alice").version == 2
    with redis_server.client() as client:
        assert client.dump(aux) == before
        client.delete(aux)
    assert store.claim_check(0.001) == 0 and store.problems == []
    assert any("the last check key is driftgate's again" in r.getMessage() for r in caplog.records)


def test_a_follower_on_a_foreign_lease_stays_up_and_does_not_reconnect(
    make, managers, redis_server, key
):
    registry = driftgate.MetricsRegistry()
    store = make(lease_ttl_seconds=0.5, sync_interval_seconds=0.1)
    connections = 0
    pubsub = store._client.pubsub

    def counted_pubsub(**options):
        nonlocal connections
        connections += 1
        return pubsub(**options)

    store._client.pubsub = counted_pubsub
    renewals = 0
    renew = store.renew_lease

    def counted_renew() -> bool:
        nonlocal renewals
        renewals += 1
        return renew()

    store.renew_lease = counted_renew  # type: ignore[method-assign]
    with redis_server.client() as client:
        client.hset(f"{key}:lease", "holder", "me")
    manager = manager_on(store, managers, registry=registry)
    store.campaign(True)
    until(lambda: renewals >= 5, "five renewals against the foreign lease", 5)
    assert 'driftgate_state_store_up{rollout="default"} 1' in registry.exposition()
    assert connections == 1, "the follower reconnected: it took the foreign lease for an outage"
    assert not store.holds_lease and manager.synced
    with redis_server.client() as client:
        client.delete(f"{key}:lease")
    until(lambda: store.holds_lease, "the lease taken once the key is removed", 5)
    assert store.problems == [] and connections == 1


def test_a_move_past_the_last_version_is_503_and_never_reaches_redis(
    make, managers, redis_server, key, monkeypatch
):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from driftgate.fastapi import create_router

    last = 2**53 - 1
    manager = manager_on(make(), managers)
    document = json.loads(manager.store.load())
    with redis_server.client() as client:
        client.hset(
            key, mapping={"version": last, "doc": json.dumps({**document, "version": last})}
        )
        before = client.hgetall(key)
    assert manager.refresh() == last  # such a state loads
    monkeypatch.setenv("DRIFTGATE_ADMIN_TOKEN", "t0ken")
    app = FastAPI()
    app.include_router(create_router(tracker=driftgate.DriftTracker(), manager=manager))
    answer = TestClient(app).post(
        "/api/guardian/rollout/advance", headers={"Authorization": "Bearer t0ken"}
    )
    assert answer.status_code == 503 and answer.json() == {"detail": "STATE_STORE"}
    with pytest.raises(driftgate.StateError, match="version 9007199254740992"):
        manager.manual_rollback("ops")
    with redis_server.client() as client:
        assert client.hgetall(key) == before
    assert manager.version == last and manager.enforced_percentage == 10


# A store whose commit waits (without the GIL) while another thread reads the manager.
_READ_DURING_COMMIT = """
import threading
import driftgate
from driftgate._core import SharedStateStore
from driftgate.rollout import RolloutManager

class SlowStore(SharedStateStore):
    def __init__(self):
        super().__init__()
        self.document = None
        self.inside = threading.Event()
    def load(self):
        return self.document
    def commit(self, version, document, automatic):
        if version > 1:
            self.inside.set()
            threading.Event().wait(0.5)  # the reader below is waiting for the manager now
        self.document = document
        return ("committed", None)
    def describe(self):
        return "a slow store"

store = SlowStore()
stages = [driftgate.RolloutStage("a", 10, 0, 0.0), driftgate.RolloutStage("b", 100, 0, 0.0)]
manager = RolloutManager(driftgate.RolloutConfig(stages), store=store)
mover = threading.Thread(target=manager.manual_advance, args=("alice",))
mover.start()
store.inside.wait()
print(manager.version, manager.synced)
mover.join()
print(manager.version)
"""


def test_reading_the_version_during_a_commit_does_not_deadlock():
    # The follower thread reads `version` and `synced` while admin moves commit: a read that
    # held the GIL while waiting for the manager would wait forever for a commit that itself
    # waits for the GIL.
    result = subprocess.run(
        [sys.executable, "-c", _READ_DURING_COMMIT], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "True", "2"]


def test_a_replica_on_a_foreign_key_keeps_following_and_takes_the_state_once_it_is_fixed(
    make, managers, redis_server, key, caplog
):
    caplog.set_level(logging.INFO, logger="driftgate.store")
    with redis_server.client() as client:
        client.set(key, "somebody else's")
    store = make(sync_interval_seconds=0.1)
    manager = manager_on(store, managers)
    assert not manager.synced and manager.enforced_percentage == 0

    def follower_saw_it() -> bool:
        return any(
            "not a driftgate rollout" in r.getMessage() and r.threadName.startswith("driftgate")
            for r in caplog.records
        )

    until(follower_saw_it, "the follower reading the foreign value", 3)
    reads = 0
    load = store.load

    def counted_load() -> str | None:
        nonlocal reads
        reads += 1
        return load()

    store.load = counted_load  # type: ignore[method-assign]
    until(lambda: reads >= 5, "five more polls of the foreign value", 3)
    said = [r for r in caplog.records if "not a driftgate rollout" in r.getMessage()]
    assert len(said) == 1, "a problem that lasts is logged once a minute, not once per poll"
    other = manager_on(make(key=f"{key}:elsewhere"), managers)
    other.manual_advance("alice")
    with redis_server.client() as client:
        assert client.get(key) == b"somebody else's"
        client.delete(key)  # the operator clears the key and puts the fleet's state there
        client.hset(key, mapping={"version": 2, "doc": other.store.load()})
    until(lambda: manager.synced and manager.version == 2, "the fixed key followed", 3)
    assert manager.enforced_percentage == 50
    until(
        lambda: any(
            "the rollout state is readable again" in r.getMessage() for r in caplog.records
        ),
        "the end of the problem logged",
        3,
    )
    ended = [r.getMessage() for r in caplog.records if "readable again" in r.getMessage()]
    assert len(ended) == 1
    assert ended[0].startswith(f"{store.describe()}: the rollout state is readable again (")
    assert ended[0].endswith(" attempts failed since the last line)")  # the polls held back


def test_a_manager_started_while_redis_is_down_starts_the_rollout_once_redis_answers_empty(
    tmp_path, managers
):
    server = RedisServer(tmp_path / "redis")
    store = RedisStateStore(server.url, "k", sync_interval_seconds=0.1, socket_timeout=0.5)
    manager = manager_on(store, managers)
    assert not manager.synced and manager.enforced_percentage == 0
    server.start()
    try:
        until(lambda: manager.synced, "the rollout started", 3)
        assert manager.version == 1 and manager.enforced_percentage == 10
    finally:
        server.stop()


def test_a_deleted_key_is_not_recreated_and_moves_answer_store_errors(
    make, managers, redis_server, key
):
    manager = manager_on(make(), managers)
    assert manager.manual_advance("alice").success
    with redis_server.client() as client:
        client.delete(key)
    gone = r"no rollout state is stored in .* any more"
    with pytest.raises(driftgate.StateStoreError, match=gone):
        manager.manual_advance("alice")
    assert manager.version == 2  # still the version it held
    with redis_server.client() as client:
        assert client.exists(key) == 0


def test_a_recurring_problem_is_logged_when_it_starts_changes_recurs_a_minute_on_and_ends(caplog):
    now = [0.0]
    problem = _RecurringProblem("redis://h:6379 key k", "answers again", clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="driftgate.store")

    def said() -> list[str]:
        lines = [r.getMessage() for r in caplog.records]
        caplog.clear()
        return lines

    problem.ended()
    assert said() == []  # nothing ended that was logged
    for _ in range(100):
        problem.report(logging.WARNING, "down")
        now[0] += 0.5
    assert said() == ["down"]
    problem.report(logging.WARNING, "down")  # 50 s after the first line: still quiet
    assert said() == []
    now[0] += 10
    problem.report(logging.WARNING, "down")
    assert said() == ["down (again 101 times in 60 s)"]
    problem.report(logging.WARNING, "refused")  # another message is said at once
    assert said() == ["refused"]
    for _ in range(10):  # messages that take turns are each held back
        problem.report(logging.WARNING, "down")
        problem.report(logging.WARNING, "refused")
    assert said() == []
    problem.ended()
    problem.ended()
    assert said() == [
        "redis://h:6379 key k: answers again (20 attempts failed since the last line)"
    ]
    problem.report(logging.WARNING, "refused")  # after an end, the same problem is new
    assert said() == ["refused"]
    problem.ended()
    assert said() == ["redis://h:6379 key k: answers again"]


# -- each stage judged on its own requests, across replicas --------------------------------


def _serve(enforcer: driftgate.Enforcer, requests: int, failures: int) -> None:
    def fail() -> driftgate.Verdict:
        raise RuntimeError("the enforced evaluator broke")

    keys = (f"key-{i}" for i in itertools.count())
    cohort = [key for key in itertools.islice(keys, 100_000) if enforcer.in_rollout(key)]
    for i, key in enumerate(cohort[:requests]):
        enforcer.decide("p", key, "ok", fail if i < failures else "ok")


def test_the_evaluator_judges_a_stage_another_replica_entered_on_that_stage_alone(make, managers):
    clock = driftgate.ManualClock(1_700_000_000.0)
    operator = manager_on(make(), managers, clock=clock)  # where people's moves commit
    enforcer = driftgate.Enforcer(
        driftgate.EnforceOptions(enforce=True), driftgate.DriftTracker(clock=clock)
    )
    store = make()
    evaluator = manager_on(store, managers, enforcer=enforcer, clock=clock, min_requests=10)
    store.campaign(True)  # as its monitor does: it holds the evaluation lease
    until(lambda: store.holds_lease, "the lease taken", 5)
    operator.manual_advance("alice")
    until(lambda: evaluator.version == 2, "the evaluator followed to half", 5)
    _serve(enforcer, 100, failures=50)  # half breaks on the evaluator's replica
    clock.advance(60)
    operator.manual_rollback("alice", "errors at half")  # a person saw it first
    until(lambda: evaluator.version == 3, "the evaluator followed the rollback", 5)
    clock.advance(60)
    decision = asyncio.run(evaluator.check_and_advance())
    # canary has served nothing since it was entered: half's failures are not canary's
    assert (decision.action, decision.to_stage) == (DecisionAction.INSUFFICIENT_DATA, "canary")
    _serve(enforcer, 10, failures=1)  # canary's own requests: 10 % failing, above 5 %
    aborted = asyncio.run(evaluator.check_and_advance())
    assert (aborted.action, aborted.to_stage) == (DecisionAction.ABORTED, "aborted"), aborted
    until(lambda: operator.version == 4, "the operator's replica followed the abort", 5)


def test_a_source_taking_the_window_gets_the_time_since_the_shared_stage_start(make, managers):
    clock = driftgate.ManualClock(1_700_000_000.0)
    operator = manager_on(make(), managers, clock=clock)
    windows: list[float] = []

    def source(window) -> tuple[int, int]:
        windows.append(window.total_seconds())
        return (0, 1000)

    store = make()
    evaluator = manager_on(store, managers, clock=clock, error_rate_source=source)
    assert store.renew_lease()
    clock.advance(600)
    operator.manual_advance("alice")  # half, started at +600 s on the operator's replica
    until(lambda: evaluator.version == 2, "the evaluator followed", 5)
    clock.advance(45)
    asyncio.run(evaluator.check_and_advance())
    assert windows == [45.0]


def test_every_replica_reports_what_the_evaluator_read(make, managers, redis_server, key):
    """Only the evaluator reads the error rate; a status served by any other replica still
    says the rollout waits for approval, not for data it never read itself."""
    clock = driftgate.ManualClock(1_700_000_000.0)
    stages = [
        driftgate.RolloutStage("canary", 10, 3600, 0.05),
        driftgate.RolloutStage("half", 50, 3600, 0.05, requires_approval=True),
    ]

    def replica(store: RedisStateStore, **options) -> RolloutManager:
        made = RolloutManager(
            driftgate.RolloutConfig(stages), store=store, clock=clock, min_requests=100, **options
        )
        managers.append(made)
        return made

    store = make()
    evaluator = replica(store, error_rate_source=lambda: (1, 500))
    other = replica(make())
    assert store.renew_lease()
    clock.advance(3600)
    assert other.get_status()["waiting_for"] == "data"  # no reading of its own
    decision = asyncio.run(evaluator.check_and_advance())
    assert decision.action == DecisionAction.WAITING_FOR_APPROVAL
    until(lambda: other.get_status()["awaiting_approval"], "the other replica heard", 5)
    assert other.get_status()["stage_requests"] == 500
    with redis_server.client() as client:
        client.set(f"{key}:evidence", b"not a reading")  # a foreign value is left alone
    third = replica(make())
    until(lambda: third.synced, "a third replica started", 5)
    assert third.get_status()["waiting_for"] == "data"
    assert evaluator.manual_advance("alice").success  # the foreign reading stops no follower
    until(lambda: third.version == evaluator.version == 2, "the third replica followed", 5)


GOOD_READING = {
    "stage_index": 1,
    "state": "active",
    "started_at": 1_700_000_000.5,
    "error_rate": 0.002,
    "requests": 500,
    "failed": 1,
}


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"null",
        b"[]",
        b"x" * 2000,
        json.dumps({**GOOD_READING, "requests": True}).encode(),
        json.dumps({**GOOD_READING, "stage_index": 1.5}).encode(),
        json.dumps({**GOOD_READING, "state": 3}).encode(),
        json.dumps({**GOOD_READING, "extra": 1}).encode(),
        json.dumps({k: v for k, v in GOOD_READING.items() if k != "failed"}).encode(),
        b'{"stage_index": 1, "state": "active", "started_at": NaN, "error_rate": 0.1, '
        b'"requests": null, "failed": null}',
        "not bytes",
    ],
)
def test_a_shared_reading_that_is_not_one_is_ignored(raw):
    from driftgate.store import _evidence

    assert _evidence(raw) is None


def test_a_shared_reading_parses_to_the_adopt_arguments():
    from driftgate.store import _evidence

    assert _evidence(json.dumps(GOOD_READING).encode()) == GOOD_READING
    whole = {**GOOD_READING, "started_at": 1_700_000_000, "requests": None, "failed": None}
    assert _evidence(json.dumps(whole).encode()) == {**whole, "started_at": 1_700_000_000.0}


@pytest.mark.parametrize(
    ("data", "announced"),
    [
        (b"2 0123456789abcdef 0 op-1", (2, "0123456789abcdef", 0, "op-1")),
        (b"999999999999999 i 3 ", (999_999_999_999_999, "i", 3, "")),  # 15 digits: the most
        (b"1000000000000000 i 0 op", None),  # 16 digits
        (b"2 i 1000000000000000 op", None),
        (b"evidence", None),  # the evaluator's reading
        (b"2", None),  # an older release's hint: the version alone
        (b"2 i 0", None),
        (b"2 i 0 op extra", None),
        (b"-2 i 0 op", None),
        (b"2 i x op", None),
        (b"2 \xc3\xa9 0 op", None),
        (b"2 i 0 " + b"o" * 251, None),  # 257 bytes
        ("2 i 0 op", None),  # not what Redis sends
    ],
)
def test_a_hint_names_the_commit_it_announces_and_anything_else_names_none(data, announced):
    from driftgate.store import _announced

    assert _announced(data) == announced


def test_a_commit_hint_names_what_the_commit_wrote(make, managers, redis_server, key):
    leader = manager_on(make(), managers)
    with redis_server.client() as client, client.pubsub() as pubsub:
        pubsub.subscribe(f"{key}:changed")
        until(lambda: pubsub.get_message(timeout=0.1) is not None, "subscribed", 5)
        assert leader.manual_advance("alice", operation="op-2").success
        message = pubsub.get_message(timeout=5)
    status = leader.get_status()
    assert message["data"] == f"2 {status['incarnation']} 0 op-2".encode()


def test_hints_left_on_a_broken_connection_are_heard_before_it_is_closed(make, managers):
    """The store died right after a commit: its hint waits in this replica's socket, behind
    a call that failed. It is read before the connection is dropped, so the commit it
    announced is known to be lost when the store comes back without it."""
    store = make()
    manager = manager_on(store, managers)
    hint = f"2 {manager.get_status()['incarnation']} 0 lost-op".encode()

    class BrokenPubSub:
        def __init__(self) -> None:
            self.messages = [
                {"type": "message", "data": b"evidence"},
                {"type": "message", "data": hint},
            ]

        def get_message(self, timeout: float = 0.0) -> dict[str, object] | None:
            if self.messages:
                return self.messages.pop(0)
            raise ConnectionError("Connection closed by server.")

    assert store._follower is not None
    store._follower._drain(BrokenPubSub())
    assert manager.refresh() == 1
    assert "older than version 2 whose commit it announced" in manager.regressed


def test_a_problem_met_by_two_threads_at_once_is_logged_once():
    """The follower and a request can meet the same foreign key at the same instant."""
    inside = threading.Event()
    lines: list[str] = []

    class SlowFirstLine(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())
            if len(lines) == 1:  # the first reporter, inside report(), while the second arrives
                inside.set()
                threading.Event().wait(0.3)

    problem = _RecurringProblem("Redis redis://127.0.0.1:1/0 key 'k'", "fine again")
    handler = SlowFirstLine()
    store_logger = logging.getLogger("driftgate.store")
    store_logger.addHandler(handler)
    try:
        message = "key 'k:lease' is foreign"
        first = threading.Thread(target=problem.report, args=(logging.ERROR, message))
        first.start()
        assert inside.wait(5)
        second = threading.Thread(target=problem.report, args=(logging.ERROR, message))
        second.start()
        first.join()
        second.join()
    finally:
        store_logger.removeHandler(handler)
    assert lines == [message]


# -- the follower's cadence at rest ----------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "sync", "holder", "budget", "tick"),
    [
        (15.0, 60.0, False, False, 5.0),  # a third of the TTL, the sync interval being longer
        (15.0, 4.0, False, False, 4.0),  # the sync interval, inside a third of the TTL
        (15.0, 5.0, False, False, 5.0),  # both the same (the defaults)
        (1.0, 0.1, False, False, 0.2),  # never faster than the holder's renewals
        (15.0, 60.0, True, False, 1.0),  # the holder renews a fifth of the TTL, at most 1 s
        (0.5, 60.0, True, False, 0.1),
        (15.0, 60.0, False, True, 1.0),  # a readiness budget's slot lives as long as the lease
    ],
)
def test_boundary_only_the_holder_and_a_budget_keeper_tend_the_lease_every_renewal(
    make, ttl, sync, holder, budget, tick
):
    """At rest a replica that neither holds the lease nor keeps a readiness budget looks at
    the lease (or seeks it) once per sync interval, at least three times per TTL, not every
    renewal tick: a fleet of followers asks Redis little."""
    store = make(lease_ttl_seconds=ttl, sync_interval_seconds=sync)
    if holder:
        assert store.renew_lease()
    if budget:
        store.readiness_budget(lambda: (True, "open"))
    assert store.holds_lease == holder
    assert store._follow_tick == pytest.approx(tick)


def _resting(store: RedisStateStore, managers: list[RolloutManager]):
    """A manager on `store` and its follower, not started: the test calls its `_tend` at the
    times it chooses, and counts the store's calls by name."""
    from driftgate.store import _Follower

    manager = manager_on(store, managers, follow=False)
    follower = _Follower(store, manager)
    calls: dict[str, list[float]] = {}
    at = [0.0]
    for name in ("observe_lease", "renew_lease", "stored_tag"):
        method = getattr(store, name)

        def counted(*args, _name=name, _method=method, **kwargs):
            calls.setdefault(_name, []).append(at[0])
            return _method(*args, **kwargs)

        setattr(store, name, counted)

    def tend_until(end: float, step: float = 0.1) -> None:
        while at[0] < end - 1e-9:
            follower._tend(manager, at[0])
            at[0] = round(at[0] + step, 6)

    return manager, follower, calls, tend_until


@pytest.mark.parametrize(("campaigning", "holds"), [(False, False), (True, False), (True, True)])
def test_at_rest_a_follower_tends_the_lease_three_times_a_ttl_and_the_holder_every_second(
    make, managers, redis_server, key, campaigning, holds
):
    """The defaults (TTL 15 s, a poll every 5 s), over one TTL: a follower that does not hold
    the lease looks at it (or, with its monitor running, seeks it) 3 times, as often as it
    polls; the holder renews it 15 times."""
    if campaigning and not holds:
        assert make().renew_lease()  # another replica holds it
    store = make(lease_ttl_seconds=15, sync_interval_seconds=5)
    manager, follower, calls, tend_until = _resting(store, managers)
    follower.campaign(campaigning)
    tend_until(15.0)
    lease_calls = calls.get("renew_lease" if campaigning else "observe_lease", [])
    expected = [float(t) for t in range(15)] if holds else [0.0, 5.0, 10.0]
    assert lease_calls == expected
    assert calls["stored_tag"] == [0.0, 5.0, 10.0]
    assert store.holds_lease == holds
    assert manager.regressed is None


def test_at_rest_a_store_that_lost_commits_is_reported_at_the_next_poll(
    make, managers, redis_server, key
):
    """No hint, no reconnect (the store lost the commit behind the follower's back): the poll
    finds it one sync interval later at the latest, whatever the lease's cadence."""
    store = make(lease_ttl_seconds=15, sync_interval_seconds=5)
    manager, _, calls, tend_until = _resting(store, managers)
    with redis_server.client() as client:
        before = client.hgetall(key)
    assert manager.manual_advance("alice").success
    tend_until(0.2)  # polls at 0: the state it holds
    with redis_server.client() as client:
        client.hset(key, mapping=before)  # lost at 0.2 s
    tend_until(5.0)
    assert manager.regressed is None
    tend_until(5.1)  # the poll at 5 s
    assert "older than version 2 this replica has seen" in manager.regressed
    assert calls["stored_tag"] == [0.0, 5.0]


def test_at_rest_a_commit_heard_of_and_lost_is_reported_at_the_next_poll(
    make, managers, redis_server, key
):
    """The replica heard another's commit, whose read failed, and the store then lost it: the
    stored state is the very one the replica holds, yet the poll reads it (a commit is pending)
    and reports the loss; without a pending commit, an equal tag is not read."""
    store = make(lease_ttl_seconds=15, sync_interval_seconds=5)
    manager, _, calls, tend_until = _resting(store, managers)
    other = manager_on(make(), managers, follow=False)
    with redis_server.client() as client:
        before = client.hgetall(key)
    tend_until(0.2)  # polls at 0: the state it holds
    assert other.manual_advance("alice").success
    snapshot = other._snapshot()
    announced = (2, snapshot["incarnation"], 0, snapshot["transitions"][-1]["op"])
    with redis_server.client() as client:
        client.hset(key, mapping=before)  # the commit is lost...
    assert manager._note_announced(*announced)  # ...after its hint reached this replica
    assert manager._snapshot()["announced"] == 2
    assert manager.regressed is None
    loads = []
    load = store.load
    store.load = lambda: loads.append(True) or load()
    tend_until(5.1)  # the poll at 5 s
    assert "older than version 2 whose commit it announced" in manager.regressed
    assert loads == [True]
    assert calls["stored_tag"] == [0.0, 5.0]
    with pytest.raises(driftgate.StateRegressed):
        manager.manual_advance("bob")
    with redis_server.client() as client:
        assert int(client.hget(key, "version")) == 1  # nothing committed over the lost one


def test_a_monitor_started_while_the_lease_is_looked_at_seeks_it_at_the_next_round(
    make, managers, redis_server, key
):
    """campaign(True) lands on the event loop while the follower's thread is inside its look
    at the lease: the lease is sought at the next round, not a follow tick (5 s) later."""
    store = make(lease_ttl_seconds=15, sync_interval_seconds=5)
    _, follower, calls, tend_until = _resting(store, managers)
    observe = store.observe_lease

    def observed_while_the_monitor_starts():
        follower.campaign(True)
        return observe()

    store.observe_lease = observed_while_the_monitor_starts
    tend_until(0.2)
    assert calls["observe_lease"] == [0.0]
    assert calls["renew_lease"] == [0.1]
    assert store.holds_lease


def test_a_lease_left_by_a_dead_holder_is_taken_within_a_third_of_its_ttl(
    make, managers, redis_server, key
):
    """The holder died and its lease expired at 5.1 s: a follower whose monitor runs seeks it
    every 5 s (a third of the TTL, the sync interval too), and takes it at 10 s, not before."""
    assert make().renew_lease()
    store = make(lease_ttl_seconds=15, sync_interval_seconds=5)
    _, follower, calls, tend_until = _resting(store, managers)
    follower.campaign(True)
    tend_until(5.2)
    with redis_server.client() as client:
        client.delete(f"{key}:lease")  # expired
    tend_until(10.0)
    assert not store.holds_lease
    tend_until(10.1)
    assert store.holds_lease
    tend_until(12.0)  # held now: renewed every second
    assert calls["renew_lease"] == [0.0, 5.0, 10.0, 11.0]


def test_a_monitor_that_starts_seeks_the_lease_at_once_and_one_that_stops_gives_it_up(
    make, managers
):
    store = make(lease_ttl_seconds=15, sync_interval_seconds=5)
    _, follower, calls, tend_until = _resting(store, managers)
    tend_until(1.0)  # looked at it at 0 s; the next look is due at 5 s
    assert calls["observe_lease"] == [0.0]
    follower.campaign(True)
    tend_until(1.1)
    assert calls["renew_lease"] == [1.0] and store.holds_lease
    follower.campaign(False)
    tend_until(1.2)
    assert not store.holds_lease
    assert calls["observe_lease"] == [0.0, 1.1]


def test_what_a_follower_at_rest_sends_each_sync_interval_costs_redis_a_few_commands(
    make, redis_server
):
    """Counted as Redis counts them (`total_commands_processed`, a script's own commands
    included), with a holder and a fence in place: a look at the lease is the script and a GET
    of each key and the lease's PTTL; the poll is the script and one HMGET; the clock a TIME."""
    holder, follower = make(), make()
    assert holder.renew_lease()
    follower.observe_lease(), follower.stored_tag()  # the scripts are loaded
    with redis_server.client() as client:

        def cost(call) -> int:
            before = int(client.info("stats")["total_commands_processed"])
            call()
            return int(client.info("stats")["total_commands_processed"]) - before - 1  # INFO

        assert cost(follower.observe_lease) == 4
        assert cost(follower.stored_tag) == 2
        assert cost(lambda: follower._client.time()) == 1
