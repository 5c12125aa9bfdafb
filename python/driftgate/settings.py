"""Service settings from a Helm-style values file (YAML), every key validated.

enforce_enabled: true
enforce_rollout_percent: 25
drift_max_ratio: 0.005
enforce_readiness_gate: {enabled: true, window: "5m"}
rollout:
  enabled: true
  state_path: driftgate-state/rollout.json
  check_interval_seconds: 900
  stages: [{name: canary, percentage: 10, duration_seconds: 86400, max_error_rate: 0.005}]
  prometheus:           # error rate across replicas; without it, this process's own
    url: http://prometheus:9090
    query: >-
      sum(rate(guardian_enforcement_failed_total[1h]))
      / sum(rate(guardian_enforcement_total[1h]))
    timeout_seconds: 5
admin:
  token_env: DRIFTGATE_ADMIN_TOKEN
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from driftgate._core import EnforceOptions, GateConfig, RolloutConfig, RolloutStage
from driftgate.rollout import PrometheusErrorRate

T = TypeVar("T")

__all__ = ["Settings", "SettingsError", "load_settings"]


class SettingsError(ValueError):
    """A values file that cannot be used; the message names the key and the bad value."""


@dataclass(frozen=True)
class Settings:
    enforce: EnforceOptions = field(default_factory=EnforceOptions)
    gate: GateConfig = field(default_factory=GateConfig)
    rollout: RolloutConfig | None = None
    state_path: Path = Path("driftgate-state/rollout.json")
    check_interval_seconds: float = 900.0
    rollout_min_requests: int = 0
    error_rate_source: PrometheusErrorRate | None = None
    admin_token_env: str = "DRIFTGATE_ADMIN_TOKEN"


_TOP = {
    "enforce_enabled",
    "enforce_rollout_percent",
    "drift_max_ratio",
    "enforce_readiness_gate",
    "rollout",
    "admin",
}
_GATE = {"enabled", "window", "min_requests", "reopen_ratio", "confidence"}
_ROLLOUT = {
    "enabled",
    "state_path",
    "check_interval_seconds",
    "min_requests",
    "stages",
    "prometheus",
}
_PROMETHEUS = {"url", "query", "timeout_seconds"}
_STAGE = {"name", "percentage", "duration_seconds", "max_error_rate", "requires_approval"}
_ADMIN = {"token_env"}


def _mapping(value: Any, key: str, allowed: set[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SettingsError(f"{key}: expected a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise SettingsError(
            f"{key}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})"
        )
    return value


def _typed(
    section: dict[str, Any], name: str, key: str, kinds: tuple[type, ...], default: Any
) -> Any:
    value = section.get(name, default)
    if value is default:
        return value
    if isinstance(value, bool) and bool not in kinds:
        raise SettingsError(f"{key}.{name}: expected a number, got {value!r}")
    if not isinstance(value, kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise SettingsError(f"{key}.{name}: expected {expected}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(f"{key}.{name}: expected a finite number, got {value!r}")
    return value


def _build(what: str, make: Callable[..., T]) -> T:
    try:
        return make()
    except (ValueError, TypeError) as error:
        raise SettingsError(f"{what}: {error}") from None


def parse_settings(values: Any) -> Settings:
    """Settings from already-parsed values (a dict), or SettingsError naming the key."""
    top = _mapping(values, "values", _TOP)
    number = (int, float)
    enforce = _build(
        "enforce_*",
        lambda: EnforceOptions(
            _typed(top, "enforce_enabled", "values", (bool,), False),
            _typed(top, "enforce_rollout_percent", "values", number, 0),
            _typed(top, "drift_max_ratio", "values", number, 0.005),
        ),
    )
    gate_values = _mapping(top.get("enforce_readiness_gate"), "enforce_readiness_gate", _GATE)
    key = "enforce_readiness_gate"
    gate = _build(
        key,
        lambda: GateConfig(
            enabled=_typed(gate_values, "enabled", key, (bool,), False),
            window=_typed(gate_values, "window", key, (str,), "5m"),
            max_ratio=enforce.drift_max_ratio,
            min_requests=_typed(gate_values, "min_requests", key, (int,), 100),
            reopen_ratio=_typed(gate_values, "reopen_ratio", key, number, None),
            confidence=_typed(gate_values, "confidence", key, number, None),
        ),
    )
    if gate.window not in ("5m", "15m", "60m"):
        raise SettingsError(f"{key}.window: {gate.window!r} is not one of 5m, 15m, 60m")

    rollout_values = _mapping(top.get("rollout"), "rollout", _ROLLOUT)
    rollout = None
    if _typed(rollout_values, "enabled", "rollout", (bool,), False):
        stages_value = rollout_values.get("stages")
        if stages_value is None:
            rollout = RolloutConfig.default()
        else:
            if not isinstance(stages_value, list):
                raise SettingsError(f"rollout.stages: expected a list, got {stages_value!r}")
            stages: list[RolloutStage] = []
            for i, stage_value in enumerate(stages_value):
                skey = f"rollout.stages[{i}]"
                stage = _mapping(stage_value, skey, _STAGE)
                stages.append(
                    _build(
                        skey,
                        lambda stage=stage, skey=skey: RolloutStage(
                            _typed(stage, "name", skey, (str,), ""),
                            _typed(stage, "percentage", skey, number, 0),
                            _typed(stage, "duration_seconds", skey, number, 0),
                            _typed(stage, "max_error_rate", skey, number, 0),
                            _typed(stage, "requires_approval", skey, (bool,), False),
                        ),
                    )
                )
            rollout = _build("rollout.stages", lambda: RolloutConfig(stages))
    interval = _typed(rollout_values, "check_interval_seconds", "rollout", number, 900.0)
    if interval <= 0:
        raise SettingsError(f"rollout.check_interval_seconds: expected > 0, got {interval!r}")
    min_requests = _typed(rollout_values, "min_requests", "rollout", (int,), 0)
    if min_requests < 0:
        raise SettingsError(f"rollout.min_requests: expected >= 0, got {min_requests!r}")
    source = None
    if rollout_values.get("prometheus") is not None:
        key = "rollout.prometheus"
        prometheus = _mapping(rollout_values["prometheus"], key, _PROMETHEUS)
        source = _build(
            key,
            lambda: PrometheusErrorRate(
                _typed(prometheus, "url", key, (str,), ""),
                _typed(prometheus, "query", key, (str,), ""),
                timeout=_typed(prometheus, "timeout_seconds", key, number, 5.0),
            ),
        )
    admin = _mapping(top.get("admin"), "admin", _ADMIN)
    return Settings(
        enforce=enforce,
        gate=gate,
        rollout=rollout,
        state_path=Path(
            _typed(rollout_values, "state_path", "rollout", (str,), "driftgate-state/rollout.json")
        ),
        check_interval_seconds=float(interval),
        rollout_min_requests=min_requests,
        error_rate_source=source,
        admin_token_env=_typed(admin, "token_env", "admin", (str,), "DRIFTGATE_ADMIN_TOKEN"),
    )


def load_settings(path: str | Path | None) -> Settings:
    """Settings from a YAML values file; the defaults when `path` is None."""
    if path is None:
        return Settings()
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as error:
        raise SettingsError(f"{path}: cannot read ({error.strerror})") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SettingsError(f"{path}: not valid YAML ({error})") from None
    try:
        return parse_settings(values)
    except SettingsError as error:
        raise SettingsError(f"{path}: {error}") from None
