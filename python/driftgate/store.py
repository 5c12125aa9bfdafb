"""Rollout state shared by the replicas of a service, in Redis.

One hash holds the rollout document (the same JSON as a state file) and its version; every
transition is a compare-and-set on that version in one Lua script, so it commits only if
nobody committed since it was decided. A commit publishes the new version as a hint; every
replica also polls the version every `sync_interval_seconds` and reloads fully after each
reconnect, so lost hints cost at most one interval. One replica at a time evaluates the
automatic rules: it holds a lease (a token with a TTL, renewed while it lives) whose fencing
number every automatic commit must still match, so a replica paused past its lease cannot
commit a stale decision.

The follower also keeps this replica's readiness budget current (`readiness_budget`): each
replica registers with a heartbeat, and at most `max_unready` of them hold an unready slot.

Keys, for a store `key` (default ``driftgate:rollout``): `key` (hash: version, doc, fence),
`key:lease`, `key:fence`, `key:last_check`, `key:replicas` and `key:unready` (sorted sets of
holders by expiry, in ms of Redis's clock), and the channel `key:changed`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import secrets
import socket
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from driftgate._core import (
    Clock,
    MetricsRegistry,
    SharedStateStore,
    StateError,
    StateStoreError,
    StoreClock,
    SystemClock,
)
from driftgate._messages import one_line
from driftgate.readiness_budget import ReadinessBudget, SlotGrant

if TYPE_CHECKING:
    from driftgate.rollout import RolloutManager

__all__ = ["RedisStateStore", "StateStoreError", "StoreClock", "redact_url"]

logger = logging.getLogger("driftgate.store")

CLOCK_SKEW = "driftgate_clock_skew_seconds"
CLOCK_SKEW_HELP = (
    "This replica's wall clock minus the shared store's (Redis TIME), in seconds, at the last "
    "reading; the rollout's times follow the store's clock."
)

# The fastest a clock disciplined by NTP runs off true time (its largest slew), per second.
_MAX_DRIFT = 500e-6

_KEY = re.compile(r"[A-Za-z0-9_.:{}/-]{1,200}")

# Reads the document and its version, refusing a key that holds anything else.
_LOAD = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'none' then return {'none'} end
if kind ~= 'hash' then return {'foreign', kind} end
local fields = redis.call('HMGET', KEYS[1], 'version', 'doc')
if not fields[1] or not fields[2] then return {'foreign', 'hash'} end
return {'ok', fields[1], fields[2]}
"""

# ARGV: expected version, new version, document, automatic (1/0), lease value, fence.
_COMMIT = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and kind ~= 'hash' then return {'foreign', kind} end
local stored = redis.call('HGET', KEYS[1], 'version')
if kind == 'hash' and not stored then return {'foreign', 'hash'} end
if ARGV[4] == '1' then
  if redis.call('TYPE', KEYS[2])['ok'] ~= 'string' or redis.call('GET', KEYS[2]) ~= ARGV[5] then
    return {'fenced'}
  end
  local last_fence = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
  if tonumber(ARGV[6]) < last_fence then return {'fenced'} end
end
if tonumber(stored or '0') ~= tonumber(ARGV[1]) then
  return {'conflict', redis.call('HGET', KEYS[1], 'doc')}
end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'doc', ARGV[3])
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'fence', ARGV[6]) end
redis.call('PUBLISH', KEYS[3], ARGV[2])
return {'committed'}
"""

# Whether the lease and fence keys hold what the lease script writes: the lease a string
# "<fence>:<holder>" with an expiry, the fence a string of at most 15 digits (a number Lua's
# doubles hold exactly). Anything else was put there by something else: it is reported and
# never overwritten, and nobody evaluates until it is gone. KEYS: lease, fence.
_FOREIGN_LEASE = """
local function foreign_lease()
  local kind = redis.call('TYPE', KEYS[1])['ok']
  if kind ~= 'none' and kind ~= 'string' then return {'foreign', KEYS[1], 'a Redis ' .. kind} end
  if kind == 'string' then
    local number = string.match(redis.call('GET', KEYS[1]), '^(%d+):.')
    if not number or #number > 15 then
      return {'foreign', KEYS[1], 'a string that is not an evaluation lease'}
    end
    if redis.call('PTTL', KEYS[1]) < 0 then
      return {'foreign', KEYS[1], 'a lease that never expires'}
    end
  end
  kind = redis.call('TYPE', KEYS[2])['ok']
  if kind ~= 'none' and kind ~= 'string' then return {'foreign', KEYS[2], 'a Redis ' .. kind} end
  if kind == 'string' then
    local fence = redis.call('GET', KEYS[2])
    if not string.match(fence, '^%d+$') or #fence > 15 then
      return {'foreign', KEYS[2], 'a string that is not a fencing number'}
    end
  end
  return nil
