import numpy as np
import pytest

import driftgate
from driftgate import DriftTracker, Verdict, WindowSpec


def test_record_returns_drift_and_counts_per_policy(tracker):
    assert tracker.record("lksg.v1", "ok", Verdict.FAIL) is True
    assert tracker.record("lksg.v1", Verdict.OK, "OK") is False
    assert tracker.record("other", "warn", "warn") is False
    assert tracker.counts() == (1, 3)
    assert tracker.counts("5m", "lksg.v1") == (1, 2)
    assert tracker.ratio("5m", "lksg.v1") == 0.5
    assert tracker.ratio_5m() == pytest.approx(1 / 3)
    assert tracker.policies() == ["lksg.v1", "other"]


def test_empty_window_has_ratio_zero(tracker):
    assert tracker.ratio() == 0.0
    assert tracker.counts("60m", "never-seen") == (0, 0)


def test_windows_age_out_at_their_span(tracker, clock):
    tracker.record("p", "ok", "fail")
    clock.advance(299.9)
    assert tracker.counts("5m") == (1, 1)
    clock.advance(5.1)  # 305 s: the first 5 s bucket has left the 5m window
    assert tracker.counts("5m") == (0, 0)
    assert tracker.ratio_15m() == 1.0
    assert tracker.ratio_60m() == 1.0
    clock.advance(3600)
    assert tracker.counts("60m") == (0, 0)


def test_seed_example_ninety_requests_three_drifts(tracker):
    for i in range(90):
        tracker.record("lksg.v1", "ok", "fail" if i % 30 == 0 else "ok")
    assert 0.03 <= tracker.ratio_5m() <= 0.04


def test_policies_are_independent(tracker):
    for _ in range(10):
        tracker.record("a", "ok", "fail")
        tracker.record("b", "ok", "ok")
    assert tracker.ratio("5m", "a") == 1.0
    assert tracker.ratio("5m", "b") == 0.0


@pytest.mark.parametrize("bad", ["", "x" * 65, "user@example.com", "a b", "ü", "a/b"])
def test_bad_policy_id_is_a_value_error_and_records_nothing(tracker, bad):
    tracker.record("good", "ok", "ok")
    with pytest.raises(ValueError, match="policy_id"):
        tracker.record(bad, "ok", "fail")
    assert tracker.counts() == (0, 1)
    assert tracker.policies() == ["good"]


def test_policy_id_must_be_a_str(tracker):
    with pytest.raises(TypeError, match="policy_id must be str"):
        tracker.record(b"bytes-id", "ok", "ok")


@pytest.mark.parametrize("bad", ["maybe", 3, None, 1.0])
def test_bad_verdict_records_nothing(tracker, bad):
    with pytest.raises(ValueError, match="invalid verdict for enforced"):
        tracker.record("p", "ok", bad)
    assert tracker.counts() == (0, 0)


def test_ids_past_the_cap_count_under_overflow(clock, registry):
    tracker = DriftTracker(clock=clock, registry=registry, max_policies=2)
    for policy in ["a", "b", "c", "d"]:
        tracker.record(policy, "ok", "fail")
    assert tracker.policies() == ["a", "b", "__overflow__"]
    assert tracker.counts("5m", "__overflow__") == (2, 2)
    assert tracker.counts("5m") == (4, 4)
    assert 'adapt_drift_events_total{policy_id="__overflow__"} 2' in registry.exposition()
    assert 'policy_id="c"' not in registry.exposition()


@pytest.mark.parametrize("bad", [0, -1, 65537])
def test_bad_max_policies_is_named(bad):
    with pytest.raises(ValueError, match=f"max_policies={bad}"):
        DriftTracker(max_policies=bad, registry=driftgate.MetricsRegistry())


def test_unknown_window_is_a_value_error_naming_the_known_ones(tracker):
    with pytest.raises(ValueError, match=r"unknown window '1h': expected one of 5m, 15m, 60m"):
        tracker.ratio("1h")


