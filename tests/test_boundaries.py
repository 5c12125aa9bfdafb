"""Each rule a decision depends on, at its limit and on both sides of it, through the Python
API: a `<` that became `<=` in the core changes an answer here."""

from __future__ import annotations

import functools
import math
import re

import pytest

import driftgate
from driftgate import (
    DecisionAction,
    EnforceOptions,
    GateConfig,
    ReadinessGate,
    RolloutConfig,
    RolloutManager,
    RolloutStage,
    Verdict,
    WindowSpec,
    sampling_bucket,
)
from driftgate.settings import Settings, SettingsError, load_settings, parse_settings


@functools.cache
def key_in_bucket(bucket: int) -> str:
    """The first `key-N` whose bucket (seed 0) is `bucket`."""
    i = 0
    while sampling_bucket(f"key-{i}") != bucket:
        i += 1
    return f"key-{i}"


def enforcer(percent: float) -> driftgate.Enforcer:
    return driftgate.Enforcer(EnforceOptions(enforce=True, rollout_percent=percent), tracker())


def tracker() -> driftgate.DriftTracker:
    return driftgate.DriftTracker(clock=driftgate.ManualClock(0.0))


@pytest.mark.parametrize(
    ("percent", "bucket", "inside"),
    [
        (25.0, 2499, True),
        (25.0, 2500, False),  # a bucket equal to the basis points stays out
        (25.01, 2500, True),  # the 0.01 % step
        (25.01, 2501, False),
        (0.0, 0, False),
        (0.01, 0, True),
        (0.01, 1, False),
        (99.99, 9998, True),
        (99.99, 9999, False),
        (100.0, 9999, True),
    ],
)
def test_boundary_cohort_bucket_against_basis_points(percent, bucket, inside):
    assert enforcer(percent).in_rollout(key_in_bucket(bucket)) is inside


@pytest.mark.parametrize(
    ("name", "buckets", "accepted"),
    [
        ("w" * 32, 1, True),
        ("w" * 33, 1, False),
        ("", 1, False),
        ("azAZ09_", 100_000, True),
        ("w", 100_001, False),
        ("w", 0, False),
    ],
)
def test_boundary_a_window_is_named_by_1_to_32_characters_and_has_1_to_100000_buckets(
    name, buckets, accepted
):
    if accepted:
        assert WindowSpec(name, buckets, 1.0).name == name
    else:
        with pytest.raises(ValueError, match=r"invalid window name|buckets="):
            WindowSpec(name, buckets, 1.0)


def record(drift: driftgate.DriftTracker, requests: int, drifts: int) -> None:
    for i in range(requests):
        drift.record("p", Verdict.OK, Verdict.FAIL if i < drifts else Verdict.OK)


def gate_after(config: GateConfig, *batches: tuple[int, int]) -> list[bool]:
    """The gate's answer after each batch of (requests, drifts)."""
    drift = tracker()
    gate = ReadinessGate(config, drift)
    answers = []
    for requests, drifts in batches:
        record(drift, requests, drifts)
        answers.append(gate.check()[0])
    return answers


def test_boundary_gate_closes_above_max_ratio_not_at_it():
    config = GateConfig(enabled=True, max_ratio=0.005)
    assert gate_after(config, (200, 1), (1, 1)) == [True, False]  # 1/200 = 0.005, then 2/201


def test_boundary_gate_at_max_ratio_stays_open_with_a_lower_reopen_ratio():
    config = GateConfig(enabled=True, max_ratio=0.005, reopen_ratio=0.001)
    assert gate_after(config, (200, 1), (1, 1)) == [True, False]


def test_boundary_gate_reopens_at_reopen_ratio_not_above_it():
    config = GateConfig(enabled=True, max_ratio=0.10, reopen_ratio=0.05)
    # 11 %, then 11/220 = 5 % exactly; with one clean request less it is above
    assert gate_after(config, (100, 11), (119, 0), (1, 0)) == [False, False, True]


def test_boundary_gate_judges_from_min_requests_on():
    config = GateConfig(enabled=True, max_ratio=0.005, min_requests=100)
    assert gate_after(config, (99, 99), (1, 0)) == [True, False]


def wilson(events: int, total: int) -> tuple[float, float]:
    return driftgate.wilson_bounds(events, total, 0.95)


