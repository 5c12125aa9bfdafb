"""A replica and Redis losing each other while both run: the replica lives in a network
namespace of its own (`ip netns`), reaching Redis over one veth link and its clients over
another, and the test takes the Redis link down and up again. The rest of the fleet and Redis
stay in the root namespace and keep working. Needs root (CI runs as root)."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from driftgate import store
from fleet_servers import (
    ROLLOUT,
    ErrorRates,
    Fleet,
    NetnsHost,
    RedisServer,
    Replica,
    netns_refused,
    until,
)
from fleet_servers import values_yaml as fleet_values

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_REFUSED = netns_refused()
if _REFUSED is not None:
    pytest.skip(f"network namespaces are needed: {_REFUSED}", allow_module_level=True)

VERIFY = {"policy_id": "lksg.v1", "context": {"subject_id": "supplier-1"}}
REFUSED_MOVES = ("STATE_STORE", "STATE_UNKNOWN")


def partitioned_fleet(stack: ExitStack, folder: Path, host: NetnsHost) -> Fleet:
    """Redis listening on 127.0.0.1 and on the store link of `host`, which is made first (and
    deleted last, after every replica stopped)."""
    stack.callback(host.delete)
    host.create()
    redis = RedisServer(folder / "redis", bind=[host.store_gateway])
    stack.callback(redis.stop)
    redis.start()
    return Fleet(folder, redis, stack)


def ops(document: dict[str, Any]) -> list[str]:
    return [t.get("op", "") for t in document["transitions"]]


def move(replica: Replica, action: str, operation: str, timeout: float = 30) -> httpx.Response:
    with httpx.Client(timeout=timeout) as client:
        return client.post(
            f"{replica.base}{ROLLOUT}/{action}",
            headers={"Authorization": "Bearer fleet-admin-token", "Idempotency-Key": operation},
        )


@pytest.fixture
def host() -> Iterator[NetnsHost]:
    yield NetnsHost()


def test_a_replica_cut_off_from_redis_serves_its_last_state_and_converges_when_healed(
    tmp_path, host
):
    # Every stage moves on by itself at once while the error rate reads 0: only the store and
    # the lease hold a replica back.
    stages = [{"name": f"s{i}", "percentage": p} for i, p in enumerate([1, 5, 10, 25, 50, 100])]
    rates = ErrorRates(0.0)
    rates.failing = True  # nothing moves until the partition is in place
    key = "fleet:partition"
    with ExitStack() as stack:
        f = partitioned_fleet(stack, tmp_path, host)
        prometheus = stack.enter_context(rates.serve(host.client_gateway))
        values = fleet_values(key, stages, prometheus=prometheus, lease_ttl=1.5)
        cut = f.add(values, host=host)
        other = f.add(values)
        assert other.move("advance").status_code == 200
        until(lambda: cut.version() == other.version(), "the cut replica on the same version", 5)
        before = cut.status()
        percent = cut.enforced_percent()
        assert before["enforced_percentage"] == percent

        host.cut()
        took = until(
            lambda: cut.metric("driftgate_state_store_up") == 0, "the store reported down", 10
        )
        print(f"partition noticed after {took * 1000:.0f} ms")
        stored = f.stored(key)["version"]
        rates.failing = False  # the fleet now moves on by itself, through the other replica
        until(
            lambda: f.stored(key)["version"] >= stored + 2,
            "automatic moves by the rest of the fleet",
            10,
        )
        refused = move(cut, "advance", "cut-advance")
        assert refused.status_code == 503, refused.text
        assert refused.json()["detail"] in REFUSED_MOVES
        watch_until = time.monotonic() + 2.5  # two and a half check intervals
        while time.monotonic() < watch_until:
            now = cut.status()
            assert (now["version"], now["etag"], now["enforced_percentage"]) == (
                before["version"],
                before["etag"],
                before["enforced_percentage"],
            )
            assert cut.enforced_percent() == percent
            assert cut.metric("driftgate_state_store_up") == 0
            verify = cut.http.post("/verify", json=VERIFY, timeout=5)
            assert verify.status_code == 200, verify.text
            time.sleep(0.1)

        host.heal()
        took = until(
            lambda: (
                cut.status()["etag"] == other.status()["etag"] == f'"{stored_tag(f, key)}"'
                and cut.metric("driftgate_state_store_up") == 1
            ),
            "the healed replica on the fleet's state",
            10,
        )
        print(f"converged {took * 1000:.0f} ms after the link came back")
        assert cut.enforced_percent() == other.enforced_percent()
        document = f.stored(key)
        if refused.json()["detail"] == "STATE_STORE":
            assert "cut-advance" not in ops(document)
        assert "Traceback" not in cut.log()


def stored_tag(f: Fleet, key: str) -> str:
    with f.redis.client() as client:
        incarnation, version = client.hmget(key, "incarnation", "version")
    return f"{incarnation.decode()}.{int(version)}"


class CommitWatch:
    """Redis MONITOR in a thread: every commit script run (EVALSHA of the commit script) that
    came from `address`, as (Redis's time, whether the move is automatic, its operation id)."""

    def __init__(self, redis: RedisServer, address: str):
        self.address = address
        self.sha = hashlib.sha1(store._COMMIT.encode()).hexdigest()
        self.commits: list[tuple[float, bool, str]] = []
        self._client = redis.client()
        self._monitor = self._client.monitor()
        self._monitor.__enter__()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for seen in self._monitor.listen():
                command = seen["command"]
                if seen["client_address"] != self.address or not command.startswith(
                    f"EVALSHA {self.sha} "
                ):
                    continue
                # The document's newest transition is the move.
                operations = re.findall(r'"op":\s*"([^"]*)"', command)
                actors = re.findall(r'"actor":\s*"([^"]*)"', command)
                self.commits.append((seen["time"], actors[-1] == "auto", operations[-1]))
        except Exception:  # the connection closed at the end of the test
            return

    def close(self) -> None:
        self._client.close()


def test_a_lease_holder_cut_off_loses_the_lease_and_its_late_commit_is_fenced(tmp_path, host):
    # canary moves on to half by itself at once; entering full waits for a human.
    stages = [
        {"name": "canary", "percentage": 10, "max_error_rate": 0.05},
        {"name": "half", "percentage": 50, "max_error_rate": 0.05},
        {"name": "full", "percentage": 100, "requires_approval": True},
    ]
    rates = ErrorRates(0.0)
    rates.failing = True  # nothing moves until the holder is caught mid-decision
    key = "fleet:partition-lease"
    ttl = 1.5
    with ExitStack() as stack:
        f = partitioned_fleet(stack, tmp_path, host)
        prometheus = stack.enter_context(rates.serve(host.client_gateway))
        values = fleet_values(key, stages, prometheus=prometheus, lease_ttl=ttl)
        holder = f.add(values, host=host)
        until(lambda: f.lease_holder(key) is holder, "the first replica holding the lease", 10)
        other = f.add(values)
        watch = CommitWatch(f.redis, host._store_end)
        stack.callback(watch.close)

        # The holder's next check waits for its error rate, then reads 0: advance.
        rates.hold_next(0.0)
        rates.failing = False
        assert rates.held.wait(15), "the holder did not check the rollout"
        rates.failing = True  # every later check holds: the new holder moves nothing by itself
        host.cut()
        rates.release()
        # Its commit is sent on a pooled connection and stays unacknowledged in the kernel.
        until(
            lambda: any(unsent for _, _, unsent in host.sockets_to(f.redis.port)),
            "the cut holder's commit in flight",
            5,
        )
        in_flight = [port for _, port, unsent in host.sockets_to(f.redis.port) if unsent]
        took = until(
            lambda: f.lease_holder(key) is other, "the other replica holding the lease", ttl + 3
        )
        print(f"lease taken over {took * 1000:.0f} ms after the cut")
        until(
            lambda: other.status()["store"]["evaluator"] == f"{other_name(f, key)}",
            "the status naming the new evaluator",
            3,
        )
        # Redis cannot tell the holder whether its commit landed: it gives up reading back.
        until(lambda: "stopped answering" in holder.log(), "the holder giving up", 15)
        refused = move(holder, "advance", "cut-advance")
        assert refused.status_code == 503, refused.text
        assert refused.json()["detail"] in REFUSED_MOVES
        assert watch.commits == [], "a commit from the cut replica reached Redis"
        healed = time.time()
        host.heal()

        # TCP delivers the old commit after all, once its next retransmission goes out.
        until(lambda: watch.commits, "the late commit reaching Redis", 30)
        late_time, automatic, late_op = watch.commits[0]
        print(f"the late commit reached Redis {late_time - healed:.1f} s after the link came back")
        assert automatic and late_time >= healed - 1, watch.commits
        assert in_flight  # (the socket it was sent on)
        assert late_op not in ops(f.stored(key)), "the fenced commit landed"
        assert f.stored(key)["version"] == 1
        until(lambda: holder.version() == other.version() == 1, "both on the stored state", 10)
        until(lambda: holder.metric("driftgate_state_store_up") == 1, "the store up again", 10)

        # From here on both replicas move the rollout by hand, and every acknowledged move is
        # in the history exactly once.
        answers = [
            (name, move(replica, action, name))
            for name, replica, action in [
                ("healed-1", holder, "advance"),
                ("other-1", other, "rollback"),
                ("healed-2", holder, "advance"),
            ]
        ]
        document = f.stored(key)
        for name, response in answers:
            assert response.status_code == 200, (name, response.text)
            assert ops(document).count(name) == 1
        if refused.json()["detail"] == "STATE_STORE":
            assert "cut-advance" not in ops(document)
        assert late_op not in ops(document)
        assert [t["actor"] for t in document["transitions"]].count("auto") == 0
        assert "Traceback" not in holder.log()


def other_name(f: Fleet, key: str) -> str:
    with f.redis.client() as client:
        held = client.get(f"{key}:lease").decode()
    return held.split(":", 1)[1].split("/", 1)[0]
