"""Rollout state shared by the replicas of a service, in Redis.

One hash holds the rollout document (the same JSON as a state file) and its version; every
transition is a compare-and-set on that version in one Lua script, so it commits only if
nobody committed since it was decided. A commit publishes what it wrote as a hint (a replica
that hears it knows of the commit, even if Redis fails over before it can read it); every
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
import os
import re
import secrets
import socket
import ssl
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from driftgate._core import (
    DEFAULT_ROLLOUT,
    ROLLOUT_LABEL,
    Clock,
    MetricsRegistry,
    SharedStateStore,
    StateError,
    StateOutcomeUnknown,
    StateRegressed,
    StateStoreError,
    StoreClock,
    SystemClock,
    validate_rollout_name,
)
from driftgate._messages import one_line
from driftgate.readiness_budget import ReadinessBudget, SlotGrant

if TYPE_CHECKING:
    from driftgate.rollout import RolloutManager

__all__ = ["RedisStateStore", "StateOutcomeUnknown", "StateStoreError", "StoreClock", "redact_url"]

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

# KEYS: state, lease, channel, abandoned attempts. ARGV: expected version, new version, document,
# automatic (1/0), lease value, fence, the document's incarnation, this attempt's id, the
# document's restore generation, its newest step's operation id. An attempt the read-back gave
# up on (`_SETTLE`) never commits, however late it reaches the server; a document commits only
# onto one of its own incarnation (or one written before incarnations) and restore generation,
# so a replica that missed a restore cannot write over it. The hash keeps the newest step's
# operation, incarnation and generation beside the version, for the followers' poll. The hint
# names them too ("<version> <incarnation> <generation> <operation>"), so that a follower that
# hears it knows of the commit even when Redis fails over before it can read it. It is sent
# once the state is written, so it never announces a write Redis refused (out of memory); a
# refused PUBLISH costs the hint only (the followers' poll finds the commit), never the commit.
_COMMIT = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and kind ~= 'hash' then return {'foreign', kind} end
local stored = redis.call('HGET', KEYS[1], 'version')
if kind == 'hash' and not stored then return {'foreign', 'hash'} end
local abandoned = redis.call('TYPE', KEYS[4])['ok']
if abandoned ~= 'none' and abandoned ~= 'zset' then return {'foreign_key', KEYS[4], abandoned} end
if redis.call('ZSCORE', KEYS[4], ARGV[8]) then return {'abandoned'} end
if ARGV[4] == '1' then
  if redis.call('TYPE', KEYS[2])['ok'] ~= 'string' or redis.call('GET', KEYS[2]) ~= ARGV[5] then
    return {'fenced'}
  end
  local last_fence = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
  if tonumber(ARGV[6]) < last_fence then return {'fenced'} end
end
local incarnation = redis.call('HGET', KEYS[1], 'incarnation')
local generation = tonumber(redis.call('HGET', KEYS[1], 'generation') or '0')
if tonumber(stored or '0') ~= tonumber(ARGV[1]) or (incarnation and incarnation ~= ARGV[7])
    or generation ~= tonumber(ARGV[9]) then
  return {'conflict', redis.call('HGET', KEYS[1], 'doc')}
end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'doc', ARGV[3], 'incarnation', ARGV[7],
  'generation', ARGV[9], 'op', ARGV[10])
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'fence', ARGV[6]) end
redis.pcall('PUBLISH', KEYS[3], ARGV[2] .. ' ' .. ARGV[7] .. ' ' .. ARGV[9] .. ' ' .. ARGV[10])
return {'committed'}
"""

# After a commit whose answer was lost: whether the operation is in the stored history
# ({'committed', document}); if not, the attempt is marked abandoned, so that it never commits
# later ({'abandoned'}). Either way the outcome is known from here on. Abandoned attempts are
# kept a day. KEYS: state, abandoned attempts. ARGV: operation id, attempt id.
_SETTLE = """
if redis.call('TYPE', KEYS[1])['ok'] == 'hash' then
  local doc = redis.call('HGET', KEYS[1], 'doc')
  if doc then
    local ok, parsed = pcall(cjson.decode, doc)
    if ok and type(parsed) == 'table' and type(parsed['transitions']) == 'table' then
      for _, step in ipairs(parsed['transitions']) do
        if type(step) == 'table' and step['op'] == ARGV[1] then return {'committed', doc} end
      end
    end
  end
end
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'none' and kind ~= 'zset' then return {'foreign_key', KEYS[2], kind} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 86400000)
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('PEXPIRE', KEYS[2], 86400000)
return {'abandoned'}
"""

# A restore: writes ARGV[1] (version ARGV[2], incarnation ARGV[3], restore generation ARGV[6],
# newest operation ARGV[7]) if the stored document is still ARGV[4] (ARGV[5] == '1'), or
# nothing is stored (ARGV[5] == '0'). KEYS: state, channel. Its hint is sent as a commit's.
_REPLACE = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and kind ~= 'hash' then return {'foreign', kind} end
local doc = false
if kind == 'hash' then
  if not redis.call('HGET', KEYS[1], 'version') then return {'foreign', 'hash'} end
  doc = redis.call('HGET', KEYS[1], 'doc')