end
local foreign = foreign_lease()
if foreign then return foreign end
"""

# Renews this holder's lease, or takes a free one with the next fencing number.
# ARGV: holder, ttl in ms. Returns {'held', the lease value held now (whoever holds it)}, or
# {'foreign', key, what it holds}.
_LEASE = (
    _FOREIGN_LEASE
    + """
local held = redis.call('GET', KEYS[1])
if held then
  local holder = string.sub(held, string.find(held, ':', 1, true) + 1)
  if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
  return {'held', held}
end
local fence = redis.call('INCR', KEYS[2])
held = fence .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], held, 'PX', ARGV[2])
return {'held', held}
"""
)

# Who holds the lease: {'held', value or nil}, or {'foreign', key, what it holds}.
_OBSERVE = (
    _FOREIGN_LEASE
    + """
return {'held', redis.call('GET', KEYS[1])}
"""
)

_RELEASE = """
if redis.call('TYPE', KEYS[1])['ok'] == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# The fleet's check interval: the lease holder may evaluate when the last check (by anyone)
# is at least ARGV[2] ms old, by the server's clock. Returns {'due'} (and records the check),
# {'wait', ms to wait}, {'not_holder'} when the caller does not hold the lease, or
# {'foreign', key, what it holds} when the last check is not a time in ms (never overwritten).
_CLAIM_CHECK = """
if redis.call('TYPE', KEYS[1])['ok'] ~= 'string' or redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {'not_holder'}
end
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'none' and kind ~= 'string' then return {'foreign', KEYS[2], 'a Redis ' .. kind} end
local last = redis.call('GET', KEYS[2]) or '0'
if not string.match(last, '^%d+$') or #last > 15 then
  return {'foreign', KEYS[2], 'a string that is not a time in milliseconds'}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = tonumber(last) + tonumber(ARGV[2]) - now
if wait > 0 then return {'wait', wait} end
redis.call('SET', KEYS[2], now)
return {'due'}
"""

# One heartbeat of a replica: registers it for another TTL and takes, renews or gives back its
# unready slot, by the server's clock. Slots go to replicas whose gate is closed while fewer
# than the budget hold one, and never to the last registered replica without one; a holder
# renewing while more than the budget hold (the budget was lowered) gives its slot up.
# ARGV: holder, ttl in ms, unready (1/0), budget. Returns {granted, registered, holders}.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
local granted = 0
if ARGV[3] == '1' then
  local limit = math.min(tonumber(ARGV[4]), redis.call('ZCARD', KEYS[1]) - 1)
  local held = redis.call('ZSCORE', KEYS[2], ARGV[1])
  local count = redis.call('ZCARD', KEYS[2])
  if held and count > limit then
    redis.call('ZREM', KEYS[2], ARGV[1])
  elseif held or count < limit then
    redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
    granted = 1
  end
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ttl) end
return {granted, redis.call('ZCARD', KEYS[1]), redis.call('ZRANGE', KEYS[2], 0, -1)}
"""

_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 0
"""


