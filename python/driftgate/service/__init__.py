"""driftgate inside your own FastAPI service: everything a values file describes, built and
wired the way `driftgate serve` runs it, and installed on your app in one call::

    from fastapi import FastAPI
    from driftgate.service import CurrentService, Service

    driftgate = Service.from_values("values.yaml")   # or a dict of the same keys
    app = FastAPI()                                  # your app: routes, middleware, lifespan
    driftgate.install(app)                           # driftgate's router and its lifespan

    @app.post("/verify")
    def verify(request: VerifyRequest, dg: CurrentService) -> dict[str, str]:
        pair = dg.enforcer.decide(request.policy_id, request.subject, shadow, enforced)
        return {"verdict": pair.enforced.name.lower()}

A `Service` holds the tracker, the enforcer, the readiness gate in force, the rollout with its
store, the approvers, the notifier and the values file's reloader. Its router carries a
lifespan (FastAPI runs an included router's lifespan inside the app's own) that runs the
rollout monitor and the reloader while the app runs, and at the end stops every thread the
service started: the store's follower, the notifier, the router's workers. Nothing here is
global: two services in one process have their own registries, stores and threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request

from driftgate._core import (
    DEFAULT_ROLLOUT,
    Clock,
    DriftTracker,
    Enforcer,
    MetricsRegistry,
    ReadinessGate,
    StateError,
)
from driftgate._messages import one_line
from driftgate.fastapi.auth import (
    AdminDependency,
    Approvers,
    configured_approvers,
    token_file_path,
)
from driftgate.fastapi.router import create_router
from driftgate.notify import Notifier
from driftgate.readiness_budget import ReadinessBudget
from driftgate.reasons import ReasonCode
from driftgate.reload import ConfigReloader, LiveSettings, ReloadResult
from driftgate.rollout import ErrorRateSource, LocalErrorRate, RolloutManager, rollout_monitor
from driftgate.service.environment import from_environment
from driftgate.service.sinks import build_notifier, sink_environment
from driftgate.service.stores import build_store, store_environment
from driftgate.settings import (
    RolloutSettings,
    Settings,
    SettingsError,
    load_settings,
    parse_settings,
    parse_values_file,
)

if TYPE_CHECKING:
    from driftgate.store import RedisStateStore

__all__ = [
    "DEFAULT_ROLLOUT",
    "CurrentService",
    "Service",
    "ValuesSource",
    "check_environment",
    "current_service",
    "required_environment",
]

logger = logging.getLogger("driftgate.service")


ValuesSource = str | os.PathLike[str] | Mapping[str, Any] | Settings | None
"""What a service is built from: a values file's path (reloaded while the service runs), the
same values as a mapping (the keys of the file), parsed `Settings`, or None for the
defaults (shadow only, no gate, no rollout)."""


def required_environment(settings: Settings) -> list[tuple[str, str]]:
    """The environment variables the values name, as (key, variable): each must be set and
    not empty for the service to start. The admin token's only when `admin.token_env` is
    named (unnamed and unset, the admin endpoints refuse every request, as ever)."""
    required: list[tuple[str, str]] = []
    if settings.store is not None:
        required += store_environment(settings.store)
    if settings.admin_token_required:
        required.append(("admin.token_env", settings.admin_token_env))
    return required + sink_environment(settings)


def check_environment(settings: Settings, environ: Mapping[str, str] | None = None) -> None:
    """A SettingsError naming the first variable the values name that is unset or empty (its
    value is never shown), or the first TLS file of the store that cannot be read."""
    for key, name in required_environment(settings):
        from_environment(name, key, environ)
    if settings.store is not None:
        for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
            path = getattr(settings.store, key)
            if path is not None:
                try:
                    with open(path, "rb") as file:
                        file.read(1)
                except OSError as error:
                    raise SettingsError(
                        f"rollout.store.{key}: {path} cannot be read ({error.strerror})"
                    ) from None


def _settings_of(source: ValuesSource) -> tuple[Settings, Path | None]:
    if source is None or isinstance(source, Settings):
        return source or Settings(), None
    if isinstance(source, Mapping):
        return parse_settings(dict(source)), None
    path = Path(source)
    return load_settings(path), path


class Service:
    """Everything a values file describes, built and wired as `driftgate serve` runs it.

    Build one with `Service.from_values(...)` and install it on your app with
    `install(app)` (or `app.include_router(service.router)`, which brings the lifespan too).
    The attributes are the running parts: `tracker`, `enforcer`, `gate` (the readiness gate in
    force, through reloads), `rollouts` (name -> RolloutManager; `rollout` is the `default`
    one, None without a rollout), `store`, `approvers`, `notifier`, `reloader`, `registry`.
    `settings` are the values in force. Building a service starts no thread: its app's
    lifespan runs its parts and stops them at the end, as often as the app runs (a test
    suite's clients). Its attributes are safe to read from any thread."""

    def __init__(
        self,
        settings: Settings,
        *,
        values_file: str | os.PathLike[str] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        registry: MetricsRegistry | None = None,
        clock: Clock | None = None,
        admin: AdminDependency | None = None,
        error_rate_source: ErrorRateSource | Mapping[str, ErrorRateSource] | None = None,
        watch: bool = True,
        probe_prefix: str = "/api/v1",
        rollout_prefix: str = "/api/guardian/rollout",
    ):
        """Prefer `Service.from_values`; this takes parsed `Settings`. `values_file` (the file
        `settings` came from) is reloaded while the service runs: on a change of its folder
        (unless `watch` is False), on SIGHUP and on `POST {probe_prefix}/admin/reload`.
        `state_dir` replaces the folder of `rollout.state_path`. `environ` is where the
        secrets the values name are read (default: the process's environment). `admin`, your
        own FastAPI dependency returning the actor's name, replaces the approvers the values
        describe. `error_rate_source` replaces the rollout's (`rollout.prometheus`, else the
        enforced cohort's own errors); a mapping gives one per rollout name. `clock` and
        `registry` are for tests."""
        self._state_dir = None if state_dir is None else Path(state_dir)
        settings = self._placed(settings)
        self._lock = threading.Lock()
        self._running = False
        self._closed = False
        # While the app runs: its event loop, and the stack its rollouts' monitors run in.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._monitors: contextlib.AsyncExitStack | None = None
        # Every variable the values name, then the approvers (a bad token file): either
        # stops the start before anything is made.
        check_environment(settings, environ)
        self.registry = registry or MetricsRegistry()
        self.approvers: Approvers | AdminDependency = admin or configured_approvers(
            settings, environ, registry=self.registry
        )
        self.tracker = DriftTracker(clock=clock, registry=self.registry)
        self.enforcer = Enforcer(settings.enforce, self.tracker)
        self.problems: list[str] = []  # reason codes that hold readiness at 503
        self._environ = environ
        self._clock = clock
        self._error_rate_source = error_rate_source
        # Each rollout's shared store, by the rollout's name (none for a local state file).
        self.stores: dict[str, RedisStateStore] = {}
        # The managers by name: the router and the reloader read this very dict, so a rollout
        # the values add while the service runs serves at once.
        self._managers: dict[str, RolloutManager] = {}
        try:
            for each in settings.all_rollouts():
                manager = self._build_rollout(each, settings)
                if manager is not None:
                    self._managers[each.name] = manager
        except BaseException:
            for store in self.stores.values():
                store.close()
            raise
        self.rollouts: Mapping[str, RolloutManager] = MappingProxyType(self._managers)
        # What the values file drives while the service runs; readiness asks its gate in force.
        default = self._managers.get(DEFAULT_ROLLOUT) if not settings.rollouts else None
        self.live = LiveSettings(
            settings,
            tracker=self.tracker,
            enforcer=self.enforcer,
            manager=default,
            gate=ReadinessGate(settings.gate, self.tracker),
            notifier=lambda new: self._notifier(new.all_rollouts()[0], new),
            # the approvers the values describe: a reload swaps who they are
            approvers=self.approvers if isinstance(self.approvers, Approvers) else None,
            rollouts=self._managers if settings.rollouts else None,
            add_rollout=self._add_rollout,
            rollout_notifier=self._notifier,
        )
        # With a shared store, at most max_unready_replicas replicas fail readiness for drift
        # at once; the follower of the first rollout's store asks the gate in force and keeps
        # this replica's slot (readiness is the replica's, not a rollout's).
        self.readiness_budget: ReadinessBudget | None = None
        first = next((self.stores[n] for n in sorted(self.stores) if n in self._managers), None)
        if first is not None:
            self.readiness_budget = first.readiness_budget(
                self.live.check, max_unready=self.live.max_unready_replicas, registry=self.registry
            )
        self.reloader: ConfigReloader | None = None
        if values_file is not None:
            self.reloader = ConfigReloader(
                Path(values_file),
                self.live.apply,
                registry=self.registry,
                parse=lambda raw, path: self._placed(parse_values_file(raw, path)),
                # the token file, often a Secret mounted apart from the values' ConfigMap
                also_watch=lambda loaded: [p for p in [token_file_path(loaded)] if p is not None],
                settings=settings,
                watch=watch,
            )
        self.router: APIRouter = create_router(
            tracker=self.tracker,
            rollouts=self._managers,
            registry=self.registry,
            admin=self.approvers,
            gate=self.live,  # the gate the values file has in force, through reloads
            readiness_checks=[self._problem],
            reload=None if self.reloader is None else self.reloader.reload,
            readiness_budget=self.readiness_budget,
            probe_prefix=probe_prefix,
            rollout_prefix=rollout_prefix,
            lifespan=self.lifespan,
        )

    @classmethod
    def from_values(cls, source: ValuesSource = None, **options: Any) -> Service:
        """The service `source` describes (see `ValuesSource`); a values file's path is
        reloaded while the service runs. `options` are those of `Service(...)`. A values file
        or environment that cannot be used is a SettingsError of one line naming the file, the
        key and the value or variable at fault; nothing is left running."""
        settings, path = _settings_of(source)
        if path is not None:
            options.setdefault("values_file", path)
        return cls(settings, **options)

    # -- what the service is -------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The values in force: those the service started with, or the last reload's."""
        return self.live.current.settings

    @property
    def gate(self) -> LiveSettings:
        """The readiness gate in force (it follows reloads): `check()`, `reopens_within()`."""
        return self.live

    @property
    def rollout(self) -> RolloutManager | None:
        """The `default` rollout (the values' `rollout:`), or None without one."""
        return self.rollouts.get(DEFAULT_ROLLOUT)

    @property
    def store(self) -> RedisStateStore | None:
        """The `default` rollout's shared store, or None (a local state file, or none)."""
        return self.stores.get(DEFAULT_ROLLOUT)

    @property
    def notifier(self) -> Notifier | None:
        """Where the rollout's notifications go now (a reload may replace it)."""
        manager = self.rollout
        return None if manager is None else manager.notifier

    def reload(self, trigger: str = "manual") -> ReloadResult:
        """Reads and applies the values file now, as SIGHUP does; a service built from a
        mapping or Settings has none to read, and says so."""
        if self.reloader is None:
            return ReloadResult(False, "this service was not built from a values file", (), trigger)
        return self.reloader.reload(trigger)

    # -- on the user's app -------------------------------------------------------------------

    def install(self, app: FastAPI, *, prefix: str = "") -> Service:
        """Mounts driftgate's router on `app` (under `prefix`, if given), with its lifespan,
        and makes this service what `current_service` answers for `app`'s requests. The app
        keeps its own routes, middleware and lifespan (it runs around driftgate's)."""
        installed = getattr(app.state, "driftgate", None)
        if installed is not None and installed is not self:
            raise ValueError("this app already has a driftgate Service installed")
        app.include_router(self.router, prefix=prefix)
        app.state.driftgate = self
        return self

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """While the app runs: the store's follower, the rollout monitor (one replica of a
        fleet evaluates per check interval) and the values file's reloader. At the end every
        thread the service started stops (the notifier after sending what it holds), the
        lease and the unready slot are given up, and the service may run again. Entered
        twice at once (the app's `lifespan=` and the router's), the inner entry does
        nothing."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this driftgate Service is closed: build another")
            nested, self._running = self._running, True
        if nested:
            yield
            return
        try:
            async with contextlib.AsyncExitStack() as running:
                running.push_async_callback(asyncio.to_thread, self._stop)
                self._loop = asyncio.get_running_loop()
                self._monitors = running
                for name, manager in list(self._managers.items()):
                    await self._run_rollout(name, manager)
                if self.reloader is not None:
                    await running.enter_async_context(self.reloader.running())
                yield
        finally:
            with self._lock:
                self._running = False
                self._loop = None
                self._monitors = None

    async def _run_rollout(self, name: str, manager: RolloutManager) -> None:
        """One rollout's part of a run: its store followed, its monitor on its interval."""
        assert self._monitors is not None
        store = self.stores.get(name)
        if store is not None:
            store.follow(manager)
        await self._monitors.enter_async_context(
            rollout_monitor(manager, self.live.check_interval_of(name))
        )

    def _stop(self) -> None:
        """The end of a run: the followers, the leases and slot, the notifiers' workers."""
        for store in self.stores.values():
            store.unfollow()
        for manager in self._managers.values():
            if manager.notifier is not None:
                manager.notifier.close()

    def close(self) -> None:
        """Ends the service for good: what a run leaves (the store's connections) closes too.
        For a service that ran, or one built and never run (a test's). Idempotent."""
        with self._lock:
            if self._closed or self._running:
                return
            self._closed = True
        self._stop()
        for store in self.stores.values():
            store.close()

    # -- building ----------------------------------------------------------------------------

    def _placed(self, loaded: Settings) -> Settings:
        """`loaded` with every rollout's state file in `state_dir`, if given."""
        folder = self._state_dir
        if folder is None:
            return loaded
        return dataclasses.replace(
            loaded,
            state_path=folder / loaded.state_path.name,
            rollouts=tuple(
                dataclasses.replace(each, state_path=folder / each.state_path.name)
                for each in loaded.rollouts
            ),
        )

    def _problem(self) -> str | None:
        return self.problems[0] if self.problems else None

    def _notifier(self, rollout: RolloutSettings, settings: Settings) -> Notifier | None:
        store = self.stores.get(rollout.name)
        claim = None if store is None else store.claim
        return build_notifier(settings, claim, self._environ, rollout=rollout)

    def _build_rollout(self, each: RolloutSettings, settings: Settings) -> RolloutManager | None:
        """The manager of one rollout, its store made first; None, and the service held
        not-ready and shadow-only, when its state cannot be used (fail closed). Whatever
        else stops it is a SettingsError naming the rollout's key, nothing of it left open."""
        store = None if each.store is None else build_store(each.store, self._environ)
        if store is None:
            each.state_path.parent.mkdir(parents=True, exist_ok=True)
        else:
            self.stores[each.name] = store
        notifier = None

        def let_go() -> None:
            if notifier is not None:
                notifier.close()
            if store is not None:
                store.close()
                del self.stores[each.name]

        source = self._error_rate_source
        if isinstance(source, Mapping):
            source = source.get(each.name)
        governed: dict[str, Any] = {}
        if each.policies is not None:  # a rollout of `rollouts:`, not the one of `rollout:`
            governed = {
                "rollout": each.name,
                "policies": list(each.policies),
                "cohort": each.cohort,
                "name": each.name,
            }
        try:
            notifier = self._notifier(each, settings)
            if source is None and each.error_rate_source is None and each.policies is not None:
                source = LocalErrorRate(self.enforcer, policies=each.policies)
            return RolloutManager(
                each.config,
                enforcer=self.enforcer,
                registry=self.registry,
                state_path=None if store is not None else each.state_path,
                store=store,
                follow=False,  # from the start of each run of the app: see lifespan
                clock=self._clock,
                min_requests=each.min_requests,
                error_rate_source=source or each.error_rate_source,
                notifier=notifier,
                **governed,
            )
        except StateError as error:
            # Fail closed: keep serving shadow-only, report not-ready until someone looks.
            logger.error("rollout %s disabled: %s", each.name, error)
            let_go()
            self.enforcer.set_options(rollout_percent=0)
            self.problems.append(ReasonCode.STATE_FILE.value)
            return None
        except SettingsError:
            let_go()
            raise
        except ValueError as error:  # a policy another rollout holds, past the tracker's cap
            let_go()
            raise SettingsError(f"{each.key}.policies: {one_line(str(error))}") from None
        except BaseException:
            let_go()
            raise

    def _add_rollout(self, each: RolloutSettings, settings: Settings) -> RolloutManager | None:
        """A rollout the values add while the service runs (a reload calls it, off the event
        loop): built as at start, and, while the app runs, followed and monitored at once."""
        try:
            manager = self._build_rollout(each, settings)
        except SettingsError as error:
            raise ValueError(str(error)) from None
        loop = self._loop
        if manager is not None and loop is not None:
            started = self._run_rollout(each.name, manager)
            if _running_loop() is loop:
                loop.create_task(started)  # called on the loop itself: it starts next
            else:
                asyncio.run_coroutine_threadsafe(started, loop).result()
        return manager


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def current_service(request: Request) -> Service:
    """The FastAPI dependency that answers the `Service` installed on the request's app:
    `dg: Annotated[Service, Depends(current_service)]`, or `dg: CurrentService`."""
    service = getattr(request.app.state, "driftgate", None)
    if not isinstance(service, Service):
        raise RuntimeError(
            "no driftgate Service is installed on this app: call Service.install(app) first"
        )
    return service


CurrentService = Annotated[Service, Depends(current_service)]
"""A handler's parameter that receives the app's `Service`: `def verify(dg: CurrentService)`."""
