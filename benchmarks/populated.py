"""A registry with every driftgate family populated, as the metrics benchmarks scrape it
(benchmarks/run.py in-process, benchmarks/load.py over HTTP)."""

from driftgate import (
    DeterminismProbe,
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


def populated_registry(policies: int) -> tuple[MetricsRegistry, list[object]]:
    """A registry with every driftgate family populated and `policies` policies decided; the
    objects that keep its families alive come with it."""
    registry = MetricsRegistry()
    clock = ManualClock(1_700_000_000.0)
    tracker = DriftTracker(clock=clock, registry=registry, max_policies=policies)
    enforcer = Enforcer(EnforceOptions(enforce=True, rollout_percent=50), tracker)
    manager = RolloutManager(
        RolloutConfig.default(), enforcer=enforcer, registry=registry, clock=clock
    )
    gate = ReadinessGate(GateConfig(enabled=True), tracker)
    gate.check()
    lru = SignatureLRU(registry=registry)
    probe = DeterminismProbe(registry=registry)

    def raises() -> Verdict:
        raise RuntimeError("evaluation failed")

    for i in range(policies):
        policy = f"policy-{i:04d}"
        for j, enforced in enumerate(("fail", raises, "ok", "ok")):
            enforcer.decide(policy, f"{policy}-{j}", "ok", enforced)
        lru.is_new(f"sig-{i}")
        probe.observe(f"input-{i % 64}", f"sig-{i}")
    return registry, [tracker, enforcer, manager, gate, lru, probe]
