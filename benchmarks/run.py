"""driftgate's benchmarks. Every figure is a ratio against a baseline measured in the same
run, on this machine; the results go to docs/benchmarks.md.

    python benchmarks/run.py [--quick] [--output docs/benchmarks.md]
    python benchmarks/run.py --smoke    # every step once on tiny inputs, no figures judged
"""

from __future__ import annotations

import argparse
import functools
import gc
import math
import os
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

import driftgate
from driftgate import (
    DriftTracker,
    EnforceOptions,
    Enforcer,
    GateConfig,
    ManualClock,
    MetricsRegistry,
    ReadinessGate,
    RolloutConfig,
    RolloutManager,
    SignatureLRU,
    Verdict,
)
from driftgate._core import _bench
from driftgate.exposition import render as render_metrics
from populated import populated_registry
from python_baselines import CachetoolsLRU, OrderedDictLRU, PyDriftTracker
from report import write_section

OPENMETRICS_ACCEPT = "application/openmetrics-text; version=1.0.0"


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does: the full run, --quick, or --smoke."""

    record_loops: int  # over 1024 calls
    repeats: int
    lru_calls: int
    lru_loops: int
    native_per_thread: int
    native_repeats: int
    batch_pairs: tuple[int, ...]  # record_batch is measured at each
    memory_records: int
    policies: tuple[int, ...]  # registries the metrics exposition is measured on
    scrapes: int  # core exposition calls per round; prometheus_client gets a tenth
    writer_threads: int  # shards the readiness gate reads across


BATCHES = (1_000, 100_000, 10_000_000)
FULL = Sizes(200, 7, 16_000, 10, 10_000_000, 5, BATCHES, 10_000_000, (256, 2048), 20, 40)
QUICK = Sizes(20, 3, 16_000, 2, 2_000_000, 3, BATCHES, 2_000_000, (256, 2048), 10, 40)
SMOKE = Sizes(1, 1, 200, 1, 20_000, 1, (1_000, 100_000), 20_000, (8,), 1, 4)


@dataclass
class Figure:
    name: str
    value: str
    target: str
    passed: bool


def best_of(repeats: int, fn: Callable[[], float]) -> float:
    """The fastest of `repeats` runs: the run least disturbed by the rest of the machine."""
    return min(fn() for _ in range(repeats))


def per_call(fn: Callable[..., object], args_list: list[tuple], loops: int) -> float:
    """Seconds per call of fn over args_list, cycled `loops` times. The loop unpacks the
    arguments itself, so the harness adds the same small cost to every candidate."""
    arity = len(args_list[0])
    if arity == 1:
        flat = [args[0] for args in args_list]

        def run() -> None:
            for _ in range(loops):
                for a in flat:
                    fn(a)
    elif arity == 3:

        def run() -> None:
            for _ in range(loops):
                for a, b, c in args_list:
                    fn(a, b, c)
    elif arity == 4:

        def run() -> None:
            for _ in range(loops):
                for a, b, c, d in args_list:
                    fn(a, b, c, d)
    else:
        raise ValueError(f"no loop for {arity} arguments")
    gc.disable()
    try:
        start = time.perf_counter()
        run()
        return (time.perf_counter() - start) / (loops * len(args_list))
    finally:
        gc.enable()


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_record(sizes: Sizes) -> list[Figure]:
    tracker = DriftTracker(registry=MetricsRegistry())
    py_tracker = PyDriftTracker()
    verdicts = [Verdict.OK] * 63 + [Verdict.FAIL]
    args = [(f"policy-{i % 8}", Verdict.OK, verdicts[i % 64]) for i in range(1024)]
    loops, repeats = sizes.record_loops, sizes.repeats

    noop = _bench.Noop()
    native = best_of(repeats, lambda: per_call(tracker.record, args, loops))
    empty = best_of(repeats, lambda: per_call(_bench.noop_handles, args, loops))
    empty_fast = best_of(repeats, lambda: per_call(noop.record_fast, args, loops))
    empty_cast = best_of(repeats, lambda: per_call(_bench.noop_record, args, loops))
    python = best_of(repeats, lambda: per_call(py_tracker.record, args, max(1, loops // 10)))
    return [
        Figure(
            "`DriftTracker.record` from Python / empty pybind11 function taking the same "
            "three objects",
            f"{native * 1e9:.0f} ns / {empty * 1e9:.0f} ns = {native / empty:.2f}x",
            "<= 2.0x",
            native / empty <= 2.0,
        ),
        Figure(
            "`DriftTracker.record` / empty method bound the same way (METH_FASTCALL, the floor)",
            f"{native * 1e9:.0f} ns / {empty_fast * 1e9:.0f} ns = {native / empty_fast:.2f}x",
            "(for reference)",
            True,
        ),
        Figure(
            "empty pybind11 function taking `(str, Verdict, Verdict)` through pybind11's own "
            "casters / `DriftTracker.record`",
            f"{empty_cast * 1e9:.0f} ns / {native * 1e9:.0f} ns = {empty_cast / native:.1f}x",
            "(for reference)",
            True,
        ),
        Figure(
            "pure-Python port of the seeds' tracker / `DriftTracker.record`",
            f"{python * 1e9:.0f} ns / {native * 1e9:.0f} ns = {python / native:.1f}x faster",
            ">= 15x",
            python / native >= 15,
        ),
    ]


def bench_decide(sizes: Sizes) -> list[Figure]:
    registry = MetricsRegistry()
    tracker = DriftTracker(registry=registry)
    # Everyone in the cohort: both callables run on every decision.
    enforcer = Enforcer(EnforceOptions(enforce=True, rollout_percent=100), tracker)

    def ok() -> Verdict:
        return Verdict.OK

    def fail() -> Verdict:
        return Verdict.FAIL

    ok_verdict, fail_verdict = Verdict.OK, Verdict.FAIL

    def ok_constant() -> Verdict:
        return ok_verdict

    def fail_constant() -> Verdict:
        return fail_verdict

    callables = [
        (f"policy-{i % 8}", f"key-{i}", ok, fail if i % 64 == 0 else ok) for i in range(1024)
    ]
    constants = [
        (p, k, ok_constant, fail_constant if d is fail else ok_constant) for p, k, _, d in callables
    ]
    verdicts = [(p, k, Verdict.OK, Verdict.OK) for p, k, _, _ in callables]
    loops, repeats = sizes.record_loops, sizes.repeats
    noop = _bench.Noop()

    # What a user would write instead of decide: call both, count in prometheus_client.
    counted = CollectorRegistry(auto_describe=False)
    decisions = Counter("decisions", "Decisions.", registry=counted)
    enforced_decisions = Counter("enforced_decisions", "Enforced decisions.", registry=counted)

    def by_hand(policy_id: str, key: str, shadow, enforced) -> tuple[Verdict, Verdict]:
        verdicts = shadow(), enforced()
        decisions.inc()
        enforced_decisions.inc()
        return verdicts

    # Back to back in every round, like the LRU figures: the ratio is the median of the rounds.
    rounds = [
        (
            per_call(enforcer.decide, callables, loops),
            per_call(noop.decide_fast, callables, loops),
            per_call(noop.call_both, callables, loops),
            per_call(enforcer.decide, verdicts, loops),
            per_call(enforcer.decide, constants, loops),
            per_call(noop.call_both, constants, loops),
            per_call(by_hand, constants, loops),
        )
        for _ in range(repeats)
    ]
    decide, empty, floor, plain, cheap, cheap_floor, hand = (
        min(r[i] for r in rounds) for i in range(7)
    )
    cheap_vs_floor = statistics.median(r[4] / r[5] for r in rounds)
    cheap_vs_hand = statistics.median(r[4] / r[6] for r in rounds)
    vs_floor = statistics.median(r[0] / r[2] for r in rounds)
    vs_empty = statistics.median(r[0] / r[1] for r in rounds)
    floor_vs_empty = statistics.median(r[2] / r[1] for r in rounds)
    plain_vs_empty = statistics.median(r[3] / r[1] for r in rounds)
    return [
        # The figure judged: what decide adds to the two calls it must make. Against the empty
        # method alone no decide can reach 2x, since the calls by themselves cost more (the
        # third figure).
        Figure(
            "`Enforcer.decide` with two callables, both evaluated (in the cohort) / a method "
            "bound the same way that only calls the two callables (the floor of any decide; "
            f"median of {repeats} rounds)",
            f"{decide * 1e9:.0f} ns / {floor * 1e9:.0f} ns; ratio {vs_floor:.2f}x",
            "<= 2.0x",
            vs_floor <= 2.0,
        ),
        Figure(
            "`Enforcer.decide` with two callables / an empty method bound the same way taking "
            "the same four arguments",
            f"{decide * 1e9:.0f} ns / {empty * 1e9:.0f} ns; ratio {vs_empty:.2f}x",
            "(for reference)",
            True,
        ),
        Figure(
            "the two callables' calls alone (the floor) / the same empty method",
            f"{floor * 1e9:.0f} ns / {empty * 1e9:.0f} ns; ratio {floor_vs_empty:.2f}x",
            "(for reference)",
            True,
        ),
        Figure(
            "`Enforcer.decide` with two verdicts (no callables) / the same empty method",
            f"{plain * 1e9:.0f} ns / {empty * 1e9:.0f} ns; ratio {plain_vs_empty:.2f}x",
            "(for reference)",
            True,
        ),
        Figure(
            "`Enforcer.decide` with two callables that return a verdict held in a local (no "
            "enum lookup) / the same method calling only those two (the floor; median of "
            f"{repeats} rounds)",
            f"{cheap * 1e9:.0f} ns / {cheap_floor * 1e9:.0f} ns; ratio {cheap_vs_floor:.2f}x",
            "<= 1.5x",
            cheap_vs_floor <= 1.5,
        ),
        Figure(
            "`Enforcer.decide` with the same two callables / what a user would write instead: "
            "a function that calls both and increments two prometheus_client counters (median "
            f"of {repeats} rounds)",
            f"{cheap * 1e9:.0f} ns / {hand * 1e9:.0f} ns; ratio {cheap_vs_hand:.2f}x",
            "<= 0.5x",
            cheap_vs_hand <= 0.5,
        ),
    ]


def enforcer_with_rollouts(count: int) -> tuple[Enforcer, list[RolloutManager]]:
    """An enforcer whose policies policy-0 .. policy-{count-1} each belong to a rollout of
    their own (one manager each, at its first stage, 10 %), on a registry of its own."""
    clock = ManualClock(1_700_000_000.0)
    registry = MetricsRegistry()
    tracker = DriftTracker(clock=clock, registry=registry, max_policies=max(256, count))
    enforcer = Enforcer(EnforceOptions(enforce=True), tracker)
    managers = [
        RolloutManager(
            RolloutConfig.default(),
            enforcer=enforcer,
            clock=clock,
            rollout=f"rollout-{i}",
            policies=[f"policy-{i}"],
        )
        for i in range(count)
    ]
    return enforcer, managers


def bench_rollouts(sizes: Sizes) -> list[Figure]:
    one, _one_alive = enforcer_with_rollouts(1)
    hundred, _hundred_alive = enforcer_with_rollouts(100)
    # Decisions of one rollout's policy: found through its slot's share, whatever the others.
    args = [("policy-0", f"key-{i}", Verdict.OK, Verdict.OK) for i in range(1024)]
    loops, repeats = sizes.record_loops, sizes.repeats
    rounds = []
    for r in range(repeats):
        # Interleaved, each side first in every other round, so a drift of the machine's speed
        # weighs on both.
        pair = (one, hundred) if r % 2 == 0 else (hundred, one)
        timed = {id(e): per_call(e.decide, args, loops) for e in pair}
        rounds.append((timed[id(one)], timed[id(hundred)]))
    ratio = statistics.median(many / single for single, many in rounds)
    single = statistics.median(r[0] for r in rounds)
    many = statistics.median(r[1] for r in rounds)
    return [
        Figure(
            "`Enforcer.decide` of a rollout's policy with 100 rollouts on the enforcer (a manager "
            "each, one policy each) / with 1 (median of "
            f"{repeats} interleaved rounds)",
            f"{many * 1e9:.0f} ns / {single * 1e9:.0f} ns; ratio {ratio:.3f}x",
            "within 5 % (0.95x to 1.05x)",
            0.95 <= ratio <= 1.05,
        )
    ]


def bench_gate(sizes: Sizes) -> list[Figure]:
    clock = ManualClock(1_700_000_000.0)
    tracker = DriftTracker(clock=clock, registry=MetricsRegistry())
    gate = ReadinessGate(GateConfig(enabled=True, min_requests=1), tracker)
    # One shard per writer thread, as a serving threadpool leaves them.
    for i in range(sizes.writer_threads):
        thread = threading.Thread(target=tracker.record, args=(f"policy-{i % 8}", "ok", "ok"))
        thread.start()
        thread.join()
    loops = max(1, sizes.record_loops // 10)
    one = [(None,)] * 1024

    def check(_: object) -> None:
        gate.check()

    def summed(_: object) -> None:
        tracker.counts("5m", "policy-0")  # one policy's window: summed over every shard

    rounds = [
        (per_call(check, one, loops), per_call(summed, one, loops)) for _ in range(sizes.repeats)
    ]
    cached = min(r[0] for r in rounds)
    full = min(r[1] for r in rounds)
    return [
        Figure(
            f"`ReadinessGate.check()` across {sizes.writer_threads} writer threads' shards, "
            "nothing recorded since the last check / one window summed over every shard",
            f"{cached * 1e9:.0f} ns / {full * 1e9:.0f} ns",
            "(for reference)",
            True,
        )
    ]


def prometheus_client_equivalent(core: MetricsRegistry) -> CollectorRegistry:
    """prometheus_client metrics with the core's families and label sets (values aside)."""
    prometheus_client.disable_created_metrics()  # the core exports no _created series
    out = CollectorRegistry(auto_describe=False)

    def child(metric, labels):
        return metric.labels(**labels) if labels else metric

    for name, help_text, kind, samples in core.collect():
        labelled = [{k: v for k, v in labels.items() if k != "le"} for _, labels, _ in samples]
        label_names = list(dict.fromkeys(k for labels in labelled for k in labels))
        if kind == "counter":
            counter = Counter(name.removesuffix("_total"), help_text, label_names, registry=out)
            for labels, (_, _, value) in zip(labelled, samples, strict=True):
                child(counter, labels).inc(value)
        elif kind == "gauge":
            gauge = Gauge(name, help_text, label_names, registry=out)
            for labels, (_, _, value) in zip(labelled, samples, strict=True):
                child(gauge, labels).set(value)
        elif kind == "histogram":
            bounds = sorted({labels["le"] for _, labels, _ in samples if "le" in labels})
            histogram = Histogram(name, help_text, label_names, buckets=bounds, registry=out)
            for labels in labelled:
                child(histogram, labels)
        else:
            raise AssertionError(f"no prometheus_client equivalent for {kind} family {name}")
    return out


