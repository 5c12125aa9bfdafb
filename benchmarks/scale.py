"""Scale figures: how driftgate's cost grows with the work, each against a baseline measured in
the same run: policies on one tracker, rollouts on one enforcer, followers of one rollout.

    python benchmarks/scale.py [--output docs/benchmarks.md]
    python benchmarks/scale.py --smoke    # every step on tiny inputs, no figures judged

The fleet steps start their own redis-server on 127.0.0.1 (as benchmarks/fleet.py does). A
decision that raises, a replica that does not converge or an answer other than 200 stops the
run: no figure is reported from a run that failed.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import multiprocessing
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import driftgate
import fleet
from driftgate import DriftTracker, EnforceOptions, Enforcer, MetricsRegistry, Verdict
from driftgate.exposition import render as render_metrics
from driftgate.store import RedisStateStore
from fleet import BenchmarkError, manager_for, move, percentile, redis_server
from report import write_section
from run import Figure, enforcer_with_rollouts, fastest_call, per_call, rss_bytes

OVERFLOW = "__overflow__"


@dataclass(frozen=True)
class Sizes:
    """How much work each step does: the full run or --smoke."""

    policies: tuple[int, ...]  # tracker sizes, each its own max_policies; the second is the base
    overflow_ids: int  # distinct ids decided on a tracker of max_policies policies[-1]
    decisions: int  # distinct (policy, key) pairs a timed loop cycles over, at least
    calls: int  # decisions per timing
    rounds: int
    scrapes: int  # scrapes per timing (the fastest counts)
    rollouts: int  # against one
    move_pairs: int  # advance + rollback pairs per timing
    requests: int  # router answers per timing
    followers: tuple[int, ...]  # the first is the base
    hinted: int  # transitions per follower count, with hints
    hintless: int  # and with hints lost
    sync_interval: float  # seconds, for the propagation steps
    quiet_seconds: float  # the interval Redis's commands are counted over, at rest
    # the stores' sync interval at rest: None, their default (a smoke run's quiet second is
    # shorter than the default, so it polls faster to see any command at all)
    rest_sync_interval: float | None = None


FULL = Sizes(
    (1, 100, 1_000, 10_000), 20_000, 10_000, 200_000, 7, 3, 100, 20, 200, (3, 30, 100), 100,
    30, 0.5, 15.0,
)  # fmt: skip
SMOKE = Sizes((1, 4, 16), 32, 256, 1_024, 1, 1, 3, 2, 4, (1, 3), 3, 2, 0.2, 1.0, 0.2)


def count(n: int) -> str:
    return f"{n:,}"


def plural(n: int, noun: str) -> str:
    return f"{count(n)} {noun}{'' if n == 1 else 's'}"


def ordinal_from_top(values: int, q: float) -> str:
    """Which of `values` ordered figures `fleet.percentile` takes for q, from the slowest."""
    rank = values - min(values - 1, max(0, round(q * values) - 1))
    return "the slowest" if rank == 1 else f"the slowest but {rank - 1}"


def times(value: float, base: float) -> str:
    """value / base as a ratio, or n/a for a base of 0 (a smoke run's interval may see none)."""
    return f"{value / base:.2f}x" if base else "n/a"


# -- policies ------------------------------------------------------------------------------


def workload(ids: int, length: int) -> tuple[list[tuple], list[tuple]]:
    """Decisions (policy, key, shadow, enforced) and records (policy, shadow, enforced) over
    `ids` distinct policy ids, each at least once, one in 64 enforced verdicts a FAIL."""
    policies = [f"policy-{i:05d}" for i in range(ids)]
    length = max(length, ids)
    decisions = [
        (policies[i % ids], f"key-{i}", Verdict.OK, Verdict.FAIL if i % 64 == 0 else Verdict.OK)
        for i in range(length)
    ]
    records = [(policy, shadow, enforced) for policy, _, shadow, enforced in decisions]
    return decisions, records


@dataclass
class Policies:
    """A tracker admitting `cap` policy ids and an enforcer on it, at 100 % (both verdicts
    count), on a registry of their own, after every decision of the workload ran once."""

    ids: int
    cap: int
    registry: MetricsRegistry
    tracker: DriftTracker
    enforcer: Enforcer
    decisions: list[tuple]
    records: list[tuple]


def policies_after_warm_up(
    ids: int, cap: int, decisions: list[tuple], records: list[tuple]
) -> Policies:
    registry = MetricsRegistry()
    tracker = DriftTracker(registry=registry, max_policies=cap)
    enforcer = Enforcer(EnforceOptions(enforce=True, rollout_percent=100), tracker)
    for decision in decisions:
        enforcer.decide(*decision)
    registry.exposition_bytes()
    render_metrics(registry, None)
    # Every decision counted, each id in its own series up to the cap and the rest overflowed.
    drifts = sum(1 for *_, enforced in decisions if enforced is Verdict.FAIL)
    if tracker.counts("5m") != (drifts, len(decisions)):
        raise BenchmarkError(
            f"{ids} policies: the tracker counts {tracker.counts('5m')} after "
            f"{len(decisions)} decisions with {drifts} drifts"
        )
    admitted = {p for p in tracker.policies() if p != OVERFLOW}
    overflowed = sum(1 for policy, *_ in decisions if policy not in admitted)
    if len(admitted) != min(ids, cap) or tracker.counts("5m", OVERFLOW)[1] != overflowed:
        raise BenchmarkError(
            f"{ids} policies on max_policies={cap}: {len(admitted)} admitted, "
            f"{tracker.counts('5m', OVERFLOW)[1]} decisions overflowed (expected {overflowed})"
        )
    return Policies(ids, cap, registry, tracker, enforcer, decisions, records)


def memory_growth(ids: int, cap: int, length: int) -> int:
    """RSS bytes a fresh process grows by for the tracker, enforcer and registry of `ids`
    policies after warm-up (the workload's own strings are made before the first reading)."""
    decisions, records = workload(ids, length)
    render_metrics(MetricsRegistry(), None)  # prometheus_client's default registry, once
    gc.collect()
    before = rss_bytes()
    alive = policies_after_warm_up(ids, cap, decisions, records)
    for record in records:
        alive.tracker.record(*record)
    gc.collect()
    return rss_bytes() - before


def in_fresh_process(function, *args):
    """function(*args) in a new interpreter, so that no memory freed by another step is
    reused and hides what this one takes."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


@dataclass
class PolicyFigures:
    ids: int
    cap: int
    # ns per call of decide over every id, decide over the base size's ids only, and record;
    # each median of the rounds, and the median of the rounds' ratios against the base size
    ns: tuple[float, ...]
    ratios: tuple[float, ...]
    exposition_ms: float
    body_ms: float
    grown: int  # RSS bytes


def bench_policies(sizes: Sizes) -> tuple[list[PolicyFigures], list[Policies]]:
    cap, few = sizes.policies[-1], sizes.policies[1]
    shapes = [(n, n) for n in sizes.policies] + [(sizes.overflow_ids, cap)]
    setups = [policies_after_warm_up(n, c, *workload(n, sizes.decisions)) for n, c in shapes]
    # The same number of decisions, over the first `few` ids only: traffic to a few policies
    # of many, against traffic spread over every one.
    hot = [workload(min(s.ids, few), len(s.decisions))[0] for s in setups]
    base = 1  # the second size: the first is a single policy, all fixed cost
    rounds: list[dict[int, tuple[float, ...]]] = []
    for r in range(sizes.rounds):
        # The order turns every round, so a drift of the machine's speed weighs on every size.
        order = list(range(len(setups)))
        order = order[r % len(order) :] + order[: r % len(order)]
        timed = {}
        for i in order:
            s = setups[i]
            loops = max(1, sizes.calls // len(s.decisions))
            timed[i] = (
                per_call(s.enforcer.decide, s.decisions, loops),
                per_call(s.enforcer.decide, hot[i], loops),
                per_call(s.tracker.record, s.records, loops),
            )
        rounds.append(timed)
    figures = []
    for i, s in enumerate(setups):
        scrape = [
            (
                fastest_call(s.registry.exposition_bytes, sizes.scrapes),
                fastest_call(functools.partial(render_metrics, s.registry, None), sizes.scrapes),
            )
            for _ in range(sizes.rounds)
        ]
        figures.append(
            PolicyFigures(
                s.ids,
                s.cap,
                tuple(statistics.median(t[i][k] for t in rounds) * 1e9 for k in range(3)),
                tuple(statistics.median(t[i][k] / t[base][k] for t in rounds) for k in range(3)),
                min(x for x, _ in scrape) * 1e3,
                min(y for _, y in scrape) * 1e3,
                in_fresh_process(memory_growth, s.ids, s.cap, sizes.decisions),
            )
        )
    return figures, setups


# -- rollouts ------------------------------------------------------------------------------


def router_app(managers: list[driftgate.RolloutManager], tracker: DriftTracker):
    from fastapi import FastAPI

    from driftgate.fastapi import create_router

    app = FastAPI()
    app.include_router(create_router(tracker=tracker, rollouts={m.rollout: m for m in managers}))
    return app


async def answers_per_second(client, path: str, requests: int) -> float:
    """Seconds per answer of GET `path`; anything but 200 stops the run."""
    start = time.perf_counter()
    for _ in range(requests):
        answer = await client.get(path)
        if answer.status_code != 200:
            raise BenchmarkError(f"GET {path} answered {answer.status_code}: {answer.text[:200]}")
    return (time.perf_counter() - start) / requests


def move_pairs(manager: driftgate.RolloutManager, pairs: int) -> float:
    """Seconds per admin advance + rollback pair (a move that does not commit stops the run)."""
    start = time.perf_counter()
    for n in range(2 * pairs):
        move(manager, n)
    return (time.perf_counter() - start) / pairs


async def bench_rollouts_async(sizes: Sizes) -> dict[str, tuple[float, float, float]]:
    import httpx

    sides = [enforcer_with_rollouts(1), enforcer_with_rollouts(sizes.rollouts)]
    clients = []
    for enforcer, managers in sides:
        # A full history (it keeps 100 steps), as a rollout that has run for a while has.
        move_pairs(managers[0], 60)
        transport = httpx.ASGITransport(app=router_app(managers, enforcer.tracker))
        clients.append(httpx.AsyncClient(transport=transport, base_url="http://scale"))
    status_path = "/api/guardian/rollouts/rollout-0/status"
    list_path = "/api/guardian/rollouts"
    rounds = []
    try:
        for client in clients:  # the app's first answers build what later ones reuse
            await answers_per_second(client, status_path, 10)
            await answers_per_second(client, list_path, 10)
        for r in range(sizes.rounds):
            timed = []
            for i in (0, 1) if r % 2 == 0 else (1, 0):
                manager = sides[i][1][0]
                status = per_call(lambda _, m=manager: m.get_status(), [(None,)] * 64, 20)
                answer = await answers_per_second(clients[i], status_path, sizes.requests)
                listed = await answers_per_second(clients[i], list_path, sizes.requests)
                moved = move_pairs(manager, sizes.move_pairs)
                timed.append((i, (status, answer, listed, moved)))
            rounds.append(dict(timed))
    finally:
        for client in clients:
            await client.aclose()
    names = ("status", "answer", "list", "move")
    return {
        name: (
            statistics.median(t[0][k] for t in rounds),
            statistics.median(t[1][k] for t in rounds),
            statistics.median(t[1][k] / t[0][k] for t in rounds),
        )
        for k, name in enumerate(names)
    }


# -- fleet ---------------------------------------------------------------------------------


def redis_counts(client) -> tuple[int, dict[str, int]]:
    """Commands Redis processed before this reading (those scripts run included), and calls
    per command, from one INFO call."""
    info = client.info("stats", "commandstats")
    calls = {
        name.removeprefix("cmdstat_"): int(entry["calls"])
        for name, entry in info.items()
        if name.startswith("cmdstat_")
    }
    return int(info["total_commands_processed"]), calls


def converged(managers: list[driftgate.RolloutManager], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(m.synced and m.version == managers[0].version for m in managers):
        if time.monotonic() > deadline:
            behind = sum(1 for m in managers if not m.synced or m.version != managers[0].version)
            raise BenchmarkError(f"{behind} of {len(managers)} followers did not converge")
        time.sleep(0.05)


def load_at_rest(
    url: str, key: str, followers: int, quiet: float, sync_interval: float | None
) -> tuple[float, float, str]:
    """Commands per follower per second Redis processes while nothing moves, with the store's
    default intervals: all of them (a script's own included), the followers' round trips, and
    the commands that make them up."""
    import redis

    intervals = {} if sync_interval is None else {"sync_interval_seconds": sync_interval}
    managers = [
        manager_for(RedisStateStore(url, key, replica=f"follower-{i}", **intervals), None)
        for i in range(followers)
    ]
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        converged(managers, 30)
        time.sleep(1.0)  # past every follower's first reads
        total_before, calls_before = redis_counts(client)
        time.sleep(quiet)
        total_after, calls_after = redis_counts(client)
        converged(managers, 1)
    finally:
        client.close()
        for manager in managers:
            manager.close()
    calls = {
        name: n - calls_before.get(name, 0)
        for name, n in calls_after.items()
        if name != "info" and n != calls_before.get(name, 0)
    }
    # The first reading's INFO counts after it: taken off.
    total = total_after - total_before - 1
    trips = sum(n for name, n in calls.items() if name in ("evalsha", "eval", "time"))
    per = followers * quiet
    parts = ", ".join(f"{name.upper()} {n / per:.2f}" for name, n in sorted(calls.items()))
    return total / per, trips / per, parts


@dataclass
class FleetFigures:
    followers: int
    hinted: list[float]  # seconds per transition
    hintless: list[float]
    ops: float  # per follower per second, at rest
    trips: float
    parts: str


def bench_fleet(sizes: Sizes, folder: Path) -> list[FleetFigures]:
    profile = fleet.Profile(sizes.hinted, 0, sizes.sync_interval, False)
    lost = fleet.Profile(sizes.hintless, 0, sizes.sync_interval, False)
    figures = []
    with redis_server(folder / "redis") as url:
        for n in sizes.followers:
            # One writer, which rotates, and n followers of each of its transitions.
            hinted = fleet.propagation(url, f"scale:hints:{n}", profile, True, n + 1)
            hintless = fleet.propagation(url, f"scale:nohints:{n}", lost, False, n + 1)
            ops, trips, parts = load_at_rest(
                url, f"scale:rest:{n}", n, sizes.quiet_seconds, sizes.rest_sync_interval
            )
            figures.append(FleetFigures(n, hinted, hintless, ops, trips, parts))
            print(f"fleet, {n} followers: done", flush=True)
    return figures


# -- the section ---------------------------------------------------------------------------


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def policies_table(figures: list[PolicyFigures], sizes: Sizes) -> tuple[str, list[Figure], float]:
    """The table, its targets, and the RSS bytes per policy at the largest size."""
    one, base, top = figures[0], figures[1], figures[len(sizes.policies) - 1]

    def per_policy(f: PolicyFigures) -> float:
        """RSS bytes per admitted policy beyond what one policy takes (the fixed cost)."""
        return (f.grown - one.grown) / (min(f.ids, f.cap) - 1)

    def per_scraped(f: PolicyFigures) -> float:
        return f.exposition_ms * 1e3 / min(f.ids, f.cap)

    def column(f: PolicyFigures) -> str:
        if f.ids > f.cap:
            return f"{count(f.ids)} ids, max_policies {count(f.cap)}"
        return f"{count(f.ids)} {'policy' if f.ids == 1 else 'policies'}"

    rows = [
        ["`Enforcer.decide`, ns per decision, spread over every policy"]
        + [f"{f.ns[0]:.0f} ({f.ratios[0]:.2f}x)" for f in figures],
        [f"the same decisions over {count(base.ids)} of the policies only"]
        + [f"{f.ns[1]:.0f} ({f.ratios[1]:.2f}x)" for f in figures],
        ["`DriftTracker.record`, ns per call, spread over every policy"]
        + [f"{f.ns[2]:.0f} ({f.ratios[2]:.2f}x)" for f in figures],
        ["registry render (`exposition_bytes`), ms per scrape"]
        + [
            f"{f.exposition_ms:.2f} ({times(f.exposition_ms, base.exposition_ms)})" for f in figures
        ],
        ["the same, us per admitted policy"]
        + [f"{per_scraped(f):.2f} ({times(per_scraped(f), per_scraped(base))})" for f in figures],
        ["`/api/v1/metrics` body (`exposition.render`), ms"]
        + [f"{f.body_ms:.2f} ({times(f.body_ms, base.body_ms)})" for f in figures],
        ["RSS after warm-up, bytes per admitted policy beyond the first"]
        + [f"{one.grown:,} in all (the fixed cost)"]
        + [f"{per_policy(f):,.0f} ({times(per_policy(f), per_policy(base))})" for f in figures[1:]],
    ]
    head = [f"what (ratio against {count(base.ids)} policies)"] + [column(f) for f in figures]
    what = f"{count(top.ids)} policies / {count(base.ids)}"
    top_bytes, base_bytes = per_policy(top), per_policy(base)
    targets = [
        Figure(
            f"`Enforcer.decide` per decision, {what} (median of {sizes.rounds} rounds' ratios)",
            f"{top.ns[0]:.0f} ns / {base.ns[0]:.0f} ns; ratio {top.ratios[0]:.2f}x",
            "<= 1.1x",
            top.ratios[0] <= 1.1,
        ),
        Figure(
            f"RSS per policy after warm-up, {what}",
            f"{top_bytes:,.0f} B / {base_bytes:,.0f} B; ratio {times(top_bytes, base_bytes)}",
            "<= 1.1x",
            base_bytes > 0 and top_bytes / base_bytes <= 1.1,
        ),
    ]
    return table(head, rows), targets, top_bytes


def rollouts_table(got: dict[str, tuple[float, float, float]], sizes: Sizes) -> str:
    many = count(sizes.rollouts)
    head = ["what", "1 rollout", f"{many} rollouts", f"{many} / 1"]
    labels = {
        "status": "`RolloutManager.get_status()` of one rollout, us",
        "answer": "its status answer, `GET /api/guardian/rollouts/{name}/status`, us",
        "list": "the list, `GET /api/guardian/rollouts`, us",
        "move": "an admin move of one rollout, `manual_advance` then `manual_rollback`, us",
    }
    rows = [
        [label, f"{got[k][0] * 1e6:.1f}", f"{got[k][1] * 1e6:.1f}", f"{got[k][2]:.2f}x"]
        for k, label in labels.items()
    ]
    line = (got["list"][1] - got["list"][0]) / (sizes.rollouts - 1)
    rows.append(
        [
            "the list, per line beyond the first, us (and / one `get_status()`)",
            "",
            f"{line * 1e6:.1f}",
            f"{line / got['status'][1]:.2f}x",
        ]
    )
    return table(head, rows)


def fleet_table(figures: list[FleetFigures]) -> tuple[str, list[Figure]]:
    base, top = figures[0], figures[-1]
    head = [f"what (ratio against {plural(base.followers, 'follower')})"] + [
        plural(f.followers, "follower") for f in figures
    ]

    def latency(values: list[float], q: float) -> float:
        return percentile(values, q) * 1e3

    rows = []
    for name, attr in (("with hints", "hinted"), ("hints lost (the poll only)", "hintless")):
        for q, which in ((0.5, "p50"), (0.99, "p99")):
            base_ms = latency(getattr(base, attr), q)
            rows.append(
                [f"commit to the last follower applying it, {name}, {which} ms"]
                + [
                    f"{latency(getattr(f, attr), q):.1f} "
                    f"({times(latency(getattr(f, attr), q), base_ms)})"
                    for f in figures
                ]
            )
    rows.append(
        ["Redis commands at rest, per follower per s (scripts' own included)"]
        + [f"{f.ops:.2f} ({times(f.ops, base.ops)})" for f in figures]
    )
    rows.append(
        ["the followers' round trips at rest, per follower per s"]
        + [f"{f.trips:.2f} ({times(f.trips, base.trips)})" for f in figures]
    )
    p99, base_p99 = latency(top.hinted, 0.99), latency(base.hinted, 0.99)
    targets = [
        Figure(
            f"propagation to {plural(top.followers, 'follower')} with hints, p99 over "
            f"{len(top.hinted)} transitions",
            f"{p99:.1f} ms ({times(p99, base_p99)} that of {plural(base.followers, 'follower')})",
            "<= 1 s",
            p99 <= 1000,
        )
    ]
    targets += [
        Figure(
            f"Redis load at rest, {plural(f.followers, 'follower')}, commands per follower per "
            "s (`total_commands_processed`)",
            f"{f.ops:.2f} ({f.parts}; round trips {f.trips:.2f})",
            "<= 2",
            f.ops <= 2,
        )
        for f in figures
    ]
    return table(head, rows), targets


def transparent_huge_pages() -> str:
    """The kernel's transparent huge page mode ("always", "madvise" or "never"), or "unknown"."""
    try:
        modes = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "unknown"
    chosen = re.search(r"\[(\w+)\]", modes)
    return chosen.group(1) if chosen else "unknown"


def section(
    sizes: Sizes,
    policies: tuple[str, list[Figure], float],
    rollouts: str,
    followers: tuple[str, list[Figure]],
    command: str,
    took: float,
    judge: bool,
) -> str:
    targets = policies[1] + followers[1]
    judged = {True: "yes", False: "no"}
    rows = [
        [f.name, f.value, f.target, judged[f.passed] if judge else "not judged"] for f in targets
    ]
    base, top = count(sizes.policies[1]), count(sizes.policies[-1])
    kib = policies[2] / 1024
    thp = transparent_huge_pages()
    return f"""## Scale

- Command: `{command}`
- Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, \
driftgate {driftgate.__version__}; load average {os.getloadavg()[0]:.1f} at the end
- Run took {took:.0f} s

### Policies on one tracker

{policies[0]}

A decision or a record does the same work at any number of policies (the id's slot from a \
hash table, then that policy's counters in this thread's shard), but every policy holds about \
{kib:.0f} KiB, so decisions spread evenly over thousands of policies reach memory the CPU's \
caches no longer keep, and each costs more; the same decisions over {base} of them cost about \
what they cost with {base} policies. Past a huge page's worth of policies, a thread's rings \
are cut from 2 MiB chunks advised for huge pages (transparent huge pages, "madvise" or \
"always"; this machine: {thp}), so that what remains is the caches' cost and not the TLB's. \
A scrape writes every admitted policy's series and memory holds every policy's rings and \
series, both linear in the policies; past `max_policies` the other ids share the \
`__overflow__` series and add neither.

### Rollouts on one enforcer

{rollouts}

One rollout's status, its answer and its moves read and write only that rollout's state, so \
they stay flat however many rollouts share the enforcer; the list has a line per rollout, so it \
grows linearly, each line a fraction of a `get_status()` (a line reads no history). (Decisions \
of one rollout's policy with 100 rollouts on the enforcer are in the core table above.)

### Followers of one rollout in Redis

{followers[0]}

With hints, every follower reads the state as soon as the commit's hint reaches it; here all \
of them run in one Python process and take turns on its interpreter lock, so the time to the \
last grows with the followers (replicas in processes of their own read side by side). With \
hints lost each follower finds the commit at its next poll, so the last of more followers comes \
nearer the whole interval. At rest each follower sends the same reads on its own timers, so \
Redis's load grows linearly at a flat rate per follower: each sync interval a poll (the clock \
and the stored version) and one look at the lease; only the lease's holder renews it more often.

### Targets

{table(["what", "measured", "target", "met"], rows)}

Notes:
- Policies: a `DriftTracker` with `max_policies` set to the number of policies and an \
`Enforcer` at 100 % on it (so both verdicts count), on a registry of their own; the last \
column decides {count(sizes.overflow_ids)} distinct ids on a tracker of max_policies {top}, so \
half of them go to `__overflow__`. Decisions take two verdicts, one in 64 enforced ones a \
FAIL, cycling over at least {count(sizes.decisions)} (policy, key) pairs that cover every id; \
the times are medians over {sizes.rounds} rounds whose order of sizes turns every round, each \
ratio the median of the rounds' ratios against {base} policies. Before timing, every decision \
ran once and the run checked that the tracker counted them all, each id in its own series up \
to the cap and the rest under `__overflow__`.
- Scrapes: the fastest of {sizes.scrapes} calls in each of {sizes.rounds} rounds; the body is \
what `GET /api/v1/metrics` answers (text format, prometheus_client's default registry \
included), without HTTP.
- Memory: each size in a fresh interpreter, the RSS it grows by from building the tracker, \
enforcer and registry to after every decision, a record of each, a scrape and a body; the \
workload's own strings are made before. Per policy is (growth - the 1-policy growth) / \
(policies - 1), per admitted policy in the last column. Each writing thread has its own shard \
of rings, so a server whose threads all decide every policy holds this per thread.
- Rollouts: two enforcers from `benchmarks/run.py`'s `enforcer_with_rollouts`, one with 1 \
rollout, one with {count(sizes.rollouts)} (a `RolloutManager` each, one policy each, no store), \
each rollout's history full (100 steps) before timing; the router's answers go through FastAPI \
in-process (httpx's ASGI transport, no socket), {sizes.requests} per timing; medians of \
{sizes.rounds} rounds, the two enforcers taking turns to go first.
- Followers: one redis-server started by the run (`appendonly yes`, `appendfsync always`), \
every follower a `RolloutManager` with its own `RedisStateStore` in this one process (as \
`benchmarks/fleet.py` runs three); for each transition one more replica commits (the writer \
rotates, `fleet.propagation`), and the time runs from its call to the last follower holding the \
new version. Propagation polls every {sizes.sync_interval:g} s; the p99 of \
{sizes.hinted} transitions with hints is {ordinal_from_top(sizes.hinted, 0.99)}, of \
{sizes.hintless} with hints lost {ordinal_from_top(sizes.hintless, 0.99)}. At rest the stores \
keep their defaults (a poll every 5 s, and the lease looked at as often by a follower not \
holding it); Redis's commands are counted over {sizes.quiet_seconds:g} s of quiet, from `INFO \
stats` (`total_commands_processed`, which counts the commands a script runs too) and `INFO \
commandstats` for the parts; round trips are the EVALSHA and TIME calls the followers send.
"""


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write the section into this Markdown file")
    parser.add_argument("--smoke", action="store_true", help="tiny inputs, nothing judged")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else FULL
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="driftgate-scale-bench-", dir=Path.cwd()) as tmp:
        try:
            policy_figures, alive = bench_policies(sizes)
            del alive
            print("policies: done", flush=True)
            rollout_figures = asyncio.run(bench_rollouts_async(sizes))
            print("rollouts: done", flush=True)
            fleet_figures = bench_fleet(sizes, Path(tmp))
        except BenchmarkError as error:
            print(f"scale benchmark failed: {error}; no figures reported", file=sys.stderr)
            return 1
    policies = policies_table(policy_figures, sizes)
    followers = fleet_table(fleet_figures)
    command = "python benchmarks/scale.py " + " ".join(sys.argv[1:])
    text = section(
        sizes,
        policies,
        rollouts_table(rollout_figures, sizes),
        followers,
        command.strip(),
        time.perf_counter() - started,
        judge=not args.smoke,
    )
    print(text)
    if args.output is not None:
        write_section(args.output, "scale", text)
    if args.smoke:
        print("smoke run: every scale step ran; targets not judged on inputs this small")
        return 0
    return 0 if all(f.passed for f in policies[1] + followers[1]) else 1


if __name__ == "__main__":
    sys.exit(main())
