"""The demo service: driftgate's router next to a `POST /verify` that decides with mock
evaluators. `driftgate serve` runs it under uvicorn.

The mock evaluators agree unless the request's context asks otherwise:
- `"_demo_drift": true` makes the enforced evaluator answer FAIL where the shadow one says OK,
  so requests in the enforced cohort drift;
- `"_demo_error": true` makes the enforced evaluator raise (an evaluation error, FAIL);
- `"_demo_unstable": true` salts the solution signature at random, so the same request gets a
  different signature each time (what `driftgate probe` and the determinism metrics catch).
Requests outside the cohort never drift: only the shadow side runs there.

Each answer carries a `solution_signature`: a digest of the request and its verdict, the same
for the same request unless `_demo_unstable` is set. The service counts it in a SignatureLRU
(is it new among the last 5000?) and a DeterminismProbe (did this input give another one?).
"""

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI
from pydantic import BaseModel, Field

from driftgate._core import (
    DeterminismProbe,
    DriftTracker,
    Enforcer,
    MetricsRegistry,
    ReadinessGate,
    SignatureLRU,
    StateError,
    StateStoreError,
    Verdict,
)
from driftgate.fastapi import create_router
from driftgate.fastapi.auth import Approvers, configured_approvers, token_file_path
from driftgate.fastapi.router import ErrorBody, json_body, json_body_schema
from driftgate.notify import Event, Notifier, Sink, SlackSink, WebhookSink
from driftgate.reasons import ReasonCode
from driftgate.reload import ConfigReloader, LiveSettings
from driftgate.rollout import RolloutManager, rollout_lifespan
from driftgate.settings import (
    Settings,
    SettingsError,
    StoreSettings,
    load_settings,
    parse_values_file,
)
from driftgate.store import RedisStateStore

logger = logging.getLogger("driftgate.demo")


class VerifyRequest(BaseModel):
    model_config = {"extra": "forbid"}
    policy_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", examples=["lksg.v1"])
    context: dict[str, Any] = Field(
        description="The facts to decide on. `_demo_drift: true` makes the enforced verdict "
        "differ; `_demo_error: true` makes the enforced evaluator fail.",
        examples=[{"subject_id": "supplier-17", "_demo_drift": False}],
    )
    backend: Literal["mock"] = "mock"


class VerifyResult(BaseModel):
    shadow: str
    enforced: str
    in_rollout: bool
    drift: bool
    solution_signature: str = Field(
        description="Digest of the request and its verdict: equal for equal requests."
    )


class VerifyResponse(BaseModel):
    policy_id: str
    verdict: str = Field(description="The verdict in force: the enforced one.")
    result: VerifyResult


def _cohort_key(context: dict[str, Any]) -> str:
    """Who a request is about, for the sampling hash: `subject_id` when given, else the
    canonical JSON of the context."""
    subject = context.get("subject_id")
    if isinstance(subject, str) and subject:
        return subject
    return _canonical_json(context)


def _canonical_json(context: dict[str, Any]) -> str:
    return json.dumps(context, sort_keys=True, separators=(",", ":"), default=str)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def _input_fingerprint(body: VerifyRequest) -> str:
    return _digest(body.policy_id, _canonical_json(body.context))


verify_request = json_body(VerifyRequest)


def required_environment(settings: Settings) -> list[tuple[str, str]]:
    """The environment variables the values name, as (key, variable): each must be set and
    not empty for the service to start. The admin token's only when `admin.token_env` is
    named (unnamed and unset, the admin endpoints refuse every request, as ever)."""
    required: list[tuple[str, str]] = []
    if settings.store is not None:
        required.append(("rollout.store.url_env", settings.store.url_env))
        if settings.store.sentinel_password_env is not None:
            required.append(
                ("rollout.store.sentinel_password_env", settings.store.sentinel_password_env)
            )
    if settings.admin_token_required:
        required.append(("admin.token_env", settings.admin_token_env))
    for i, entry in enumerate(settings.notifications):
        required.append((f"notifications[{i}].url_env", entry.url_env))
        if entry.secret_env is not None:
            required.append((f"notifications[{i}].secret_env", entry.secret_env))
    return required


def check_environment(settings: Settings, environ: Mapping[str, str] | None = None) -> None:
    """A SettingsError naming the first variable the values name that is unset or empty (its
    value is never shown), or the first TLS file of the store that cannot be read."""
    environ = os.environ if environ is None else environ
    for key, name in required_environment(settings):
        _environment(name, key, environ)
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


