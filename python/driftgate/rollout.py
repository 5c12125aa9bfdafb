"""The staged rollout: the C++ state machine plus what needs Python: reading error-rate
sources off the event loop, the monitor loop, and the status report."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, Union

from driftgate._core import (
    Clock,
    Enforcer,
    MetricsRegistry,
    RolloutConfig,
    RolloutStage,
    StateError,
    _RolloutManager,
)

__all__ = [
    "ErrorRateSource",
    "LocalErrorRate",
    "PrometheusErrorRate",
    "RolloutConfig",
    "RolloutManager",
    "RolloutStage",
    "StateError",
    "rollout_lifespan",
    "run_rollout_monitor",
]

logger = logging.getLogger("driftgate.rollout")

ErrorRate = Union[float, "tuple[int, int]"]
ErrorRateSource = Callable[[], ErrorRate | Awaitable[ErrorRate]]


class LocalErrorRate:
    """The enforced cohort's evaluation-error rate, from this process's own windows:
    (failed enforced evaluations, enforced decisions) in `window`."""

    def __init__(self, enforcer: Enforcer, window: str = "60m", policy_id: str | None = None):
        enforcer.error_counts(window, policy_id)  # a bad window or policy id fails here, not later
        self._enforcer = enforcer
        self._window = window
        self._policy_id = policy_id

    def __call__(self) -> tuple[int, int]:
        return self._enforcer.error_counts(self._window, self._policy_id)

    def __repr__(self) -> str:
        return f"LocalErrorRate(window={self._window!r})"


class PrometheusErrorRate:
    """An error rate read from Prometheus's HTTP query API (`GET /api/v1/query`).

    `query` must evaluate to a single number in [0, 1], as a scalar or a one-element vector,
    for example ``sum(rate(guardian_enforcement_failed_total[1h])) /
    clamp_min(sum(rate(guardian_enforcement_total[1h])), 1e-9)``. Anything else raises, and
    the manager holds."""

    def __init__(self, base_url: str, query: str, timeout: float = 5.0):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url={base_url!r}: expected an http:// or https:// URL")
        if not query.strip():
            raise ValueError("query must not be empty")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout={timeout!r}: expected seconds > 0")
        self.base_url = base_url.rstrip("/")
        self.query = query
        self.timeout = timeout

    def __call__(self) -> float:
        import httpx  # only this source needs it

        response = httpx.get(
            f"{self.base_url}/api/v1/query", params={"query": self.query}, timeout=self.timeout
        )
        response.raise_for_status()
        body = response.json()
        if body.get("status") != "success":
            raise ValueError(f"Prometheus answered status={body.get('status')!r}")
        data = body["data"]
        if data["resultType"] == "scalar":
            value = data["result"][1]
        elif data["resultType"] == "vector" and len(data["result"]) == 1:
            value = data["result"][0]["value"][1]
        else:
            raise ValueError(
                f"query gave {data['resultType']} with {len(data['result'])} series; "
                "expected one number"
            )
        rate = float(value)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"query gave {rate!r}; expected an error rate in [0, 1]")
        return rate

    def __repr__(self) -> str:
        return f"PrometheusErrorRate({self.base_url!r}, {self.query!r})"


class RolloutManager(_RolloutManager):
    """Walks a staged rollout (see SPEC §7): advances after each stage's minimum time while the
    error rate is low, rolls back by itself when it is high, waits for a human where a stage
    asks for approval, and persists every step to `state_path` before returning.

    The manager keeps its own copy of `config`; read where it stands with `get_status()` or
    `config`. Thread-safe."""

    def __init__(
        self,
        config: RolloutConfig,
        enforcer: Enforcer | None = None,
        registry: MetricsRegistry | None = None,
        state_path: str | os.PathLike[str] | None = None,
        clock: Clock | None = None,
        error_rate_source: ErrorRateSource | None = None,
        min_requests: int = 0,
        confidence: float | None = None,
        source_timeout: float = 10.0,
    ):
        if error_rate_source is not None and not callable(error_rate_source):
            raise TypeError(f"error_rate_source must be callable, got {error_rate_source!r}")
        if not (source_timeout > 0 and math.isfinite(source_timeout)):
            raise ValueError(f"source_timeout={source_timeout!r}: expected seconds > 0")
        super().__init__(
            config,
            enforcer=enforcer,
            registry=registry,
            state_path=None if state_path is None else os.fspath(state_path),
            clock=clock,
            min_requests=min_requests,
            confidence=confidence,
        )
        if error_rate_source is None and enforcer is not None:
            error_rate_source = LocalErrorRate(enforcer)
        self.error_rate_source = error_rate_source
        self.source_timeout = source_timeout

    @property
    def config(self) -> RolloutConfig:
        """A copy of where the rollout stands."""
        snapshot = self._snapshot()
        return RolloutConfig(
            snapshot["stages"],
            snapshot["stage_index"],
            snapshot["started_at"],
        )

    @property
    def state_path(self) -> str | None:
        return self._snapshot()["state_path"]

    def get_status(self, transitions: int = 10) -> dict[str, Any]:
        """Where the rollout stands, with the seed's keys plus `state`, the enforced
        percentage and the last `transitions` transitions (newest last)."""
        snapshot = self._snapshot()
        stage = snapshot["stages"][snapshot["stage_index"]]
        return {
            "current_stage": {
                "name": stage.name,
                "percentage": stage.percentage,
                "max_error_rate": stage.max_error_rate,
                "requires_approval": stage.requires_approval,
            },
            "stage_index": snapshot["stage_index"],
            "total_stages": len(snapshot["stages"]),
            "elapsed_time": str(timedelta(seconds=max(0.0, snapshot["elapsed_seconds"]))),
            "min_duration": str(stage.duration),
            "started_at": snapshot["started_at"].isoformat(),
            "state": snapshot["state"],
            "enforced_percentage": snapshot["enforced_percentage"],
            "last_error_rate": snapshot["last_error_rate"],
            "version": snapshot["version"],
            "transitions": [
                {**t, "time": t["time"].isoformat()} for t in snapshot["transitions"][-transitions:]
            ]
            if transitions > 0
            else [],
        }

    async def check_and_advance(self) -> tuple[bool, str]:
        """Reads the error-rate source (a blocking one in a worker thread, with
        `source_timeout`), then decides as `evaluate` does. A source that fails, times out or
        answers nonsense means hold: nothing advances or rolls back, and
        guardian_rollout_analysis_errors_total counts it."""
        source = self.error_rate_source
        if source is None:
            return False, "Holding: no error-rate source"
        try:
            reading = await asyncio.wait_for(_read(source), timeout=self.source_timeout)
            decide = _decision_for(self, reading)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # any failure of the source means hold
            self.record_analysis_error()
            logger.warning("rollout error-rate source failed (%s); holding", type(error).__name__)
            return False, f"Holding: error-rate source failed ({type(error).__name__})"
        # The decision may write and fsync the state file: off the event loop too.
        return await asyncio.to_thread(decide)


async def _read(source: ErrorRateSource) -> Any:
    # An async function, or an object whose __call__ is one.
    if inspect.iscoroutinefunction(source) or inspect.iscoroutinefunction(type(source).__call__):
        return await source()
    result = await asyncio.to_thread(source)
    if inspect.isawaitable(result):
        return await result
    return result


def _decision_for(manager: RolloutManager, reading: Any) -> Callable[[], tuple[bool, str]]:
    """The evaluate call for a source's reading, or ValueError for a reading that is neither a
    rate in [0, 1] nor a (failed, total) pair of counts."""
    if isinstance(reading, tuple) and len(reading) == 2:
        failed, total = reading
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in reading):
            raise ValueError(f"(failed, total) must be integers, got {reading!r}")
        if not 0 <= failed <= total:
            raise ValueError(f"(failed, total) must have 0 <= failed <= total, got {reading!r}")
        return lambda: manager.evaluate_counts(failed, total)
    if isinstance(reading, (int, float)) and not isinstance(reading, bool):
        rate = float(reading)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"error rate {rate!r} is outside [0, 1]")
        return lambda: manager.evaluate(rate)
    raise ValueError(f"error-rate source returned {type(reading).__name__}")


async def run_rollout_monitor(
    manager: RolloutManager,
    check_interval: timedelta = timedelta(minutes=15),
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Checks the rollout every `check_interval` until cancelled. Logs each decision, and
    logs and survives any exception; cancellation ends it cleanly."""
    interval = check_interval.total_seconds()
    if not interval > 0:
        raise ValueError(f"check_interval={check_interval!r}: expected a positive duration")
    logger.info("rollout monitor started (every %s)", check_interval)
    while True:
        try:
            advanced, message = await manager.check_and_advance()
            status = manager.get_status(transitions=0)
            logger.info(
                "rollout %s at stage %s (%s%%): %s",
                "advanced" if advanced else "checked",
                status["current_stage"]["name"],
                status["enforced_percentage"],
                message,
            )
        except asyncio.CancelledError:
            logger.info("rollout monitor stopped")
            raise
        except Exception:
            logger.exception("rollout monitor check failed; trying again next interval")
        await sleep(interval)


@contextlib.asynccontextmanager
async def _monitor_running(
    manager: RolloutManager, check_interval: timedelta
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(run_rollout_monitor(manager, check_interval))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def rollout_lifespan(
    manager: RolloutManager, check_interval: timedelta = timedelta(minutes=15)
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[asyncio.Task[None]]]:
    """A FastAPI/Starlette `lifespan=` that runs the monitor while the app runs and cancels it
    on shutdown: ``FastAPI(lifespan=rollout_lifespan(manager))``."""
    return lambda app: _monitor_running(manager, check_interval)
