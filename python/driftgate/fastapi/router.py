"""create_router: the HTTP face of a tracker, a readiness gate and a rollout manager."""

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import logging
import math
import os
import re
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from pydantic_core import to_json

from driftgate._core import (
    DEFAULT_ROLLOUT,
    DriftTracker,
    MetricsRegistry,
    StateError,
    StateOutcomeUnknown,
    StateRegressed,
    StateStoreError,
)
from driftgate.exposition import scrape
from driftgate.fastapi.auth import (
    TOKEN_ENV,
    AdminDependency,
    bearer_token_admin,
    identified,
    scoped,
    status_check,
    status_declared_protected,
    status_guard,
)
from driftgate.identity import Identity, Scope
from driftgate.readiness_budget import ReadinessBudget
from driftgate.reasons import ReasonCode
from driftgate.rollout import Decision, DecisionAction, RolloutManager, StatusKey
from driftgate.status import RolloutStatus, elapsed_time, entity_tag

logger = logging.getLogger("driftgate.http")

MAX_BODY_BYTES = 1 << 20
MAX_VERSION = (1 << 53) - 1
# What a client may send as an operation id: as the history keeps it.
_OPERATION = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# How long a client should wait before asking again after STATE_UNKNOWN: the store's
# read-back gives up after a few seconds.
UNKNOWN_RETRY_AFTER = "5"
READY = {"status": "ready"}
READY_WITHIN_BUDGET = {"status": "ready", "reason": ReasonCode.DRIFT_GATE_BUDGET.value}
HEALTHY = {"status": "ok"}


