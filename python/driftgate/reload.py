"""Live configuration: the values file reloads while the service runs, and a bad one never
takes effect.

Three things trigger a reload: a change in the values file's folder (Kubernetes updates a
mounted ConfigMap by swapping the folder's `..data` symlink, so the folder is watched, not the
file) or in the token file's (a Secret is often mounted apart from the ConfigMap), SIGHUP, and
`POST /api/v1/admin/reload`. A reload reads the file until two reads a moment apart agree (a
file written in place is never applied half-written), validates all of it (the same strict
reading as at start), reads the token file again, and applies the lot in one step as requests
see it. A refused file changes nothing: the old configuration and the old approvers stay, the
log names the key and value (or the token file and line) at fault, and
`driftgate_config_last_reload_successful` drops to 0 until a reload succeeds.

What changes live: `enforce_enabled`, `drift_max_ratio`, `enforce_rollout_percent` (while no
rollout is configured: a rollout owns the percentage), the readiness gate (and its fleet budget,
`enforce_readiness_gate.max_unready_replicas`, from the next heartbeat), `rollout.min_requests`,
`rollout.prometheus` (the error-rate source), `rollout.check_interval_seconds` (from the next
check), `notifications` and `rollout.status_url` (where the service builds its notifier), and,
where the service hands its approvers over, who approves: the token file (`admin.token_file`
and its content), `admin.oidc`, `admin.people` and `admin.protect_status`, from the next
request (see `Approvers.reloaded` for the kinds of approver, which the OpenAPI declares at
start). Anything else (`rollout.enabled`, `rollout.state_path`, `rollout.store`,
`admin.token_env`, `log_level`, and any key a later section adds) changes only with a restart,
and a file that changes it is refused, naming the key. A changed stage list is refused while a
rollout runs: its state file is bound to the stage list it was written for (see
`LiveSettings.apply`).

With `rollouts:`, a rollout may be added while the service runs (where the service builds its
managers live), and each one's `check_interval_seconds`, `min_requests`, `prometheus`,
`status_url` and `notify_events` change live; removing one that runs, or changing whom it
governs (`policies`, `cohort`), where its state is (`state_path`, `store`) or its stages, is
refused naming `rollouts.NAME.KEY`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import re
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftgate import _sighup
from driftgate._core import (
    DriftTracker,
    Enforcer,
    GateConfig,
    MetricsRegistry,
    ReadinessGate,
    RolloutConfig,
)
from driftgate._messages import one_line, shown
from driftgate.notify import Notifier
from driftgate.rollout import LocalErrorRate, PrometheusErrorRate, RolloutManager
from driftgate.settings import (
    RolloutSettings,
    Settings,
    SettingsError,
    parse_values_file,
    read_values_file,
    values_key,
)

if TYPE_CHECKING:
    from driftgate.fastapi.auth import Approvers

__all__ = [
    "RELOADS_TOTAL",
    "RELOAD_SUCCESSFUL",
    "RELOAD_SUCCESS_TIMESTAMP",
    "ConfigReloader",
    "LiveConfig",
    "LiveSettings",
    "ReloadRefused",
    "ReloadResult",
]

logger = logging.getLogger("driftgate.reload")

RELOAD_SUCCESSFUL = (
    "driftgate_config_last_reload_successful",
    "1 when the last configuration reload applied the values file, 0 when it was refused.",
)
RELOAD_SUCCESS_TIMESTAMP = (
    "driftgate_config_last_reload_success_timestamp_seconds",
    "Unix time of the last configuration load that applied (the start counts as one).",
)
RELOADS_TOTAL = (
    "driftgate_config_reloads_total",
    "Configuration reloads by outcome (success, failure).",
)

WATCH_DEBOUNCE_MS = 300
"""A ConfigMap update is a burst of events (a new timestamped folder, its files, the `..data`
swap): they are read as one change once the folder has been quiet for a moment."""
POLL_INTERVAL_SECONDS = 1.0
"""How often the polling fallback reads the values file when the folder cannot be watched."""
SETTLE_SECONDS = 0.05
"""A reload applies the values file only once two reads this far apart agree: a file written in
place (not renamed into place) is read whole, never as the half that happened to parse. A
writer's bursts are microseconds to milliseconds apart: 50 ms is ample, and all it adds to a
reload."""
SETTLE_READS = 20
"""Reads before a file that keeps changing is refused (for now: the next change reloads)."""
FOLDER_CHECK_MS = 1000
"""How often the watcher asks whether the folders to watch changed (the token file moved)."""


class ReloadRefused(ValueError):
    """A valid values file that cannot be applied to the running service; the message is one
    line naming the key, the new value and why."""


@dataclass(frozen=True)
class ReloadResult:
    success: bool
    message: str
    changed: tuple[str, ...] = ()
    trigger: str = "manual"


@dataclass(frozen=True)
class LiveConfig:
    """What requests read of the configuration, swapped as one reference: the settings in force
    and the readiness gate built from them."""

    settings: Settings
    gate: ReadinessGate


# Settings fields that a reload may change; every other field changes only with a restart, so
# a section added to Settings later is refused by a reload until it is listed here and applied
# in LiveSettings.apply.
_LIVE_FIELDS = frozenset(
    {
        "enforce",
        "gate",
        "rollout",
        "check_interval_seconds",
        "rollout_min_requests",
        "error_rate_source",
        "notifications",
        "status_url",
        "max_unready_replicas",
        "admin_token_required",  # read at start only: whether the token's variable must be set
        "rollouts",  # each rollout's own keys: see LiveSettings._rollouts_change
    }
)
# Keys of a `rollouts:` entry that change only with a restart: its state and whom it governs.
_ROLLOUT_RESTART_ONLY = ("policies", "cohort", "state_path", "store")
# Live where the service hands its approvers to LiveSettings (they are rebuilt from these),
# restart-only where it does not.
_APPROVER_FIELDS = frozenset(
    {"admin_token_file", "admin_oidc", "admin_people", "admin_protect_status"}
)

_CREDENTIALS = re.compile(r"(?<=://)[^/@\s]+@")


def _without_credentials(text: str) -> str:
    """A message with `user:password@` taken out of any URL in it."""
    return _CREDENTIALS.sub("***@", text)


def _gate_fields(config: GateConfig) -> tuple[Any, ...]:
    return (
        config.enabled,
        config.window,
        config.max_ratio,
        config.min_requests,
        config.reopen_ratio,
        config.confidence,
    )


def _source_fields(source: PrometheusErrorRate | None) -> tuple[Any, ...] | None:
    return None if source is None else (source.base_url, source.query, source.timeout)


def _restart_only(key: str, before: Any, after: Any) -> str:
    """Why a reload refuses a change of a restart-only key: its new and running values, as the
    file writes them, where they are plain values; else only that it changed."""

    def plain(value: Any) -> str | None:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float, str, Path)):
            return shown(str(value) if isinstance(value, Path) else value)
        return None

    restart = "it changes only with a restart"
    new, running = plain(after), plain(before)
    if before is None and new is not None:
        return f"{key}: {new} where the running service has none; {restart}"
    if after is None and running is not None:
        return f"{key}: removed, the running service has {running}; {restart}"
    if new is None or running is None:
        return f"{key}: changed; {restart}"
    return f"{key}: {new} differs from the running {running}; {restart}"


class LiveSettings:
    """The parts of a service that its values file drives while it runs: the enforcer's options,
    the readiness gate, the rollout manager's minimum, error-rate source, check interval and
    notifier (with `notifier`), and who approves (with `approvers`, the router's `admin`).

    `apply` checks a new Settings against the running service and then changes it in one step
    as requests see it: a decision reads the enforcer's options, which change in one atomic
    step in the core; readiness reads `current.gate`, one reference swapped with the settings;
    an admin request reads the approvers in force, one reference swapped by `Approvers.adopt`.
    Thread-safe: applies are serialised, reads take no lock."""

    def __init__(
        self,
        settings: Settings,
        *,
        tracker: DriftTracker,
        enforcer: Enforcer,
        manager: RolloutManager | None = None,
        gate: ReadinessGate | None = None,
        notifier: Callable[[Settings], Notifier | None] | None = None,
        approvers: Approvers | None = None,
        rollouts: dict[str, RolloutManager] | None = None,
        add_rollout: Callable[[RolloutSettings, Settings], RolloutManager | None] | None = None,
        rollout_notifier: Callable[[RolloutSettings, Settings], Notifier | None] | None = None,
    ):
        """`rollouts` are the managers of a `rollouts:` map by name (the service's own dict:
        a rollout the values add while it runs is added to it, by `add_rollout`, which builds
        its manager or answers None when its state cannot be used); `rollout_notifier`
        builds one such rollout's notifier."""
        self._make_notifier = notifier
        self._approvers = approvers
        self._tracker = tracker
        self._enforcer = enforcer
        self._manager = manager
        self._rollouts = {} if rollouts is None else rollouts
        self._add_rollout = add_rollout
        self._rollout_notifier = rollout_notifier
        self._lock = threading.Lock()
        self._current = LiveConfig(settings, gate or ReadinessGate(settings.gate, tracker))

    @property
    def current(self) -> LiveConfig:
        return self._current

    def readiness(self) -> str | None:
        """A readiness check for `create_router(readiness_checks=...)`: the gate in force now."""
        ready, reason = self._current.gate.check()
        return None if ready else reason

    def check(self) -> tuple[bool, str]:
        """The gate in force now, as `ReadinessGate.check`: so `create_router(gate=live)`
        answers readiness from whichever gate the values file has in force."""
        return self._current.gate.check()

    def reopens_within(self) -> float | None:
        """The gate in force now, as `ReadinessGate.reopens_within`."""
        return self._current.gate.reopens_within()

    def max_unready_replicas(self) -> int:
        """The fleet's readiness budget in force now, for `RedisStateStore.readiness_budget`."""
        return self._current.settings.max_unready_replicas

    def check_interval(self) -> timedelta:
        """The rollout's check interval in force now, for `run_rollout_monitor`."""
        return timedelta(seconds=self._current.settings.check_interval_seconds)

    def check_interval_of(self, name: str) -> Callable[[], timedelta]:
        """The check interval in force of the rollout `name`, for its monitor."""

        def interval() -> timedelta:
            for each in self._current.settings.all_rollouts():
                if each.name == name:
                    return timedelta(seconds=each.check_interval_seconds)
            return self.check_interval()

        return interval

    def apply(self, new: Settings) -> list[str]:
        """Makes `new` the configuration in force and returns the keys that changed, or raises
        ReloadRefused and changes nothing."""
        with self._lock:
            old = self._current.settings
            self._refuse_restart_only(old, new)
            changed = self._changed_keys(old, new)
            # Everything that can fail is built before anything changes.
            gate = self._current.gate
            if _gate_fields(new.gate) != _gate_fields(old.gate):
                try:
                    gate = ReadinessGate(new.gate, self._tracker)
                except ValueError as error:
                    raise ReloadRefused(f"enforce_readiness_gate: {one_line(str(error))}") from None
            options: dict[str, Any] = {
                "enforce": new.enforce.enforce,
                "drift_max_ratio": new.enforce.drift_max_ratio,
            }
            if new.rollout is None:  # with a rollout configured, the percentage is its own
                options["rollout_percent"] = new.enforce.rollout_percent
            notifier_changed = self._manager is not None and (
                new.notifications != old.notifications or new.status_url != old.status_url
            )
            notifier = None
            if notifier_changed and self._make_notifier is not None:
                try:  # an unset variable or a bad URL refuses the whole file
                    notifier = self._make_notifier(new)
                except ValueError as error:
                    raise ReloadRefused(one_line(str(error))) from None
            elif notifier_changed:
                field = "notifications" if new.notifications != old.notifications else "status_url"
                raise ReloadRefused(
                    f"{values_key(field)}: this service builds no notifier on reload; it changes "
                    "only with a restart"
                )
            approvers = None
            if self._approvers is not None:
                # The token file is read again whether or not the values changed: removing
                # its line revokes a token.
                try:
                    approvers, approver_keys = self._approvers.reloaded(old, new)
                except ValueError as error:  # the key and the file's line, never a digest
                    raise ReloadRefused(one_line(str(error))) from None
                changed += approver_keys
            # Last of what can fail: the rollouts the values add, built (their state read,
            # their policies claimed) before anything changes, closed again if one cannot be.
            commit_rollouts, rollout_keys = self._rollouts_change(old, new)
            changed += rollout_keys
            # The commit: the enforcer's options in one step of the core, then one reference.
            self._enforcer.set_options(**options)
            commit_rollouts()
            if self._manager is not None:
                self._manager.min_requests = new.rollout_min_requests
                if _source_fields(new.error_rate_source) != _source_fields(old.error_rate_source):
                    self._manager.error_rate_source = new.error_rate_source or LocalErrorRate(
                        self._enforcer, policies=self._manager.policies
                    )
                if notifier_changed:  # the old sinks send what they have queued, then stop
                    _swap_notifier(self._manager, notifier)
            if self._approvers is not None and approvers is not None:
                self._approvers.adopt(approvers)
            self._current = LiveConfig(new, gate)
            return changed

    def _rollouts_change(
        self, old: Settings, new: Settings
    ) -> tuple[Callable[[], None], list[str]]:
        """What a reload changes of the `rollouts:` map: a step that applies it, and the keys
        it changes; or ReloadRefused naming the key. A rollout may be added, and its check
        interval, minimum, error-rate source, status URL and notified events change live; one
        that runs cannot be removed, nor change its policies, cohort, state or stages."""
        before = {each.name: each for each in old.rollouts}
        after = {each.name: each for each in new.rollouts}
        for name, running in before.items():
            key = running.key
            if name not in after:
                raise ReloadRefused(
                    f"{key}: removed (or disabled) while it runs; a rollout is removed only "
                    "with a restart"
                )
            wanted = after[name]
            for field in _ROLLOUT_RESTART_ONLY:
                was, now = getattr(running, field), getattr(wanted, field)
                if was != now:
                    raise ReloadRefused(_restart_only(f"{key}.{field}", was, now))
            manager = self._rollouts.get(name)
            if manager is not None and list(wanted.config.stages) != list(manager.config.stages):
                raise ReloadRefused(
                    f"{key}.stages: changed ({len(wanted.config.stages)} stages, fingerprint "
                    f"{wanted.config.fingerprint}), but its state was written for the running "
                    f"list (fingerprint {manager.config.fingerprint}); a stage list changes "
                    "only with a restart"
                )
        changed: list[str] = []
        steps: list[Callable[[], None]] = []
        for name, wanted in after.items():
            was = before.get(name)
            manager = self._rollouts.get(name)
            if was is None:
                changed.append(wanted.key)
                continue
            running = was
            if manager is None:
                continue  # its state was refused at start: nothing runs to change
            if wanted.min_requests != running.min_requests:
                changed.append(f"{wanted.key}.min_requests")
                steps.append(functools.partial(setattr, manager, "min_requests",
                                               wanted.min_requests))  # fmt: skip
            if _source_fields(wanted.error_rate_source) != _source_fields(
                running.error_rate_source
            ):
                changed.append(f"{wanted.key}.prometheus")
                source = wanted.error_rate_source or LocalErrorRate(
                    self._enforcer, policies=wanted.policies
                )
                steps.append(functools.partial(setattr, manager, "error_rate_source", source))
            if wanted.check_interval_seconds != running.check_interval_seconds:
                changed.append(f"{wanted.key}.check_interval_seconds")  # read by its monitor
            sinks_changed = new.notifications != old.notifications
            if sinks_changed or (wanted.notify_events, wanted.status_url) != (
                running.notify_events,
                running.status_url,
            ):
                if not sinks_changed:
                    changed.append(f"{wanted.key}.notify_events")
                if self._rollout_notifier is None:
                    raise ReloadRefused(
                        f"{wanted.key}: this service builds no notifier on reload; its "
                        "notifications change only with a restart"
                    )
                try:
                    notifier = self._rollout_notifier(wanted, new)
                except ValueError as error:
                    raise ReloadRefused(one_line(str(error))) from None
                steps.append(functools.partial(_swap_notifier, manager, notifier))
        added = [after[name] for name in after if name not in before]
        built: dict[str, RolloutManager] = {}
        if added and self._add_rollout is None:
            raise ReloadRefused(
                f"{added[0].key}: this service adds no rollout while it runs; it changes only "
                "with a restart"
            )
        try:
            for wanted in added:
                assert self._add_rollout is not None
                manager = self._add_rollout(wanted, new)
                if manager is not None:
                    built[wanted.name] = manager
        except ValueError as error:  # e.g. a policy another rollout's manager holds
            for manager in built.values():
                manager.close()
            raise ReloadRefused(f"{wanted.key}: {one_line(str(error))}") from None

        def commit() -> None:
            for step in steps:
                step()
            self._rollouts.update(built)

        return commit, changed

    def _refuse_restart_only(self, old: Settings, new: Settings) -> None:
        if bool(old.rollouts) != bool(new.rollouts) and (old.rollout or new.rollout):
            raise ReloadRefused(
                "rollouts: the values change from rollout to rollouts (or back) while the "
                "service runs; that changes only with a restart"
            )
        if (old.rollout is None) != (new.rollout is None):
            raise ReloadRefused(
                f"rollout.enabled: {'true' if new.rollout is not None else 'false'} differs from "
                "the running service's; it changes only with a restart"
            )
        live = _LIVE_FIELDS | (_APPROVER_FIELDS if self._approvers is not None else frozenset())
        for field in dataclasses.fields(Settings):
            if field.name in live:
                continue
            before, after = getattr(old, field.name), getattr(new, field.name)
            if before != after:
                raise ReloadRefused(_restart_only(values_key(field.name), before, after))
        if old.rollout is not None and new.rollout is not None:
            self._refuse_stage_change(old.rollout, new.rollout, new)

    def _refuse_stage_change(
        self, old: RolloutConfig, new: RolloutConfig, settings: Settings
    ) -> None:
        running = self._manager.config.stages if self._manager is not None else old.stages
        if list(new.stages) == list(running):
            return
        # The state file records the fingerprint of the stage list it was written for, and the
        # core loads it only into that list: at start as here. Accepting another list now would
        # leave a file that the next start refuses, so the reload refuses it instead, before
        # anything is written.
        if self._manager is None:
            raise ReloadRefused(
                f"rollout.stages: changed ({len(new.stages)} stages, fingerprint "
                f"{new.fingerprint}), but the rollout did not start (its state file "
                f"{settings.state_path} was refused); a stage list changes only with a restart"
            )
        status = self._manager.get_status(transitions=0)
        stage = status["current_stage"]["name"]
        store = settings.store
        where = settings.state_path if store is None else f"the shared store (key {store.key})"
        raise ReloadRefused(
            f"rollout.stages: changed ({len(new.stages)} stages, fingerprint {new.fingerprint}), "
            f"but the rollout state in {where} was written for the running list "
            f"(fingerprint {self._manager.config.fingerprint}, at stage {stage!r}, index "
            f"{status['stage_index']}); the state file is left as it is"
        )

    def _changed_keys(self, old: Settings, new: Settings) -> list[str]:
        changed = []
        if new.enforce.enforce != old.enforce.enforce:
            changed.append("enforce_enabled")
        if new.enforce.drift_max_ratio != old.enforce.drift_max_ratio:
            changed.append("drift_max_ratio")
        if new.enforce.rollout_percent != old.enforce.rollout_percent:
            if new.rollout is None:
                changed.append("enforce_rollout_percent")
            else:
                logger.info(
                    "enforce_rollout_percent: %s is not applied: the rollout sets the percentage",
                    f"{new.enforce.rollout_percent:g}",
                )
        # The gate's limit is drift_max_ratio, reported under that key.
        if _gate_fields(new.gate)[:2] + _gate_fields(new.gate)[3:] != (
            _gate_fields(old.gate)[:2] + _gate_fields(old.gate)[3:]
        ):
            changed.append("enforce_readiness_gate")
        if new.max_unready_replicas != old.max_unready_replicas:
            changed.append("enforce_readiness_gate.max_unready_replicas")
        if new.rollout_min_requests != old.rollout_min_requests:
            changed.append("rollout.min_requests")
        if _source_fields(new.error_rate_source) != _source_fields(old.error_rate_source):
            changed.append("rollout.prometheus")
        if new.check_interval_seconds != old.check_interval_seconds:
            changed.append("rollout.check_interval_seconds")
        if new.notifications != old.notifications:
            changed.append("notifications")
        if new.status_url != old.status_url:
            changed.append("rollout.status_url")
        return changed


def _swap_notifier(manager: RolloutManager, notifier: Notifier | None) -> None:
    """`notifier` for `manager`'s next notifications; the old one sends what it holds, then
    stops."""
    previous, manager.notifier = manager.notifier, notifier
    if notifier is not None and notifier.count is None:
        notifier.count = manager._notification_count()
    if previous is not None:
        threading.Thread(target=previous.close, name="driftgate-notify-close", daemon=True).start()


MAX_WATCHED_BYTES = 1 << 20
"""What the watcher reads of a file to tell a change: more than a values file or a token file
may hold (both are refused past their limit)."""
_TRIGGER = re.compile(r"[A-Za-z0-9_.:-]{1,80}")


def _digest(path: Path) -> str | None:
    """A digest of the file's content now, or None while it cannot be read."""
    try:
        with open(path, "rb") as file:
            return hashlib.sha256(file.read(MAX_WATCHED_BYTES + 1)).hexdigest()
    except OSError:
        return None


class ConfigReloader:
    """Reloads a values file into a running service: on `reload()` (SIGHUP and the admin
    endpoint call it), and, while `running()`, on every change of the file's folder and of the
    folders of the files `also_watch` says the values name (the token file).

    `apply` takes the new Settings, returns the keys it changed, and raises ReloadRefused (or
    ValueError) to refuse them; `parse` makes Settings of the file's bytes (default
    `parse_values_file`, so a reload reads exactly as the start did), once `read` (default
    `read_values_file`) has given the same bytes twice, `settle_seconds` apart (`sleep` waits
    them). `also_watch(settings)` lists the other files a configuration reads, starting with
    `settings`, the one the service started from: a change of their content reloads too. The
    outcome is exported in `registry`. Thread-safe: reloads are serialised."""

    def __init__(
        self,
        path: str | Path,
        apply: Callable[[Settings], Sequence[str]],
        *,
        registry: MetricsRegistry,
        parse: Callable[[bytes, Path], Settings] = parse_values_file,
        read: Callable[[Path], bytes] = read_values_file,
        wall: Callable[[], float] = time.time,
        poll_interval: float = POLL_INTERVAL_SECONDS,
        watch: bool = True,
        settle_seconds: float = SETTLE_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
        also_watch: Callable[[Settings], Sequence[Path]] | None = None,
        settings: Settings | None = None,
    ):
        if not poll_interval > 0:
            raise ValueError(f"poll_interval={poll_interval!r}: expected seconds > 0")
        if not settle_seconds >= 0:
            raise ValueError(f"settle_seconds={settle_seconds!r}: expected seconds >= 0")
        self.path = Path(path).absolute()
        self._apply = apply
        self._parse = parse
        self._read = read
        self._wall = wall
        self._registry = registry
        self._poll_interval = poll_interval
        self._watch = watch
        self._settle_seconds = settle_seconds
        self._sleep = sleep
        self._also_watch = also_watch
        # The other files of the configuration in force, and of the file as last read (one
        # that was refused may name a token file that does not exist yet): both are watched.
        self._applied = self._named = self._watched_with(settings)
        self._lock = threading.Lock()
        # The content last read: the watcher reloads only when it differs, so the many events
        # of one ConfigMap update make one reload.
        self._seen = self._fingerprint()
        # The service started from this file: that load counts as the first success.
        self._set(RELOAD_SUCCESSFUL, 1.0)
        self._set(RELOAD_SUCCESS_TIMESTAMP, self._wall())
        for outcome in ("success", "failure"):
            registry.increment_counter(*RELOADS_TOTAL, {"outcome": outcome}, 0.0)

    def _set(self, metric: tuple[str, str], value: float) -> None:
        self._registry.set_gauge(*metric, value)

    def _watched_with(self, settings: Settings | None) -> tuple[Path, ...]:
        if settings is None or self._also_watch is None:
            return ()
        return tuple(Path(path).absolute() for path in self._also_watch(settings))

    @property
    def _also(self) -> tuple[Path, ...]:
        return tuple(dict.fromkeys(self._applied + self._named))

    def _fingerprint(self, values: bytes | None = None) -> dict[Path, str | None]:
        """The content of every watched file now (`values`: the values file as just read)."""
        found = {path: _digest(path) for path in self._also}
        found[self.path] = (
            _digest(self.path) if values is None else hashlib.sha256(values).hexdigest()
        )
        return found

    def _changed(self) -> bool:
        """Whether a watched file differs from its content last read (a file newly watched
        does; one no longer watched is no matter)."""
        seen = self._seen
        return any(seen.get(path, "") != digest for path, digest in self._fingerprint().items())

    def _settled(self) -> bytes:
        """The values file once two reads `settle_seconds` apart agree: a file written in place
        while it is read is read again until the writer is done."""
        raw = self._read(self.path)
        for _ in range(SETTLE_READS):
            self._sleep(self._settle_seconds)
            again = self._read(self.path)
            if again == raw:
                return raw
            raw = again
        raise SettingsError(
            f"{self.path}: changed between each of {SETTLE_READS + 1} reads "
            f"{self._settle_seconds:g} s apart: not applied until it holds still"
        )

    def reload(self, trigger: str = "manual") -> ReloadResult:
        """Reads, validates and applies the values file now; never raises for a bad file.
        `trigger` says what asked (`watch`, `SIGHUP`, `admin:NAME`): logged as it is when it
        is 1-80 characters of [A-Za-z0-9_.:-], else quoted and escaped, so no caller's text
        forges a log line."""
        if _TRIGGER.fullmatch(trigger) is None:
            trigger = shown(trigger)
        with self._lock:
            self._seen = self._fingerprint()
            try:
                raw = self._settled()
                settings = self._parse(raw, self.path)
                # What the file names is watched even if it is refused: a token file that is
                # missing now is applied once it appears.
                self._named = self._watched_with(settings)
                self._seen = self._fingerprint(raw)
                changed = tuple(self._apply(settings))
                self._applied = self._named
            except ValueError as error:  # SettingsError, ReloadRefused, or the core refusing
                message = _without_credentials(one_line(str(error)))
                if isinstance(error, ReloadRefused):
                    message = f"{self.path}: {message}"
                self._registry.increment_counter(*RELOADS_TOTAL, {"outcome": "failure"})
                self._set(RELOAD_SUCCESSFUL, 0.0)
                logger.error(
                    "configuration reload (%s) refused, the running configuration stays: %s",
                    trigger,
                    message,
                )
                return ReloadResult(False, message, (), trigger)
            self._registry.increment_counter(*RELOADS_TOTAL, {"outcome": "success"})
            self._set(RELOAD_SUCCESSFUL, 1.0)
            self._set(RELOAD_SUCCESS_TIMESTAMP, self._wall())
            message = f"{self.path}: " + (
                f"applied ({', '.join(changed)} changed)" if changed else "applied (no change)"
            )
            logger.info("configuration reload (%s): %s", trigger, message)
            return ReloadResult(True, message, changed, trigger)

    def reload_if_changed(self, trigger: str) -> ReloadResult | None:
        """Reloads when a watched file's content differs from the content last read."""
        if not self._changed():
            return None
        return self.reload(trigger)

    # -- watching ----------------------------------------------------------------------------

    def folders(self) -> list[Path]:
        """The folders the watcher watches: the values file's, and those of the files it names
        (`also_watch`) where they differ."""
        return list(dict.fromkeys(path.parent for path in (self.path, *self._also)))

    async def watch(self, stop: asyncio.Event) -> None:
        """Reloads on changes of the watched folders until `stop` is set: with watchfiles when
        it is installed and the folders can be watched, else by reading the files every
        `poll_interval` seconds. A reload that names another token file moves the watch to
        its folder within FOLDER_CHECK_MS."""
        if self._watch:
            try:
                from watchfiles import awatch
            except ImportError:
                logger.warning("watchfiles is not installed: polling %s", self.path)
            else:
                folders = self.folders()
                try:
                    while not stop.is_set():
                        folders = self.folders()
                        async for changes in awatch(
                            *folders,
                            watch_filter=None,
                            stop_event=stop,
                            debounce=WATCH_DEBOUNCE_MS,
                            step=50,
                            rust_timeout=FOLDER_CHECK_MS,
                            yield_on_timeout=True,
                            recursive=False,
                        ):
                            if changes:
                                await asyncio.to_thread(self.reload_if_changed, "watch")
                            if self.folders() != folders:
                                break  # watch the folders the configuration in force names
                    return
                except Exception as error:  # e.g. no inotify watches left, folder gone
                    logger.warning(
                        "cannot watch %s (%s): polling instead",
                        ", ".join(map(str, folders)),
                        one_line(str(error)) or type(error).__name__,
                    )
        await self._poll(stop)

    async def _poll(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self._poll_interval)
            if not stop.is_set():
                await asyncio.to_thread(self.reload_if_changed, "poll")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """While inside: the folders are watched and SIGHUP reloads (where the event loop runs
        in the main thread, as under uvicorn); a SIGHUP that `driftgate serve` held while it
        started reloads once at the entry."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        pending: set[asyncio.Future[Any]] = set()

        def on_sighup() -> None:
            future = loop.run_in_executor(None, self.reload, "SIGHUP")
            pending.add(future)
            future.add_done_callback(pending.discard)

        sighup = _listen_for_sighup(loop, on_sighup)
        if sighup and _sighup.take():
            on_sighup()  # one that came while the service started (driftgate serve held it)
        watcher = asyncio.create_task(self.watch(stop))
        try:
            yield
        finally:
            if sighup:
                _stop_listening(loop, on_sighup)
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if pending:
                await asyncio.wait(pending)


# Every running reloader of one event loop hears SIGHUP: a loop has one handler per signal, so
# it calls each of them (two services in one process each reload their own file).
_SIGHUP_LISTENERS: dict[asyncio.AbstractEventLoop, list[Callable[[], None]]] = {}


def _listen_for_sighup(loop: asyncio.AbstractEventLoop, listener: Callable[[], None]) -> bool:
    """Adds `listener` to the loop's SIGHUP; False where the loop cannot handle signals (not
    the main thread) or there is no SIGHUP."""
    if not hasattr(signal, "SIGHUP"):
        return False
    listeners = _SIGHUP_LISTENERS.get(loop)
    if listeners is None:
        listeners = []

        def dispatch() -> None:
            for each in list(listeners):
                each()

        try:
            loop.add_signal_handler(signal.SIGHUP, dispatch)
        except (RuntimeError, ValueError, NotImplementedError):  # not the main thread
            return False
        _SIGHUP_LISTENERS[loop] = listeners
    listeners.append(listener)
    return True


def _stop_listening(loop: asyncio.AbstractEventLoop, listener: Callable[[], None]) -> None:
    listeners = _SIGHUP_LISTENERS.get(loop, [])
    if listener in listeners:
        listeners.remove(listener)
    if not listeners and loop in _SIGHUP_LISTENERS:
        del _SIGHUP_LISTENERS[loop]
        loop.remove_signal_handler(signal.SIGHUP)  # back to the default: fatal
        _sighup.restore()  # unless the start held it: then remembered again