@pytest.mark.parametrize(
    ("reopen", "opens"),
    [(wilson(50, 1000)[1], True), (math.nextafter(wilson(50, 1000)[1], 0.0), False)],
)
def test_boundary_wilson_gate_reopens_at_an_upper_bound_equal_to_reopen_ratio(reopen, opens):
    config = GateConfig(enabled=True, max_ratio=0.2, reopen_ratio=reopen, confidence=0.95)
    assert gate_after(config, (100, 50), (900, 0)) == [False, opens]


@pytest.mark.parametrize(
    ("max_ratio", "open_"),
    [(wilson(50, 1000)[0], True), (math.nextafter(wilson(50, 1000)[0], 0.0), False)],
)
def test_boundary_wilson_gate_closes_above_max_ratio_not_at_it(max_ratio, open_):
    config = GateConfig(enabled=True, max_ratio=max_ratio, confidence=0.95)
    assert gate_after(config, (1000, 50)) == [open_]


# -- The values file: every numeric key at both ends of its range, and just past each --------

# (key as written in the file, lowest accepted, highest accepted, whether it is a count)
VALUE_RANGES = [
    ("enforce_rollout_percent", 0.0, 100.0, False),
    ("drift_max_ratio", 0.0, 1.0, False),
    ("enforce_readiness_gate.min_requests", 0, 10**9, True),
    ("enforce_readiness_gate.reopen_ratio", 0.0, 1.0, False),
    ("enforce_readiness_gate.confidence", 0.5, math.nextafter(1.0, 0.0), False),
    ("enforce_readiness_gate.max_unready_replicas", 1, 1000, True),
    ("rollout.check_interval_seconds", 1.0, 86400.0, False),
    ("rollout.min_requests", 0, 10**9, True),
    ("rollout.stages[0].percentage", 0.0, 100.0, False),
    ("rollout.stages[0].duration_seconds", 0.0, 315360000.0, False),
    ("rollout.stages[0].max_error_rate", 0.0, 1.0, False),
    ("rollout.stages[0].approvals_required", 1, 10, True),
    ("rollout.prometheus.timeout_seconds", math.nextafter(0.0, 1.0), 120.0, False),
    ("rollout.store.sync_interval_seconds", 0.05, 3600.0, False),
    ("rollout.store.lease_ttl_seconds", 0.1, 3600.0, False),
    ("rollout.store.max_clock_skew_seconds", 0.01, 3600.0, False),
    ("rollout.store.min_replicas_acked", 0, 100, True),
    ("rollout.store.replica_ack_timeout_seconds", 0.01, 60.0, False),
]


def values_with(key: str, value: object) -> dict:
    """The smallest values that hold `key` (a dotted path, `[0]` for the first stage) set to
    `value`, with whatever its section needs besides."""
    values: dict = {
        # a reopen ratio may not exceed the limit: at 1, every reopen ratio is allowed
        "drift_max_ratio": 1.0,
        "rollout": {
            # approvals_required above 1 needs requires_approval
            "stages": [{"name": "a", "percentage": 100, "requires_approval": True}],
            "prometheus": {"url": "http://prometheus:9090", "query": "up"},
            "store": {},
        },
    }
    *sections, name = key.replace("[0]", ".0").split(".")
    at = values
    for section in sections:
        at = at[int(section)] if section.isdigit() else at.setdefault(section, {})
    at[name] = value
    return values


def just_past(value: float | int, count: bool, direction: float) -> float | int:
    return value + int(direction) if count else math.nextafter(value, direction * math.inf)


def setting(settings: Settings, key: str) -> object:
    """What the parsed settings made of `key`."""
    gate, stage, store = settings.gate, settings.rollout.stages[0], settings.store
    return {
        "enforce_rollout_percent": settings.enforce.rollout_percent,
        "drift_max_ratio": settings.enforce.drift_max_ratio,
        "enforce_readiness_gate.min_requests": gate.min_requests,
        "enforce_readiness_gate.reopen_ratio": gate.reopen_ratio,
        "enforce_readiness_gate.confidence": gate.confidence,
        "enforce_readiness_gate.max_unready_replicas": settings.max_unready_replicas,
        "rollout.check_interval_seconds": settings.check_interval_seconds,
        "rollout.min_requests": settings.rollout_min_requests,
        "rollout.stages[0].percentage": stage.percentage,
        "rollout.stages[0].duration_seconds": stage.duration.total_seconds(),
        "rollout.stages[0].max_error_rate": stage.max_error_rate,
        "rollout.stages[0].approvals_required": stage.approvals_required,
        "rollout.prometheus.timeout_seconds": settings.error_rate_source.timeout,
        "rollout.store.sync_interval_seconds": store.sync_interval_seconds,
        "rollout.store.lease_ttl_seconds": store.lease_ttl_seconds,
        "rollout.store.max_clock_skew_seconds": store.max_clock_skew_seconds,
        "rollout.store.min_replicas_acked": store.min_replicas_acked,
        "rollout.store.replica_ack_timeout_seconds": store.replica_ack_timeout_seconds,
    }[key]


