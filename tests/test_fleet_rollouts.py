"""Several rollouts in a fleet: three replicas of the demo service (`driftgate serve`), three
rollouts sharing one redis-server (append-only, fsync on every write), each rollout under a key
of its own. Storms of admin moves on different rollouts at once, a Redis crash in the middle,
and every acknowledged move still there after the restart."""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any

import httpx
import pytest

from fleet_servers import ADMIN, MANUAL_STAGES, URL_ENV, Fleet, fleet, until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAMES = ("orders", "lksg", "kyc")
BASE_KEY = "fleet:several"


def several_values() -> str:
    store = {"url_env": URL_ENV, "key": BASE_KEY, "sync_interval_seconds": 0.5,
             "lease_ttl_seconds": 1.5}  # fmt: skip
    rollouts: dict[str, Any] = {
        name: {
            "policies": [f"{name}.v1"],
            "check_interval_seconds": 1,
            "stages": MANUAL_STAGES,
            # each a key of its own, derived from the name: none is given
            "store": {k: v for k, v in store.items() if k != "key"},
        }
        for name in NAMES
    }
    rollouts["orders"]["store"]["key"] = BASE_KEY  # one named key, kept as written
    return json.dumps({"enforce_enabled": True, "rollouts": rollouts}, indent=1)


def key_of(name: str) -> str:
    return BASE_KEY if name == "orders" else f"driftgate:rollout:{{{name}}}"


def status(replica: Any, name: str) -> dict[str, Any]:
    answer = replica.http.get(f"/api/guardian/rollouts/{name}/status", timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def stored(f: Fleet, name: str) -> dict[str, Any]:
    document = f.stored(key_of(name))
    assert document is not None, name
    return document


def test_storms_on_three_rollouts_survive_a_redis_crash_and_every_replica_converges(tmp_path):
    with fleet(tmp_path) as f:
        values = several_values()
        for _ in range(3):
            f.add(values)
        for name in NAMES:  # every rollout starts under its own key
            assert stored(f, name)["version"] == 1
        answers: list[tuple[str, str, str, float, httpx.Response]] = []
        lock = threading.Lock()
        stop = threading.Event()

        def client(number: int) -> None:
            name = NAMES[number % 3]
            moves = random.Random(number)
            with httpx.Client(timeout=10) as http:
                for i in range(300):
                    if stop.is_set():
                        return
                    replica = f.replicas[(number + i) % 3]
                    action = moves.choice(["advance", "rollback"])
                    reason = f"{name} client {number} move {i}"
                    response = http.post(
                        f"{replica.base}/api/guardian/rollouts/{name}/{action}",
                        headers=ADMIN,
                        json={"reason": reason},
                    )
                    with lock:
                        answers.append((name, action, reason, time.monotonic(), response))

        clients = [threading.Thread(target=client, args=(n,)) for n in range(6)]
        for thread in clients:
            thread.start()
        try:
            until(
                lambda: all(
                    sum(1 for a in answers if a[0] == n and a[4].status_code == 200) >= 10
                    for n in NAMES
                ),
                "ten acknowledged moves of every rollout",
                30,
            )
            f.redis.kill()
            killed = time.monotonic()
            until(lambda: sum(1 for a in answers if a[3] > killed + 0.5) >= 12, "moves after", 10)
        finally:
            stop.set()
            for thread in clients:
                thread.join()
        assert {a[4].status_code for a in answers} <= {200, 400, 409, 503}
        f.redis.start()
        for name in NAMES:
            document = stored(f, name)
            history = document["transitions"]
            newest = document["version"]
            by_version = {newest - len(history) + 1 + i: t for i, t in enumerate(history)}
            acknowledged = [a for a in answers if a[0] == name and a[4].status_code == 200]
            versions = [a[4].json()["version"] for a in acknowledged]
            assert len(set(versions)) == len(versions), name  # each move once
            for _, action, reason, _, response in acknowledged:
                body = response.json()
                transition = by_version[body["version"]]  # nothing acknowledged is lost
                assert (transition["from"], transition["to"]) == (
                    body["previous_stage"],
                    body["new_stage"],
                )
                if action == "rollback":
                    assert transition["reason"] == reason
            # one rollout's moves never land in another's history
            reasons = [t.get("reason") or "" for t in history]
            assert not [r for r in reasons if " client " in r and not r.startswith(f"{name} ")]
        took = until(
            lambda: all(
                status(r, n)["version"] == stored(f, n)["version"]
                for r in f.replicas
                for n in NAMES
            ),
            "every replica on every rollout's stored version",
            10,
        )
        for replica in f.replicas:
            listed = replica.http.get("/api/guardian/rollouts", timeout=5).json()["rollouts"]
            assert sorted(line["name"] for line in listed) == sorted(NAMES)
            for name in NAMES:
                held = status(replica, name)
                text = replica.http.get("/api/v1/metrics", timeout=5).text
                line = f'adapt_enforce_rollout_percent{{rollout="{name}"}} '
                (value,) = [float(x.split()[-1]) for x in text.splitlines() if x.startswith(line)]
                assert value == held["enforced_percentage"], (name, value, held)
        print(f"after the Redis restart, every replica held every rollout in {took * 1000:.0f} ms")
