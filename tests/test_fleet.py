"""One rollout for a fleet: three replicas of the demo service (`driftgate serve`) sharing one
key in a real redis-server, all on 127.0.0.1, started and stopped by the tests through their
process ids. Admin moves from any replica, propagation, the evaluation lease under SIGKILL and
SIGSTOP, a Redis crash in the middle of a storm of moves, and keys holding someone else's
value."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import driftgate
from driftgate.store import RedisStateStore
from fleet_servers import (
    ROLLOUT,
    URL_ENV,
    ErrorRates,
    Fleet,
    Replica,
    fleet,
    until,
    values_yaml,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ACTOR = "admin-token"
VERIFY = {"policy_id": "lksg.v1", "context": {"subject_id": "supplier-1"}}


def history_by_version(document: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The stored transitions keyed by the version each one made: the newest is the document's
    version, and each older one a version less."""
    transitions = document["transitions"]
    newest = document["version"]
    return {newest - len(transitions) + 1 + i: t for i, t in enumerate(transitions)}


def next_move(status: dict[str, Any]) -> str:
    """A move that is possible from `status`: advance unless at the last stage."""
    last = status["stage_index"] == status["total_stages"] - 1 and status["state"] != "aborted"
    return "rollback" if last else "advance"


def all_on(replicas: list[Replica], version: int) -> bool:
    return all(r.version() == version for r in replicas)


@pytest.fixture(scope="module")
def manual_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, str]]:
    """Three replicas whose stages never move by themselves, shared by the tests that only move
    the rollout by hand."""
    with fleet(tmp_path_factory.mktemp("fleet")) as f:
        key = "fleet:manual"
        values = values_yaml(key)
        for _ in range(3):
            f.add(values)
        yield f, key


# -- propagation and admin moves from any replica -------------------------------------------


def test_a_move_on_one_replica_is_enforced_by_the_others_within_a_second(manual_fleet):
    f, _ = manual_fleet
    a, b, c = f.replicas
    times = []
    for _ in range(6):
        status = a.status()
        response = a.move(next_move(status), if_match=status["version"])
        acknowledged = time.monotonic()
        assert response.status_code == 200, response.text
        moved = response.json()
        version, percentage = moved["version"], moved["new_percentage"]
        assert version == status["version"] + 1
        caught_up: dict[str, float] = {}
        while len(caught_up) < 2:  # both polled in turn: each one's time is its own
            for replica in (b, c):
                if (
                    replica.name not in caught_up
                    and replica.version() == version
                    and replica.enforced_percent() == percentage
                ):
                    caught_up[replica.name] = time.monotonic() - acknowledged
            assert time.monotonic() - acknowledged < 2.0, f"only {caught_up} at {version}"
        times.extend(caught_up.values())
        for replica in (b, c):
            seen = replica.status()
            assert seen["current_stage"]["name"] == moved["new_stage"]
            assert seen["enforced_percentage"] == percentage
            # The ETag names the state: a client holding the new one is told nothing changed.
            tag = f'"{seen["incarnation"]}.{version}"'
            fresh = replica.http.get(f"{ROLLOUT}/status", headers={"If-None-Match": tag})
            assert fresh.status_code == 304 and fresh.headers["etag"] == tag
            stale = replica.http.get(
                f"{ROLLOUT}/status",
                headers={"If-None-Match": f'"{seen["incarnation"]}.{version - 1}"'},
            )
            assert stale.status_code == 200 and stale.headers["etag"] == tag
    print(f"propagation to the last replica: max {max(times) * 1000:.0f} ms over {len(times)}")
    assert max(times) < 1.0


