"""The /api/v1/metrics body is one valid exposition in both formats, the core's families and
prometheus_client's default registry together: checked by prometheus_client's parsers and by
Prometheus's own promtool."""

import gzip
import shutil
import subprocess
import sys
import zlib

import pytest
from prometheus_client import REGISTRY, Counter
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

import driftgate
from driftgate import (
    DeterminismProbe,
    DriftTracker,
    EnforceOptions,
    Enforcer,
    GateConfig,
    ReadinessGate,
    RolloutConfig,
    RolloutManager,
    SignatureLRU,
    exposition,
)
from driftgate.exposition import accepts_gzip, render, scrape

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


@pytest.fixture
def populated(rollout_clock, registry):
    """Every driftgate family with series in it; the objects are kept alive by the test."""
    tracker = DriftTracker(clock=rollout_clock, registry=registry)
    enforcer = Enforcer(EnforceOptions(enforce=True, rollout_percent=50), tracker)
    manager = RolloutManager(
        RolloutConfig.default(), enforcer=enforcer, registry=registry, clock=rollout_clock
    )
    gate = ReadinessGate(GateConfig(enabled=True, min_requests=1), tracker)
    lru = SignatureLRU(registry=registry)
    probe = DeterminismProbe(registry=registry)
    for i in range(20):
        enforcer.decide(f"policy-{i % 4}", f"key-{i}", "ok", "fail" if i % 3 else lambda: 1 / 0)
        lru.is_new(f"sig-{i % 5}")
        probe.observe(f"input-{i % 3}", f"sig-{i}")
    gate.check()
    return registry, [tracker, enforcer, manager, gate, lru, probe]


def promtool_check(body: bytes) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found (Debian package: prometheus); it checks the exposition")
    return subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=60
    )


def type_lines(text: str) -> list[str]:
    return [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]


def test_text_body_passes_promtool_with_the_default_registry(populated):
    registry, _ = populated
    body, content_type = render(registry, None)
    assert content_type.startswith("text/plain; version=0.0.4")
    result = promtool_check(body)
    # promtool exits 1 on lint advice alone (e.g. a counter without _total in
    # prometheus_client's own families), 3 on an exposition it cannot parse.
    assert result.returncode in (0, 1), result.stderr.decode() + result.stdout.decode()
    assert b"error while linting" not in result.stderr, result.stderr.decode()
    text = body.decode()
    names = type_lines(text)
    assert len(names) == len(set(names)), "one TYPE line per family"
    families = {family.name for family in parse_text(text)}
    assert {"adapt_requests", "adapt_drift_ratio", "guardian_rollout_stage"} <= families
    assert "python_info" in families


