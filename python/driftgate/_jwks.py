"""The signing keys one OIDC issuer publishes at its JWKS URL, fetched the way a well-behaved
client does: one fetch at a time, on a thread of its own, never with a lock held across the
network; a failure remembered for `failure_cache_seconds`; the last good set served while a
refresh runs or fails, up to `max_stale_seconds` past its expiry; a `kid` the set lacks
refetched at most once per `refresh_interval`.

Every bound here holds per process: each process keeps its own key set, as it keeps its own
token file. Sharing one through the fleet's store would make every token's check wait on that
store too, for a document the issuer serves to any client that asks, cheaply and cached; a
fleet of N processes therefore asks the issuer at most N times per interval.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jwt

from driftgate._http import BodyTooLarge, Unreached, exchange
from driftgate._messages import one_line

if TYPE_CHECKING:
    from driftgate._core import MetricsRegistry

__all__ = [
    "FETCH_OUTCOMES",
    "KEY_SET_AGE",
    "KEY_SET_FETCHES",
    "MAX_KEY_SET_BYTES",
    "MAX_WAITING",
    "IssuerKeys",
    "KeySetUnavailable",
]

logger = logging.getLogger("driftgate.identity")

MAX_KEY_SET_BYTES = 1 << 20
"""A JWKS longer than this is refused unread past it: an issuer's set is a few kilobytes."""

MAX_WAITING = 8
"""At most this many requests wait for a fetch at once (each for `max_wait_seconds` at most);
the others are answered at once, so that a burst of tokens during a cold start or for unknown
`kid`s holds no more than these threads of the service's pool."""

KEY_SET_FETCHES = (
    "driftgate_oidc_key_set_fetches_total",
    "Fetches of the OIDC issuer's key set by outcome (success, timeout, unreachable, "
    "http_error, too_large, not_json, invalid, error).",
)
KEY_SET_AGE = (
    "driftgate_oidc_key_set_age_seconds",
    "Seconds since the OIDC key set in use was fetched, as of its last fetch or use.",
)
FETCH_OUTCOMES = (
    "success",
    "timeout",  # no whole answer within the deadline
    "unreachable",  # no connection: the name, the address, the proxy or TLS
    "http_error",  # an answer other than 200
    "too_large",  # a body over MAX_KEY_SET_BYTES
    "not_json",
    "invalid",  # JSON, but no usable signing key in it
    "error",  # the connection broke during the answer
)


class KeySetUnavailable(Exception):
    """No key to check a token with: no key set yet, one past its stale bound, or a `kid` the
    set lacks while the issuer could not be asked again. The message names the outcome of the
    last fetch, never a key or a token."""


class _Refused(Exception):
    def __init__(self, outcome: str, detail: str):
        super().__init__(detail)
        self.outcome = outcome


