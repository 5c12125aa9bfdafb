"""Helpers for tests of services that use driftgate: read one metric sample, walk a rollout to a
named stage, record decisions with a known drift ratio, run a rollout check from a plain test,
make named approvers and build your own service's driftgate `Service` for a test.

The pytest fixtures that build the objects these take live in `driftgate.pytest_plugin`.
`metric_value` needs prometheus_client (``pip install 'driftgate[pytest]'``); `ServiceFactory`
the fastapi extra."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import difflib
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftgate import (
    Decision,
    DecisionAction,
    DriftTracker,
    Enforcer,
    ManualClock,
    MetricsRegistry,
    RolloutConfig,
    RolloutManager,
    RolloutStage,
)
from driftgate.identity import Scope, token_file_line

if TYPE_CHECKING:
    from driftgate.service import Service, ValuesSource

__all__ = [
    "Approver",
    "ApproverFile",
    "ServiceFactory",
    "advance_to_stage",
    "check_now",
    "metric_value",
    "record_decisions",
]


def _exposition(source: Any) -> str:
    if isinstance(source, str):
        return source
    if isinstance(source, bytes):
        return source.decode()
    if isinstance(source, MetricsRegistry) or hasattr(source, "exposition"):
        text: str = source.exposition()
        return text
    from prometheus_client import CollectorRegistry, generate_latest

    if isinstance(source, CollectorRegistry):
        return generate_latest(source).decode()
    raise TypeError(
        f"metric_value reads a driftgate MetricsRegistry, a prometheus_client CollectorRegistry "
        f"or exposition text, got {type(source).__name__}"
    )


def _format_sample(sample: Any) -> str:
    labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
    return f"{sample.name}{{{labels}}} {float(sample.value)!r}"


def metric_value(
    registry_or_text: Any, name: str, labels: Mapping[str, str] | None = None
) -> float:
    """The value of the one sample called `name` whose labels include `labels`.

    `registry_or_text` is a driftgate `MetricsRegistry`, a prometheus_client `CollectorRegistry`
    or Prometheus exposition text (e.g. a `/metrics` response body); it is read with
    prometheus_client's parser. A counter's sample is named with its `_total` suffix.
    Raises AssertionError listing the family's samples when none or several match::

        assert metric_value(registry, "adapt_drift_events_total", {"policy_id": "p"}) == 3
    """
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {str(key): str(value) for key, value in (labels or {}).items()}
    families = list(text_string_to_metric_families(_exposition(registry_or_text)))
    family_samples = [
        sample
        for family in families
        if family.name == name or any(s.name == name for s in family.samples)
        for sample in family.samples
    ]
    matches = [
        sample
        for sample in family_samples
        if sample.name == name and wanted.items() <= sample.labels.items()
    ]
    if len(matches) == 1:
        return float(matches[0].value)
    label_text = ",".join(f'{key}="{value}"' for key, value in sorted(wanted.items()))
    asked = f"{name}{{{label_text}}}"
    if not family_samples:
        known = sorted(
            {family.name for family in families} | {s.name for f in families for s in f.samples}
        )
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise AssertionError(
            f"no metric family {name!r} in the exposition ({len(families)} families){hint}"
        )
    listing = "\n  ".join(_format_sample(sample) for sample in family_samples)
    problem = "no sample" if not matches else f"{len(matches)} samples (name more labels)"
    raise AssertionError(f"{problem} matches {asked}; the family has:\n  {listing}")


def _stage_names(manager: RolloutManager) -> list[str]:
    return [stage.name for stage in manager.config.stages]


def advance_to_stage(
    manager: RolloutManager,
    clock: ManualClock,
    stage_name: str,
    error_rate: float = 0.0,
    actor: str = "test",
    requests: int | None = None,
) -> Decision | None:
    """Walk `manager`'s rollout forward to the stage called `stage_name`, the way it would go in
    production: `clock` (the manager's ManualClock) is moved past each stage's minimum time, the
    manager evaluates `error_rate`, and `actor` approves where a stage asks for it.

    `requests` is the traffic each evaluation reports (default: the manager's min_requests).
    Returns the decision that reached the stage (None if already there). Raises ValueError for
    an unknown stage name and AssertionError, with the path walked, when the stage cannot be
    reached (behind the current stage, rolled back, aborted or held)::

        advance_to_stage(driftgate_rollout, driftgate_clock, "half")
    """
    names = _stage_names(manager)
    if stage_name not in names:
        raise ValueError(f"stage_name={stage_name!r}: no such stage; the stages are {names}")
    target = names.index(stage_name)
    if requests is None and manager.min_requests > 0:
        requests = manager.min_requests
    walked: list[str] = []
    decision: Decision | None = None
    for _ in range(2 * len(names)):
        index = manager.config.current_stage_index
        current = manager.config.current_stage()
        if index == target:
            return decision
        if index > target:
            raise AssertionError(
                f"cannot advance to {stage_name!r}: the rollout is at {current.name!r}, "
                f"past it (stages {names}); roll back instead"
            )
        clock.advance(current.duration_seconds + 1.0)
        decision = manager.evaluate(error_rate, requests)
        walked.append(f"{current.name}: evaluate({error_rate!r}) -> {decision.action.name}")
        if decision.action == DecisionAction.WAITING_FOR_APPROVAL:
            decision = manager.manual_advance(actor=actor)
            walked.append(f"{current.name}: manual_advance -> {decision.action.name}")
        if not decision.moved or manager.config.current_stage_index <= index:
            path = "\n  ".join(walked)
            raise AssertionError(
                f"cannot advance to {stage_name!r} with error_rate={error_rate!r}: stuck at "
                f"{current.name!r} ({decision.action.name}: {decision.message})\n  {path}"
            )
    raise AssertionError(f"cannot advance to {stage_name!r}: no progress after {len(walked)} steps")


def record_decisions(
    enforcer_or_tracker: Enforcer | DriftTracker, policy_id: str, n: int, drift_ratio: float
) -> int:
    """Record `n` decisions for `policy_id`, exactly ``round(n * drift_ratio)`` of them drifting
    (shadow ok, enforced fail), the rest agreeing; returns the number drifting.

    An `Enforcer` decides them (drifting ones on keys inside its enforced cohort, so it must
    enforce at a rollout percent above 0 to drift); a `DriftTracker` records them directly::

        record_decisions(driftgate_enforcer, "lksg.v1", 1000, 0.01)   # 10 drift events
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n={n!r}: expected a whole number of decisions >= 0")
    if not 0.0 <= drift_ratio <= 1.0:
        raise ValueError(f"drift_ratio={drift_ratio!r}: expected a ratio in [0, 1]")
    drifting = round(n * drift_ratio)
    if isinstance(enforcer_or_tracker, DriftTracker):
        shadow = bytes(n)  # all ok (code 0)
        enforced = bytes([2] * drifting + [0] * (n - drifting))  # fail (code 2), then ok
        enforcer_or_tracker.record_batch(policy_id, shadow, enforced)
        return drifting
    if not isinstance(enforcer_or_tracker, Enforcer):
        raise TypeError(
            f"record_decisions takes a driftgate Enforcer or DriftTracker, "
            f"got {type(enforcer_or_tracker).__name__}"
        )
    enforcer = enforcer_or_tracker
    options = enforcer.options
    if drifting and not (options.enforce and options.rollout_percent > 0):
        raise ValueError(
            f"drift_ratio={drift_ratio!r} needs an enforced cohort, but the enforcer has "
            f"enforce={options.enforce}, rollout_percent={options.rollout_percent}; "
            "only decisions inside the cohort can drift"
        )
    key_number = 0
    for _ in range(drifting):
        # Draw keys until one falls in the cohort; at p % that takes 100/p draws on average.
        for _attempt in range(1_000_000):
            key = f"{policy_id}-decision-{key_number}"
            key_number += 1
            if enforcer.in_rollout(key):
                break
        else:
            raise ValueError(f"no key fell in a {options.rollout_percent} % cohort")
        enforcer.decide(policy_id, key, "ok", "fail")
    for _ in range(n - drifting):
        enforcer.decide(policy_id, f"{policy_id}-decision-{key_number}", "ok", "ok")
        key_number += 1
    return drifting


def check_now(manager: RolloutManager) -> Decision:
    """`await manager.check_and_advance()` from a plain (sync) test: the check a running
    monitor makes, on an event loop of its own (in another thread when the caller is inside
    one already), so no async test plugin is needed::

        assert check_now(service.rollout).action == DecisionAction.INSUFFICIENT_DATA
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(manager.check_and_advance())
    with concurrent.futures.ThreadPoolExecutor(1) as other:
        return other.submit(asyncio.run, manager.check_and_advance()).result()


# -- approvers and services of your own --------------------------------------------------------


@dataclass(frozen=True)
class Approver:
    """A named approver of a test, with its scopes and bearer token (never shown in a repr):
    ``client.post("/api/guardian/rollout/advance", headers=alice.headers)``."""

    name: str
    scopes: frozenset[Scope]
    token: str = field(repr=False)

    @property
    def headers(self) -> dict[str, str]:
        """The `Authorization` header that names this approver."""
        return {"Authorization": f"Bearer {self.token}"}


class ApproverFile:
    """The approvers of one test, in a token file of their own at `path`: each `make` adds a
    line (a random token, hashed). A service reads the file when it is built, so make the
    approvers first; one made after a service was built from the file is refused."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lines: dict[str, str] = {}
        self._approvers: dict[str, Approver] = {}
        self.read = False  # a service was built on the file

    def make(self, name: str, *scopes: Scope | str) -> Approver:
        """A new approver `name` holding `scopes` (at least one: rollout:advance,
        rollout:rollback, rollout:read; "rollout:*" is every one of them)."""
        if name in self._approvers:
            raise ValueError(f"approver {name!r} exists already in this test")
        if self.read:
            raise RuntimeError(
                f"approver {name!r} made after a service read the approvers: make every "
                "approver before driftgate_service builds the service"
            )
        token = secrets.token_urlsafe(32)
        line = token_file_line(name, token, scopes)  # ValueError for a bad name or scope
        approver = Approver(name, frozenset(Scope(s) for s in line.split()[2].split(",")), token)
        self._lines[name] = line
        self._approvers[name] = approver
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(f"{entry}\n" for entry in self._lines.values()))
        return approver

    def __len__(self) -> int:
        return len(self._approvers)


def _stages(stages: Sequence[RolloutStage | Mapping[str, Any]]) -> RolloutConfig:
    """A stage list from RolloutStages or mappings of the values file's stage keys."""
    if all(isinstance(stage, RolloutStage) for stage in stages):
        return RolloutConfig(list(stages))  # type: ignore[arg-type]
    from driftgate.settings import parse_settings

    values = [stage if isinstance(stage, Mapping) else _stage_values(stage) for stage in stages]
    config = parse_settings({"rollout": {"enabled": True, "stages": values}}).rollout
    assert config is not None
    return config


def _stage_values(stage: RolloutStage) -> dict[str, Any]:
    return {
        "name": stage.name,
        "percentage": stage.percentage,
        "duration_seconds": stage.duration_seconds,
        "max_error_rate": stage.max_error_rate,
        "requires_approval": stage.requires_approval,
        "approvals_required": stage.approvals_required,
    }


class ServiceFactory:
    """Builds driftgate `Service`s for tests (what the `driftgate_service` fixture calls): on
    `clock`, each with a fresh registry, its rollout state under `state_dir`, and the
    approvers of `approvers` when any were made; `close()` closes every one it built."""

    def __init__(
        self,
        *,
        clock: ManualClock,
        state_dir: str | os.PathLike[str],
        approvers: ApproverFile | None = None,
    ) -> None:
        self.clock = clock
        self.state_dir = Path(state_dir)
        self.approvers = approvers
        self._built: list[Service] = []

    def build(
        self,
        values: ValuesSource = None,
        *,
        stages: Iterable[RolloutStage | Mapping[str, Any]] | None = None,
        **options: Any,
    ) -> Service:
        """The service `values` describe (a values file's path, a mapping of its keys,
        Settings, or None for the defaults), with `stages` as its rollout when given (which
        enables the rollout). `options` are `Service`'s (environ=, admin=,
        error_rate_source=, ...). A values file is read once: the service does not reload."""
        from driftgate.service import Service
        from driftgate.settings import Settings, load_settings, parse_settings

        if values is None or isinstance(values, Settings):
            settings = values or Settings()
        elif isinstance(values, Mapping):
            settings = parse_settings(dict(values))
        else:
            settings = load_settings(Path(values))
        if stages is not None:
            settings = dataclasses.replace(settings, rollout=_stages(list(stages)))
        if self.approvers is not None and len(self.approvers):
            # this test's approvers only: none of the values' token file or issuer
            settings = dataclasses.replace(
                settings, admin_token_file=self.approvers.path, admin_oidc=None
            )
            self.approvers.read = True
        options.setdefault("clock", self.clock)
        options.setdefault("state_dir", self.state_dir)
        options.setdefault("watch", False)
        service = Service(settings, **options)
        self._built.append(service)
        return service

    def close(self) -> None:
        """Closes every service built here (a lifespan that ran has closed its own)."""
        while self._built:
            self._built.pop().close()