end
if (ARGV[5] == '1' and doc ~= ARGV[4]) or (ARGV[5] == '0' and doc) then return {'changed'} end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'doc', ARGV[1], 'incarnation', ARGV[3],
  'generation', ARGV[6], 'op', ARGV[7])
redis.pcall('PUBLISH', KEYS[2], ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[6] .. ' ' .. ARGV[7])
return {'replaced'}
"""

# What tells one stored state from another, for the follower's poll: version, incarnation,
# restore generation and newest operation (a key of another type: all nil). One command: the
# poll is most of what a follower at rest sends.
_POLL = """
local fields = redis.pcall('HMGET', KEYS[1], 'version', 'incarnation', 'generation', 'op')
if fields['err'] then return {false, false, false, false} end
return fields
"""

# Whether the lease and fence keys hold what the lease script writes: the lease a string
# "<fence>:<holder>" with an expiry, the fence a string of at most 15 digits (a number Lua's
# doubles hold exactly). Anything else was put there by something else: it is reported and
# never overwritten, and nobody evaluates until it is gone. KEYS: lease, fence. Each key is
# read with one GET (its TYPE asked only when the GET is refused), since every follower runs
# this once a sync interval; `held` is the lease's value (false: none). An ACL that refuses a
# key refuses the script before it runs (Redis checks the KEYS first), so a GET refused here is
# refused for the key's type.
_FOREIGN_LEASE = """
local function read(key)
  local value = redis.pcall('GET', key)
  if type(value) == 'table' and value['err'] then return nil, redis.call('TYPE', key)['ok'] end
  return value
end
local held, kind = read(KEYS[1])
local function foreign_lease()
  if held == nil then return {'foreign', KEYS[1], 'a Redis ' .. kind} end
  if held then
    local number = string.match(held, '^(%d+):.')
    if not number or #number > 15 then
      return {'foreign', KEYS[1], 'a string that is not an evaluation lease'}
    end
    if redis.call('PTTL', KEYS[1]) < 0 then
      return {'foreign', KEYS[1], 'a lease that never expires'}
    end
  end
  local fence, fence_kind = read(KEYS[2])
  if fence == nil then return {'foreign', KEYS[2], 'a Redis ' .. fence_kind} end
  if fence and (not string.match(fence, '^%d+$') or #fence > 15) then
    return {'foreign', KEYS[2], 'a string that is not a fencing number'}
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
return {'held', held}
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

# Every command driftgate sends, with the keys and channel it sends it on, checked against the
# user's ACL without running it (Redis 7 checks the commands a script runs too). ARGV: the
# channel, then the rollout key, lease, fence, last check, evidence, replicas, unready and a
# claim; arguments, not KEYS, so that a key the user may not touch is named here rather than
# refused with the script. Returns the first command refused, with its arguments, or nothing.
_ACCESS = """
local c, k = ARGV[1], {unpack(ARGV, 2)}
local needed = {
  {'type', k[1]}, {'hmget', k[1], 'version', 'doc'}, {'hget', k[1], 'version'},
  {'hset', k[1], 'version', '1'}, {'publish', c, '1'}, {'subscribe', c}, {'unsubscribe', c},
  {'get', k[2]}, {'set', k[2], '1', 'PX', '1'}, {'pexpire', k[2], '1'}, {'pttl', k[2]},
  {'del', k[2]}, {'incr', k[3]}, {'get', k[4]}, {'set', k[4], '1'}, {'time'},
  {'get', k[5]}, {'set', k[5], '1'}, {'multi'}, {'exec'},
  {'zremrangebyscore', k[6], '-inf', '1'}, {'zadd', k[6], '1', 'm'}, {'pexpire', k[6], '1'},
  {'zcard', k[6]}, {'zrem', k[6], 'm'}, {'zremrangebyscore', k[7], '-inf', '1'},
  {'zadd', k[7], '1', 'm'}, {'zscore', k[7], 'm'}, {'zrem', k[7], 'm'}, {'zcard', k[7]},
  {'zrange', k[7], '0', '-1'}, {'exists', k[7]}, {'pexpire', k[7], '1'},
  {'type', k[2]}, {'type', k[3]}, {'get', k[3]}, {'type', k[4]},
  {'set', k[8], '1', 'NX', 'EX', '1'}, {'evalsha', 'x', '0'},
  {'script', 'load', 'x'}, {'ping'},
}
for _, command in ipairs(needed) do
  if not redis.acl_check_cmd(unpack(command)) then return table.concat(command, ' ') end
end
return false
"""

ACL_DOCS = "docs/fleet.md#redis-users-acl"
"""Where the Redis ACL a store's user needs is written down."""


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
            f"store URL {shown!r} is malformed: expected "
            "redis://[[user]:password@]host[:port][/db] "
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


def _readable_file(value: Any, name: str) -> str:
    """The path of a TLS file the store is given, refused now (naming `name`) when it cannot
    be read, rather than as a handshake failure on every reconnect."""
    if isinstance(value, bytes) or not isinstance(value, (str, os.PathLike)):
        raise ValueError(f"{name}={value!r}: expected the path of a PEM file")
    path = os.fspath(value)
    if not path or "\0" in path:
        raise ValueError(f"{name}={path!r}: expected the path of a PEM file")
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as error:
        raise ValueError(f"{name}={path!r} cannot be read ({error.strerror})") from None
    return path


def _tls_options(tls: bool, ca_file: Any, cert_file: Any, key_file: Any) -> dict[str, Any]:
    """redis-py's TLS arguments: the server's certificate verified against `ca_file` (the
    system's CAs when None), its host name checked, a client certificate for mutual TLS."""
    given = {
        name: value
        for name, value in (
            ("tls_ca_file", ca_file),
            ("tls_cert_file", cert_file),
            ("tls_key_file", key_file),
        )
        if value is not None
    }
    if not tls:
        if given:
            raise ValueError(
                f"{next(iter(given))} is given but the store URL is redis://, which does not "
                "use TLS: use a rediss:// URL"
            )
        return {}
    if (cert_file is None) != (key_file is None):
        raise ValueError("tls_cert_file and tls_key_file: mutual TLS needs both or neither")
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if ca_file is not None:
        options["ssl_ca_certs"] = path = _readable_file(ca_file, "tls_ca_file")
        try:  # a file that reads but holds no certificate fails here, not at every handshake
            ssl.create_default_context(cafile=path)
        except (ssl.SSLError, ValueError) as error:
            raise ValueError(
                f"tls_ca_file={path!r} holds no usable PEM certificate ({one_line(str(error))})"
            ) from None
    if cert_file is not None:
        options["ssl_certfile"] = _readable_file(cert_file, "tls_cert_file")
        options["ssl_keyfile"] = _readable_file(key_file, "tls_key_file")
    return options


_MAX_SENTINELS = 16


def _sentinel_address(entry: Any) -> tuple[str, int]:
    """("host", port) from "host:port", "[v6]:port" or a (host, port) pair."""
    if isinstance(entry, tuple) and len(entry) == 2:
        host, port = entry
    elif isinstance(entry, str):
        host, _, port_text = entry.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        port = int(port_text) if port_text.isdigit() and len(port_text) <= 5 else -1
    else:
        host, port = "", -1
    if (
        not isinstance(host, str)
        or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,253}", host)
        or isinstance(port, bool)
        or not isinstance(port, int)
        or not 1 <= port <= 65535
    ):
        raise ValueError(f"sentinels: {entry!r} is not host:port (a port from 1 to 65535)")
    return host, port