def redact_url(url: str) -> str:
    """`url` without its password (and user name), for logs and messages."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host  # an IPv6 address keeps its brackets
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparsable URL>"
    return urllib.parse.urlunsplit((parts.scheme, f"{host}{port}", parts.path, "", ""))


def _checked_url(url: str) -> str:
    if not isinstance(url, str) or not url:
        raise ValueError("store URL must be a non-empty redis:// or rediss:// URL")
    shown = redact_url(url)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        # Not the parser's words: they quote the text after the last colon of the netloc,
        # which is the password when it holds an unescaped '/', '?' or '#'.
        raise ValueError(
            f"store URL {shown!r} is malformed: expected redis://[:password@]host[:port][/db] "
            "with a port from 1 to 65535 and the password percent-encoded"
        ) from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"store URL {shown!r}: expected a redis:// or rediss:// URL")
    if not parts.hostname:
        raise ValueError(f"store URL {shown!r} names no host")
    if port == 0:
        raise ValueError(f"store URL {shown!r}: port 0 is not a port")
    database = parts.path.lstrip("/")
    if database and not (database.isdigit() and int(database) < 1 << 31):
        raise ValueError(f"store URL {shown!r}: the path must be a database number like /0")
    if parts.query or parts.fragment:
        raise ValueError(f"store URL {shown!r}: query parameters are not supported")
    return url


def _seconds(value: float, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r}: expected seconds from {low:g} to {high:g}")
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name}={value!r}: expected seconds from {low:g} to {high:g}")
    return float(value)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _replica_name(holder: str) -> str:
    """A holder is "replica/random" (unique per store object): the name is what people see."""
    return holder.rsplit("/", 1)[0]


class RedisStateStore(SharedStateStore):
    """The rollout state of a fleet, in Redis (redis-py). Give it to a `RolloutManager`
    (`store=`); the manager then follows the shared state in a background thread.

    `url` is a redis:// or rediss:// URL and may carry a password: read it from the
    environment, never from a file, and it is never logged (`describe()` drops it).
    Durability: an acknowledged transition survives a Redis crash only with `appendonly yes`
    and `appendfsync always`."""

    def __init__(
        self,
        url: str,
        key: str = "driftgate:rollout",
        *,
        sync_interval_seconds: float = 5.0,
        lease_ttl_seconds: float = 15.0,
        socket_timeout: float = 2.0,
        replica: str | None = None,
        max_clock_skew_seconds: float = 1.0,
    ) -> None:
        super().__init__()
        import redis  # only the shared store needs it

        self._url = _checked_url(url)
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(f"key={key!r}: expected 1-200 characters of [A-Za-z0-9_.:{{}}/-]")
        self.key = key
        self.sync_interval_seconds = _seconds(
            sync_interval_seconds, "sync_interval_seconds", 0.05, 3600
        )
        self.lease_ttl_seconds = _seconds(lease_ttl_seconds, "lease_ttl_seconds", 0.1, 3600)
        self.socket_timeout = _seconds(socket_timeout, "socket_timeout", 0.01, 60)
        self.max_clock_skew_seconds = _seconds(
            max_clock_skew_seconds, "max_clock_skew_seconds", 0.01, 3600
        )
        self._clock: StoreClock | None = None
        self._skew_logged: float | None = None  # when the skew was last logged (monotonic)
        name = replica or f"{socket.gethostname()}-{threading.get_native_id()}"
        if not _KEY.fullmatch(name):
            raise ValueError(f"replica={name!r}: expected 1-200 characters of [A-Za-z0-9_.:-]")
        self.replica = name
        # The holder name is unique per store object: a restarted replica never inherits a lease.
        self._holder = f"{name}/{secrets.token_hex(8)}"
        self._client: Any = redis.Redis.from_url(
            self._url,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.socket_timeout,
            retry_on_timeout=False,
            decode_responses=False,
        )
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._wrong_type: type[BaseException] = redis.ResponseError
        self._load = self._client.register_script(_LOAD)
        self._commit = self._client.register_script(_COMMIT)
        self._lease_script = self._client.register_script(_LEASE)
        self._observe = self._client.register_script(_OBSERVE)
        self._release = self._client.register_script(_RELEASE)
        self._claim = self._client.register_script(_CLAIM_CHECK)
        self._heartbeat = self._client.register_script(_HEARTBEAT)
        self._leave = self._client.register_script(_LEAVE)
        self._budget: ReadinessBudget | None = None
        self._lease: str | None = None  # "fence:holder" while this store holds the lease
        self._evaluator: str | None = None
        self._lease_lock = threading.Lock()
        self._follower: _Follower | None = None
        # Auxiliary keys holding what driftgate did not write ("lease", "last_check"): what is
        # wrong now, and its log lines (once, then at most once a minute).
        self._foreign: dict[str, str] = {}
        self._foreign_log = {
            "lease": _RecurringProblem(
                self.describe(), "the evaluation lease and fence keys are driftgate's again"
            ),
            "last_check": _RecurringProblem(
                self.describe(), "the last check key is driftgate's again"
            ),
        }

    # -- SharedStateStore --------------------------------------------------------------------

    def describe(self) -> str:
        return f"Redis {redact_url(self._url)} key {self.key!r}"

    def load(self) -> str | None:
        answer = self._call("read", self._load, keys=[self.key])
        status = _text(answer[0])
        if status == "none":
            return None
        if status == "foreign":
            raise StateError(
                f"{self.describe()} holds a Redis {_text(answer[1])} that is not a driftgate "
                "rollout; it is left untouched (point the store at another key or remove it)"
            )
        return _text(answer[2])

    def commit(self, version: int, document: str, automatic: bool) -> tuple[str, str | None]:
        with self._lease_lock:
            lease = self._lease
        if automatic and lease is None:
            return ("fenced", None)
        fence = lease.split(":", 1)[0] if lease else "0"
        answer = self._call(
            "commit",
            self._commit,
            keys=[self.key, self._lease_key, self._channel],
            args=[version - 1, version, document, int(automatic), lease or "", fence],
        )
        status = _text(answer[0])
        if status == "foreign":
            raise StateError(
                f"{self.describe()} holds a Redis {_text(answer[1])} that is not a driftgate "
                "rollout; nothing was written"
            )
        if status == "conflict":
            current = answer[1] if len(answer) > 1 and answer[1] else None
            return ("conflict", None if current is None else _text(current))
        return (status, None)

    # -- following, lease and the fleet's check interval -------------------------------------

    @property
    def holds_lease(self) -> bool:
        """Whether this replica evaluates the automatic rules now."""
        with self._lease_lock:
            return self._lease is not None

    def renew_lease(self) -> bool:
        """Renews this replica's lease, or takes it when free; False when another holds it,
        or when the lease or fence key holds a foreign value (see `problems`). Raises
        StateStoreError when Redis cannot be reached (the lease is then dropped)."""
        ttl_ms = max(1, int(self.lease_ttl_seconds * 1000))
        try:
            answer = self._call(
                "lease",
                self._lease_script,
                keys=[self._lease_key, self._fence_key],
                args=[self._holder, ttl_ms],
            )
        except StateStoreError:
            self._drop_lease()
            raise
        if self._lease_is_foreign(answer):
            return False
        held = _text(answer[1])
        mine = held.split(":", 1)[1] == self._holder
        self._note_evaluator(held)
        with self._lease_lock:
            if mine and self._lease != held:
                logger.info("rollout evaluation lease taken (fence %s)", held.split(":", 1)[0])
            elif not mine and self._lease is not None:
                logger.warning("rollout evaluation lease lost; this replica stops evaluating")
            self._lease = held if mine else None
        return mine

    @property
    def evaluator(self) -> str | None:
        """The replica that held the evaluation lease when last looked (None: nobody)."""
        return self._evaluator

    @property
    def problems(self) -> list[str]:
        """What is wrong with the store's auxiliary keys now: each one holding a value
        driftgate did not write (the lease, the fence, the last check), which keeps automatic
        moves held until it is removed. Empty when nothing is."""
        with self._lease_lock:
            return list(self._foreign.values())

    def observe_lease(self) -> str | None:
        """Reads who holds the evaluation lease now (see `evaluator`)."""
        answer = self._call("read", self._observe, keys=[self._lease_key, self._fence_key], args=[])
        if not self._lease_is_foreign(answer):
            held = answer[1] if len(answer) > 1 else None
            self._note_evaluator(None if held is None else _text(held))
        return self._evaluator

    def _note_evaluator(self, held: str | None) -> None:
        # "fence:replica/random": the replica's name is what people need to see.
        self._evaluator = None if held is None else _replica_name(held.split(":", 1)[-1])

    def claim(self, name: str, ttl_seconds: int = 7 * 86400) -> bool:
        """True for the first replica to claim `name` (e.g. a notification's key) within
        `ttl_seconds`; the fleet's way to do something once."""
        key = f"{self.key}:claimed:{name}"
        return bool(
            self._call("claim", lambda: self._client.set(key, b"1", nx=True, ex=ttl_seconds))
        )

    def release_lease(self) -> None:
        """Gives the lease up (on shutdown), so another replica takes over at once."""
        with self._lease_lock:
            lease, self._lease = self._lease, None
        if lease is not None:
            with contextlib.suppress(StateStoreError):  # unreleased, it expires by itself
                self._call("release", self._release, keys=[self._lease_key], args=[lease])

    def claim_check(self, interval_seconds: float) -> float:
        """0 when this replica may evaluate now (the check is then recorded for the fleet);
        else the seconds to wait before asking again. While the last check key holds a
        foreign value, never 0 (see `problems`)."""
        with self._lease_lock:
            lease = self._lease
        if lease is None:
            return self._lease_tick
        interval_ms = max(1, int(interval_seconds * 1000))
        answer = self._call(
            "claim check",
            self._claim,
            keys=[self._lease_key, self._last_check_key],
            args=[lease, interval_ms],
        )
        status = _text(answer[0])
        if status == "not_holder":
            self._drop_lease()
            return self._lease_tick
        if status == "foreign":
            self._note_foreign("last_check", _text(answer[1]), _text(answer[2]))
            return self._lease_tick
        self._note_foreign("last_check", None)
        return 0.0 if status == "due" else int(answer[1]) / 1000.0

    def stored_version(self) -> int:
        """The version stored now (0: nothing stored)."""

        def read() -> Any:
            try:
                return self._client.hget(self.key, "version")
            except self._wrong_type:  # a key of another type: not ours, load() says why
                return None

        value = self._call("read", read)
        try:
            return int(value or 0)
        except ValueError:
            return 0  # not ours: load() says why

    def follow(self, manager: RolloutManager) -> None:
        """Starts following the shared state for `manager` in a background thread (the
        manager does this itself)."""
        if self._follower is not None:
            raise ValueError("this store already serves a RolloutManager; give each its own")
        self._follower = _Follower(self, manager)
        self._follower.start()

    def campaign(self, enabled: bool) -> None:
        """Whether this replica competes for the evaluation lease (its monitor runs)."""
        if self._follower is not None:
            self._follower.campaigning = enabled  # the follower releases the lease when off

    def close(self) -> None:
        """Stops following, gives up the lease and the unready slot, and closes the
        connections."""
        if self._follower is not None:
            self._follower.stop()
        self.release_lease()
        if self._budget is not None:
            self._budget.release()
        self._client.close()

    # -- the fleet's clock --------------------------------------------------------------------

    def clock_for(self, clock: Clock | None) -> Clock:
        """The clock for the manager that follows this store (the manager asks for it): for
        the system clock (None), a `StoreClock` on Redis's time, read now and at every poll, so
        that stage start times and durations do not depend on this machine's wall clock; a
        StoreClock given is the one read; any other clock (a test's) is kept as it is."""
        if self._follower is not None:
            raise ValueError("this store already serves a RolloutManager; give each its own")
        if clock is None or isinstance(clock, SystemClock):
            clock = StoreClock(clock)
        if not isinstance(clock, StoreClock):
            return clock
        self._clock = clock
        with contextlib.suppress(StateStoreError):  # Redis away: the follower reads it later
            self.read_clock()
        return clock

    @property
    def clock_current_seconds(self) -> float:
        """How long a reading of Redis's clock counts for automatic moves: while the monotonic
        clock that carries it on cannot have drifted past `max_clock_skew_seconds` (at the
        most NTP slews a clock, 500 ppm: 2000 s for 1 s), and at least three polls."""
        return max(self.max_clock_skew_seconds / _MAX_DRIFT, 3 * self.sync_interval_seconds)

    def read_clock(self) -> float | None:
        """Reads Redis's clock (TIME) into the manager's clock, as of the middle of the round
        trip, and returns this machine's wall time minus Redis's, in seconds (None: no
        `StoreClock` to read into, or an answer too slow to place within
        `max_clock_skew_seconds`, which keeps the last reading). A skew beyond
        `max_clock_skew_seconds` is logged, once and then at most once a minute. Raises
        StateStoreError when Redis cannot be reached."""
        clock = self._clock
        if clock is None:
            return None
        before = clock.now()
        seconds, microseconds = self._call("clock", self._client.time)
        after = clock.now()
        if after - before > self.max_clock_skew_seconds:
            return None
        clock.observe(int(seconds) + int(microseconds) / 1e6, (before + after) / 2)
        skew = clock.skew()
        if skew is not None:
            self._note_skew(skew, after)
        return skew

    def clock_problem(self) -> str | None:
        """Why automatic moves must wait for Redis's clock (never read, or not read for
        `clock_current_seconds`), or None. Admin moves do not wait: they use the last reading."""
        clock = self._clock
        if clock is None:
            return None
        age = clock.age()
        if age is None:
            return f"Holding: the clock of {self.describe()} has not been read yet"
        if age > self.clock_current_seconds:
            return (
                f"Holding: the clock of {self.describe()} was last read {age:.0f} s ago "
                f"(a reading counts for {self.clock_current_seconds:g} s)"
            )
        return None

    def _note_skew(self, skew: float, now: float) -> None:
        if abs(skew) <= self.max_clock_skew_seconds:
            if self._skew_logged is not None:
                logger.info(
                    "this replica's wall clock is within %g s of the clock of %s again",
                    self.max_clock_skew_seconds,
                    self.describe(),
                )
            self._skew_logged = None
            return
        if self._skew_logged is not None and now - self._skew_logged < 60.0:
            return
        self._skew_logged = now
        logger.warning(
            "this replica's wall clock is %.3f s %s the clock of %s (more than "
            "rollout.store.max_clock_skew_seconds, %g s): the rollout's times and durations "
            "follow Redis's clock, but fix this machine's time (NTP)",
            abs(skew),
            "ahead of" if skew > 0 else "behind",
            self.describe(),
            self.max_clock_skew_seconds,
        )

    # -- the readiness budget ----------------------------------------------------------------

    def readiness_budget(
        self,
        check: Callable[[], tuple[bool, str]],
        *,
        max_unready: int | Callable[[], int] = 1,
        clock: Clock | None = None,
        registry: MetricsRegistry | None = None,
    ) -> ReadinessBudget:
        """This replica's share of the fleet's readiness budget: at most `max_unready`
        replicas of the rollout fail readiness for drift at once. `check` is the readiness
        gate's check (`gate.check`); the follower asks it and renews the slot every lease tick,
        so give the result to `create_router(readiness_budget=...)`. One per store."""
        if self._budget is not None:
            raise ValueError(
                f"{self.describe()}: this store already keeps a readiness budget; give each "
                "replica one"
            )
        self._budget = ReadinessBudget(
            self, check, max_unready=max_unready, clock=clock, registry=registry
        )
        return self._budget

    @property
    def budget(self) -> ReadinessBudget | None:
        """The readiness budget this store keeps current, if any."""
        return self._budget

    @property
    def slot_ttl_seconds(self) -> float:
        """A registration and an unready slot live as long as the evaluation lease."""
        return self.lease_ttl_seconds

    def heartbeat(self, unready: bool, max_unready: int) -> SlotGrant:
        """Registers this replica for another TTL and takes, renews or gives back its unready
        slot (see `ReadinessBudget`)."""
        ttl_ms = max(1, int(self.slot_ttl_seconds * 1000))
        granted, registered, holders = self._call(
            "heartbeat",
            self._heartbeat,
            keys=[self._replicas_key, self._unready_key],
            args=[self._holder, ttl_ms, int(unready), max_unready],
        )
        return SlotGrant(
            bool(int(granted)),
            tuple(_replica_name(_text(h)) for h in holders),
            int(registered),
        )

    def leave(self) -> None:
        """Takes this replica's registration and unready slot out of the store."""
        self._call(
            "leave", self._leave, keys=[self._replicas_key, self._unready_key], args=[self._holder]
        )

    def share_evidence(self, stage: dict[str, Any], evidence: dict[str, Any]) -> None:
        """Stores the evaluator's last reading of the current stage (`<key>:evidence`), so that
        every replica's status judges the same evidence. `stage` names the stage entry it was
        read in (stage_index, state, started_at); a replica elsewhere ignores it."""
        document = json.dumps({**stage, **evidence}, allow_nan=False)

        def share() -> None:
            # The hint makes the followers read it now rather than at their next poll.
            with self._client.pipeline(transaction=True) as pipe:
                pipe.set(self._evidence_key, document)
                pipe.publish(self._channel, b"evidence")
                pipe.execute()

        self._call("share evidence", share)

    def shared_evidence(self) -> dict[str, Any] | None:
        """The reading `share_evidence` stored, or None when there is none or it is not one
        (a foreign value is left alone: the status then judges without it)."""
        try:
            raw = self._call("read evidence", self._client.get, name=self._evidence_key)
        except StateStoreError as error:
            if isinstance(error.__context__, self._wrong_type):
                return None
            raise
        return _evidence(raw)

    @property
    def sync_age(self) -> float | None:
        """Seconds since the state was last read successfully (None: not following)."""
        return None if self._follower is None else self._follower.sync_age()

    # -- internals ---------------------------------------------------------------------------

    @property
    def _lease_key(self) -> str:
        return f"{self.key}:lease"

    @property
    def _fence_key(self) -> str:
        return f"{self.key}:fence"

    @property
    def _last_check_key(self) -> str:
        return f"{self.key}:last_check"

    @property
    def _evidence_key(self) -> str:
        return f"{self.key}:evidence"

    @property
    def _replicas_key(self) -> str:
        return f"{self.key}:replicas"

    @property
    def _unready_key(self) -> str:
        return f"{self.key}:unready"

    @property
    def _channel(self) -> str:
        return f"{self.key}:changed"

    @property
    def _lease_tick(self) -> float:
        """How often the lease is renewed or sought: well inside its TTL."""
        return min(self.lease_ttl_seconds / 5, 1.0)

    def _lease_is_foreign(self, answer: Any) -> bool:
        """Whether a lease script found a foreign value; the lease is then dropped."""
        if _text(answer[0]) != "foreign":
            self._note_foreign("lease", None)
            return False
        self._drop_lease()
        self._evaluator = None
        self._note_foreign("lease", _text(answer[1]), _text(answer[2]))
        return True

    def _note_foreign(self, name: str, key: str | None, holds: str = "") -> None:
        """Records (key given) or clears what is wrong with an auxiliary key, and logs it."""
        log = self._foreign_log[name]
        if key is None:
            with self._lease_lock:
                self._foreign.pop(name, None)
            log.ended()
            return
        message = (
            f"Redis {redact_url(self._url)} key {key!r} holds {holds}, which driftgate did not "
            "write; it is left untouched, and no replica makes automatic moves until it is "
            "removed (admin moves still work)"
        )
        with self._lease_lock:
            self._foreign[name] = message
        log.report(logging.ERROR, message)

    def _drop_lease(self) -> None:
        with self._lease_lock:
            if self._lease is not None:
                logger.warning("rollout evaluation lease lost; this replica stops evaluating")
            self._lease = None

    def _call(self, step: str, function: Any, **kwargs: Any) -> Any:
        try:
            return function(**kwargs)
        except self._errors as error:
            raise StateStoreError(
                f"{self.describe()}: {step} failed ({type(error).__name__})"
            ) from None

    def __repr__(self) -> str:
        return f"RedisStateStore({redact_url(self._url)!r}, key={self.key!r})"


_EVIDENCE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "stage_index": int,
    "state": str,
    "started_at": float,
    "error_rate": float,
    "requests": (int, type(None)),
    "failed": (int, type(None)),
}