def _encoded(document: Any) -> bytes:
    """A JSON body as Starlette's JSONResponse writes it."""
    return json.dumps(
        document, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode()


def _json_response(body: bytes, status_code: int = 200, **headers: str) -> Response:
    """An answer of JSON bytes written before: the probes answer the same few bodies over and
    over, and skipping FastAPI's response-model pass and the encoding keeps them as cheap as an
    endpoint that returns a dict can be."""
    return Response(body, status_code=status_code, media_type="application/json", headers=headers)


# The status's own serializer (pydantic's, as the response model would use it): the report is
# built by the manager, so it is written without being validated again.
_STATUS: TypeAdapter[RolloutStatus] = TypeAdapter(RolloutStatus)
# Written in place of the two fields that the clock alone changes, to find where they go.
_ELAPSED = "\x00elapsed_time\x00"
_REASON = "\x00waiting_reason\x00"
_ELAPSED_JSON = to_json(_ELAPSED)
_REASON_JSON = to_json(_REASON)


class WrittenStatus:
    """A status as JSON, kept in three pieces around its `elapsed_time` and `waiting_reason`
    with the key of what it was built from but the clock (RolloutManager._status_now): while
    a manager's key stays the same, its status is these pieces with those two fields written
    anew, byte for byte what writing it whole would give."""

    __slots__ = ("etag", "head", "key", "middle", "tail")

    def __init__(self, key: StatusKey, etag: str, head: bytes, middle: bytes, tail: bytes):
        self.key = key
        self.etag = etag
        self.head = head
        self.middle = middle
        self.tail = tail

    @classmethod
    def of(cls, report: RolloutStatus, key: StatusKey) -> "WrittenStatus | None":
        """None when the two fields cannot be told apart from the rest (some text of the
        status holds what marks them)."""
        marked = _STATUS.dump_json({**report, "elapsed_time": _ELAPSED, "waiting_reason": _REASON})
        if marked.count(_ELAPSED_JSON) != 1 or marked.count(_REASON_JSON) != 1:
            return None
        head, _, rest = marked.partition(_ELAPSED_JSON)
        middle, found, tail = rest.partition(_REASON_JSON)
        return cls(key, report["etag"], head, middle, tail) if found else None

    def body(self, elapsed: str, reason: str) -> bytes:
        return b"".join((self.head, to_json(elapsed), self.middle, to_json(reason), self.tail))


_HEALTHY_BODY = _encoded(HEALTHY)
_READY_BODY = _encoded(READY)
_READY_WITHIN_BUDGET_BODY = _encoded(READY_WITHIN_BUDGET)

ReadinessCheck = Callable[[], str | None]


class Gate(Protocol):
    """What readiness asks of a gate: a `ReadinessGate`, or a live configuration's gate in
    force (`LiveSettings`)."""

    def check(self) -> tuple[bool, str]: ...
    def reopens_within(self) -> float | None: ...


ModelT = TypeVar("ModelT", bound=BaseModel)
ResultT = TypeVar("ResultT")

MAX_PENDING_MOVES = 16
"""Admin moves a router holds at once by default, the one in flight and those queued behind
it: several operators and a retrying script at the same time, while a store that stalls ties
up no more than this many connections."""

MAX_MOVE_WAIT_SECONDS = 5.0
"""How long a move may wait for its turn by default: under the command line's own 10 s
`--timeout`, so that a refused move is a clear 503, not a client's timeout."""


class ErrorBody(BaseModel):
    detail: str = Field(description="A fixed reason code or a message naming the bad value.")


class HealthBody(BaseModel):
    status: str = "ok"


class ReadyBody(BaseModel):
    status: str = Field(description="ready or not_ready")
    reason: str | None = Field(
        None,
        description="A fixed reason code, e.g. DRIFT_GATE; on a ready answer DRIFT_GATE_BUDGET "
        "(drift, but the fleet's readiness budget keeps this replica serving).",
    )
    reopens_within_seconds: int | None = Field(
        None,
        description="With DRIFT_GATE: whole seconds (rounded up) until the drift that closed "
        "the gate has left its window, when it reopens with or without traffic (sooner if the "
        "ratio falls).",
    )


class MoveBody(BaseModel):
    """The answer to an admin move, built from the decision that very request made."""

    success: bool
    message: str
    new_stage: str = Field(description="The stage after the move, or 'aborted'.")
    new_percentage: float
    action: str = Field(description="What happened: advanced, resumed, rolled_back, aborted.")
    previous_stage: str
    version: int = Field(description="The rollout's version after the move.")
    operation: str = Field(
        "", description="The id of the operation that moved it (the Idempotency-Key, if sent)."
    )
    replayed: bool = Field(
        False,
        description="True when this operation had already been applied: the answer is its "
        "first outcome, and nothing moved now.",
    )


class MoveRequest(BaseModel):
    """The optional body of an advance or a rollback."""

    model_config = {"extra": "forbid"}
    reason: str | None = Field(None, max_length=200, description="Why, for the history.")
    expected_version: int | None = Field(
        None,
        ge=0,
        le=MAX_VERSION,
        strict=True,
        description="Move only if the rollout is at this version (as If-Match does); else 412.",
    )


# Kept under its old name for code that imported it.
RollbackRequest = MoveRequest


class RolloutLine(BaseModel):
    """One rollout of a service, as `GET /api/guardian/rollouts` lists it."""

    name: str
    stage: str
    stage_index: int
    total_stages: int
    percentage: float = Field(description="The enforced share of its policies now.")
    state: str
    version: int
    etag: str
    waiting_for: str = Field(description="What the next step waits for, as the status says.")
    policies: list[str] | None = Field(
        description="The policies it governs; null: every policy no other rollout governs."
    )


class RolloutList(BaseModel):
    rollouts: list[RolloutLine]


def summary(name: str, rollout: RolloutManager) -> dict[str, Any]:
    """A rollout's line of the list: from its published snapshot, no lock, no store call."""
    report = rollout.get_status(transitions=0)
    policies = rollout.policies
    return {
        "name": name,
        "stage": report["current_stage"]["name"],
        "stage_index": report["stage_index"],
        "total_stages": report["total_stages"],
        "percentage": report["enforced_percentage"],
        "state": report["state"],
        "version": report["version"],
        "etag": report["etag"],
        "waiting_for": report["waiting_for"],
        "policies": None if policies is None else list(policies),
    }


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}


STATUS_ERRORS = _errors(404)
ADMIN_ERRORS = _errors(400, 401, 403, 404, 409, 412, 413, 422, 503)


def etag(version: int, incarnation: str = "") -> str:
    """The status's entity tag, quoted: `"<incarnation>.<version>"`, or the bare version for a
    state without an incarnation."""
    return entity_tag(incarnation, version)


def current_tag(rollout: RolloutManager) -> tuple[int, str]:
    """The version and incarnation the manager holds now."""
    snapshot = rollout._snapshot()
    return (snapshot["version"], snapshot["incarnation"])