def _sentinel_addresses(entries: Any) -> tuple[tuple[str, int], ...]:
    if isinstance(entries, (str, bytes)) or not isinstance(entries, Sequence):
        raise ValueError(f"sentinels={entries!r}: expected a list of host:port")
    if not 1 <= len(entries) <= _MAX_SENTINELS:
        raise ValueError(f"sentinels: expected 1 to {_MAX_SENTINELS} host:port entries")
    return tuple(_sentinel_address(entry) for entry in entries)


def _sentinel_service(name: Any) -> str:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", name):
        raise ValueError(
            f"sentinel_service={name!r}: expected the name the sentinels monitor the primary "
            "under (1-128 characters of [A-Za-z0-9_.:-])"
        )
    return name


def _why(error: BaseException) -> str:
    """What went wrong with a Redis call, in words an operator acts on; never a password
    (redis-py's messages name the host and the command, not the credentials)."""
    import redis

    name = type(error).__name__
    if isinstance(error, redis.exceptions.NoPermissionError) or (
        isinstance(error, redis.ResponseError) and "can't run this command" in str(error)
    ):
        return (
            f"the Redis user may not do this: {one_line(str(error))}; grant the ACL in {ACL_DOCS}"
        )
    if isinstance(error, redis.AuthenticationError):
        return f"{name}: Redis refused the user name or password in the store URL"
    if isinstance(error, redis.ConnectionError) and "CERTIFICATE_VERIFY_FAILED" in str(error):
        return f"{name}: the server's TLS certificate is not trusted ({one_line(str(error))})"
    return name


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

    `url` is a redis:// or rediss:// (TLS) URL and may carry a user and password: read it from
    the environment, never from a file, and it is never logged (`describe()` drops it).
    Over TLS the server's certificate and host name are always verified, against
    `tls_ca_file` (a PEM bundle) or the system's CAs; `tls_cert_file` and `tls_key_file` give
    a client certificate for mutual TLS. With `sentinels` ("host:port" or (host, port)), the
    primary of `sentinel_service` is asked of the sentinels (with `sentinel_password`, and
    over TLS for a rediss:// URL), and the store follows it through failovers; the URL then
    gives only the scheme, user, password and database. `check_access()` says at start
    whether the Redis user may do what the store needs (docs/fleet.md).
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
        min_replicas_acked: int = 0,
        replica_ack_timeout: float = 1.0,
        tls_ca_file: str | os.PathLike[str] | None = None,
        tls_cert_file: str | os.PathLike[str] | None = None,
        tls_key_file: str | os.PathLike[str] | None = None,
        sentinels: Sequence[str | tuple[str, int]] | None = None,
        sentinel_service: str | None = None,
        sentinel_password: str | None = None,
        max_clock_skew_seconds: float = 1.0,
    ) -> None:
        super().__init__()
        import redis  # only the shared store needs it

        self._url = _checked_url(url)
        tls = urllib.parse.urlsplit(self._url).scheme == "rediss"
        tls_options = _tls_options(tls, tls_ca_file, tls_cert_file, tls_key_file)
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(f"key={key!r}: expected 1-200 characters of [A-Za-z0-9_.:{{}}/-]")
        self.key = key
        self.sync_interval_seconds = _seconds(
            sync_interval_seconds, "sync_interval_seconds", 0.05, 3600
        )
        self.lease_ttl_seconds = _seconds(lease_ttl_seconds, "lease_ttl_seconds", 0.1, 3600)
        self.socket_timeout = _seconds(socket_timeout, "socket_timeout", 0.01, 60)
        if (
            isinstance(min_replicas_acked, bool)
            or not isinstance(min_replicas_acked, int)
            or not 0 <= min_replicas_acked <= 100
        ):
            raise ValueError(
                f"min_replicas_acked={min_replicas_acked!r}: expected a whole number of Redis "
                "replicas from 0 to 100"
            )
        self.min_replicas_acked = min_replicas_acked
        self.replica_ack_timeout = _seconds(replica_ack_timeout, "replica_ack_timeout", 0.01, 60)
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
        connection: dict[str, Any] = {
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_timeout,
            "retry_on_timeout": False,
            "decode_responses": False,
            **tls_options,
        }
        self._sentinel: tuple[str, tuple[tuple[str, int], ...]] | None = None
        if sentinels is None:
            if sentinel_service is not None or sentinel_password is not None:
                raise ValueError("sentinel_service and sentinel_password need sentinels")
            self._client: Any = redis.Redis.from_url(self._url, **connection)
        else:
            self._sentinel = (
                _sentinel_service(sentinel_service),
                _sentinel_addresses(sentinels),
            )
            self._client = self._sentinel_client(connection, sentinel_password)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._wrong_type: type[BaseException] = redis.ResponseError
        self._load = self._client.register_script(_LOAD)
        self._commit = self._client.register_script(_COMMIT)
        self._settle = self._client.register_script(_SETTLE)
        self._poll = self._client.register_script(_POLL)
        self._replace = self._client.register_script(_REPLACE)
        self._no_script: type[BaseException] = redis.exceptions.NoScriptError
        self._lease_script = self._client.register_script(_LEASE)
        self._observe = self._client.register_script(_OBSERVE)
        self._release = self._client.register_script(_RELEASE)
        self._claim = self._client.register_script(_CLAIM_CHECK)
        self._heartbeat = self._client.register_script(_HEARTBEAT)
        self._leave = self._client.register_script(_LEAVE)
        self._access = self._client.register_script(_ACCESS)
        self._budget: ReadinessBudget | None = None
        self._lease: str | None = None  # "fence:holder" while this store holds the lease
        self._evaluator: str | None = None
        self._lease_lock = threading.Lock()
        self._follower: _Follower | None = None
        self._served = False  # a manager took this store's clock: it serves that one only
        self._rollout = DEFAULT_ROLLOUT  # the name of the rollout it serves
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
        if self._sentinel is not None:
            service, addresses = self._sentinel
            where = ", ".join(f"{host}:{port}" for host, port in addresses)
            scheme = urllib.parse.urlsplit(self._url).scheme
            return f"Redis {scheme} primary {service!r} (sentinels {where}) key {self.key!r}"
        return f"Redis {redact_url(self._url)} key {self.key!r}"

    def check_access(self) -> bool:
        """Whether the Redis user may run every command the store sends, on its keys and
        channel (asked of Redis 7's ACL without running them). Raises StateStoreError naming
        the first command refused, or saying that the password or the server's certificate was
        refused; False when Redis cannot be reached now, or is older than 7 (not checked:
        the follower keeps trying, and reports a refusal when it meets one)."""
        import redis

        keys = [
            self.key,
            self._lease_key,
            self._fence_key,
            self._last_check_key,
            self._evidence_key,
            self._replicas_key,
            self._unready_key,
            f"{self.key}:claimed:access",
        ]
        try:
            refused = self._access(keys=[], args=[self._channel, *keys])
        except redis.ResponseError as error:
            if "acl_check_cmd" in str(error) or "nil value" in str(error):
                return False  # before Redis 7: nothing to ask
            raise StateStoreError(f"{self.describe()}: {_why(error)}") from None
        except redis.AuthenticationError as error:
            raise StateStoreError(f"{self.describe()}: {_why(error)}") from None
        except self._errors as error:
            if "CERTIFICATE_VERIFY_FAILED" in str(error):
                raise StateStoreError(f"{self.describe()}: {_why(error)}") from None
            return False
        if refused:
            raise StateStoreError(
                f"{self.describe()}: the Redis user may not run {_text(refused)!r}; grant "
                f"the ACL in {ACL_DOCS}"
            )
        return True

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
        """Commits `document` as `version` (see SharedStateStore). Every call has one known
        outcome: when Redis stops answering after the commit was sent, the stored history is
        read back for the move's operation id (the newest transition's), and an attempt not
        found there is marked abandoned so that it can never land later. StateStoreError when
        nothing was committed; StateOutcomeUnknown when Redis did not answer the read-back in
        time either, or when fewer than `min_replicas_acked` replicas confirmed the commit."""
        with self._lease_lock:
            lease = self._lease
        if automatic and lease is None:
            return ("fenced", None)
        fence = lease.split(":", 1)[0] if lease else "0"
        incarnation, operation, generation = _commit_ids(document)
        attempt = secrets.token_hex(8)
        keys = [self.key, self._lease_key, self._channel, self._abandoned_key]
        args = [version - 1, version, document, int(automatic), lease or "", fence]
        answer = self._send_commit(
            keys, [*args, incarnation, attempt, generation, operation], operation
        )
        if answer is None:
            return self._settle_commit(operation, attempt)
        status = _text(answer[0])
        if status == "foreign":
            raise StateError(
                f"{self.describe()} holds a Redis {_text(answer[1])} that is not a driftgate "
                "rollout; nothing was written"
            )
        if status == "foreign_key":
            raise StateError(
                f"Redis {redact_url(self._url)} key {_text(answer[1])!r} holds a Redis "
                f"{_text(answer[2])}, which driftgate did not write; nothing was committed "
                "(remove it)"
            )
        if status == "conflict":
            current = answer[1] if len(answer) > 1 and answer[1] else None
            return ("conflict", None if current is None else _text(current))
        if status == "abandoned":  # a fresh attempt id never is: someone wrote the key
            raise StateStoreError(f"{self.describe()}: commit refused; nothing was committed")
        return (status, None)

    def _send_commit(self, keys: list[str], args: list[Any], operation: str) -> Any:
        """The commit script's answer; None when the commit may have reached Redis but no
        answer came back. On a connection of its own, so that a failure to connect (nothing
        sent, nothing committed) is told apart from a lost answer, so that redis-py never sends
        it twice, and so that WAIT counts the replicas that have this very write."""
        pool = self._client.connection_pool
        try:
            connection = pool.get_connection()
        except self._errors as error:
            raise StateStoreError(
                f"{self.describe()}: commit failed ({_why(error)}); nothing was committed"
            ) from None
        try:
            try:
                connection.send_command("EVALSHA", self._commit.sha, len(keys), *keys, *args)
                answer = connection.read_response()
            except self._no_script:  # not run: load it, then run it (no EVAL: see the ACL)
                connection.send_command("SCRIPT", "LOAD", _COMMIT)
                connection.read_response()
                connection.send_command("EVALSHA", self._commit.sha, len(keys), *keys, *args)
                answer = connection.read_response()
            if _text(answer[0]) == "committed" and self.min_replicas_acked:
                try:
                    self._wait_for_replicas(connection, operation)
                except self._errors as error:
                    # Committed on the primary: a read-back would find it there and answer it
                    # done, with no replica known to have it.
                    connection.disconnect()
                    raise StateOutcomeUnknown(
                        f"{self.describe()}: operation {operation} committed on the primary, but "
                        f"whether {self.min_replicas_acked} replicas have it is not known "
                        f"({_why(error)}); a failover now may lose it (the status tells; a retry "
                        "with the same operation id is answered with what happened)"
                    ) from None
            return answer
        except self._wrong_type as error:  # an error reply: the script wrote nothing
            raise StateStoreError(
                f"{self.describe()}: commit refused ({one_line(str(error))}); nothing was committed"
            ) from None
        except self._errors:
            connection.disconnect()
            return None
        finally:
            pool.release(connection)

    def _wait_for_replicas(self, connection: Any, operation: str) -> None:
        timeout_ms = max(1, int(self.replica_ack_timeout * 1000))
        # WAIT blocks the connection: asked in slices shorter than the socket timeout, so that
        # waiting for slow replicas is never taken for a Redis that stopped answering.
        slice_ms = max(1, int(self.socket_timeout * 500))
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            left_ms = max(1, min(slice_ms, int((deadline - time.monotonic()) * 1000)))
            connection.send_command("WAIT", self.min_replicas_acked, left_ms)
            acked = int(connection.read_response())
            if acked >= self.min_replicas_acked or time.monotonic() >= deadline:
                break
        if acked < self.min_replicas_acked:
            raise StateOutcomeUnknown(
                f"{self.describe()}: operation {operation} committed on the primary, but only "
                f"{acked} of the {self.min_replicas_acked} replicas required confirmed it within "
                f"{timeout_ms} ms; a failover now may lose it (the status tells; a retry with the "
                "same operation id is answered with what happened)"
            )

    def confirm_replicated(self, operation: str) -> None:
        """With `min_replicas_acked`, waits until that many replicas hold everything the
        primary holds now, `operation`'s commit included (a write of its own, then WAIT on the
        same connection); StateOutcomeUnknown when they do not in time or Redis does not
        answer. For a commit learnt by reading it back, or a retry answered from the history:
        never answered done from the primary alone."""
        if not self.min_replicas_acked:
            return
        pool = self._client.connection_pool
        try:
            connection = pool.get_connection()
        except self._errors as error:
            raise StateOutcomeUnknown(
                f"{self.describe()}: operation {operation} is on the primary, but whether "
                f"{self.min_replicas_acked} replicas hold it cannot be asked ({_why(error)})"
            ) from None
        try:
            # A write after the commit: once replicas acknowledge it, they hold the commit too.
            connection.send_command("INCR", self._confirmed_key)
            connection.read_response()
            self._wait_for_replicas(connection, operation)
        except self._errors as error:
            connection.disconnect()
            raise StateOutcomeUnknown(
                f"{self.describe()}: operation {operation} is on the primary, but whether "
                f"{self.min_replicas_acked} replicas hold it is not known ({_why(error)})"
            ) from None
        finally:
            pool.release(connection)

    def _settle_commit(self, operation: str, attempt: str) -> tuple[str, str | None]:
        """Reads back whether `operation` landed, within a bound; see commit()."""
        deadline = time.monotonic() + max(1.0, 3 * self.socket_timeout)
        delay = 0.05
        while True:
            try:
                answer = self._call(
                    "read back",
                    self._settle,
                    keys=[self.key, self._abandoned_key],
                    args=[operation, attempt],
                )
            except StateStoreError:
                if time.monotonic() + delay >= deadline:
                    raise StateOutcomeUnknown(
                        f"{self.describe()} stopped answering after operation {operation} was "
                        "sent; whether it committed is not known yet (the status tells; a retry "
                        "with the same operation id is answered with what happened)"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            status = _text(answer[0])
            if status == "committed":
                logger.warning(
                    "%s: the answer to operation %s was lost; read back, it committed",
                    self.describe(),
                    operation,
                )
                self.confirm_replicated(operation)
                return ("committed", _text(answer[1]))
            if status == "foreign_key":
                raise StateOutcomeUnknown(
                    f"Redis {redact_url(self._url)} key {_text(answer[1])!r} holds a Redis "
                    f"{_text(answer[2])}, which driftgate did not write: whether operation "
                    f"{operation} committed is not known (remove the key)"
                )
            raise StateStoreError(
                f"{self.describe()}: the answer to operation {operation} was lost; read back, it "
                "did not commit and never will; nothing was committed"
            )

    def replace(self, document: str, expected: str | None) -> bool:
        """Writes `document` (a restore: see driftgate.backup) if what is stored is still
        `expected` (None: nothing stored); False when it changed meanwhile. Every replica
        hears of it at once. StateError when the key holds something that is not a rollout."""
        version, incarnation, generation, operation = _document_tag(document)
        answer = self._call(
            "restore",
            self._replace,
            keys=[self.key, self._channel],
            args=[
                document,
                version,
                incarnation,
                expected or "",
                int(expected is not None),
                generation,
                operation,
            ],
        )
        status = _text(answer[0])
        if status == "foreign":
            raise StateError(
                f"{self.describe()} holds a Redis {_text(answer[1])} that is not a driftgate "
                "rollout; nothing was written"
            )
        return status == "replaced"

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
        return self.stored_tag()[0]

    def stored_tag(self) -> tuple[int, str, int, str]:
        """What tells the stored state from another: version, incarnation, restore generation
        and newest step's operation ((0, "", 0, ""): nothing stored, or not ours: load() says
        why)."""
        version, incarnation, generation, operation = self._call(
            "read", self._poll, keys=[self.key], args=[]
        )
        try:
            return (
                int(version or 0),
                _text(incarnation) if incarnation else "",
                int(generation or 0),
                _text(operation) if operation else "",
            )
        except ValueError:
            return (0, "", 0, "")

    def follow(self, manager: RolloutManager) -> None:
        """Starts following the shared state for `manager` in a background thread (the
        manager does this itself, unless made with `follow=False`); after `unfollow`, again."""
        if self._follower is not None:
            raise ValueError("this store already serves a RolloutManager; give each its own")
        self._follower = _Follower(self, manager)
        self._follower.start()

    def unfollow(self) -> None:
        """Stops following, and gives up the lease and the unready slot, so that another
        replica takes over at once; the connections stay and `follow` may start again (a
        service whose app stops and runs again)."""
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.stop()
        self.release_lease()
        if self._budget is not None:
            self._budget.release()

    def campaign(self, enabled: bool) -> None:
        """Whether this replica competes for the evaluation lease (its monitor runs)."""
        if self._follower is not None:
            self._follower.campaign(enabled)

    def close(self) -> None:
        """Stops following, gives up the lease and the unready slot, and closes the
        connections."""
        self.unfollow()
        self._client.close()

    # -- the fleet's clock --------------------------------------------------------------------

    def clock_for(self, clock: Clock | None, rollout: str = DEFAULT_ROLLOUT) -> Clock:
        """The clock for the manager of `rollout` that follows this store (the manager asks
        for it, and the store then serves that manager only): for the system clock (None), a
        `StoreClock` on Redis's time, read now and at every poll, so that stage start times and
        durations do not depend on this machine's wall clock; a StoreClock given is the one
        read; any other clock (a test's) is kept as it is."""
        if self._served or self._follower is not None:
            raise ValueError("this store already serves a RolloutManager; give each its own")
        validate_rollout_name(rollout)
        self._served = True
        self._rollout = rollout
        if clock is None or isinstance(clock, SystemClock):
            clock = StoreClock(clock)
        if not isinstance(clock, StoreClock):
            return clock
        self._clock = clock
        with contextlib.suppress(StateStoreError):  # Redis away: the follower reads it later
            self.read_clock()
        return clock

    @property
    def rollout(self) -> str:
        """The name of the rollout whose state this store holds: the one of the manager it
        serves ("default" until one asks for its clock). The store's metrics (clock skew,
        readiness budget) carry it as their `rollout` label."""
        return self._rollout

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
    def _confirmed_key(self) -> str:
        return f"{self.key}:confirmed"

    @property
    def _abandoned_key(self) -> str:
        return f"{self.key}:abandoned"

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
        """How often the holder renews the lease: well inside its TTL."""
        return min(self.lease_ttl_seconds / 5, 1.0)

    @property
    def _follow_tick(self) -> float:
        """How often the follower renews, seeks or looks at the lease. The holder renews it
        every lease tick, and so does a replica keeping a readiness budget (its slot lives as
        long as the lease); any other replica seeks or looks at it once a sync interval, but at
        least three times a TTL, so that a lease left by a replica that died is taken within a
        third of its TTL after it expires. At rest that is one script call a sync interval,
        beside the poll. (The lease has no part in following the state: a store that lost
        commits is found by the hints, the poll and the reload after a reconnect.)"""
        if self.holds_lease or self._budget is not None:
            return self._lease_tick
        return max(self._lease_tick, min(self.lease_ttl_seconds / 3, self.sync_interval_seconds))

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
            raise StateStoreError(f"{self.describe()}: {step} failed ({_why(error)})") from None

    def _sentinel_client(self, connection: dict[str, Any], password: str | None) -> Any:
        """A client of the primary the sentinels name now: redis-py asks them again on every
        new connection, so a reconnect after a failover reaches the new primary."""
        from redis import sentinel as redis_sentinel
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        assert self._sentinel is not None
        service, addresses = self._sentinel
        parts = urllib.parse.urlsplit(self._url)
        to_sentinels = {
            key: value for key, value in connection.items() if key.startswith(("socket_", "ssl_"))
        }
        # Without waits between attempts: the sentinels are asked in turn anyway, and a
        # follower that finds no primary backs off itself (redis-py's default waits seconds).
        to_sentinels["retry"] = Retry(NoBackoff(), 0)
        if password is not None:
            to_sentinels["password"] = password
        if parts.scheme == "rediss":
            to_sentinels["ssl"] = True
        sentinel: Any = redis_sentinel.Sentinel  # redis-py leaves it untyped
        manager = sentinel(addresses, sentinel_kwargs=to_sentinels)
        return manager.master_for(
            service,
            username=urllib.parse.unquote(parts.username) if parts.username else None,
            password=urllib.parse.unquote(parts.password) if parts.password else None,
            db=int(parts.path.lstrip("/") or 0),
            ssl=parts.scheme == "rediss",
            retry=Retry(NoBackoff(), 1),  # once at once: a pooled connection to a lost primary
            **connection,
        )

    def __repr__(self) -> str:
        return f"RedisStateStore({redact_url(self._url)!r}, key={self.key!r})"


def _document_tag(document: str) -> tuple[int, str, int, str]:
    """What the poll compares of a document: version, incarnation, generation, newest op."""
    parsed = json.loads(document)
    incarnation, operation, generation = _commit_ids(document)
    return (int(parsed["version"]), incarnation, generation, operation)


def _commit_ids(document: str) -> tuple[str, str, int]:
    """The incarnation of a document the manager commits, its newest step's operation and its
    restore generation ("" and 0 for what a document does not say)."""
    try:
        parsed = json.loads(document)
        incarnation = parsed.get("incarnation", "")
        operation = parsed["transitions"][-1].get("op", "")
        generation = int(parsed.get("restore_generation", 0))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return ("", "", 0)
    return (str(incarnation), str(operation), generation)


def _announced(data: Any) -> tuple[int, str, int, str] | None:
    """What a commit's hint names: version, incarnation, restore generation and newest step's
    operation; None for any other message (the evidence's hint, an older release's bare
    version, anything else on the channel)."""
    if not isinstance(data, bytes) or len(data) > 256:
        return None
    parts = data.split(b" ")
    if len(parts) != 4 or not all(parts[i].isdigit() and len(parts[i]) <= 15 for i in (0, 2)):
        return None
    try:
        incarnation, operation = parts[1].decode("ascii"), parts[3].decode("ascii")
    except UnicodeDecodeError:
        return None
    return (int(parts[0]), incarnation, int(parts[2]), operation)


_DRAINED_HINTS = 64  # read off a broken connection at most: a commit sends one

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


def _held(manager: RolloutManager) -> tuple[tuple[int, str, int, str], bool, bool]:
    """What the manager holds, from its published snapshot (never waiting for a move in
    progress): the tag `stored_tag` compares it with, whether it is synced, and whether it
    reports the store regressed or waits to read a commit the store announced (either way, a
    stored tag equal to the one held tells nothing: the state must be read)."""
    snapshot = manager._snapshot()
    steps = snapshot["transitions"]
    tag = (
        snapshot["version"],
        snapshot["incarnation"],
        snapshot["restore_generation"],
        steps[-1]["op"] if steps else "",
    )
    unsettled = snapshot["regressed"] is not None or snapshot["announced"] != 0
    return tag, snapshot["synced"], unsettled


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
        self._next_lease = self._next_poll = 0.0  # when each is due (monotonic seconds)
        self._last_sync: float | None = None
        self._started = time.monotonic()
        self._outage = _RecurringProblem(store.describe(), "answers again")
        self._unreadable = _RecurringProblem(
            store.describe(), "the rollout state is readable again"
        )
        self._budget_failing = _RecurringProblem(
            store.describe(), "the readiness budget is kept again"
        )
        self._regressed = _RecurringProblem(
            store.describe(), "the rollout state this replica has seen is stored again"
        )

    def start(self) -> None:
        self._thread.start()

    def campaign(self, enabled: bool) -> None:
        """Whether to seek the lease (the monitor runs); a change is acted on at the next
        round rather than the next follow tick: a monitor that starts seeks the lease at once,
        one that stops gives it up."""
        if enabled != self.campaigning:
            self.campaigning = enabled
            self._next_lease = 0.0

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
            # A commit of this replica's after the read is no regression.
            held = _held(manager)[0][0]
            document = self._store.load()
            if document is None:
                # Started while Redis was away, and nothing is stored: store the fresh rollout.
                # Synced, the state is lost: the manager reports it and recreates nothing.
                manager.refresh()
            else:
                manager.follow(document, read_at=held)
            self._unreadable.ended()
            self._note_regressed(manager)
        except StateRegressed:
            self._note_regressed(manager)
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

    def _heard(self, manager: RolloutManager, message: dict[str, Any]) -> None:
        """Notes the commit a hint announces, before the read it calls for: should the store
        fail over before that read, the manager still knows what the store acknowledged."""
        announced = _announced(message.get("data"))
        if announced is not None:
            manager._note_announced(*announced)

    def _drain(self, pubsub: Any) -> None:
        """Notes the hints that reached this replica before the store broke off (its kernel
        holds them after the server died), so that a commit announced just before a failover
        is not forgotten with the connection."""
        manager = self._manager()
        if manager is None:
            return
        with contextlib.suppress(Exception):  # the broken connection ends it
            for _ in range(_DRAINED_HINTS):
                message = pubsub.get_message(timeout=0)
                if message is None:
                    return
                self._heard(manager, message)

    def _note_regressed(self, manager: RolloutManager) -> None:
        problem = manager._snapshot()["regressed"]
        if problem is None:
            self._regressed.ended()
        else:
            self._regressed.report(
                logging.ERROR,
                f"{problem}; automatic moves are held and admin moves refused until it is "
                "restored (driftgate state restore)",
            )

    def _read_clock(self, manager: RolloutManager) -> None:
        """Reads Redis's clock into the manager's, and publishes this machine's skew."""
        skew = self._store.read_clock()
        if skew is not None:
            manager.registry.set_gauge(
                CLOCK_SKEW, CLOCK_SKEW_HELP, skew, {ROLLOUT_LABEL: manager.rollout}
            )

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

    def _tend(self, manager: RolloutManager, now: float) -> float:
        """Does what is due at `now` (monotonic seconds): the lease (renewed, sought or looked
        at) and the readiness budget's heartbeat every follow tick, the poll every sync
        interval; returns when the next is due. Raises what the store raises."""
        store = self._store
        if not self.campaigning and store.holds_lease:
            store.release_lease()
        if now >= self._next_lease:
            campaigning = self.campaigning
            if campaigning:
                store.renew_lease()
            else:
                store.observe_lease()
            self._update_budget()
            # A monitor started or stopped meanwhile (on the event loop) is acted on at the next
            # round, as campaign() promises, not a follow tick later.
            changed = campaigning != self.campaigning
            self._next_lease = 0.0 if changed else now + store._follow_tick
        if now >= self._next_poll:
            self._read_clock(manager)
            held, synced, unsettled = _held(manager)
            # Regressed, the state it saw may be back; a commit announced, it may be lost.
            if store.stored_tag() != held or not synced or unsettled:
                self._sync(manager)
            else:
                # The version this replica holds is stored (again): readable.
                self._unreadable.ended()
                self._last_sync = time.monotonic()
            self._next_poll = now + store.sync_interval_seconds
        return min(self._next_poll, self._next_lease)

    def _run(self) -> None:
        store = self._store
        pubsub: Any = None
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
                    self._next_poll = now + store.sync_interval_seconds
                    self._next_lease = now  # and looks at the lease at once
                wait = max(0.0, self._tend(manager, now) - time.monotonic())
                del manager  # not kept alive while waiting
                message = pubsub.get_message(timeout=min(wait, 1.0))
                manager = self._manager()
                if manager is None:
                    break
                if message is not None:
                    self._heard(manager, message)
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
                    self._drain(pubsub)
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