@pytest.mark.parametrize(("key", "low", "high", "count"), VALUE_RANGES)
def test_boundary_values_file_ranges_hold_their_ends_and_refuse_past_them(key, low, high, count):
    for accepted in (low, high):
        values = values_with(key, accepted)
        values["rollout"]["enabled"] = True
        assert setting(parse_settings(values), key) == accepted, key
    for refused in (just_past(low, count, -1), just_past(high, count, +1)):
        with pytest.raises(SettingsError, match=rf"^{re.escape(key)}: expected"):
            parse_settings(values_with(key, refused))


def store_values(**store: object) -> dict:
    return {"rollout": {"enabled": True, "store": store}}


@pytest.mark.parametrize(
    ("sentinel", "accepted"),
    [
        ("redis-sentinel:1", True),  # the lowest port
        ("redis-sentinel:65535", True),  # the highest
        ("redis-sentinel:0", False),
        ("redis-sentinel:65536", False),
        ("[::1]:26379", True),  # an IPv6 address in brackets
        ("[::1:26379", False),  # a bracket left open
        # a host is 1 to 253 characters, the brackets around it not counted
        ("a" * 253 + ":26379", True),
        ("a" * 254 + ":26379", False),
        ("[" + "a" * 253 + "]:26379", True),
        ("[" + "a" * 254 + "]:26379", False),
        ("[a]:26379", True),
        (":26379", False),
    ],
)
def test_boundary_sentinels_are_host_port_with_a_port_from_1_to_65535(sentinel, accepted):
    values = store_values(sentinels=[sentinel], sentinel_service="mymaster")
    if accepted:
        assert parse_settings(values).store.sentinels == (sentinel,)
    else:
        with pytest.raises(SettingsError, match=r"^rollout\.store\.sentinels\[0\]: expected host"):
            parse_settings(values)


def test_boundary_sentinels_are_1_to_16():
    for count in (1, 16):
        sentinels = [f"sentinel-{i}:26379" for i in range(count)]
        values = store_values(sentinels=sentinels, sentinel_service="mymaster")
        assert len(parse_settings(values).store.sentinels) == count
    for count in (0, 17):
        sentinels = [f"sentinel-{i}:26379" for i in range(count)]
        with pytest.raises(SettingsError, match=r"^rollout\.store\.sentinels: list should have"):
            parse_settings(store_values(sentinels=sentinels, sentinel_service="mymaster"))


def test_boundary_a_values_file_names_at_most_16_notification_sinks():
    sinks = [{"kind": "slack", "url_env": f"SLACK_{i}"} for i in range(16)]
    assert len(parse_settings({"notifications": sinks}).notifications) == 16
    sinks.append({"kind": "slack", "url_env": "SLACK_16"})
    with pytest.raises(SettingsError, match=r"^notifications: list should have at most 16"):
        parse_settings({"notifications": sinks})


def test_boundary_a_rollout_has_at_most_100_stages():
    stages = [{"name": f"s{i}", "percentage": i} for i in range(1, 101)]
    settings = parse_settings({"rollout": {"enabled": True, "stages": stages}})
    assert len(settings.rollout.stages) == 100
    stages.insert(0, {"name": "s0", "percentage": 0})
    with pytest.raises(SettingsError, match=r"^rollout\.stages: list should have at most 100"):
        parse_settings({"rollout": {"enabled": True, "stages": stages}})