# RFC 9110 8.8.3: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE, etagc = %x21 / %x23-7E / obs-text
# (a header arrives decoded as Latin-1, so obs-text is U+0080-U+00FF).
_TAG = r'(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"'
# A list of them, which may hold empty elements (RFC 9110 5.6.1).
_TAG_LIST = re.compile(rf"[ \t]*(?:,[ \t]*)*{_TAG}(?:[ \t]*,(?:[ \t]*{_TAG})?)*[ \t]*")


class IfMatch:
    """What an If-Match header asks: `*` (any current tag) or a list of entity tags, compared
    strongly (RFC 9110 8.8.3.2): a tag matches only if it is the current ETag character for
    character, and a weak tag never does."""

    def __init__(self, header: str) -> None:
        text = header.strip(" \t")
        self.any = text == "*"
        if not self.any and not _TAG_LIST.fullmatch(text):
            raise HTTPException(status.HTTP_400_BAD_REQUEST, ReasonCode.BAD_PRECONDITION.value)
        self.tags = frozenset(t for t in re.findall(_TAG, text) if not t.startswith("W/"))

    def matches(self, tag: str) -> bool:
        return self.any or tag in self.tags

    def conditions(self) -> list[tuple[int, str | None]]:
        """The states the list names, newest first, as (version, incarnation): each tag read
        back and kept only if that state's ETag is the very same string. A bare version
        (`"7"`, from clients older than incarnations) names no incarnation, so it cannot tell
        a state from one at the same version after the store lost it."""
        named: set[tuple[int, str | None]] = set()
        for tag in self.tags:
            incarnation, _, digits = tag[1:-1].rpartition(".")
            if not (digits.isascii() and digits.isdigit() and len(digits) <= 16):
                continue
            version = int(digits)
            if incarnation and not _OPERATION.fullmatch(incarnation):
                continue
            if version <= MAX_VERSION and self.matches(etag(version, incarnation)):
                named.add((version, incarnation or None))
        return sorted(named, key=lambda c: (c[0], c[1] or ""), reverse=True)


def _none_match(header: str | None, tag: str) -> bool:
    """Whether If-None-Match names `tag` (weak comparison, as for GET)."""
    if header is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or tag in tags


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 past MAX_BODY_BYTES whether or not the client sent
    a Content-Length."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(status.HTTP_400_BAD_REQUEST, ReasonCode.BAD_CONTENT_LENGTH.value)
        if int(declared) > MAX_BODY_BYTES:
            raise HTTPException(413, ReasonCode.BODY_TOO_LARGE.value)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, ReasonCode.BODY_TOO_LARGE.value)
    return bytes(body)


def json_body_schema(model: type[BaseModel], *, required: bool) -> dict[str, Any]:
    """The OpenAPI request body of an endpoint that reads its JSON itself (to cap its size)."""
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def json_body(
    model: type[ModelT], *, optional: bool = False
) -> Callable[[Request], Coroutine[Any, Any, ModelT]]:
    """A dependency that reads a request's JSON body (413 past MAX_BODY_BYTES) and validates
    it as `model`: 422 naming each bad field. An `optional` body may be empty."""

    async def parse(request: Request) -> ModelT:
        body = await read_body(request)
        if optional and not body.strip():
            return model()
        try:
            return model.model_validate_json(body)
        except ValidationError as error:
            raise HTTPException(
                422,
                "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()),
            ) from None

    return parse


def _prefix(value: str, name: str) -> str:
    """A path prefix: empty, or starting with "/" and not ending with one."""
    if value and (not value.startswith("/") or value.endswith("/") or "//" in value):
        raise ValueError(
            f"{name}={value!r}: expected '' or a path like '/api/v1' (leading '/', no trailing '/')"
        )
    return value


