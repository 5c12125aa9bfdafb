import threading

import pytest

import driftgate
from driftgate import EnforceOptions, Enforcer, Verdict


@pytest.fixture
def make_enforcer(tracker, registry):
    def make(enforce=True, rollout_percent=100.0, seed=0):
        return Enforcer(EnforceOptions(enforce, rollout_percent), tracker, registry, seed)

    return make


def test_options_defaults():
    options = EnforceOptions()
    assert (options.enforce, options.rollout_percent, options.drift_max_ratio) == (
        False,
        0.0,
        0.005,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rollout_percent": -0.01}, "rollout_percent=-0.01"),
        ({"rollout_percent": 100.01}, "rollout_percent=100.01"),
        ({"rollout_percent": float("nan")}, "rollout_percent=nan"),
        ({"rollout_percent": 12.345}, "multiple of 0.01"),
        ({"drift_max_ratio": 1.5}, "drift_max_ratio=1.5"),
        ({"drift_max_ratio": -0.1}, "drift_max_ratio=-0.1"),
        ({"drift_max_ratio": float("inf")}, "drift_max_ratio=inf"),
    ],
)
def test_bad_options_are_value_errors_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EnforceOptions(**kwargs)


def test_in_rollout_matches_the_documented_bucket(make_enforcer):
    enforcer = make_enforcer(rollout_percent=33.33, seed=42)
    for i in range(3000):
        key = f"req-{i}"
        assert enforcer.in_rollout(key) == (driftgate.sampling_bucket(key, 42) < 3333)
    assert enforcer.in_rollout(b"req-1") == enforcer.in_rollout("req-1")


def test_raising_the_percent_never_removes_a_key(make_enforcer):
    enforcer = make_enforcer(rollout_percent=0.0)
    keys = [f"user-{i}" for i in range(5000)]
    cohort = set()
    for percent in [0.01, 5, 10, 25, 50, 75, 99.99, 100]:
        enforcer.set_options(rollout_percent=percent)
        now = {k for k in keys if enforcer.in_rollout(k)}
        assert cohort <= now
        cohort = now
    assert cohort == set(keys)


def test_cohort_share_is_close_to_the_percent(make_enforcer):
    enforcer = make_enforcer(rollout_percent=25)
    share = sum(enforcer.in_rollout(f"k{i}") for i in range(40_000)) / 40_000
    assert 0.24 < share < 0.26


def test_rollout_zero_evaluates_shadow_only_and_has_no_drift(make_enforcer, tracker):
    enforcer = make_enforcer(rollout_percent=0)
    calls = []

    def enforced():
        calls.append(1)
        return "fail"

    for i in range(100):
        pair = enforcer.decide("lksg.v1", f"k{i}", "ok", enforced)
        assert (pair.shadow, pair.enforced, pair.in_rollout, pair.drift) == (
            Verdict.OK,
            Verdict.OK,
            False,
            False,
        )
    assert calls == []
    assert tracker.counts() == (0, 100)


def test_partial_rollout_with_equal_verdicts_has_no_drift(make_enforcer, tracker):
    enforcer = make_enforcer(rollout_percent=25)
    for i in range(400):
        enforcer.decide("lksg.v1", f"k{i}", "ok", "ok")
    assert tracker.ratio() == 0.0


def test_partial_rollout_with_forced_difference_drifts_in_the_cohort(make_enforcer, tracker):
    enforcer = make_enforcer(rollout_percent=25)
    in_cohort = 0
    for i in range(400):
        pair = enforcer.decide("lksg.v1", f"k{i}", "ok", lambda: Verdict.FAIL)
        assert pair.drift == pair.in_rollout
        in_cohort += pair.in_rollout
    assert tracker.counts() == (in_cohort, 400)
    assert tracker.ratio() > 0.005


def test_not_enforcing_keeps_everyone_out(make_enforcer):
    enforcer = make_enforcer(enforce=False, rollout_percent=100)
    assert not any(enforcer.in_rollout(f"k{i}") for i in range(100))


def test_a_raising_callable_is_fail_and_an_evaluation_error(make_enforcer, registry):
    enforcer = make_enforcer()

    def broken():
        raise RuntimeError("backend down")

    pair = enforcer.decide("p", "k", "ok", broken)
    assert pair.enforced is Verdict.FAIL
    assert pair.drift
    assert enforcer.error_counts("60m") == (1, 1)
    text = registry.exposition()
    assert 'adapt_evaluation_errors_total{mode="enforced",policy_id="p"} 1' in text
    assert 'guardian_enforcement_failed_total{policy_id="p"} 1' in text
    assert "backend down" not in text