def test_openmetrics_body_parses_as_one_exposition_with_the_default_registry(populated):
    registry, _ = populated
    body, content_type = render(registry, OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text")
    text = body.decode()
    assert text.endswith("\n# EOF\n") and text.count("# EOF") == 1
    families = {family.name: family for family in parse_om(text)}  # raises on anything invalid
    assert families["adapt_requests"].type == "counter"
    assert families["adapt_selection_latency_seconds"].type == "histogram"
    assert families["adapt_readiness_gate_open"].type == "gauge"
    assert "python_info" in families
    shadow = {
        sample.labels["policy_id"]: sample.value
        for sample in families["adapt_requests"].samples
        if sample.labels["mode"] == "shadow"
    }
    assert shadow == {f"policy-{i}": 5 for i in range(4)}


@pytest.mark.parametrize("accept", [None, OPENMETRICS])
def test_the_core_part_is_the_core_exposition(populated, accept):
    registry, _ = populated
    body, _ = render(registry, accept, include_default=False)
    assert body == registry.exposition_bytes(openmetrics=accept is not None)
    assert "python_info" not in body.decode()


def test_openmetrics_and_text_carry_the_same_samples(populated):
    registry, _ = populated

    def samples(families):
        return {
            (sample.name, tuple(sorted(sample.labels.items())), sample.value)
            for family in families
            for sample in family.samples
        }

    text = samples(parse_text(registry.exposition()))
    om = samples(parse_om(registry.exposition(openmetrics=True)))
    assert text == om


def test_an_empty_registry_is_a_valid_openmetrics_exposition():
    registry = driftgate.MetricsRegistry()
    assert registry.exposition(openmetrics=True) == "# EOF\n"
    body, _ = render(registry, OPENMETRICS)
    assert list(parse_om(body.decode()))


def test_a_default_registry_family_named_like_a_core_family_is_left_out(populated, caplog):
    registry, _ = populated
    clash = Counter("adapt_requests", "Not driftgate's.", ["mode"], registry=REGISTRY)
    clash.labels(mode="other").inc()
    try:
        for accept, parse in ((None, parse_text), (OPENMETRICS, parse_om)):
            text = render(registry, accept)[0].decode()
            assert type_lines(text).count("adapt_requests") <= 1
            assert type_lines(text).count("adapt_requests_total") <= 1
            requests = [f for f in parse(text) if f.name == "adapt_requests"]
            assert len(requests) == 1
            assert "other" not in {s.labels.get("mode") for s in requests[0].samples}
    finally:
        REGISTRY.unregister(clash)
    assert "adapt_requests" in caplog.text


def test_family_names_follow_what_the_registry_exposes(clock, registry):
    assert registry.family_names() == []
    tracker = DriftTracker(clock=clock, registry=registry)
    names = set(registry.family_names())
    assert {"adapt_drift_events_total", "adapt_drift_ratio"} <= names
    exposed = set(type_lines(registry.exposition()))
    assert exposed <= names
    del tracker


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("gzip", True),
        ("GZip", True),
        ("gzip, deflate", True),
        ("deflate, br", False),
        ("x-gzip", True),
        ("gzip;q=0.001", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("gzip;q=abc", False),
        ("*", True),
        ("*;q=0", False),
        ("*, gzip;q=0", False),  # named beats the wildcard
        ("gzip;q=0, *", False),
        ("br;q=1, gzip;q=0.5", True),
        ("identity", False),
        ("", False),
        (None, False),  # no header: the identity, as prometheus_client's server answers
    ],
)
def test_gzip_is_accepted_when_named_or_covered_by_a_wildcard_above_quality_0(header, accepted):
    assert accepts_gzip(header) is accepted


def test_scrapes_are_gzipped_by_isa_l_where_it_is_installed():
    # the fastapi extra installs it; zlib is what a platform without its wheel falls back to
    from isal import isal_zlib

    assert exposition._DEFLATE is isal_zlib


def test_without_isa_l_zlib_gzips(monkeypatch):
    monkeypatch.setitem(sys.modules, "isal", None)  # `from isal import ...` fails
    assert exposition._deflater() is zlib


@pytest.mark.parametrize("accept", [None, OPENMETRICS])
@pytest.mark.parametrize("deflate", ["isal", "zlib"])
def test_a_gzipped_scrape_is_the_exposition_render_writes(populated, accept, deflate, monkeypatch):
    if deflate == "zlib":
        monkeypatch.setattr(exposition, "_DEFLATE", zlib)
    registry, _ = populated
    plain, content_type = render(registry, accept, include_default=False)
    answer = scrape(registry, accept, "gzip", include_default=False)
    assert answer.gzipped
    assert answer.body[:2] == b"\x1f\x8b"  # a gzip stream, not a bare deflate one
    assert gzip.decompress(answer.body) == plain
    assert answer.content_type == content_type
    assert answer.headers == {"Vary": "Accept, Accept-Encoding", "Content-Encoding": "gzip"}


def test_a_scrape_that_does_not_accept_gzip_gets_the_plain_body(populated):
    registry, _ = populated
    answer = scrape(registry, OPENMETRICS, "gzip;q=0", include_default=False)
    assert not answer.gzipped
    assert answer.body == render(registry, OPENMETRICS, include_default=False)[0]
    assert answer.headers == {"Vary": "Accept, Accept-Encoding"}


def test_the_gzipped_body_of_many_policies_is_a_fifth_of_the_plain_one_or_less(clock, registry):
    tracker = DriftTracker(clock=clock, registry=registry, max_policies=300)
    enforcer = Enforcer(EnforceOptions(enforce=True, rollout_percent=50), tracker)
    for i in range(256):
        enforcer.decide(f"policy-{i:04d}", f"key-{i}", "ok", "fail" if i % 3 else "ok")
    plain = scrape(registry, None, None)
    gzipped = scrape(registry, None, "gzip")
    assert len(plain.body) > 50_000
    assert len(gzipped.body) <= 0.2 * len(plain.body)
    # the default registry's part is compressed with the core's, in one stream
    assert b"python_info" in gzip.decompress(gzipped.body)