def _evidence(raw: Any) -> dict[str, Any] | None:
    """A shared reading as `_adopt_evidence`'s arguments, or None for anything else."""
    if not isinstance(raw, bytes) or len(raw) > 1024:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict) or set(value) != set(_EVIDENCE_FIELDS):
        return None
    for name, kind in _EVIDENCE_FIELDS.items():
        field = value[name]
        if kind is float and isinstance(field, int) and not isinstance(field, bool):
            value[name] = field = float(field)
        if isinstance(field, bool) or not isinstance(field, kind):
            return None
        if isinstance(field, float) and not math.isfinite(field):
            return None
    return value


class _RecurringProblem:
    """One kind of problem the follower meets on every attempt while it lasts (Redis away, a
    value that is not a rollout). Each distinct message is logged when it first comes, then at
    most once every `every` seconds with how often it recurred, not once per attempt; the end
    of the problem is one line, with the attempts not logged since."""

    _MAX_MESSAGES = 16  # distinct messages remembered; a problem has a handful

    def __init__(
        self,
        source: str,
        ended: str,
        *,
        every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source  # the store's description: no password
        self._ended = ended
        self._every = every
        self._clock = clock
        self._seen: dict[str, list[float]] = {}  # message -> [last logged at, repeats since]
        # The follower and the calls of a request or the monitor may meet the same problem at
        # once: one of them logs it.
        self._lock = threading.Lock()

    def report(self, level: int, message: str) -> None:
        with self._lock:
            self._report(level, message)

    def _report(self, level: int, message: str) -> None:
        now = self._clock()
        seen = self._seen.get(message)
        if seen is not None and now - seen[0] < self._every:
            seen[1] += 1
            return
        if seen is not None and seen[1]:
            logger.log(level, "%s (again %d times in %.0f s)", message, seen[1] + 1, now - seen[0])
        else:
            logger.log(level, "%s", message)
        if seen is None and len(self._seen) >= self._MAX_MESSAGES:
            self._seen.clear()
        self._seen[message] = [now, 0]

    def ended(self) -> None:
        with self._lock:
            self._ended_locked()

    def _ended_locked(self) -> None:
        if not self._seen:
            return
        unlogged = int(sum(repeats for _, repeats in self._seen.values()))
        if unlogged:
            logger.info(
                "%s: %s (%d attempts failed since the last line)",
                self._source,
                self._ended,
                unlogged,
            )
        else:
            logger.info("%s: %s", self._source, self._ended)
        self._seen.clear()


class _Follower:
    """The thread that keeps a manager on the stored version: a hint on every commit
    (pub/sub), a poll every sync interval, a full reload after every reconnect; and, while the
    monitor runs, the lease renewal."""

    def __init__(self, store: RedisStateStore, manager: RolloutManager) -> None:
        self._store = store
        self._manager = weakref.ref(manager)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"driftgate-follow-{store.key}", daemon=True
        )
        self.campaigning = False
        self._last_sync: float | None = None
        self._started = time.monotonic()
        self._outage = _RecurringProblem(store.describe(), "answers again")
        self._unreadable = _RecurringProblem(
            store.describe(), "the rollout state is readable again"
        )
        self._budget_failing = _RecurringProblem(
            store.describe(), "the readiness budget is kept again"
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=self._store.socket_timeout + 2)

    def sync_age(self) -> float:
        """Seconds since the last successful read (since the start, before the first)."""
        last = self._last_sync
        return time.monotonic() - (self._started if last is None else last)

    def _sync(self, manager: RolloutManager) -> None:
        try:
            document = self._store.load()
            if document is None and not manager.synced:
                # Started while Redis was away, and nothing is stored: store the fresh rollout.
                manager.refresh()
                self._unreadable.ended()
            elif document is not None:
                manager.follow(document)
                self._unreadable.ended()
        except StateStoreError:
            raise
        except StateError as error:
            # Not ours (another stage list, a foreign value): keep the last known state, and
            # keep following, so that the replica takes the state once someone fixes the key.
            self._unreadable.report(logging.ERROR, str(error))
            return
        self._last_sync = time.monotonic()
        # The evaluator's reading of this stage, for this replica's status: never needed for a
        # decision, so a problem with it is not the store's.
        with contextlib.suppress(StateStoreError, ValueError):
            shared = self._store.shared_evidence()
            if shared is not None:
                manager._adopt_evidence(**shared)

    def _read_clock(self, manager: RolloutManager) -> None:
        """Reads Redis's clock into the manager's, and publishes this machine's skew."""
        skew = self._store.read_clock()
        if skew is not None:
            manager.registry.set_gauge(CLOCK_SKEW, CLOCK_SKEW_HELP, skew)

    def _update_budget(self) -> None:
        """Renews the readiness budget's slot; the store away raises StateStoreError (an
        outage); anything else (a gate check that raised) means no slot, logged."""
        budget = self._store.budget
        if budget is None:
            return
        try:
            budget.update()
        except StateStoreError:
            raise
        except Exception as error:
            self._budget_failing.report(
                logging.ERROR,
                f"{self._store.describe()}: readiness budget not kept, so this replica stays "
                f"ready ({type(error).__name__}: {one_line(str(error))})",
            )
        else:
            self._budget_failing.ended()

    def _run(self) -> None:
        store = self._store
        pubsub: Any = None
        next_poll = next_lease = 0.0
        backoff = 0.05
        failures: tuple[type[BaseException], ...] = (StateStoreError, *store._errors)
        while not self._stop.is_set():
            manager = self._manager()
            if manager is None:
                break
            now = time.monotonic()
            try:
                if pubsub is None:
                    pubsub = store._client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(store._channel)
                    self._read_clock(manager)
                    self._sync(manager)  # a reconnect may have missed hints: reload fully
                    next_poll = now + store.sync_interval_seconds
                if not self.campaigning and store.holds_lease:
                    store.release_lease()
                if now >= next_lease:
                    if self.campaigning:
                        store.renew_lease()
                    else:
                        store.observe_lease()
                    self._update_budget()
                    next_lease = now + store._lease_tick
                if now >= next_poll:
                    self._read_clock(manager)
                    if store.stored_version() != manager.version or not manager.synced:
                        self._sync(manager)
                    else:
                        # The version this replica holds is stored (again): readable.
                        self._unreadable.ended()
                        self._last_sync = time.monotonic()
                    next_poll = now + store.sync_interval_seconds
                wait = max(0.0, min(next_poll, next_lease) - time.monotonic())
                del manager  # not kept alive while waiting
                message = pubsub.get_message(timeout=min(wait, 1.0))
                manager = self._manager()
                if manager is None:
                    break
                if message is not None:
                    self._sync(manager)
                backoff = 0.05
                up = True
                self._outage.ended()
            except failures as error:
                if isinstance(error, StateStoreError):
                    self._outage.report(logging.WARNING, str(error))
                else:
                    self._outage.report(
                        logging.WARNING,
                        f"{store.describe()}: follow failed ({type(error).__name__})",
                    )
                store._drop_lease()
                if store.budget is not None:
                    store.budget.lose()  # a replica that cannot reach the store stays ready
                if pubsub is not None:
                    with contextlib.suppress(Exception):  # a broken connection may fail to close
                        pubsub.close()
                    pubsub = None
                up = False
            manager = self._manager()
            if manager is None:
                break
            manager._note_store(up, self.sync_age())
            del manager
            if not up:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 1.0, store.sync_interval_seconds)
        if pubsub is not None:
            with contextlib.suppress(Exception):
                pubsub.close()