def _redis_store(settings: StoreSettings) -> RedisStateStore:
    """The fleet's store; its URL (and the sentinels' password) come from the environment
    variables the values name. A Redis that answers but refuses the store's user, its password
    or its certificate stops the start with one line; one that does not answer yet is
    followed until it does."""
    url = _environment(settings.url_env, "rollout.store.url_env")
    password = None
    if settings.sentinel_password_env is not None:
        password = _environment(
            settings.sentinel_password_env, "rollout.store.sentinel_password_env"
        )
    try:
        store = RedisStateStore(
            url,
            settings.key,
            sync_interval_seconds=settings.sync_interval_seconds,
            lease_ttl_seconds=settings.lease_ttl_seconds,
            tls_ca_file=settings.tls_ca_file,
            tls_cert_file=settings.tls_cert_file,
            tls_key_file=settings.tls_key_file,
            sentinels=settings.sentinels or None,
            sentinel_service=settings.sentinel_service,
            sentinel_password=password,
            max_clock_skew_seconds=settings.max_clock_skew_seconds,
            min_replicas_acked=settings.min_replicas_acked,
            replica_ack_timeout=settings.replica_ack_timeout_seconds,
        )
    except ValueError as error:
        # The store names its own argument: the values file's key is rollout.store.<that>.
        message = str(error)
        if message.startswith(("tls_", "sentinel")):
            message = f"rollout.store.{message}"
        raise SettingsError(message) from None
    try:
        store.check_access()
    except StateStoreError as error:
        store.close()
        raise SettingsError(f"rollout.store: {error}") from None
    return store


def _environment(name: str, what: str, environ: Mapping[str, str] | None = None) -> str:
    value = (os.environ if environ is None else environ).get(name)
    if not value:
        state = "empty" if value is not None else "not set"
        raise SettingsError(f"{what} names {name}, which is {state}: export it")
    return value


def _notifier(settings: Settings, store: RedisStateStore | None) -> Notifier | None:
    """The notification sinks the values name, their URLs and secrets from the environment;
    in a fleet, each notification is claimed in the shared store so one replica sends it."""
    sinks: list[Sink] = []
    for i, entry in enumerate(settings.notifications):
        where = f"notifications[{i}]"
        url = _environment(entry.url_env, f"{where}.url_env")
        events = [Event(e) for e in entry.events] or None
        if entry.kind == "slack":
            sinks.append(SlackSink(url, events))
        else:
            secret = _environment(entry.secret_env or "", f"{where}.secret_env")
            sinks.append(WebhookSink(url, secret, events))
    if not sinks:
        return None
    return Notifier(
        sinks, claim=None if store is None else store.claim, status_url=settings.status_url
    )


def demo_approvers(settings: Settings) -> Approvers:
    """Who may move the rollout, from the values file and the environment; a SettingsError
    naming the key (and the token file's line) when they cannot be built."""
    return configured_approvers(settings)


