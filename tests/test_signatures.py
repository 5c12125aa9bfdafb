import threading
from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import driftgate
from driftgate import DeterminismProbe, SignatureLRU


@pytest.fixture
def lru(registry):
    return SignatureLRU(3, registry=registry)


def test_new_until_seen(lru):
    assert lru.is_new("a") is True
    assert lru.is_new("a") is False
    assert len(lru) == 1
    assert "a" in lru
    assert lru.capacity == 3


def test_least_recent_is_evicted(lru):
    for sig in "abc":
        lru.is_new(sig)
    assert lru.is_new("a") is False  # a is most recent; b is oldest
    assert lru.is_new("d") is True  # evicts b
    assert "b" not in lru
    assert "a" in lru
    assert len(lru) == 3


def test_contains_does_not_touch(registry):
    lru = SignatureLRU(2, registry=registry)
    lru.is_new("a")
    lru.is_new("b")
    assert "a" in lru  # must not make a most recent
    lru.is_new("c")
    assert "a" not in lru


def test_str_and_bytes_are_the_same_signature(lru):
    lru.is_new("sig")
    assert lru.is_new(b"sig") is False


def test_default_capacity_is_5000(registry):
    lru = SignatureLRU(registry=registry)
    assert lru.capacity == 5000
    for i in range(5001):
        assert lru.is_new(f"s{i}")
    assert "s0" not in lru
    assert "s1" in lru


def test_clear(lru):
    lru.is_new("a")
    lru.clear()
    assert len(lru) == 0
    assert lru.is_new("a") is True


@pytest.mark.parametrize("bad", [0, -1, 10_000_001])
def test_bad_capacity_is_named(bad):
    with pytest.raises(ValueError, match=f"capacity={bad}"):
        SignatureLRU(bad, registry=driftgate.MetricsRegistry())


def test_bad_signature_type(lru):
    with pytest.raises(TypeError, match="signature must be str or bytes"):
        lru.is_new(123)


def test_runs_and_unique_are_counted(lru, registry):
    for sig in ["a", "b", "a", "c", "a"]:
        lru.is_new(sig)
    text = registry.exposition()
    assert "solver_signature_runs_total 5" in text
    assert "solver_signature_unique_total 3" in text


def test_threads_see_each_signature_new_once(registry):
    lru = SignatureLRU(100_000, registry=registry)
    fresh = []

    def work():
        fresh.append(sum(lru.is_new(f"sig-{i}") for i in range(5000)))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(fresh) == 5000


def test_probe_flags_a_changed_signature(registry):
    probe = DeterminismProbe(registry=registry)
    assert probe.capacity == 5000
    assert probe.observe("input-1", "sig-a") is True
    assert probe.observe("input-1", "sig-a") is True
    assert probe.observe("input-1", "sig-b") is False
    assert probe.observe(b"input-2", b"sig-b") is True
    assert "solver_signature_mismatch_total 1" in registry.exposition()
    assert len(probe) == 2


def test_probe_forgets_beyond_capacity(registry):
    probe = DeterminismProbe(1, registry=registry)
    probe.observe("input-1", "sig-a")
    probe.observe("input-2", "sig-b")
    assert probe.observe("input-1", "sig-c") is True


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(1, 20),
    stream=st.lists(st.integers(0, 40).map(lambda i: f"sig-{i}"), max_size=300),
)
def test_is_new_agrees_with_an_ordered_dict_lru(capacity, stream):
    lru = SignatureLRU(capacity, registry=driftgate.MetricsRegistry())
    model: OrderedDict[str, None] = OrderedDict()
    for signature in stream:
        expected = signature not in model
        if expected:
            model[signature] = None
            if len(model) > capacity:
                model.popitem(last=False)
        else:
            model.move_to_end(signature)
        assert lru.is_new(signature) is expected
    assert len(lru) == len(model)
    assert all(signature in lru for signature in model)
