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


def test_labels_carry_only_policy_ids_modes_and_windows(clock, registry):
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
    assert label_names <= {"policy_id", "mode", "window", "le"}


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
