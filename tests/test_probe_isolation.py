"""The probes never wait on the rollout store, and admin moves are bounded: healthz, readyz,
metrics and the status answer at once while moves are stuck on a stalled store and the
application's shared thread pool is full; moves past the router's limit are refused with 503
MOVE_QUEUE_FULL and Retry-After. First through the router in-process with a manager whose
moves block, then with `driftgate serve` against a redis-server paused with SIGSTOP."""

from __future__ import annotations

import asyncio
import math
import signal
import statistics
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio.to_thread
import httpx
import pytest
from fastapi import FastAPI

import driftgate
from driftgate import (
    DriftTracker,
    EnforceOptions,
    Enforcer,
    GateConfig,
    ManualClock,
    ReadinessGate,
    RolloutConfig,
    RolloutManager,
)
from driftgate.fastapi import bearer_token_admin, create_router
from driftgate.reload import ReloadResult
from fleet_servers import ADMIN, ROLLOUT, fleet, until, values_yaml

TOKEN = "probe-isolation-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROBES = ("/api/v1/healthz", "/api/v1/readyz", "/api/v1/metrics", f"{ROLLOUT}/status")


class BlockingManager(RolloutManager):
    """A manager whose admin moves wait for `release`, as a move does on a stalled store."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()
        self.entered = 0
        self._count = threading.Lock()

    def manual_advance(self, *args: Any, **kwargs: Any) -> driftgate.Decision:
        with self._count:
            self.entered += 1
        assert self.release.wait(30), "the test never released the move"
        return super().manual_advance(*args, **kwargs)


@pytest.fixture
def manager(tmp_path) -> BlockingManager:
    clock = ManualClock(1_700_000_000.0)
    tracker = DriftTracker(clock=clock, registry=driftgate.MetricsRegistry())
    return BlockingManager(
        RolloutConfig.default(),
        enforcer=Enforcer(EnforceOptions(enforce=True), tracker),
        clock=clock,
        state_path=tmp_path / "rollout.json",
    )


def app_for(manager: BlockingManager, **options: Any) -> FastAPI:
    tracker = manager.enforcer.tracker
    app = FastAPI()
    app.include_router(
        create_router(
            tracker=tracker,
            manager=manager,
            gate=ReadinessGate(GateConfig(enabled=True, min_requests=10), tracker),
            admin=bearer_token_admin(TOKEN),
            **options,
        )
    )
    return app


def run(app: FastAPI, scenario: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    """`scenario` with a client of `app` on one event loop, whose shared thread pool (the one
    FastAPI runs sync endpoints and dependencies in) has only two threads: so that anything
    still using it shows."""

    async def main() -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 2
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            await scenario(client)

    asyncio.run(main())


async def probes_answer_at_once(client: httpx.AsyncClient) -> None:
    for path in PROBES:
        response = await asyncio.wait_for(client.get(path), timeout=2)
        assert response.status_code == 200, (path, response.text)


def test_past_the_limit_a_move_is_refused_with_retry_after_and_the_probes_still_answer(
    manager,
):
    limit = 4
    app = app_for(manager, max_pending_moves=limit, max_move_wait_seconds=30)

    async def scenario(client: httpx.AsyncClient) -> None:
        # limit + 1 moves at once: `limit` are taken (one runs, the others queue), one is not.
        moves = [
            asyncio.create_task(client.post(f"{ROLLOUT}/advance", headers=AUTH))
            for _ in range(limit + 1)
        ]
        done, pending = await asyncio.wait(moves, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and len(pending) == limit
        refused = done.pop().result()
        assert refused.status_code == 503
        assert refused.json() == {"detail": "MOVE_QUEUE_FULL"}
        assert refused.headers["retry-after"] == "30"
        assert manager.entered == 1  # the others wait their turn, not on the manager's lock

        await probes_answer_at_once(client)
        # still full: the next one is refused at once too
        again = await asyncio.wait_for(client.post(f"{ROLLOUT}/advance", headers=AUTH), 2)
        assert again.status_code == 503 and again.json() == {"detail": "MOVE_QUEUE_FULL"}
        assert not any(task.done() for task in pending)

        manager.release.set()
        answers = await asyncio.gather(*pending)
        assert [a.status_code for a in answers] == [200] * limit
        versions = sorted(a.json()["version"] for a in answers)
        assert versions == list(range(versions[0], versions[0] + limit))  # one after another
        assert manager.entered == limit
        # room again: the limit is on moves pending, not a count of moves ever made
        moved = await client.post(f"{ROLLOUT}/rollback", headers=AUTH)
        assert moved.status_code == 200, moved.text

    run(app, scenario)


def test_a_move_not_started_within_the_wait_bound_is_refused_and_never_runs(manager):
    app = app_for(manager, max_pending_moves=8, max_move_wait_seconds=0.2)

    async def scenario(client: httpx.AsyncClient) -> None:
        first = asyncio.create_task(client.post(f"{ROLLOUT}/advance", headers=AUTH))
        await asyncio.to_thread(until, lambda: manager.entered == 1, "the first move", 5)
        started = time.monotonic()
        second = await asyncio.wait_for(client.post(f"{ROLLOUT}/advance", headers=AUTH), 5)
        waited = time.monotonic() - started
        assert second.status_code == 503 and second.json() == {"detail": "MOVE_QUEUE_FULL"}
        assert second.headers["retry-after"] == "1"  # whole seconds, at least one
        assert 0.2 <= waited < 2
        await probes_answer_at_once(client)
        # A move that has started is waited for past the bound: its outcome is the answer.
        manager.release.set()
        assert (await first).status_code == 200
        assert manager.entered == 1  # the refused one never reached the manager

    run(app, scenario)


def test_the_probes_and_the_status_never_need_the_shared_thread_pool(manager):
    app = app_for(manager)
    busy = threading.Event()
    holding = threading.Semaphore(0)

    @app.get("/busy")
    def occupy() -> dict[str, str]:  # an application's own sync endpoint, stuck
        holding.release()
        busy.wait(30)
        return {}

    async def scenario(client: httpx.AsyncClient) -> None:
        hogs = [asyncio.create_task(client.get("/busy")) for _ in range(2)]
        for _ in hogs:  # both of the pool's threads are held
            assert await asyncio.to_thread(holding.acquire, True, 5)
        await probes_answer_at_once(client)
        busy.set()
        await asyncio.gather(*hogs)

    run(app, scenario)


def test_the_probes_and_the_status_are_coroutines_with_no_dependency_that_needs_a_thread(
    manager,
):
    """FastAPI runs a plain `def` endpoint or dependency in its thread pool: none of these may
    be one, so each answers on the event loop without a hop to a thread."""
    tracker = manager.enforcer.tracker
    router = create_router(
        tracker=tracker,
        manager=manager,
        gate=ReadinessGate(GateConfig(enabled=True, min_requests=10), tracker),
        admin=bearer_token_admin(TOKEN),
    )
    routes = {route.path: route for route in router.routes if hasattr(route, "dependant")}

    def calls(dependant: Any) -> Iterator[Any]:
        yield dependant.call
        for dependency in dependant.dependencies:
            yield from calls(dependency)

    for path in PROBES:
        route = routes[path]
        for call in calls(route.dependant):
            assert asyncio.iscoroutinefunction(call), (path, call)


def test_a_reload_waits_its_turn_with_the_moves(manager):
    reloads: list[str] = []

    def reload(trigger: str) -> ReloadResult:
        reloads.append(trigger)
        return ReloadResult(True, "values.yaml: nothing changed")

    app = app_for(manager, max_pending_moves=1, max_move_wait_seconds=30, reload=reload)

    async def scenario(client: httpx.AsyncClient) -> None:
        move = asyncio.create_task(client.post(f"{ROLLOUT}/advance", headers=AUTH))
        await asyncio.to_thread(until, lambda: manager.entered == 1, "the move", 5)
        refused = await asyncio.wait_for(client.post("/api/v1/admin/reload", headers=AUTH), 2)
        assert refused.status_code == 503 and refused.json() == {"detail": "MOVE_QUEUE_FULL"}
        assert refused.headers["retry-after"] == "30"
        manager.release.set()
        assert (await move).status_code == 200
        done = await client.post("/api/v1/admin/reload", headers=AUTH)
        assert done.status_code == 200 and reloads == ["admin:admin-token"]

    run(app, scenario)


@pytest.mark.parametrize("value", [0, -1, 1001, 2.0, True, None, "16"])
def test_a_bad_move_limit_is_refused_naming_it(manager, value):
    with pytest.raises(ValueError, match=rf"max_pending_moves={value!r}: expected an integer"):
        create_router(tracker=manager.enforcer.tracker, max_pending_moves=value)


@pytest.mark.parametrize("value", [0, -0.5, math.nan, math.inf, 3601, True, "5"])
def test_a_bad_move_wait_is_refused_naming_it(manager, value):
    with pytest.raises(ValueError, match=rf"max_move_wait_seconds={value!r}: expected seconds"):
        create_router(tracker=manager.enforcer.tracker, max_move_wait_seconds=value)


# -- a real replica against a stalled redis-server -----------------------------------------


@pytest.fixture
def stalled_redis_fleet(tmp_path) -> Iterator[Any]:
    with fleet(tmp_path) as f:
        f.add(values_yaml("probes:stalled"))
        yield f


@pytest.mark.integration
@pytest.mark.slow
def test_with_redis_stopped_a_storm_of_moves_and_readers_leaves_the_probes_answering(
    stalled_redis_fleet,
):
    f = stalled_redis_fleet
    replica = f.replicas[0]
    before = replica.version()
    redis = f.redis.process
    assert redis is not None
    redis.send_signal(signal.SIGSTOP)
    try:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        with (
            httpx.Client(base_url=replica.base, timeout=30, limits=limits) as storm,
            httpx.Client(base_url=replica.base, timeout=5) as prober,
            ThreadPoolExecutor(max_workers=110) as senders,
        ):
            moves = [
                senders.submit(storm.post, f"{ROLLOUT}/advance", headers=ADMIN) for _ in range(60)
            ]
            readers = [senders.submit(storm.get, f"{ROLLOUT}/status") for _ in range(50)]
            readyz: list[float] = []
            scrapes: list[int] = []
            start = time.monotonic()
            # The probes through the storm, and then while moves still wait on the store.
            while time.monotonic() - start < 6 or not all(r.done() for r in readers):
                sent = time.monotonic()
                response = prober.get("/api/v1/readyz")
                readyz.append(time.monotonic() - sent)
                assert response.status_code == 200, response.text
                scrapes.append(prober.get("/api/v1/metrics").status_code)
                assert time.monotonic() - start < 20, "the status readers never all answered"
            answers = [m.result() for m in moves]
            reads = [r.result() for r in readers]
    finally:
        redis.send_signal(signal.SIGCONT)
    p99 = statistics.quantiles(readyz, n=100)[98] if len(readyz) > 1 else readyz[0]
    codes = Counter(f"{a.status_code} {a.json().get('detail')}" for a in answers)
    print(
        f"readyz: {len(readyz)} probes, p99 {p99 * 1000:.1f} ms, max {max(readyz) * 1000:.1f} ms;"
        f" moves: {dict(codes)}"
    )
    assert set(scrapes) == {200}
    assert p99 < 0.1
    assert all(r.status_code == 200 for r in reads)
    refused = [a for a in answers if a.json().get("detail") == "MOVE_QUEUE_FULL"]
    assert refused and all(a.headers["retry-after"] == "5" for a in refused)
    # Nothing else: each move either waited its turn and met the stalled store, or was refused.
    stalled = {"STATE_STORE", "STATE_UNKNOWN"}  # a commit that timed out may yet be applied
    assert {a.json()["detail"] for a in answers} <= {"MOVE_QUEUE_FULL", *stalled}

    # Redis back: the replica moves again (a commit sent during the stall may land first).
    until(lambda: replica.move("advance").status_code == 200, "a move after SIGCONT", 15)
    assert replica.version() > before