def test_two_admins_with_the_same_if_match_on_different_replicas_move_once(manual_fleet):
    f, key = manual_fleet
    replicas = f.replicas
    for round_ in range(8):
        status = replicas[0].status()
        version = status["version"]
        tag = status["etag"]
        action = next_move(status)
        pair = (replicas[round_ % 3], replicas[(round_ + 1) % 3])
        barrier = threading.Barrier(2)
        answers: list[httpx.Response] = []

        def press(
            replica: Replica,
            action: str,
            tag: str,
            barrier: threading.Barrier,
            answers: list[httpx.Response],
        ) -> None:
            with httpx.Client(timeout=10) as client:
                barrier.wait()
                answers.append(replica.move(action, if_match=tag, client=client))

        threads = [
            threading.Thread(target=press, args=(r, action, tag, barrier, answers)) for r in pair
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        codes = sorted(a.status_code for a in answers)
        assert codes == [200, 412], [a.text for a in answers]
        won = next(a for a in answers if a.status_code == 200)
        lost = next(a for a in answers if a.status_code == 412)
        assert won.json()["version"] == version + 1
        assert lost.json() == {"detail": "VERSION_MISMATCH"}
        assert lost.headers["etag"] == f'"{status["incarnation"]}.{version + 1}"'
        assert f.stored(key)["version"] == version + 1  # one move, not two


def test_a_storm_of_moves_over_three_replicas_keeps_one_history(manual_fleet):
    f, key = manual_fleet
    start_version = f.stored(key)["version"]
    stop = threading.Event()
    seen: dict[int, dict[str, Any]] = {}
    problems: list[str] = []

    def sample() -> None:
        # The document keeps the newest 100 transitions; sampled this often, none is missed.
        with f.redis.client() as client:
            while True:
                last = stop.is_set()
                document = json.loads(client.hget(key, "doc"))
                for version, transition in history_by_version(document).items():
                    if seen.setdefault(version, transition) != transition:
                        problems.append(f"version {version} rewritten: {transition}")
                if last:
                    return
                time.sleep(0.005)

    answers: list[tuple[str, str | None, httpx.Response]] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        moves = random.Random(number)
        with httpx.Client(timeout=30) as http:
            for i in range(100):
                replica = f.replicas[(number + i) % 3]
                action = moves.choice(["advance", "rollback"])
                reason = f"client {number} move {i}" if action == "rollback" else None
                response = replica.move(
                    action, body=None if reason is None else {"reason": reason}, client=http
                )
                with lock:
                    answers.append((action, reason, response))

    sampler = threading.Thread(target=sample)
    sampler.start()
    clients = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    began = time.monotonic()
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    took = time.monotonic() - began
    stop.set()
    sampler.join()
    assert not problems, problems[:5]

    codes = {r.status_code for _, _, r in answers}
    assert codes <= {200, 400, 409}, {r.status_code: r.text for _, _, r in answers}
    for _, _, response in answers:
        if response.status_code == 400:  # nothing to move: at the last stage, or aborted
            assert response.json()["detail"] in (
                "Already at final stage",
                "Rollout already aborted",
            )
    acknowledged = [(a, reason, r.json()) for a, reason, r in answers if r.status_code == 200]
    end_version = f.stored(key)["version"]
    # Versions rise by one per transition, and every transition is one acknowledged move.
    assert sorted(v for v in seen if v > start_version) == list(
        range(start_version + 1, end_version + 1)
    )
    versions = [body["version"] for _, _, body in acknowledged]
    assert len(set(versions)) == len(versions), "two moves answered with the same version"
    assert sorted(versions) == list(range(start_version + 1, end_version + 1))
    for action, reason, body in acknowledged:
        transition = seen[body["version"]]
        assert transition["actor"] == ACTOR
        assert (transition["from"], transition["to"]) == (body["previous_stage"], body["new_stage"])
        if action == "rollback":
            assert transition["reason"] == reason
        else:
            assert transition["reason"] in ("manual advance", "manual resume")
    rollback_reasons = [t["reason"] for v, t in seen.items() if v > start_version]
    assert len(set(rollback_reasons) - {"manual advance", "manual resume"}) == sum(
        1 for a, _, _ in acknowledged if a == "rollback"
    )
    # Every replica ends on the stored version.
    until(lambda: all_on(f.replicas, end_version), "all replicas on the last version", 2.0)
    print(
        f"storm: {len(answers)} requests in {took:.1f} s, {len(acknowledged)} transitions, "
        f"{sum(1 for _, _, r in answers if r.status_code == 409)} conflicts after retries"
    )


# -- the evaluation lease -------------------------------------------------------------------


def test_when_the_lease_holder_is_killed_another_replica_takes_over_within_the_ttl(tmp_path):
    rates = ErrorRates(0.0)
    key = "fleet:lease-kill"
    ttl = 1.5
    with rates.serve() as prometheus, fleet(tmp_path) as f:
        values = values_yaml(key, prometheus=prometheus, lease_ttl=ttl)
        for _ in range(3):
            f.add(values)
        holder = until_holder(f, key)
        holder.signal(signal.SIGKILL)
        killed = time.monotonic()
        until(
            lambda: (h := f.lease_holder(key)) is not None and h is not holder,
            "another replica holding the lease",
            ttl + 2,
        )
        took = time.monotonic() - killed
        print(f"lease takeover after SIGKILL: {took * 1000:.0f} ms (TTL {ttl * 1000:.0f} ms)")
        # Within the TTL (less what had run of it) plus one renewal period of the others, and
        # a little for a busy machine.
        assert took < ttl + min(ttl / 5, 1.0) + 0.3
        queries = rates.queries
        # The new holder evaluates: the error-rate source is read again.
        until(lambda: rates.queries > queries, "the new holder's check", 3)


def until_holder(f: Fleet, key: str) -> Replica:
    found: list[Replica] = []

    def held() -> bool:
        holder = f.lease_holder(key)
        if holder is not None:
            found.append(holder)
        return holder is not None

    until(held, "a replica holding the lease", 10)
    return found[-1]


def test_a_lease_holder_paused_past_its_ttl_cannot_commit_its_stale_decision(tmp_path):
    # canary moves on to half by itself at once; entering full waits for a human, so after one
    # automatic advance nothing moves unless the stale holder's rollback gets through.
    stages = [
        {"name": "canary", "percentage": 10, "max_error_rate": 0.05},
        {"name": "half", "percentage": 50, "max_error_rate": 0.05},
        {"name": "full", "percentage": 100, "requires_approval": True},
    ]
    rates = ErrorRates(0.0)
    rates.failing = True  # nothing moves until all three run
    key = "fleet:lease-stop"
    ttl = 1.5
    with rates.serve() as prometheus, fleet(tmp_path) as f:
        values = values_yaml(
            key, stages, prometheus=prometheus, lease_ttl=ttl, prometheus_timeout=30
        )
        for _ in range(3):
            f.add(values)
        rates.hold_next(0.9)  # the next check waits, and then reads an error rate to roll back on
        rates.failing = False
        assert rates.held.wait(15), "no replica checked the rollout"
        stale = until_holder(f, key)  # it is waiting for its error rate
        stale.signal(signal.SIGSTOP)
        try:
            until(
                lambda: (h := f.lease_holder(key)) is not None and h is not stale,
                "another replica holding the lease",
                ttl + 2,
            )
            # The new holder evaluates and advances canary -> half.
            until(
                lambda: f.stored(key)["version"] == 2,
                f"the new holder's advance ({rates.queries} queries)",
                5,
            )
            document = f.stored(key)
            assert document["stage_name"] == "half"
            assert document["transitions"][-1]["actor"] == "auto"
        finally:
            rates.release()  # the stale holder's check now reads 0.9: roll back!
            stale.signal(signal.SIGCONT)
        # Its reading (0.9: roll back) was taken at version 1. Either it has followed version 2
        # first and judges nothing on a reading of another version, or it decides the rollback
        # and the commit is fenced: a conflict both ways. And it noticed it lost the lease.
        until(
            lambda: (
                (check := stale.status()["last_check"]) is not None
                and check["action"] == "conflict"
            ),
            "the stale holder's check",
            5,
        )
        until(lambda: "lease lost" in stale.log(), "the stale holder noticing", 5)
        # Its rollback was refused: the stored rollout is where the new holder put it, and the
        # stale replica follows it.
        until(lambda: stale.version() == 2, "the stale replica following", 3)
        for replica in f.replicas:
            status = replica.status()
            assert (status["version"], status["current_stage"]["name"]) == (2, "half")
        document = f.stored(key)
        assert document["version"] == 2
        assert [t["to"] for t in document["transitions"]] == ["canary", "half"]
        assert "Traceback" not in stale.log()


# -- Redis down ------------------------------------------------------------------------------


def test_a_redis_crash_in_a_storm_loses_no_acknowledged_move_and_moves_nothing_by_itself(
    tmp_path,
):
    # Every stage could move on by itself at once: only the lease and the store hold it back.
    stages = [{"name": f"s{i}", "percentage": p} for i, p in enumerate([1, 5, 10, 25, 50, 100])]
    rates = ErrorRates(0.0)
    key = "fleet:crash"
    with rates.serve() as prometheus, fleet(tmp_path) as f:
        values = values_yaml(key, stages, prometheus=prometheus, lease_ttl=1.5)
        for _ in range(3):
            f.add(values)
        answers: list[tuple[str, str | None, float, httpx.Response | None]] = []
        lock = threading.Lock()
        stop = threading.Event()

        def client(number: int) -> None:
            moves = random.Random(number)
            with httpx.Client(timeout=10) as http:
                for i in range(400):  # until stopped, at most 400
                    if stop.is_set():
                        return
                    replica = f.replicas[(number + i) % 3]
                    action = moves.choice(["advance", "rollback"])
                    reason = f"client {number} move {i}"
                    response = replica.move(
                        action,
                        body={"reason": reason} if action == "rollback" else None,
                        client=http,
                    )
                    with lock:
                        answers.append((action, reason, time.monotonic(), response))

        clients = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for thread in clients:
            thread.start()
        try:
            until(
                lambda: sum(1 for a in answers if a[3].status_code == 200) >= 30,
                "30 acknowledged moves",
                20,
            )
            f.redis.kill()
            killed = time.monotonic()
            until(
                lambda: sum(1 for a in answers if a[2] > killed + 0.5) >= 16,
                "moves after the crash",
                10,
            )
        finally:
            stop.set()
            for thread in clients:
                thread.join()

        assert {a[3].status_code for a in answers} <= {200, 400, 409, 503}
        after = [a for a in answers if a[2] > killed + 0.5]
        # Refused: 503 for every move that needs the store; 400 only where nothing could move
        # anyway (an advance at the last stage, a rollback when aborted). A move in flight at
        # the crash cannot be read back (STATE_UNKNOWN); moves queued behind the stalled ones
        # are turned away (MOVE_QUEUE_FULL).
        refused = [a[3] for a in after if a[3].status_code == 503]
        details = {r.json()["detail"] for r in refused}
        assert "STATE_STORE" in details
        assert details <= {"STATE_STORE", "STATE_UNKNOWN", "MOVE_QUEUE_FULL"}, details
        assert all(a[3].status_code in (400, 503) for a in after), [
            (a[3].status_code, a[3].text) for a in after
        ]
        acknowledged = [a for a in answers if a[3].status_code == 200]

        # Down: every replica serves on what it knew, and nothing moves by itself.
        until(
            lambda: all(r.metric("driftgate_state_store_up") == 0 for r in f.replicas),
            "replicas reporting the store down",
            3,
        )
        known = [r.status() for r in f.replicas]
        # (A commit just before the crash may not have reached every replica: each keeps what
        # it knew, and they converge once the store is back.)
        queries = rates.queries
        watch_until = time.monotonic() + 2.5  # two and a half check intervals
        while time.monotonic() < watch_until:
            for replica, before in zip(f.replicas, known, strict=True):
                now = replica.status()
                assert (now["version"], now["enforced_percentage"]) == (
                    before["version"],
                    before["enforced_percentage"],
                )
                assert replica.http.get("/api/v1/healthz", timeout=5).status_code == 200
                assert replica.http.get("/api/v1/readyz", timeout=5).status_code == 200
                verify = replica.http.post("/verify", json=VERIFY, timeout=5)
                assert verify.status_code == 200, verify.text
            time.sleep(0.1)
        assert rates.queries == queries, "a replica evaluated the rollout while the store was down"
        for replica in f.replicas:
            refused = replica.move("advance")
            assert (refused.status_code, refused.json()) == (503, {"detail": "STATE_STORE"})

        # Back, on the same port and data; the source now holds so that the state stays put.
        rates.failing = True
        f.redis.start()
        stored = f.stored(key)
        for action, reason, _, response in acknowledged:
            body = response.json()
            assert body["version"] <= stored["version"]
            transition = history_by_version(stored)[body["version"]]
            assert (transition["from"], transition["to"]) == (
                body["previous_stage"],
                body["new_stage"],
            )
            if action == "rollback":
                assert transition["reason"] == reason
        versions = [a[3].json()["version"] for a in acknowledged]
        assert len(set(versions)) == len(versions)
        took = until(
            lambda: all_on(f.replicas, f.stored(key)["version"]),
            "replicas on the stored version",
            5,
        )
        until(
            lambda: all(r.metric("driftgate_state_store_up") == 1 for r in f.replicas),
            "replicas reporting the store up",
            3,
        )
        print(
            f"after the Redis restart, replicas converged in {took * 1000:.0f} ms; "
            f"{len(acknowledged)} moves acknowledged before the crash"
        )
        for replica in f.replicas:
            assert replica.move("advance").status_code in (200, 400)


def test_a_replica_started_while_redis_is_down_enforces_nothing_until_it_reads_the_state(
    tmp_path,
):
    key = "fleet:late"
    with fleet(tmp_path) as f:
        values = values_yaml(key)
        first = f.add(values)
        moved = first.move("advance")
        assert moved.status_code == 200
        version, percentage = moved.json()["version"], moved.json()["new_percentage"]
        first.stop()
        f.redis.kill()

        late = f.add(values)
        status = late.status()
        assert status["version"] == 0 and status["enforced_percentage"] == 0
        assert late.enforced_percent() == 0
        assert late.metric("driftgate_state_store_up") == 0
        assert (late.move("advance").status_code, late.move("rollback").status_code) == (503, 503)
        assert late.move("advance").json() == {"detail": "STATE_STORE"}
        assert late.http.get("/api/v1/readyz", timeout=5).status_code == 200
        verify = late.http.post("/verify", json=VERIFY, timeout=5).json()
        assert verify["result"]["in_rollout"] is False

        f.redis.start()
        took = until(
            lambda: late.version() == version and late.enforced_percent() == percentage,
            "the late replica reading the state",
            5,
        )
        assert late.status()["enforced_percentage"] == percentage
        print(f"late replica converged {took * 1000:.0f} ms after Redis came up")
        assert late.move("rollback").status_code == 200


# -- the readiness budget --------------------------------------------------------------------

DRIFT = {"policy_id": "lksg.v1", "context": {"subject_id": "supplier-1", "_demo_drift": True}}
OUT = (503, "DRIFT_GATE")
SERVING = (200, "DRIFT_GATE_BUDGET")
ONE_OUT = sorted([OUT, SERVING, SERVING])


def readiness(replica: Replica) -> tuple[int, str | None]:
    response = replica.http.get("/api/v1/readyz", timeout=5)
    return response.status_code, response.json().get("reason")


def watch_readiness(replicas: list[Replica], seconds: float) -> list[list[tuple[int, str | None]]]:
    """Every replica's readiness, sampled in turn for `seconds`."""
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        samples.append([readiness(r) for r in replicas])
        time.sleep(0.05)
    return samples


def test_drift_on_every_replica_takes_one_out_of_the_service_and_never_more(tmp_path):
    key = "fleet:budget"
    ttl = 1.5
    tick = min(ttl / 5, 1.0)  # how often a replica renews its slot
    gate = {"enabled": True, "min_requests": 5, "max_unready_replicas": 1}
    with fleet(tmp_path) as f:
        values = values_yaml(key, [{"name": "full", "percentage": 100}], lease_ttl=ttl, gate=gate)
        replicas = [f.add(values) for _ in range(3)]
        for replica in replicas:
            for _ in range(10):
                assert replica.http.post("/verify", json=DRIFT, timeout=5).json()["result"]["drift"]
        until(
            lambda: sorted(readiness(r) for r in replicas) == ONE_OUT,
            "exactly one replica out of the Service",
            5,
        )
        samples = watch_readiness(replicas, 1.0)
        assert all(sorted(sample) == ONE_OUT for sample in samples), samples
        assert len({sample.index(OUT) for sample in samples}) == 1, "the slot moved"
        out = replicas[samples[-1].index(OUT)]
        serving = [r for r in replicas if r is not out]
        # Every replica still reports its drift; the one out holds the fleet's slot.
        for replica in replicas:
            assert replica.metric("adapt_readiness_gate_open") == 0
            held = replica.metric("driftgate_readiness_unready_slot_held")
            assert held == (1 if replica is out else 0)
        budget = serving[0].status()["store"]["readiness_budget"]
        assert budget["unready_replicas"] == [out.status()["store"]["replica"]]
        assert (budget["max_unready_replicas"], budget["registered_replicas"]) == (1, 3)

        # The one out dies: its slot expires after its TTL, and another may take its place.
        out.signal(signal.SIGKILL)
        killed = time.monotonic()
        taken: list[float] = []

        def replaced() -> bool:
            answers = [readiness(r) for r in serving]
            assert answers.count(OUT) <= 1, answers
            if OUT in answers:
                taken.append(time.monotonic() - killed)
            return OUT in answers

        until(replaced, "another replica taking the slot", ttl + 3)
        print(f"slot taken over {taken[0] * 1000:.0f} ms after SIGKILL (TTL {ttl * 1000:.0f} ms)")
        # Not before the dead replica's slot expired (renewed at most one tick before the kill).
        assert taken[0] > ttl - tick - 0.2
        assert taken[0] < ttl + 2 * tick + 1.0

        # Redis goes away: no replica fails readiness for drift beyond the budget, and none
        # once it knows the store is away.
        f.redis.kill()
        down = time.monotonic()
        samples = watch_readiness(serving, ttl + 0.5)
        assert all(sample.count(OUT) <= 1 for sample in samples), samples
        assert samples[-1] == [SERVING, SERVING], samples[-1]
        print(f"readiness with Redis down: all serving after {ttl + 0.5:.1f} s of samples")
        assert time.monotonic() - down > ttl
        for replica in serving:
            assert replica.metric("adapt_readiness_gate_open") == 0
            assert replica.metric("driftgate_readiness_unready_slot_held") == 0
            assert replica.http.get("/api/v1/healthz", timeout=5).status_code == 200
            assert "Traceback" not in replica.log()


# -- bad input -------------------------------------------------------------------------------


def serve(tmp_path: Path, url: str | None) -> subprocess.CompletedProcess[str]:
    """`driftgate serve` on a values file with a Redis store, the store URL's variable set to
    `url` (unset for None)."""
    (tmp_path / "values.yaml").write_text(values_yaml("fleet:bad"))
    environment = {k: v for k, v in os.environ.items() if k != URL_ENV}
    if url is not None:
        environment[URL_ENV] = url
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "driftgate.cli",
            "serve",
            "--config",
            str(tmp_path / "values.yaml"),
            "--state-dir",
            str(tmp_path / "state"),
            "--port",
            "0",
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@127.0.0.1:notaport/0",
        "http://:hunter2@127.0.0.1:6379/0",
        "redis://:hunter2@127.0.0.1:6379/zero",
    ],
)
def test_a_malformed_redis_url_stops_serve_with_one_line_and_no_password(tmp_path, url):
    result = serve(tmp_path, url)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("driftgate serve: ") and "store URL" in lines[0]
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr + result.stdout