def test_boundary_a_values_file_of_64_kib_is_read_one_byte_more_is_not(tmp_path):
    path = tmp_path / "values.yaml"
    head = b"drift_max_ratio: 0.25\n"
    path.write_bytes(head + b"#" * ((64 << 10) - len(head) - 1) + b"\n")
    assert path.stat().st_size == 64 << 10
    assert load_settings(path).enforce.drift_max_ratio == 0.25
    path.write_bytes(head + b"#" * ((64 << 10) - len(head)) + b"\n")
    with pytest.raises(SettingsError, match="larger than 65536 bytes"):
        load_settings(path)


@pytest.mark.parametrize("depth", [32, 33])
def test_boundary_yaml_nests_32_levels_deep_not_33(tmp_path, depth):
    path = tmp_path / "values.yaml"
    path.write_text("x: " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(SettingsError) as refused:
        load_settings(path)
    # 32 levels parse, and only the unknown key is refused; 33 do not parse
    nested = "nested deeper than 32 levels" in str(refused.value)
    assert nested is (depth > 32), str(refused.value)


# -- The rollout: error rate, duration, min_requests, confidence ------------------------------

START = 1_700_000_000.0
DAY = 86400.0


def rollout(max_error_rate: float = 0.01, *, at: float = START + DAY, **options) -> RolloutManager:
    """A manager of a day-long first stage and the final one, started at START, with its clock
    then set to `at`."""
    stages = [
        RolloutStage("first", 10, DAY, max_error_rate),
        RolloutStage("final", 100, 0, max_error_rate),
    ]
    clock = driftgate.ManualClock(START)
    manager = RolloutManager(
        RolloutConfig(stages), registry=driftgate.MetricsRegistry(), clock=clock, **options
    )
    clock.set(at)
    return manager


@pytest.mark.parametrize(
    ("rate", "action"),
    [
        (0.01, DecisionAction.ADVANCED),  # at the stage maximum: not above it
        (math.nextafter(0.01, 1.0), DecisionAction.ABORTED),  # from the first stage
    ],
)
def test_boundary_a_rollout_rolls_back_above_the_stage_maximum_not_at_it(rate, action):
    assert rollout().evaluate(rate).action == action


def test_boundary_a_stage_is_left_at_its_minimum_duration_not_a_moment_before():
    held = rollout(at=START + DAY - 0.001).evaluate(0.0)
    assert (held.action, held.message) == (
        DecisionAction.HELD,
        "Stage duration not met (remaining: 0:00:00.001000)",
    )
    assert rollout(at=START + DAY).evaluate(0.0).action == DecisionAction.ADVANCED


@pytest.mark.parametrize(
    ("requests", "action"),
    [(99, DecisionAction.INSUFFICIENT_DATA), (100, DecisionAction.ADVANCED)],
)
def test_boundary_a_rollout_judges_from_min_requests_requests_on(requests, action):
    manager = rollout(min_requests=100)
    assert manager.evaluate(0.0, requests).action == action
    # too few requests never roll back either, however many failed
    if requests < 100:
        assert manager.evaluate(1.0, requests).action == DecisionAction.INSUFFICIENT_DATA


def wilson_95(failed: int, total: int) -> tuple[float, float]:
    return driftgate.wilson_bounds(failed, total, 0.95)


@pytest.mark.parametrize(
    ("max_error_rate", "action"),
    [
        # 30 failures in 1000: the lower bound at the maximum is not above it, so it holds
        (wilson_95(30, 1000)[0], DecisionAction.HELD),
        (math.nextafter(wilson_95(30, 1000)[0], 0.0), DecisionAction.ABORTED),
    ],
)
def test_boundary_with_confidence_a_rollout_rolls_back_on_a_lower_bound_above_the_maximum(
    max_error_rate, action
):
    manager = rollout(max_error_rate, confidence=0.95)
    assert manager.evaluate_counts(30, 1000).action == action


@pytest.mark.parametrize(
    ("max_error_rate", "action"),
    [
        # no failure in 1000: advances once the upper bound is at the maximum, not above it
        (wilson_95(0, 1000)[1], DecisionAction.ADVANCED),
        (math.nextafter(wilson_95(0, 1000)[1], 0.0), DecisionAction.HELD),
    ],
)
def test_boundary_with_confidence_a_rollout_advances_on_an_upper_bound_at_the_maximum(
    max_error_rate, action
):
    manager = rollout(max_error_rate, confidence=0.95)
    assert manager.evaluate_counts(0, 1000).action == action