def _checked_pending(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise ValueError(f"max_pending_moves={value!r}: expected an integer from 1 to 1000")
    return value


def _checked_wait(value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 < value <= 3600
        or not math.isfinite(value)
    ):
        raise ValueError(f"max_move_wait_seconds={value!r}: expected seconds in (0, 3600]")
    return float(value)


class Workers:
    """A thread pool of the router's own, started at its first task and stopped by the
    router's lifespan at the app's end (and started again should the app run again), so an
    app that has stopped leaves no thread of driftgate's behind. Thread-safe."""

    def __init__(self, max_workers: int, name: str) -> None:
        self._max_workers = max_workers
        self._name = name
        self._lock = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self._max_workers, thread_name_prefix=self._name
                )
            return self._executor

    def stop(self) -> None:
        """Waits for the tasks under way, then ends the threads."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


class MoveQueue:
    """The admin moves of one router (and its configuration reloads): run one at a time on a
    thread of their own, never in the thread pool that serves the application's other sync
    endpoints, with at most `max_pending` of them in flight plus queued.

    One thread, because moves serialise on the rollout manager anyway: a second would only
    wait for the manager's lock. A move past the limit, or one that waited longer than
    `max_wait_seconds` without starting, is refused at once with 503 MOVE_QUEUE_FULL and a
    Retry-After header; it never started, so nothing moved. A move that has started is waited
    for: its outcome is known only when it ends."""

    def __init__(self, max_pending: int, max_wait_seconds: float) -> None:
        self.max_pending = _checked_pending(max_pending)
        self.max_wait_seconds = _checked_wait(max_wait_seconds)
        self._free = threading.BoundedSemaphore(self.max_pending)
        self.workers = Workers(1, "driftgate-moves")

    @property
    def retry_after(self) -> int:
        """Whole seconds after which every move queued now has started or been refused."""
        return max(1, math.ceil(self.max_wait_seconds))

    def _full(self) -> HTTPException:
        return HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            ReasonCode.MOVE_QUEUE_FULL.value,
            headers={"Retry-After": str(self.retry_after)},
        )

    async def run(self, work: Callable[[], ResultT]) -> ResultT:
        """`work()`'s result (or exception) once its turn has come and it has run."""
        if not self._free.acquire(blocking=False):
            logger.warning(
                "rollout move refused (%s): %d moves pending",
                ReasonCode.MOVE_QUEUE_FULL.value,
                self.max_pending,
            )
            raise self._full()
        try:
            future = self.workers.executor().submit(work)
        except BaseException:
            self._free.release()
            raise
        # Released however the move ends, cancelled before it started included.
        future.add_done_callback(lambda _: self._free.release())
        waiting = asyncio.wrap_future(future)
        try:
            done, _ = await asyncio.wait({waiting}, timeout=self.max_wait_seconds)
            if not done and future.cancel():
                logger.warning(
                    "rollout move refused (%s): not started within %g s",
                    ReasonCode.MOVE_QUEUE_FULL.value,
                    self.max_wait_seconds,
                )
                raise self._full()
            return await waiting
        except asyncio.CancelledError:
            future.cancel()  # the request is gone: a move that has not started never will
            raise