def test_an_unset_url_variable_is_named(tmp_path):
    result = serve(tmp_path, None)
    assert result.returncode != 0
    assert URL_ENV in result.stderr and "Traceback" not in result.stderr


def _contents(client: Any, key: str) -> Any:
    """What a key holds, field by field: not DUMP's bytes, which a read that takes a rehash
    step of a hash may reorder without any write."""
    kind = client.type(key)
    return (kind, client.hgetall(key) if kind == b"hash" else client.get(key))


def test_keys_holding_someone_elses_value_are_never_overwritten(tmp_path):
    with fleet(tmp_path) as f:
        other_stages = [
            driftgate.RolloutStage("elsewhere", 30, 0, 0.0),
            driftgate.RolloutStage("all", 100, 0, 0.0),
        ]
        other = RedisStateStore(f.redis.url, "fleet:foreign:stages")
        manager = driftgate.RolloutManager(driftgate.RolloutConfig(other_stages), store=other)
        manager.close()
        with f.redis.client() as client:
            client.set("fleet:foreign:string", "a value of someone else")
            client.hset("fleet:foreign:hash", mapping={"owner": "someone else", "n": "1"})
            keys = ["fleet:foreign:string", "fleet:foreign:hash", "fleet:foreign:stages"]
            before = {key: _contents(client, key) for key in keys}
        replicas = [f.add(values_yaml(key), start=False) for key in keys]
        for replica in replicas:
            replica.launch()
        for replica in replicas:
            replica.start_wait()
        for replica in replicas:
            status = replica.status()
            assert status["version"] == 0 and status["enforced_percentage"] == 0
            assert replica.enforced_percent() == 0
            for action in ("advance", "rollback"):
                refused = replica.move(action)
                assert (refused.status_code, refused.json()) == (503, {"detail": "STATE_STORE"})
                refused = replica.move(action, if_match=1)
                assert refused.status_code == 503
            assert replica.http.get("/api/v1/readyz", timeout=5).status_code == 200
            verify = replica.http.post("/verify", json=VERIFY, timeout=5).json()
            assert verify["result"]["in_rollout"] is False
        with f.redis.client() as client:
            assert {key: _contents(client, key) for key in keys} == before
        for replica in replicas:
            assert "Traceback" not in replica.log(), replica.log()