def create_demo_app(
    settings: Settings | None = None,
    *,
    values_file: Path | None = None,
    state_dir: Path | None = None,
) -> FastAPI:
    """The demo service for `settings` (defaults: shadow only, no gate, no rollout).

    With `values_file` (the file `settings` came from), the service reloads it while it runs:
    on a change of its folder or of the token file's, on SIGHUP and on `POST
    /api/v1/admin/reload`; a reload reads the token file again, so a line removed from it
    revokes that token from the next request. `state_dir` replaces the folder of
    `rollout.state_path`, at start and in every reload."""

    def placed(loaded: Settings) -> Settings:
        if state_dir is None:
            return loaded
        return dataclasses.replace(loaded, state_path=state_dir / loaded.state_path.name)

    settings = placed(settings or Settings())
    admin = demo_approvers(settings)  # a bad token file stops the start before anything is made
    registry = MetricsRegistry()
    tracker = DriftTracker(registry=registry)
    enforcer = Enforcer(settings.enforce, tracker)
    gate = ReadinessGate(settings.gate, tracker)
    signatures = SignatureLRU(5000, registry=registry)
    determinism = DeterminismProbe(5000, registry=registry)
    manager: RolloutManager | None = None
    state_problem: list[str] = []
    store: RedisStateStore | None = None
    if settings.rollout is not None:
        store = None if settings.store is None else _redis_store(settings.store)
        if store is None:
            settings.state_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            manager = RolloutManager(
                settings.rollout,
                enforcer=enforcer,
                state_path=None if store is not None else settings.state_path,
                store=store,
                min_requests=settings.rollout_min_requests,
                error_rate_source=settings.error_rate_source,
                notifier=_notifier(settings, store),
            )
        except StateError as error:
            # Fail closed: keep serving shadow-only, report not-ready until someone looks.
            logger.error("rollout disabled: %s", error)
            enforcer.set_options(rollout_percent=0)
            state_problem.append(ReasonCode.STATE_FILE.value)

    # What the values file drives while the service runs; readiness asks its gate in force.
    live = LiveSettings(
        settings,
        tracker=tracker,
        enforcer=enforcer,
        manager=manager,
        gate=gate,
        notifier=lambda new: _notifier(new, store),
        approvers=admin,  # the router's: a reload swaps who they are
    )
    # With a shared store, at most max_unready_replicas replicas fail readiness for drift at
    # once; the store's follower asks the gate in force and keeps this replica's slot.
    budget = None
    if store is not None and manager is not None:
        budget = store.readiness_budget(
            lambda: live.current.gate.check(),
            max_unready=live.max_unready_replicas,
            registry=registry,
        )
    reloader = None
    if values_file is not None:
        reloader = ConfigReloader(
            values_file,
            live.apply,
            registry=registry,
            parse=lambda raw, path: placed(parse_values_file(raw, path)),
            # the token file, often a Secret mounted apart from the values' ConfigMap
            also_watch=lambda loaded: [p for p in [token_file_path(loaded)] if p is not None],
            settings=settings,
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as running:
            if reloader is not None:
                await running.enter_async_context(reloader.running())
            if manager is not None:
                await running.enter_async_context(
                    rollout_lifespan(manager, live.check_interval)(app)
                )
            yield

    app = FastAPI(
        title="driftgate demo",
        description="Shadow and enforced verdicts side by side, with drift gating and a "
        "staged rollout.",
        lifespan=lifespan,
    )
    app.include_router(
        create_router(
            tracker=tracker,
            manager=manager,
            registry=registry,
            admin=admin,
            gate=live,  # the gate the values file has in force, through reloads
            readiness_checks=[lambda: state_problem[0] if state_problem else None],
            reload=None if reloader is None else reloader.reload,
            readiness_budget=budget,
        )
    )

    @app.post(
        "/verify",
        response_model=VerifyResponse,
        responses={code: {"model": ErrorBody} for code in (400, 413, 422)},
        name="demo:verify",
        openapi_extra=json_body_schema(VerifyRequest, required=True),
    )
    def verify(body: Annotated[VerifyRequest, Depends(verify_request)]) -> dict[str, Any]:
        context = body.context

        def shadow() -> Verdict:
            return Verdict.OK

        def enforced() -> Verdict:
            if context.get("_demo_error") is True:
                raise RuntimeError("mock enforced evaluator failed")
            return Verdict.FAIL if context.get("_demo_drift") is True else Verdict.OK

        pair = enforcer.decide(body.policy_id, _cohort_key(context), shadow, enforced)
        fingerprint = _input_fingerprint(body)
        salt = secrets.token_hex(8) if context.get("_demo_unstable") is True else ""
        signature = _digest(fingerprint, pair.enforced.name, salt)
        signatures.is_new(signature)
        determinism.observe(fingerprint, signature)
        return {
            "policy_id": body.policy_id,
            "verdict": pair.enforced.name.lower(),
            "result": {
                "shadow": pair.shadow.name.lower(),
                "enforced": pair.enforced.name.lower(),
                "in_rollout": pair.in_rollout,
                "drift": pair.drift,
                "solution_signature": signature,
            },
        }

    app.state.driftgate = {
        "tracker": tracker,
        "enforcer": enforcer,
        "live": live,  # live.current.gate is the readiness gate in force
        "approvers": admin,  # who approves now: a reload swaps them
        "reloader": reloader,
        "manager": manager,
        "readiness_budget": budget,
        "registry": registry,
        "signatures": signatures,
        "determinism": determinism,
    }
    return app


def app_from_environment() -> FastAPI:
    """For uvicorn's --factory: settings from DRIFTGATE_CONFIG (a values file, reloaded while
    the service runs), if set."""
    path = Path(os.environ["DRIFTGATE_CONFIG"]) if os.environ.get("DRIFTGATE_CONFIG") else None
    return create_demo_app(load_settings(path), values_file=path)
