from prometheus_client.parser import text_string_to_metric_families

import driftgate
from driftgate import DriftTracker, EnforceOptions, Enforcer, SignatureLRU


def samples(registry):
    out = {}
    for family in text_string_to_metric_families(registry.exposition()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_exposition_parses_and_carries_the_seed_names(clock, registry):
    tracker = DriftTracker(clock=clock, registry=registry)
    enforcer = Enforcer(EnforceOptions(True, 100), tracker)
    SignatureLRU(registry=registry).is_new("sig")
    driftgate.DeterminismProbe(registry=registry).observe("in", "sig")
    enforcer.decide("lksg.v1", "k1", "ok", "fail")
    enforcer.decide("lksg.v1", "k2", "ok", lambda: 1 / 0)
    got = samples(registry)
    names = {name for name, _ in got}
    for expected in [
        "adapt_enforce_rollout_percent",
        "adapt_drift_max_ratio",
        "adapt_requests_total",
        "adapt_drift_events_total",
        "adapt_drift_ratio",
        "adapt_drift_window_requests",
        "adapt_drift_window_events",
        "adapt_evaluation_errors_total",
        "adapt_selection_latency_seconds_bucket",
        "guardian_enforcement_total",
        "guardian_enforcement_failed_total",
        "solver_signature_runs_total",
        "solver_signature_unique_total",
        "solver_signature_mismatch_total",
    ]:
        assert expected in names, expected
    assert got[("adapt_drift_ratio", (("window", "5m"),))] == 1.0
    assert got[("adapt_drift_window_requests", (("window", "60m"),))] == 2
    assert got[("adapt_drift_events_total", (("policy_id", "lksg.v1"),))] == 2
    assert got[("guardian_enforcement_failed_total", (("policy_id", "lksg.v1"),))] == 1


def policy_series(registry, policy_id):
    """Every sample that carries the policy id, as {(name, mode or None): value}."""
    return {
        (name, dict(labels).get("mode")): value
        for (name, labels), value in samples(registry).items()
        if ("policy_id", policy_id) in labels
    }


def test_shadow_counts_every_decision_and_enforced_the_cohort(clock, registry):
    enforcer = Enforcer(EnforceOptions(True, 30), DriftTracker(clock=clock, registry=registry))
    cohort = sum(enforcer.decide("p", f"k{i}", "ok", "warn").in_rollout for i in range(500))
    assert 0 < cohort < 500
    got = policy_series(registry, "p")
    assert got[("adapt_requests_total", "shadow")] == 500
    assert got[("adapt_requests_total", "enforced")] == cohort
    assert got[("guardian_enforcement_total", None)] == cohort
    assert got[("adapt_drift_events_total", None)] == cohort  # ok against warn, in the cohort


def test_evaluation_errors_count_under_the_side_that_raised(clock, registry):
    enforcer = Enforcer(EnforceOptions(True, 100), DriftTracker(clock=clock, registry=registry))
    enforcer.decide("p", "k1", lambda: 1 / 0, "ok")
    enforcer.decide("p", "k2", "ok", lambda: 1 / 0)
    enforcer.decide("p", "k3", "ok", lambda: 1 / 0)
    got = policy_series(registry, "p")
    assert got[("adapt_evaluation_errors_total", "shadow")] == 1
    assert got[("adapt_evaluation_errors_total", "enforced")] == 2
    assert got[("guardian_enforcement_failed_total", None)] == 2
    assert got[("adapt_requests_total", "shadow")] == 3


def test_a_policys_counters_exist_at_zero_from_its_first_decision(clock, registry):
    enforcer = Enforcer(EnforceOptions(), DriftTracker(clock=clock, registry=registry))
    assert policy_series(registry, "p") == {}
    enforcer.decide("p", "k", "ok", "ok")
    assert policy_series(registry, "p") == {
        ("adapt_requests_total", "shadow"): 1,
        ("adapt_requests_total", "enforced"): 0,
        ("adapt_drift_events_total", None): 0,
        ("adapt_evaluation_errors_total", "shadow"): 0,
        ("adapt_evaluation_errors_total", "enforced"): 0,
        ("guardian_enforcement_total", None): 0,
        ("guardian_enforcement_failed_total", None): 0,
    }
    assert policy_series(registry, "q") == {}


def test_a_policy_recorded_only_by_the_tracker_has_its_drift_counter_at_zero(clock, registry):
    tracker = DriftTracker(clock=clock, registry=registry)
    Enforcer(EnforceOptions(True, 100), tracker)  # an enforcer on the tracker that never decides
    tracker.record("p", "ok", "ok")
    tracker.record_batch("empty", b"", b"")  # records nothing
    assert policy_series(registry, "p") == {("adapt_drift_events_total", None): 0}
    assert policy_series(registry, "empty") == {}
    tracker.record("p", "ok", "fail")
    assert policy_series(registry, "p") == {("adapt_drift_events_total", None): 1}


def test_labels_carry_only_policy_ids_modes_windows_and_rollouts(clock, registry):
    tracker = DriftTracker(clock=clock, registry=registry)
    enforcer = Enforcer(EnforceOptions(True, 50), tracker)
    enforcer.decide("p", "customer-4711@example.com", "ok", "warn")
    text = registry.exposition()
    assert "customer-4711" not in text
    label_names = {
        label
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        for label in sample.labels
    }
    assert label_names <= {"policy_id", "mode", "window", "le", "rollout"}


def test_window_gauges_are_fresh_at_every_scrape(clock, registry):
    tracker = DriftTracker(clock=clock, registry=registry)
    tracker.record("p", "ok", "fail")
    assert samples(registry)[("adapt_drift_window_events", (("window", "5m"),))] == 1
    clock.advance(301)
    assert samples(registry)[("adapt_drift_window_events", (("window", "5m"),))] == 0
    assert samples(registry)[("adapt_drift_window_events", (("window", "15m"),))] == 1


def test_fresh_registries_are_independent(clock):
    a, b = driftgate.MetricsRegistry(), driftgate.MetricsRegistry()
    DriftTracker(clock=clock, registry=a).record("p", "ok", "fail")
    assert "adapt_drift_events_total" in a.exposition()
    assert b.exposition() == ""
