"""DriftTracker against a pure-Python model of the bucket rule, driven by the same random
records and clock moves: forward, backward, and idle gaps longer than any window."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import driftgate
from driftgate import DriftTracker, ManualClock, WindowSpec

pytestmark = pytest.mark.slow

WINDOWS = [
    ("5m", 60, 5.0),
    ("15m", 60, 15.0),
    ("60m", 60, 60.0),
    ("odd", 7, 0.7),
]
POLICIES = ["a", "b", "c", "d", "e"]
MAX_POLICIES = 3
OVERFLOW = "__overflow__"


class BucketRuleModel:
    """The rolling-window bucket rule written out plainly: effective time is the highest clock
    reading seen, and an event at t counts in a read at u iff
    0 <= floor(u/step) - floor(t/step) < buckets."""

    def __init__(self):
        self.highest = -math.inf
        self.events: list[tuple[str, float, int, int]] = []  # (label, t, drift, total)
        self.admitted: list[str] = []

    def _effective(self, reading: float) -> float:
        self.highest = max(self.highest, reading)
        return self.highest

    def _label(self, policy: str) -> str:
        if policy in self.admitted:
            return policy
        if len(self.admitted) < MAX_POLICIES:
            self.admitted.append(policy)
            return policy
        return OVERFLOW

    def record(self, reading: float, policy: str, drift: int, total: int) -> None:
        t = self._effective(reading)
        self.events.append((self._label(policy), t, drift, total))

    def counts(self, reading: float, window: str, policy: str | None) -> tuple[int, int]:
        u = self._effective(reading)
        _, buckets, step = next(w for w in WINDOWS if w[0] == window)
        if policy is None or policy == OVERFLOW or policy in self.admitted:
            label = policy
        else:  # never admitted: never seen, or counted under OVERFLOW only
            return (0, 0)
        drift = total = 0
        for event_label, t, d, n in self.events:
            age = math.floor(u / step) - math.floor(t / step)
            if 0 <= age < buckets and (label is None or event_label == label):
                drift += d
                total += n
        return (drift, total)


verdict_codes = st.integers(0, 2)
operations = st.one_of(
    st.tuples(st.just("record"), st.sampled_from(POLICIES), verdict_codes, verdict_codes),
    st.tuples(
        st.just("batch"),
        st.sampled_from(POLICIES),
        st.lists(st.tuples(verdict_codes, verdict_codes), min_size=1, max_size=20),
    ),
    st.tuples(st.just("advance"), st.floats(0, 120, allow_nan=False)),
    st.tuples(st.just("idle"), st.floats(3600, 100_000, allow_nan=False)),
    st.tuples(st.just("back"), st.floats(0, 500, allow_nan=False)),
    st.tuples(st.just("check")),
    # One window at a time, so reads of different windows interleave with clock steps back.
    st.tuples(
        st.just("read"),
        st.sampled_from([w[0] for w in WINDOWS]),
        st.sampled_from([None, *POLICIES]),
    ),
)


def test_a_read_of_one_window_moves_every_window():
    """Reading 60m at a late clock, then 15m after the clock stepped back: the tracker's time
    is the high-water mark of both reads, so the early record is out of the 15m window."""
    clock = ManualClock(10397.25)
    tracker = DriftTracker(clock=clock, registry=driftgate.MetricsRegistry())
    tracker.record("p", "ok", "ok")
    clock.set(11397.25)
    assert tracker.counts("60m") == (0, 1)
    clock.set(10397.25)
    assert tracker.counts("15m") == (0, 0)


def test_overflow_is_reserved_and_unknown_ids_read_empty():
    tracker = DriftTracker(registry=driftgate.MetricsRegistry(), max_policies=1)
    tracker.record("a", "ok", "fail")
    tracker.record("b", "ok", "fail")  # past the cap: counted as __overflow__
    assert tracker.counts("5m", OVERFLOW) == (1, 1)
    assert tracker.counts("5m", "b") == (0, 0)
    assert tracker.counts("5m", "never-seen") == (0, 0)
    with pytest.raises(ValueError, match="'__overflow__' is reserved"):
        tracker.record(OVERFLOW, "ok", "ok")
    with pytest.raises(ValueError, match="'__overflow__' is reserved"):
        tracker.record_batch(OVERFLOW, b"\x00", b"\x00")
    assert tracker.counts("5m") == (2, 2)


@settings(max_examples=400, deadline=None)
@given(start=st.floats(-1e4, 1e7, allow_nan=False), ops=st.lists(operations, max_size=60))
def test_tracker_counts_equal_the_model_in_every_window(start, ops):
    clock = ManualClock(start)
    tracker = DriftTracker(
        windows=[WindowSpec(*w) for w in WINDOWS],
        clock=clock,
        registry=driftgate.MetricsRegistry(),
        max_policies=MAX_POLICIES,
    )
    model = BucketRuleModel()

    def check():
        for name, _, _ in WINDOWS:
            for policy in [None, *POLICIES, OVERFLOW]:
                expected = model.counts(clock.now(), name, policy)
                assert tracker.counts(name, policy) == expected, (name, policy)

    for op in ops:
        kind = op[0]
        if kind == "record":
            _, policy, shadow, enforced = op
            tracker.record(policy, driftgate.Verdict(shadow), driftgate.Verdict(enforced))
            model.record(clock.now(), policy, int(shadow != enforced), 1)
        elif kind == "batch":
            _, policy, pairs = op
            shadow = bytes(s for s, _ in pairs)
            enforced = bytes(e for _, e in pairs)
            drift = tracker.record_batch(policy, shadow, enforced)
            assert drift == sum(s != e for s, e in pairs)
            model.record(clock.now(), policy, drift, len(pairs))
        elif kind in ("advance", "idle"):
            clock.advance(op[1])
        elif kind == "back":
            clock.set(clock.now() - op[1])
        elif kind == "read":
            _, name, policy = op
            assert tracker.counts(name, policy) == model.counts(clock.now(), name, policy)
        else:
            check()
    check()