def _samples(body: bytes) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def fastest_call(fn: Callable[[], object], calls: int) -> float:
    """Seconds of the fastest of `calls` calls, with the garbage collector paused."""
    gc.disable()
    try:
        best = math.inf
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        return best
    finally:
        gc.enable()


def bench_exposition(sizes: Sizes) -> list[Figure]:
    figures = []
    formats = {
        "text": (None, prometheus_client.generate_latest, parse_text),
        "OpenMetrics": (OPENMETRICS_ACCEPT, openmetrics.generate_latest, parse_om),
    }
    for policies in sizes.policies:
        registry, _alive = populated_registry(policies)
        equivalent = prometheus_client_equivalent(registry)
        core_series = _samples(registry.exposition_bytes())
        if _samples(prometheus_client.generate_latest(equivalent)) != core_series:
            raise AssertionError("the prometheus_client registry is not equivalent to the core's")
        for name, (accept, encode, parse) in formats.items():
            body, _ = render_metrics(registry, accept)
            families = {family.name for family in parse(body.decode())}  # one valid exposition
            if "adapt_requests" not in families or "python_info" not in families:
                raise AssertionError(f"the {name} body lacks core or default families")

            calls = sizes.scrapes if policies <= 256 else max(1, sizes.scrapes // 4)
            rounds = [
                (
                    fastest_call(functools.partial(render_metrics, registry, accept), calls),
                    fastest_call(registry.exposition_bytes, calls),
                    fastest_call(functools.partial(encode, equivalent), max(1, calls // 10)),
                )
                for _ in range(sizes.repeats)
            ]
            body_s, core_s, client_s = (min(r[i] for r in rounds) for i in range(3))
            vs_core = statistics.median(r[0] / r[1] for r in rounds)
            vs_client = statistics.median(r[0] / r[2] for r in rounds)
            what = (
                f"`/api/v1/metrics` body, {name}, {policies} policies ({core_series} core "
                "series, prometheus_client's default registry included)"
            )
            figures += [
                Figure(
                    f"{what} / the core's own text exposition of the same registry (median of "
                    f"{sizes.repeats} rounds)",
                    f"{body_s * 1e3:.2f} ms / {core_s * 1e3:.2f} ms; ratio {vs_core:.2f}x",
                    "<= 1.5x",
                    vs_core <= 1.5,
                ),
                Figure(
                    f"{what} / prometheus_client's `generate_latest` over an equivalent registry",
                    f"{body_s * 1e3:.2f} ms / {client_s * 1e3:.2f} ms; ratio {vs_client:.3f}x",
                    "<= 0.15x",
                    vs_client <= 0.15,
                ),
            ]
    return figures


def bench_lru(sizes: Sizes) -> list[Figure]:
    rng = random.Random(7)

    def signature() -> str:
        return f"sig-{rng.getrandbits(64):016x}"

    hot = [signature() for _ in range(4000)]
    workloads = {
        # A fleet whose solutions mostly repeat: every signature is among the last 5000.
        "repeats": [(rng.choice(hot),) for _ in range(sizes.lru_calls)],
        # Half the signatures are new, so half the calls insert and evict.
        "half new": [(rng.choice(hot) if i % 2 else signature(),) for i in range(sizes.lru_calls)],
    }
    loops, repeats = sizes.lru_loops, sizes.repeats
    figures = []
    for name, stream in workloads.items():

        def once(factory, stream=stream):
            lru = factory()
            per_call(lru.is_new, stream, 1)  # fill it first
            return per_call(lru.is_new, stream, loops)

        # All three back to back in every round: the host moves this VM's clock speed, so
        # ratios within a round are steadier than best against best across the run.
        rounds = [
            (
                once(lambda: SignatureLRU(5000, registry=MetricsRegistry())),
                once(lambda: OrderedDictLRU(5000)),
                once(lambda: CachetoolsLRU(5000)),
            )
            for _ in range(repeats)
        ]
        native = min(r[0] for r in rounds)
        vs_ordered = statistics.median(r[1] / r[0] for r in rounds)
        vs_cachetools = statistics.median(r[2] / r[0] for r in rounds)
        figures += [
            Figure(
                f"OrderedDict LRU / `SignatureLRU.is_new`, {name} (median of {repeats} rounds)",
                f"{min(r[1] for r in rounds) * 1e9:.0f} ns / {native * 1e9:.0f} ns; "
                f"ratio {vs_ordered:.2f}x",
                ">= 1.0x",
                vs_ordered >= 1.0,
            ),
            Figure(
                f"`cachetools.LRUCache` / `SignatureLRU.is_new`, {name} (median of {repeats} "
                "rounds)",
                f"{min(r[2] for r in rounds) * 1e9:.0f} ns / {native * 1e9:.0f} ns; "
                f"ratio {vs_cachetools:.1f}x",
                ">= 5x",
                vs_cachetools >= 5,
            ),
        ]
    return figures


def bench_native(sizes: Sizes) -> list[Figure]:
    per_thread, repeats = sizes.native_per_thread, sizes.native_repeats
    policies = [f"policy-{i}" for i in range(8)]

    def rate(threads: int, clock, rounds: int = 1) -> float:
        def run():
            tracker = DriftTracker(clock=clock, registry=MetricsRegistry())
            _bench.native_record(tracker, policies, 10_000, threads)  # warm the shards
            seconds = _bench.native_record(tracker, policies, per_thread, threads)
            return seconds / (per_thread * threads)

        return 1 / best_of(rounds, run)

    manual_one = rate(1, ManualClock(0.0), repeats)
    # One and two threads measured back to back, pair by pair: the host moves this VM's clock
    # speed between runs, so the median of paired ratios is steadier than best against best.
    pairs = [(rate(1, None), rate(2, None)) for _ in range(repeats)]
    system_one = max(one for one, _ in pairs)
    system_two = max(two for _, two in pairs)
    scaling = statistics.median(two / one for one, two in pairs)
    return [
        Figure(
            "native `record`, one thread, SystemClock",
            f"{system_one / 1e6:.1f} M/s",
            ">= 20 M/s",
            system_one >= 20e6,
        ),
        Figure(
            "native `record`, one thread, ManualClock (clock cost removed)",
            f"{manual_one / 1e6:.1f} M/s",
            "(for reference)",
            True,
        ),
        Figure(
            "native `record`, two threads / one thread (SystemClock; median of "
            f"{repeats} back-to-back pairs)",
            f"{system_two / 1e6:.1f} M/s best two-thread; ratio {scaling:.2f}x",
            ">= 1.3x",
            scaling >= 1.3,
        ),
    ]


def bench_batch(sizes: Sizes) -> list[Figure]:
    figures = []
    for n in sizes.batch_pairs:
        rng = np.random.default_rng(1)
        shadow = rng.integers(0, 3, n, dtype=np.uint8)
        enforced = shadow.copy()
        enforced[rng.integers(0, n, max(1, n // 200))] = 2
        tracker = DriftTracker(registry=MetricsRegistry())
        expected = int(np.count_nonzero(shadow != enforced))
        drift = tracker.record_batch("p", shadow, enforced)
        if drift != expected:
            raise AssertionError(
                f"record_batch counted {drift} drifts in {n} pairs, numpy {expected}"
            )
        # Small batches are timed many to a call, so that the timer's own cost stays out.
        batches = max(1, 100_000 // n)

        def ours(batches=batches, shadow=shadow, enforced=enforced, tracker=tracker) -> None:
            for _ in range(batches):
                tracker.record_batch("p", shadow, enforced)

        def numpy(batches=batches, shadow=shadow, enforced=enforced) -> None:
            for _ in range(batches):
                np.count_nonzero(shadow != enforced)

        calls = 20 if n < 10_000_000 else 3
        # Back to back in every round; the ratio is the median of the rounds'.
        rounds = [
            (fastest_call(ours, calls) / batches, fastest_call(numpy, calls) / batches)
            for _ in range(sizes.repeats)
        ]
        seconds = min(r[0] for r in rounds)
        numpy_seconds = min(r[1] for r in rounds)
        speed = statistics.median(r[1] / r[0] for r in rounds)
        figures.append(
            Figure(
                f"`record_batch` of {n:,} pairs from Python / numpy's "
                f"`np.count_nonzero(a != b)` on the same arrays (median of {sizes.repeats} "
                "rounds)",
                f"{seconds * 1e6:.2f} us / {numpy_seconds * 1e6:.2f} us; "
                f"{speed:.2f}x numpy's speed ({n / seconds / 1e6:.0f} M pairs/s)",
                ">= 1.5x",
                speed >= 1.5,
            )
        )
    return figures


def bench_memory(sizes: Sizes) -> list[Figure]:
    total = sizes.memory_records
    ids = [f"tenant-{i}" for i in range(10_000)]
    tracker = DriftTracker(registry=MetricsRegistry(), max_policies=256)
    chunk = min(100_000, total)
    # Warm-up: every id once, so all 256 slots and the overflow slot have their rings.
    for policy in ids:
        tracker.record(policy, "ok", "fail")
    gc.collect()
    before = rss_bytes()
    recorded = 0
    while recorded < total:
        for policy in ids[recorded % len(ids) :][: chunk // 10]:
            for _ in range(10):
                tracker.record(policy, "ok", "ok")
        recorded += chunk
    gc.collect()
    grown = rss_bytes() - before
    policy_bytes = sum(sys.getsizeof(p) for p in ids)
    return [
        Figure(
            f"RSS growth over {total / 1e6:g} M records across 10,000 policy ids (cap 256), "
            "after warm-up",
            f"{grown / 2**20:.2f} MiB (the 10,000 id strings alone: "
            f"{policy_bytes / 2**20:.2f} MiB)",
            "< 2 MiB",
            grown < 2 * 2**20,
        )
    ]


def render(figures: list[Figure], command: str, seconds: float) -> str:
    lines = [
        "## Core",
        "",
        f"- Command: `{command}`",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, driftgate {driftgate.__version__}",
        f"- Run took {seconds:.0f} s",
        "",
        "| what | measured | target | met |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {f.name} | {f.value} | {f.target} | {'yes' if f.passed else 'NO'} |" for f in figures
    ]
    lines += [
        "",
        "Notes:",
        "- Python-side figures are the best of several repeats of thousands of calls, with the "
        "garbage collector paused, so the figure is the cost of the call, not of the machine's "
        "noise. Where a ratio is the median of rounds, candidate and baseline ran back to back "
        "in each round.",
        "- The empty bound calls live in `driftgate._core._bench`: `noop_handles` is a plain "
        "pybind11 function taking three objects, `Noop.record_fast` an empty method installed "
        "the way `record` is (METH_FASTCALL, see `cpp/bindings/fast_method.hpp`), `noop_record` "
        "a pybind11 function taking `(std::string_view, Verdict, Verdict)` through pybind11's "
        "casters (its native-enum caster is what makes it slow).",
        "- The pure-Python port is `benchmarks/python_baselines.py`: the seeds' RollingWindow and "
        "DriftTracker, locks included.",
        "- The native figures call `DriftTracker::record` in a C++ loop with the GIL released "
        "(`_bench.native_record`), cycling over 8 policy ids.",
        "- This machine is a 2-vCPU virtual machine whose host moves its clock speed: one "
        "thread's native `record` ranged from about 25 to 45 M/s across runs, while two threads "
        "together stayed near 50 M/s. When one thread runs fast, two scale worse (1.1x was "
        "seen); the two-thread figure is therefore the median of back-to-back pairs. Ratios "
        "against a same-run baseline move much less than absolute figures; rerun before "
        "trusting a single odd one.",
        "- That a Python thread keeps running while another is inside `record_batch` is a test, "
        "not a figure: `tests/test_threads.py::test_python_thread_progresses_inside_record_batch`.",
        "- `record_batch` figures: numpy uint8 arrays of codes 0-2, one pair in 200 made to "
        "differ, against numpy's `np.count_nonzero(a != b)` on the same arrays (which builds a "
        "boolean array and counts it; record_batch also checks every code). Batches below "
        "100,000 pairs are timed several to a call. The scan is the fastest this CPU runs of "
        "AVX2, SSE2 and a scalar loop, chosen at run time (`cpp/src/verdict_batch.cpp`).",
        "- `decide` figures: an enforcer at 100 % (both callables run), callables that return a "
        "`Verdict`, one in 64 enforced verdicts a FAIL. `_bench.Noop.decide_fast` is the empty "
        "method bound the way `decide` is, taking the same four arguments; "
        "`_bench.Noop.call_both` calls the two callables and does nothing else, so no `decide` "
        "can be cheaper. The target is the ratio to that floor: what the core's decision and "
        "the binding add to the calls. Against the empty method no decide can reach 2x, since "
        "the two calls alone cost several times an empty call (each callable returns "
        "`Verdict.OK`, and an enum member lookup costs about 100 ns on Python 3.11); that "
        "ratio is shown for reference. With callables that return a verdict held in a local, "
        "the floor is the two calls and little else, so that ratio is what decide itself "
        "costs. The user's alternative is a Python function taking the same four arguments "
        "that calls both callables and increments two prometheus_client counters (unlabelled, "
        "the cheapest kind), which is less than decide does.",
        "- The rollouts figure: two enforcers, one with 1 rollout and one with 100 (a "
        "`RolloutManager` each, claiming one policy each), deciding the first rollout's policy "
        "with two verdicts; the rounds alternate which enforcer goes first.",
        "- Metrics figures: a registry with every driftgate family populated (a tracker, an "
        "enforcer at 50 % deciding four requests per policy, one evaluation raising, a rollout "
        "manager, a readiness gate, a signature LRU and a determinism probe). The body is what "
        "`GET /api/v1/metrics` answers by default: the core's families and prometheus_client's "
        "default registry, parsed once with prometheus_client's parser of that format before "
        "it is timed. The equivalent prometheus_client registry has the same families and label "
        "sets, with `_created` series off; the run checks that it writes as many samples. Each "
        "time is the fastest of several calls in a round; the ratio is the median of the "
        "rounds' ratios.",
        "- The gate figure reads the 5m window's global counts the way `GET /api/v1/readyz` "
        "does, after that many threads each recorded once; the baseline sums one policy's "
        "window over every shard, which is what every gate check cost before the global sums "
        "were kept between reads.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer repeats, smaller inputs")
    size.add_argument(
        "--smoke",
        action="store_true",
        help="every benchmark once on tiny inputs (about a second); fails on an error, "
        "judges no target",
    )
    parser.add_argument("--output", type=Path, help="write the markdown table here")
    args = parser.parse_args()
    flag = " --smoke" if args.smoke else " --quick" if args.quick else ""
    sizes = {" --smoke": SMOKE, " --quick": QUICK, "": FULL}[flag]

    started = time.perf_counter()
    figures: list[Figure] = []
    for bench in (
        bench_record,
        bench_decide,
        bench_rollouts,
        bench_lru,
        bench_native,
        bench_batch,
        bench_memory,
        bench_gate,
        bench_exposition,
    ):
        got = bench(sizes)
        for figure in got:
            verdict = "ok  " if figure.passed else "MISS"
            print(f"{verdict} {figure.name}: {figure.value} ({figure.target})")
        figures += got
    command = "python benchmarks/run.py" + flag
    if args.output:
        command += f" --output {args.output}"
    text = render(figures, command, time.perf_counter() - started)
    if args.output:
        write_section(args.output, "core", text)
    if args.smoke:
        print("smoke run: every benchmark ran; targets not judged on inputs this small")
        return 0
    return 0 if all(f.passed for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