def test_a_raising_shadow_is_fail_too(make_enforcer, registry):
    enforcer = make_enforcer(rollout_percent=0)
    pair = enforcer.decide("p", "k", lambda: 1 / 0, "ok")
    assert pair.shadow is Verdict.FAIL
    assert pair.enforced is Verdict.FAIL  # enforced = shadow outside the cohort
    assert 'adapt_evaluation_errors_total{mode="shadow",policy_id="p"} 1' in registry.exposition()


def test_a_callable_returning_a_non_verdict_is_fail(make_enforcer):
    enforcer = make_enforcer()
    assert enforcer.decide("p", "k", "ok", lambda: "perhaps").enforced is Verdict.FAIL
    assert enforcer.decide("p", "k", "ok", lambda: None).enforced is Verdict.FAIL


def test_keyboard_interrupt_propagates_and_records_nothing(make_enforcer, tracker):
    enforcer = make_enforcer()

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        enforcer.decide("p", "k", "ok", interrupted)
    assert tracker.counts() == (0, 0)


def test_bad_arguments_to_decide_evaluate_nothing(make_enforcer, tracker):
    enforcer = make_enforcer()
    calls = []

    def spy():
        calls.append(1)
        return "ok"

    with pytest.raises(ValueError, match="policy_id"):
        enforcer.decide("not valid!", "k", spy, spy)
    with pytest.raises(ValueError, match="invalid verdict for shadow: 42"):
        enforcer.decide("p", "k", 42, spy)
    with pytest.raises(TypeError, match="key must be str or bytes"):
        enforcer.decide("p", 7, spy, spy)
    assert calls == []
    assert tracker.counts() == (0, 0)


def test_decisions_are_exported(make_enforcer, registry):
    enforcer = make_enforcer(rollout_percent=50)
    for i in range(100):
        enforcer.decide("p", f"k{i}", "ok", "warn")
    text = registry.exposition()
    assert 'adapt_enforce_rollout_percent{rollout=""} 50' in text
    # Timed: the first decision and every 64th; the clock stands still, so no others.
    assert "adapt_selection_latency_seconds_count 2" in text
    assert 'adapt_requests_total{mode="shadow",policy_id="p"}' in text
    assert 'adapt_requests_total{mode="enforced",policy_id="p"}' in text


def test_set_options_whole_or_by_field_and_bad_values_change_nothing(make_enforcer):
    enforcer = make_enforcer(rollout_percent=10)
    enforcer.set_options(EnforceOptions(True, 20, 0.01))
    assert enforcer.options == EnforceOptions(True, 20, 0.01)
    enforcer.set_options(rollout_percent=30)
    assert enforcer.options == EnforceOptions(True, 30, 0.01)
    with pytest.raises(ValueError, match="rollout_percent=101"):
        enforcer.set_options(rollout_percent=101)
    assert enforcer.options == EnforceOptions(True, 30, 0.01)


def test_rollout_gauge_shows_zero_while_not_enforcing(make_enforcer, registry):
    enforcer = make_enforcer(enforce=False, rollout_percent=40)
    assert 'adapt_enforce_rollout_percent{rollout=""} 0' in registry.exposition()
    enforcer.set_options(enforce=True)
    assert 'adapt_enforce_rollout_percent{rollout=""} 40' in registry.exposition()


def test_options_flip_atomically_under_threads(make_enforcer, tracker):
    enforcer = make_enforcer(rollout_percent=0)
    stop = threading.Event()
    decided = []

    def decide_loop(offset):
        n = 0
        while not stop.is_set():
            enforcer.decide("p", f"{offset}-{n}", "ok", "fail")
            n += 1
        decided.append(n)

    threads = [threading.Thread(target=decide_loop, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for flip in range(500):
        on = flip % 2 == 0
        enforcer.set_options(enforce=on, rollout_percent=100 if on else 0)
    stop.set()
    for t in threads:
        t.join()
    drift, total = tracker.counts()
    assert total == sum(decided)
    # Drift happens exactly for decisions made in the cohort.
    assert enforcer.error_counts("5m")[1] == drift