def test_custom_windows(clock, registry):
    tracker = DriftTracker(
        windows=[WindowSpec("burst", 10, 1.0), WindowSpec("day", 24, 3600.0)],
        clock=clock,
        registry=registry,
    )
    tracker.record("p", "ok", "fail")
    clock.advance(10)
    assert tracker.counts("burst") == (0, 0)
    assert tracker.counts("day") == (1, 1)
    assert [w.name for w in tracker.windows] == ["burst", "day"]
    with pytest.raises(ValueError, match="unknown window '5m'"):
        tracker.ratio_5m()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("x y", 10, 1.0), "invalid window name 'x y'"),
        (("w", 0, 1.0), "buckets=0"),
        (("w", 100001, 1.0), "buckets=100001"),
        (("w", 10, 0.0), "step_seconds=0"),
        (("w", 10, float("nan")), "step_seconds=nan"),
    ],
)
def test_bad_window_specs_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        WindowSpec(*args)


def test_duplicate_window_names_are_rejected():
    with pytest.raises(ValueError, match="duplicate window name 'w'"):
        DriftTracker(windows=[WindowSpec("w", 1, 1.0), WindowSpec("w", 2, 1.0)])


def test_record_batch_with_bytes_and_numpy(tracker):
    assert tracker.record_batch("p", bytes([0, 1, 2, 0]), bytes([0, 2, 2, 1])) == 2
    shadow = np.zeros(1000, dtype=np.uint8)
    enforced = np.zeros(1000, dtype=np.uint8)
    enforced[::100] = 2
    assert tracker.record_batch("p", shadow, enforced) == 10
    assert tracker.counts("5m", "p") == (12, 1004)


def test_record_batch_rejects_bad_codes_and_records_nothing(tracker):
    tracker.record_batch("p", b"\x00", b"\x01")
    with pytest.raises(ValueError, match=r"invalid verdict code 7 in shadow\[2\]"):
        tracker.record_batch("p", bytes([0, 0, 7]), bytes([0, 0, 0]))
    with pytest.raises(ValueError, match="equal length"):
        tracker.record_batch("p", b"\x00\x00", b"\x00")
    assert tracker.counts() == (1, 1)


def test_record_batch_counts_what_numpy_counts_at_any_length_and_alignment(tracker):
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 3, (2, 300), dtype=np.uint8)
    recorded = 0
    for n in [*range(0, 70), 127, 128, 129, 255, 256, 257]:
        for offset in (0, 1, 7, 31):  # views that start anywhere in their buffer
            shadow, enforced = codes[0, offset : offset + n], codes[1, 3 : 3 + n]
            assert tracker.record_batch("p", shadow, enforced) == np.count_nonzero(
                shadow != enforced
            )
            recorded += n
    assert tracker.counts("5m", "p")[1] == recorded


def test_record_batch_with_a_bad_code_anywhere_records_nothing(tracker):
    for n in (1, 16, 33, 100):
        for at in range(n):
            for side in ("shadow", "enforced"):
                buffers = {"shadow": bytearray(n), "enforced": bytearray(b"\x01" * n)}
                buffers[side][at] = 255
                with pytest.raises(ValueError, match=rf"code 255 in {side}\[{at}\]"):
                    tracker.record_batch("p", buffers["shadow"], buffers["enforced"])
    assert tracker.counts() == (0, 0)
    assert tracker.policies() == []


def test_record_batch_rejects_wrong_buffer_types(tracker):
    with pytest.raises(TypeError, match="uint8 verdict codes, got format 'i'"):
        tracker.record_batch("p", np.zeros(3, dtype=np.int32), np.zeros(3, dtype=np.int32))
    with pytest.raises(TypeError, match="contiguous buffer"):
        tracker.record_batch("p", [0, 1], [0, 1])
    with pytest.raises(TypeError, match="shadow must be a contiguous buffer"):
        tracker.record_batch("p", np.zeros((4, 4), dtype=np.uint8)[:, 0], b"\x00" * 4)
    assert tracker.counts() == (0, 0)


def test_reset_empties_windows_and_keeps_ids(tracker):
    tracker.record("p", "ok", "fail")
    tracker.reset()
    assert tracker.counts() == (0, 0)
    assert tracker.policies() == ["p"]
    tracker.record("p", "ok", "ok")
    assert tracker.counts("5m", "p") == (0, 1)


def test_default_clock_and_registry():
    tracker = DriftTracker()
    assert isinstance(tracker.clock, driftgate.SystemClock)
    assert tracker.registry is driftgate.default_registry()
