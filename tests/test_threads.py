"""Behaviour under Python threads: exact counts, and the GIL released around batches."""

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_text

import driftgate
from driftgate import DriftTracker


def test_records_from_many_threads_are_exact(tracker):
    per_thread = 20_000

    def work(t):
        for i in range(per_thread):
            tracker.record(f"p{t % 3}", "ok", "fail" if i % 10 == 0 else "ok")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tracker.counts("60m") == (6 * per_thread // 10, 6 * per_thread)
    assert sum(tracker.counts("60m", p)[1] for p in tracker.policies()) == 6 * per_thread


def test_decisions_from_many_threads_are_counted_exactly(tracker, registry, short_switch_interval):
    """Each thread counts its own decisions; a scrape sums them into counters that equal what
    the tracker and the enforcer's error windows counted."""
    enforcer = driftgate.Enforcer(
        driftgate.EnforceOptions(enforce=True, rollout_percent=50), tracker
    )
    per_thread = 3_000

    def raises() -> driftgate.Verdict:
        raise RuntimeError("evaluation failed")

    def work(t: int) -> None:
        for i in range(per_thread):
            shadow = raises if i % 11 == 0 else "ok"
            enforcer.decide(f"p{t % 3}", f"key-{t}-{i}", shadow, raises if i % 7 == 0 else "warn")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parse_text(registry.exposition())
        for s in family.samples
    }
    for policy in ("p0", "p1", "p2"):
        failed, enforced = enforcer.lifetime_error_counts(policy)
        drift, decided = tracker.counts("60m", policy)
        assert decided == 2 * per_thread
        assert 0 < enforced < decided

        def counted(name: str, mode: str | None = None, policy: str = policy) -> float:
            labels = {"policy_id": policy, **({"mode": mode} if mode else {})}
            return samples[(name, tuple(sorted(labels.items())))]

        assert counted("adapt_requests_total", "shadow") == decided
        assert counted("adapt_requests_total", "enforced") == enforced
        assert counted("guardian_enforcement_total") == enforced
        assert counted("adapt_evaluation_errors_total", "enforced") == failed
        assert counted("guardian_enforcement_failed_total") == failed
        assert counted("adapt_evaluation_errors_total", "shadow") == 2 * len(
            range(0, per_thread, 11)
        )
        assert counted("adapt_drift_events_total") == drift


@pytest.fixture
def short_switch_interval():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # hand the GIL over quickly whenever it is free
    yield
    sys.setswitchinterval(old)


def test_python_thread_progresses_inside_record_batch(clock, registry, short_switch_interval):
    """While one thread is inside record_batch on 30 M pairs, another keeps running Python.

    Without the release, the main thread could not run a single bytecode until the batch
    returned, so none of its iterations would fall inside a batch call. (The batches are large
    so that each call lasts a millisecond or more even with a vector scan: long enough for the
    other thread to be woken and scheduled on a busy machine.)"""
    tracker = DriftTracker(clock=clock, registry=registry)
    shadow = np.zeros(30_000_000, dtype=np.uint8)
    enforced = np.ones(30_000_000, dtype=np.uint8)
    intervals: list[tuple[float, float]] = []
    done = threading.Event()

    def batches():
        for _ in range(10):
            start = time.perf_counter()
            tracker.record_batch("p", shadow, enforced)
            intervals.append((start, time.perf_counter()))
        done.set()

    ticks: list[float] = []
    worker = threading.Thread(target=batches)
    worker.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
    worker.join()

    assert tracker.counts("5m", "p") == (300_000_000, 300_000_000)
    # Only the middle of each call counts: its start and end run Python code of the worker.
    inside = 0
    for start, end in intervals:
        margin = (end - start) * 0.2
        inside += sum(1 for tick in ticks if start + margin < tick < end - margin)
    assert inside >= 100, f"{inside} main-thread iterations ran inside record_batch calls"


def test_a_field_writer_never_undoes_the_managers_percent(clock, registry):
    """One thread changes only drift_max_ratio in a loop while another makes 20,000
    transitions: after each, the enforcer enforces exactly the manager's percentage (an abort
    to 0 % is never undone by a stale read-modify-write)."""
    tracker = driftgate.DriftTracker(clock=clock, registry=registry)
    enforcer = driftgate.Enforcer(driftgate.EnforceOptions(enforce=True), tracker)
    manager = driftgate.RolloutManager(driftgate.RolloutConfig.default(), enforcer, clock=clock)
    stop = threading.Event()

    def tune():
        ratio = 0
        while not stop.is_set():
            enforcer.set_options(drift_max_ratio=(ratio % 100) / 1000)
            ratio += 1

    tuner = threading.Thread(target=tune)
    tuner.start()
    mismatches = []
    try:
        for i in range(20_000):
            decision = manager.manual_rollback("ops") if i % 2 else manager.manual_advance("ops")
            if enforcer.options.rollout_percent != decision.to_percentage:
                mismatches.append((i, decision.to_stage, enforcer.options.rollout_percent))
    finally:
        stop.set()
        tuner.join()
    assert mismatches == []
    assert enforcer.options.rollout_percent == manager.enforced_percentage


# A store whose commit (called while the manager holds its lock) lets another thread read the
# manager's version and sync flag before it answers, as a shared store's follower thread may
# at any moment. Run in a child process: a deadlock there is a timeout here, not a hung suite.
READ_DURING_COMMIT = """
import threading
from driftgate import RolloutConfig, RolloutManager, SharedStateStore

class MemoryStore(SharedStateStore):
    def __init__(self):
        super().__init__()
        self.document, self.manager, self.read = None, None, []

    def describe(self):
        return "memory"

    def load(self):
        return self.document

    def commit(self, version, document, automatic):
        if self.manager is not None:
            started = threading.Event()

            def reader():
                started.set()
                self.read.append((self.manager.version, self.manager.synced))

            thread = threading.Thread(target=reader)
            thread.start()
            started.wait()  # the reader now asks the manager, whose lock this commit holds
            self.threads.append(thread)
        self.document = document
        return ("committed", None)

store = MemoryStore()
store.threads = []
manager = RolloutManager(RolloutConfig.default(), store=store)
store.manager = manager
for n in range(20):
    moved = manager.manual_advance() if n % 2 == 0 else manager.manual_rollback()
    assert moved.success, moved
for thread in store.threads:
    thread.join()
assert len(store.read) == 20 and all(synced for _, synced in store.read), store.read
print("versions read", sorted(version for version, _ in store.read))
"""


def test_reading_the_version_while_a_commit_waits_for_the_store_does_not_deadlock():
    """The version and sync flag wait for the manager's lock without holding the GIL: a
    follower thread that reads them while a transition commits through a Python store (which
    needs the GIL to answer) must not freeze the process."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", READ_DURING_COMMIT], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        pytest.fail("deadlock: a thread reading manager.version held the GIL during a commit")
    assert result.returncode == 0, result.stderr
    assert "versions read" in result.stdout