class IssuerKeys:
    """The signing keys at `url`, by `kid`. `key(kid)` never performs a fetch itself: it
    starts one on a thread of its own when the set is missing, expired or lacks `kid` (at most
    one in flight), and waits for it only when it has no key to answer with, for
    `max_wait_seconds` at most. Thread-safe: the lock guards only the in-memory state."""

    def __init__(
        self,
        url: str,
        *,
        cache_seconds: float,
        refresh_interval: float,
        failure_cache_seconds: float,
        max_stale_seconds: float,
        timeout: float,
        max_wait_seconds: float,
        monotonic: Callable[[], float],
        registry: MetricsRegistry | None = None,
    ):
        for name, value, least in (
            ("cache_seconds", cache_seconds, 0.0),
            ("failure_cache_seconds", failure_cache_seconds, 0.0),
            ("timeout", timeout, 0.0),
        ):
            if not value > least:
                raise ValueError(f"{name}={value!r}: expected seconds > 0")
        for name, value in (
            ("refresh_interval", refresh_interval),
            ("max_stale_seconds", max_stale_seconds),
            ("max_wait_seconds", max_wait_seconds),
        ):
            if not value >= 0:
                raise ValueError(f"{name}={value!r}: expected seconds >= 0")
        self.url = url
        self.cache_seconds = cache_seconds
        self.refresh_interval = refresh_interval
        self.failure_cache_seconds = failure_cache_seconds
        self.max_stale_seconds = max_stale_seconds
        self.timeout = timeout
        self.max_wait_seconds = max_wait_seconds
        self._monotonic = monotonic
        self._registry = registry
        self._lock = threading.Lock()
        self._keys: Mapping[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # when the set in `_keys` arrived
        self._attempted_at: float | None = None  # when the last fetch started
        self._failed_at: float | None = None  # when the last fetch failed; None after a success
        self._failure = ""
        self._fetching: threading.Event | None = None  # set when the fetch in flight ends
        self._waiting = 0
        if registry is not None:
            for outcome in FETCH_OUTCOMES:
                registry.increment_counter(*KEY_SET_FETCHES, {"outcome": outcome}, 0.0)

    # -- answering ---------------------------------------------------------------------------

    def key(self, kid: str) -> jwt.PyJWK | None:
        """The published key named `kid`, or None when the issuer's latest set has none;
        KeySetUnavailable when there is no set to use, or `kid` could not be looked up."""
        now = self._monotonic()
        with self._lock:
            found, usable = self._lookup(kid, now)
            age = None if self._fetched_at is None else now - self._fetched_at
            fetching: threading.Event | None = None
            if found is not None:
                if age is not None and age >= self.cache_seconds:
                    self._refresh(now)  # stale while revalidating: this token does not wait
            else:
                expired = not usable or (age is not None and age >= self.cache_seconds)
                # a fetch in flight is joined; a new one only when due
                due = expired or self._refetch_due(now)
                fetching = self._refresh(now) if due else self._fetching
                if fetching is not None and self._waiting < MAX_WAITING:
                    self._waiting += 1
                else:
                    fetching = None
        self._note_age(age)
        if found is not None:
            return found
        if fetching is not None:
            try:
                fetching.wait(self.max_wait_seconds)
            finally:
                with self._lock:
                    self._waiting -= 1
            now = self._monotonic()
        with self._lock:
            found, usable = self._lookup(kid, now)
            if found is not None:
                return found
            if not usable:
                if self._fetched_at is not None:
                    raise KeySetUnavailable(
                        f"the key set is past its stale bound and {self._state()}"
                    )
                raise KeySetUnavailable(f"no key set yet: {self._state()}")
            if self._fetching is not None or self._failed_at is not None:
                # the issuer may have published it since: it could not be asked
                raise KeySetUnavailable(f"the kid is not in the key set, and {self._state()}")
        return None

    def _lookup(self, kid: str, now: float) -> tuple[jwt.PyJWK | None, bool]:
        usable = (
            self._fetched_at is not None
            and now - self._fetched_at < self.cache_seconds + self.max_stale_seconds
        )
        return (self._keys.get(kid) if usable else None), usable

    def _refetch_due(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self.refresh_interval

    def _state(self) -> str:
        if self._fetching is not None:
            return "a fetch is still running"
        if self._failed_at is not None:
            return f"the last fetch failed ({self._failure})"
        return "no fetch is due"

    def _note_age(self, age: float | None) -> None:
        if self._registry is not None and age is not None:
            self._registry.set_gauge(*KEY_SET_AGE, max(age, 0.0))

    # -- fetching ----------------------------------------------------------------------------

    def settle(self, timeout: float) -> bool:
        """Waits up to `timeout` seconds for the fetch in flight, if any, to end; True when
        none is in flight then."""
        with self._lock:
            fetching = self._fetching
        return fetching is None or fetching.wait(timeout)

    def _refresh(self, now: float) -> threading.Event | None:
        """The fetch in flight, started now if none is and no failure is remembered. Called
        with the lock held; the fetch runs on its own thread."""
        if self._fetching is not None:
            return self._fetching
        if self._failed_at is not None and now - self._failed_at < self.failure_cache_seconds:
            return None
        fetching = self._fetching = threading.Event()
        self._attempted_at = now
        thread = threading.Thread(
            target=self._fetch_in_background,
            args=(fetching,),
            name="driftgate-oidc-keys",
            daemon=True,  # bounded by `timeout`, and never worth holding an exit for
        )
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: a fetch that failed
            self._fetching = None
            self._failed_at, self._failure = now, "error"
            return None
        return fetching

    def _fetch_in_background(self, fetching: threading.Event) -> None:
        outcome, keys = "error", None
        try:
            try:
                keys = self._fetch()
                outcome = "success"
            except _Refused as refused:
                outcome = refused.outcome
                logger.warning(
                    "the OIDC key set could not be fetched (%s): %s; %s",
                    outcome,
                    refused,
                    "the last good set is used within its stale bound"
                    if self._fetched_at is not None
                    else "JWTs are refused with IDENTITY_PROVIDER until a fetch succeeds",
                )
            except Exception:  # whatever goes wrong, the next fetch must be possible
                logger.exception("the OIDC key set fetch failed unexpectedly")
        finally:
            now = self._monotonic()
            with self._lock:
                if keys is not None:
                    self._keys, self._fetched_at, self._failed_at = keys, now, None
                else:
                    self._failed_at, self._failure = now, outcome
                self._fetching = None
            if self._registry is not None:
                self._registry.increment_counter(*KEY_SET_FETCHES, {"outcome": outcome})
                if keys is not None:
                    self._note_age(0.0)
            fetching.set()

    def _fetch(self) -> dict[str, jwt.PyJWK]:
        """The signing keys at `url`, by kid, within one deadline of `timeout` seconds."""
        try:
            answer = exchange(
                "GET",
                self.url,
                timeout=self.timeout,
                headers={"Accept": "application/jwk-set+json, application/json"},
                body_limit=MAX_KEY_SET_BYTES,
            )
        except Unreached as error:
            if error.timed_out:
                raise _Refused("timeout", f"no connection within {self.timeout:g} s") from None
            raise _Refused("unreachable", f"no connection ({error.kind})") from None
        except TimeoutError:
            raise _Refused("timeout", f"no whole answer within {self.timeout:g} s") from None
        except BodyTooLarge:
            raise _Refused("too_large", f"an answer over {MAX_KEY_SET_BYTES} bytes") from None
        except (OSError, http.client.HTTPException) as error:
            raise _Refused("error", f"the answer broke off ({type(error).__name__})") from None
        if answer.status != 200:
            raise _Refused("http_error", f"HTTP {answer.status}")
        try:
            document: Any = json.loads(answer.body)
        except ValueError:  # UnicodeDecodeError is one
            raise _Refused("not_json", "the answer is not JSON") from None
        if not isinstance(document, dict):
            raise _Refused("invalid", "the answer is not a JSON object")
        try:
            published = jwt.PyJWKSet.from_dict(document)
        except jwt.PyJWTError as error:
            raise _Refused("invalid", one_line(str(error))) from None
        # Keys for signatures (as PyJWKClient picks them): those without a kid cannot be named.
        keys = {
            key.key_id: key
            for key in published.keys
            if key.key_id and key.public_key_use in ("sig", None)
        }
        if not keys:
            raise _Refused("invalid", "no signing key with a kid")
        return keys