def create_router(
    *,
    tracker: DriftTracker,
    manager: RolloutManager | None = None,
    gate: Gate | None = None,
    registry: MetricsRegistry | None = None,
    admin: AdminDependency | None = None,
    include_process_metrics: bool = True,
    readiness_checks: Sequence[ReadinessCheck] = (),
    probe_prefix: str = "/api/v1",
    rollout_prefix: str = "/api/guardian/rollout",
    rollouts: Mapping[str, RolloutManager] | None = None,
    rollouts_prefix: str = "/api/guardian/rollouts",
    reload: Callable[[str], Any] | None = None,
    readiness_budget: ReadinessBudget | None = None,
    max_pending_moves: int = MAX_PENDING_MOVES,
    max_move_wait_seconds: float = MAX_MOVE_WAIT_SECONDS,
    lifespan: Callable[[Any], contextlib.AbstractAsyncContextManager[Any]] | None = None,
) -> APIRouter:
    """The driftgate endpoints as a bare APIRouter.

    `admin` is a FastAPI dependency returning the actor's name, or an `Approvers`, which asks
    each endpoint's scope (rollout:advance, rollout:rollback, rollout:read while the status is
    protected) of the approvers in force at each request (a reload swaps them); without one, a
    bearer token from DRIFTGATE_ADMIN_TOKEN (read now, not at import) guards the admin
    endpoints, and with neither they refuse every request. `readiness_checks` are extra
    callables returning a reason code while the service must not be ready (e.g.
    ReasonCode.STATE_FILE), None otherwise.
    `probe_prefix` places healthz, readyz and metrics (`""` serves `/healthz`, `/readyz`,
    `/metrics`); `rollout_prefix` places status, state, advance and rollback of `manager`.
    `rollouts` (a mapping from name to manager, read at every request, so a service may add
    one while it runs) serves each under `{rollouts_prefix}/{name}/...`, lists them all at
    `GET {rollouts_prefix}` and answers 404 UNKNOWN_ROLLOUT for a name it does not hold;
    its `default` one (or `manager`) is the one under `rollout_prefix`. A scope limited to one
    rollout (`rollout:advance:orders`) holds there only. With `reload` (e.g.
    `ConfigReloader.reload`), `POST {probe_prefix}/admin/reload` reloads the configuration.
    With `readiness_budget` (`RedisStateStore.readiness_budget`), drift (DRIFT_GATE, from the
    gate or a readiness check) fails readiness only while this replica holds one of the fleet's
    unready slots; otherwise readyz answers 200 with the reason DRIFT_GATE_BUDGET.

    The probes never wait for the rollout manager, the store or the thread pool that serves
    sync endpoints: healthz and readyz answer on the event loop, so `readiness_checks` (and
    the gate's check) run there too and must return at once, never block or call out; metrics
    render on two threads of the router's own. The status reads the manager's published
    snapshot on the event loop. Advance, rollback and reload run one at a time on a thread of
    their own: at most `max_pending_moves` (default 16) in flight plus queued, and a move not
    started within `max_move_wait_seconds` (default 5, under the command line's 10 s timeout)
    is refused; either way 503 MOVE_QUEUE_FULL with Retry-After, nothing moved.

    The router has a lifespan, which FastAPI runs inside the app's own once the router is
    included: it runs `lifespan` (if given) and at the end stops the router's threads."""
    probes = _prefix(probe_prefix, "probe_prefix")
    moves = MoveQueue(max_pending_moves, max_move_wait_seconds)
    # Scrapes render off the event loop but never in the shared pool, which stalled sync
    # endpoints of the application may hold; two, for a pair of Prometheus servers.
    renderer = Workers(2, "driftgate-metrics")
    rollout_path = _prefix(rollout_prefix, "rollout_prefix")
    rollouts_path = _prefix(rollouts_prefix, "rollouts_prefix")
    registry = registry or tracker.registry
    require_admin = admin or bearer_token_admin(os.environ.get(TOKEN_ENV) or None)
    read_guard = status_guard(require_admin)  # rollout:read, while the status is protected
    read_declared = status_declared_protected(require_admin)  # in the OpenAPI: as at start
    # The status's own check, awaited by its handler while no scheme is declared on it
    read_check = status_check(require_admin)

    @contextlib.asynccontextmanager
    async def router_lifespan(app: Any) -> AsyncIterator[None]:
        try:
            if lifespan is None:
                yield
            else:
                async with lifespan(app):
                    yield
        finally:
            await asyncio.to_thread(moves.workers.stop)
            await asyncio.to_thread(renderer.stop)

    router = APIRouter(lifespan=router_lifespan)

    # async: a sync dependency would take a token of the shared thread pool.
    async def require_manager() -> RolloutManager:
        default = manager if rollouts is None else rollouts.get(DEFAULT_ROLLOUT, manager)
        if default is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, ReasonCode.NO_ROLLOUT.value)
        return default

    async def require_named(rollout: str) -> RolloutManager:
        named = None if rollouts is None else rollouts.get(rollout)
        if named is None and rollout == DEFAULT_ROLLOUT:
            named = manager
        if named is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, ReasonCode.UNKNOWN_ROLLOUT.value)
        return named

    # Each manager's status as last written: see WrittenStatus.
    written: weakref.WeakKeyDictionary[RolloutManager, WrittenStatus] = weakref.WeakKeyDictionary()

    def status_body(rollout: RolloutManager) -> tuple[bytes, str]:
        """The status as JSON, and its ETag: the pieces written last when nothing but the
        clock can have changed what it says, else written whole (and kept)."""
        now = rollout._status_now()
        if now is not None:
            key, at, started_at, reason = now
            last = written.get(rollout)
            if last is not None and last.key == key:
                return last.body(elapsed_time(at, started_at), reason), last.etag
        report, built_from = rollout._status_and_key()
        if built_from is not None:
            pieces = WrittenStatus.of(report, built_from)
            if pieces is not None:
                written[rollout] = pieces
        return _STATUS.dump_json(report), report["etag"]

    def status_answer(request: Request, rollout: RolloutManager) -> Response:
        body, tag = status_body(rollout)
        if _none_match(request.headers.get("if-none-match"), tag):
            return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": tag})
        return _json_response(body, ETag=tag)

    def status_route(path: str, find: Callable[..., Any], route: str) -> None:
        """The status of the rollout `find` answers, at `{path}/status`, named
        `driftgate:{route}_status`."""

        # The published snapshot: no manager lock and no store call, so on the event loop.
        # The manager is looked up here, not through a dependency, and the report is written
        # as JSON here, not by FastAPI's response-model pass: status pollers (dashboards, the
        # command line, each replica's neighbours) ask often. The response model documents it.
        if route == "rollout":

            async def rollout_status(request: Request) -> Response:
                if read_check is not None:  # before the lookup: no name told to a stranger
                    await read_check(request)
                return status_answer(request, await find())

        else:

            async def rollout_status(request: Request, rollout: str) -> Response:  # type: ignore[misc]
                if read_check is not None:
                    await read_check(request)
                return status_answer(request, await find(rollout))

        router.get(
            f"{path}/status",
            response_model=RolloutStatus,
            responses={
                **STATUS_ERRORS,
                **(_errors(401, 403, 503) if read_declared else {}),
                304: {"description": "Not modified: If-None-Match names the current ETag."},
            },
            name=f"driftgate:{route}_status",
            dependencies=read_guard if read_check is None else [],
        )(rollout_status)

    # FastAPI tries an included router's routes in the order they were added, twice for each
    # request (about a microsecond for each route passed over): the routes asked most often
    # come first, the rollout's status (pollers) and readiness (the orchestrator), then
    # liveness. The status's path ends in /status and no probe's does, so coming first it
    # takes no request of theirs.
    status_route(rollout_path, require_manager, "rollout")

    # On the event loop: the gate's check reads counters and the readiness budget a confirmed
    # grant, in microseconds, taking neither the manager's lock nor the store, so readiness
    # answers while moves wait on a stalled store and the shared thread pool is full.
    @router.get(
        f"{probes}/readyz",
        response_model=ReadyBody,
        response_model_exclude_none=True,
        responses={503: {"model": ReadyBody}},
        name="driftgate:readyz",
    )
    async def readyz() -> Response:
        # The ready answers are bodies written once (see _json_response); the schema is
        # documented by the response model.
        excused = False  # drift that the fleet's readiness budget answers as ready
        for check in readiness_checks:
            reason = check()
            if reason is not None:
                if readiness_budget is not None and readiness_budget.excuses(reason):
                    excused = True
                    continue
                return JSONResponse({"status": "not_ready", "reason": reason}, status_code=503)
        if gate is not None:
            ready, reason = gate.check()
            if not ready:
                if readiness_budget is not None and readiness_budget.excuses(reason):
                    return _json_response(_READY_WITHIN_BUDGET_BODY)
                body: dict[str, Any] = {"status": "not_ready", "reason": reason}
                reopens = gate.reopens_within()
                if reopens is not None:
                    body["reopens_within_seconds"] = math.ceil(reopens)
                return JSONResponse(body, status_code=503)
        return _json_response(_READY_WITHIN_BUDGET_BODY if excused else _READY_BODY)

    @router.get(f"{probes}/healthz", response_model=HealthBody, name="driftgate:healthz")
    async def healthz() -> Response:
        return _json_response(_HEALTHY_BODY)

    @router.get(
        f"{probes}/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}, "application/openmetrics-text": {}}}},
        name="driftgate:metrics",
    )
    async def metrics(request: Request) -> Response:
        headers = request.headers
        answer = await asyncio.get_running_loop().run_in_executor(
            renderer.executor(),
            scrape,
            registry,
            headers.get("accept"),
            headers.get("accept-encoding"),
            include_process_metrics,
        )
        return Response(answer.body, media_type=answer.content_type, headers=answer.headers)

    def every_rollout() -> dict[str, RolloutManager]:
        found = dict(rollouts or {})
        if manager is not None:
            found.setdefault(DEFAULT_ROLLOUT, manager)
        return dict(sorted(found.items()))

    @router.get(
        rollouts_path,
        response_model=RolloutList,
        responses={**(_errors(401, 403, 503) if read_declared else {})},
        name="driftgate:rollouts",
        dependencies=read_guard,
    )
    async def rollout_list() -> dict[str, Any]:
        """Every rollout of this service, one line each: from the published snapshots."""
        return {"rollouts": [summary(name, each) for name, each in every_rollout().items()]}

    def expected_state(
        request: Request, body: MoveRequest, rollout: RolloutManager
    ) -> tuple[int, str | None] | None:
        """The state a move is conditional on, as (version, incarnation or None), or None:
        the state whose ETag the If-Match header names, or the body's `expected_version`. A
        header naming no state's ETag can never hold: 412 at once."""
        header = request.headers.get("if-match")
        if header is None:
            return None if body.expected_version is None else (body.expected_version, None)
        condition = IfMatch(header)
        named = condition.conditions()
        if body.expected_version is not None:
            same = [c for c in named if c[0] == body.expected_version]
            if not same and not condition.any:
                raise HTTPException(status.HTTP_400_BAD_REQUEST, ReasonCode.BAD_PRECONDITION.value)
            return same[0] if same else (body.expected_version, None)
        if condition.any:
            return None
        if rollout.store is not None and (not named or len(named) > 1):
            # This replica may not have heard of the newest version yet: ask the store, so
            # that a list naming it matches and a 412 carries the stored ETag.
            rollout.refresh()
        version, incarnation = current_tag(rollout)
        if not named:
            raise HTTPException(
                status.HTTP_412_PRECONDITION_FAILED,
                ReasonCode.VERSION_MISMATCH.value,
                headers={"ETag": etag(version, incarnation)},
            )
        # The manager checks the state again as it commits: a move in between answers 412.
        for candidate in named:
            if candidate[0] == version and candidate[1] in (None, incarnation):
                return candidate
        return named[0]

    def operation_of(request: Request) -> str | None:
        """The Idempotency-Key header: the operation id the history keeps for the move."""
        key = request.headers.get("idempotency-key")
        if key is None:
            return None
        if not _OPERATION.fullmatch(key):
            raise HTTPException(status.HTTP_400_BAD_REQUEST, ReasonCode.BAD_IDEMPOTENCY_KEY.value)
        return key

    def moved(
        move: Callable[[tuple[int, str | None] | None], Decision],
        precondition: Callable[[], tuple[int, str | None] | None],
        rollout: RolloutManager,
    ) -> dict[str, Any]:
        try:
            expected = precondition()
            decision = move(expected)
        except StateOutcomeUnknown as error:
            logger.warning(
                "rollout move outcome unknown (%s): %s", ReasonCode.STATE_UNKNOWN.value, error
            )
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                ReasonCode.STATE_UNKNOWN.value,
                headers={"Retry-After": UNKNOWN_RETRY_AFTER},
            ) from None
        except StateRegressed as error:
            logger.warning("rollout move refused (%s): %s", ReasonCode.STATE_REGRESSED.value, error)
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE, ReasonCode.STATE_REGRESSED.value
            ) from None
        except ValueError as error:  # an Idempotency-Key reused for another kind of move
            raise HTTPException(422, str(error)) from None
        except StateError as error:
            # A shared store that is away, or holds what is not this rollout, is the store's
            # problem; a state file that cannot be written is the file's.
            shared = isinstance(error, StateStoreError) or rollout.store is not None
            code = ReasonCode.STATE_STORE if shared else ReasonCode.STATE_FILE
            # The answer is a fixed code; the log says which value or step was at fault (a
            # store's description never carries its password).
            logger.warning("rollout move refused (%s): %s", code.value, error)
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, code.value) from None
        if decision.action == DecisionAction.CONFLICT:
            if expected is not None:
                raise HTTPException(
                    status.HTTP_412_PRECONDITION_FAILED,
                    ReasonCode.VERSION_MISMATCH.value,
                    headers={"ETag": etag(*current_tag(rollout))},
                )
            raise HTTPException(status.HTTP_409_CONFLICT, ReasonCode.STATE_CONFLICT.value)
        if not decision.success:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, decision.message)
        # Built from this call's own decision: a concurrent request's move never leaks in.
        return {
            "success": True,
            "message": decision.message,
            "new_stage": decision.to_stage,
            "new_percentage": decision.to_percentage,
            "action": decision.action.name.lower(),
            "previous_stage": decision.from_stage,
            "version": decision.version,
            "operation": decision.operation,
            "replayed": decision.replayed,
        }

    move_body = json_body(MoveRequest, optional=True)

    async def admin_move(
        move: Callable[..., Decision],
        request: Request,
        actor: str,
        rollout: RolloutManager,
        body: MoveRequest,
    ) -> dict[str, Any]:
        """A person's advance or rollback (`move`), through the move queue, on the state the
        request's precondition names, as the operation its Idempotency-Key names."""
        operation = operation_of(request)
        return await moves.run(
            lambda: moved(
                lambda expected: move(
                    actor,
                    body.reason,
                    expected_version=None if expected is None else expected[0],
                    expected_incarnation=None if expected is None else expected[1],
                    operation=operation,
                ),
                lambda: expected_state(request, body, rollout),
                rollout,
            )
        )

    def rollout_routes(path: str, find: Callable[..., Any], route: str) -> None:
        """State, advance and rollback of the rollout `find` answers, under `path`; `route`
        names them (`driftgate:{route}_state`, ...)."""

        @router.get(
            f"{path}/state",
            response_class=Response,
            responses={
                **STATUS_ERRORS,
                **_errors(503),
                **(_errors(401, 403) if read_declared else {}),
                200: {"content": {"application/json": {}}},
            },
            name=f"driftgate:{route}_state",
            dependencies=read_guard,
        )
        async def rollout_state(
            rollout: Annotated[RolloutManager, Depends(find)],
        ) -> Response:
            """The whole rollout document this replica holds (what `driftgate state export`
            saves): position, history, version, incarnation. As public as the status."""
            document = rollout._document()  # the published snapshot: no lock, no store call
            if document is None:
                raise HTTPException(
                    status.HTTP_503_SERVICE_UNAVAILABLE, ReasonCode.STATE_STORE.value
                )
            held = json.loads(document)
            tag = entity_tag(held.get("incarnation", ""), held["version"])
            return Response(document, media_type="application/json", headers={"ETag": tag})

        @router.post(
            f"{path}/advance",
            response_model=MoveBody,
            responses=ADMIN_ERRORS,
            name=f"driftgate:{route}_advance",
            openapi_extra=json_body_schema(MoveRequest, required=False),
        )
        async def rollout_advance(
            request: Request,
            approver: Annotated[Identity, Depends(identified(require_admin, Scope.ADVANCE))],
            rollout: Annotated[RolloutManager, Depends(find)],
            body: Annotated[MoveRequest, Depends(move_body)],
        ) -> dict[str, Any]:
            # The approvals of a stage needing several count people, not the names they use.
            advance = functools.partial(rollout.manual_advance, person=approver.person)
            return await admin_move(advance, request, approver.name, rollout, body)

        @router.post(
            f"{path}/rollback",
            response_model=MoveBody,
            responses=ADMIN_ERRORS,
            name=f"driftgate:{route}_rollback",
            openapi_extra=json_body_schema(MoveRequest, required=False),
        )
        async def rollout_rollback(
            request: Request,
            actor: Annotated[str, Depends(scoped(require_admin, Scope.ROLLBACK))],
            rollout: Annotated[RolloutManager, Depends(find)],
            body: Annotated[MoveRequest, Depends(move_body)],
        ) -> dict[str, Any]:
            return await admin_move(rollout.manual_rollback, request, actor, rollout, body)

    rollout_routes(rollout_path, require_manager, "rollout")
    status_route(f"{rollouts_path}/{{rollout}}", require_named, "rollouts")
    rollout_routes(f"{rollouts_path}/{{rollout}}", require_named, "rollouts")

    if reload is not None:
        from driftgate.fastapi.admin import create_admin_router

        router.include_router(
            create_admin_router(
                reload=reload,
                admin=scoped(require_admin, Scope.RELOAD),
                prefix=probes,
                run=moves.run,
            )
        )
    return router
