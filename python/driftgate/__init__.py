"""Move a policy from shadow to enforced in stages, safely.

driftgate measures how often the enforced verdict drifts from the shadow verdict, puts a
stable, hash-chosen share of requests in the enforced cohort, and exports it all to
Prometheus. The engine is C++ (``driftgate._core``); import everything from here.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from driftgate._core import (
    Clock,
    DeterminismProbe,
    DriftTracker,
    EnforceOptions,
    Enforcer,
    GateConfig,
    ManualClock,
    MetricsRegistry,
    ReadinessGate,
    SignatureLRU,
    SystemClock,
    Verdict,
    VerdictPair,
    WindowSpec,
    cohort_seed,
    default_registry,
    default_windows,
    murmur3_x86_32,
    parse_verdict,
    readiness_gate_ok,
    sampling_bucket,
    wilson_bounds,
)
from driftgate.reasons import ReasonCode
from driftgate.rollout import (
    ConfigOwnedError,
    Decision,
    DecisionAction,
    FileStateStore,
    InsufficientData,
    LocalErrorRate,
    PrometheusErrorRate,
    RolloutConfig,
    RolloutManager,
    RolloutStage,
    RolloutState,
    SharedStateStore,
    StateError,
    StateOutcomeUnknown,
    StateRegressed,
    StateStoreError,
    WaitingFor,
    rollout_lifespan,
    run_rollout_monitor,
)
from driftgate.status import RolloutStatus
from driftgate.store import RedisStateStore

try:
    __version__ = _version("driftgate")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"

__all__ = [
    "Clock",
    "ConfigOwnedError",
    "Decision",
    "DecisionAction",
    "DeterminismProbe",
    "DriftTracker",
    "EnforceOptions",
    "Enforcer",
    "FileStateStore",
    "GateConfig",
    "InsufficientData",
    "LocalErrorRate",
    "ManualClock",
    "MetricsRegistry",
    "PrometheusErrorRate",
    "ReadinessGate",
    "ReasonCode",
    "RedisStateStore",
    "RolloutConfig",
    "RolloutManager",
    "RolloutStage",
    "RolloutState",
    "RolloutStatus",
    "SharedStateStore",
    "SignatureLRU",
    "StateError",
    "StateOutcomeUnknown",
    "StateRegressed",
    "StateStoreError",
    "SystemClock",
    "Verdict",
    "VerdictPair",
    "WaitingFor",
    "WindowSpec",
    "__version__",
    "cohort_seed",
    "default_registry",
    "default_windows",
    "murmur3_x86_32",
    "parse_verdict",
    "readiness_gate_ok",
    "rollout_lifespan",
    "run_rollout_monitor",
    "sampling_bucket",
    "wilson_bounds",
]
