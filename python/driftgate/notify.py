"""Telling people about a rollout: a notification for every committed transition, for a stage
that waits for approval, and for an error-rate source that keeps failing.

Delivery never delays or fails a transition: the manager hands each notification to a bounded
queue after its commit, and one worker thread sends it to every sink, retrying failures with
exponential backoff and full jitter (a 429's `Retry-After` is honoured), each attempt within its
own total deadline that no receiver can stretch. A full queue drops the notification and counts
it. Every notification is sent once per (rollout, version, event): in a fleet, a replica sends
only what it claimed first in the shared store.

A notification carries the rollout's name, stage names, percentages, the actor, a reason code
and, when configured, the status URL: never request data.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
import http.client
import json
import logging
import math
import queue
import random
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from driftgate._http import Unreached, exchange

__all__ = [
    "Claim",
    "Event",
    "Notification",
    "Notifier",
    "SendError",
    "Sink",
    "SlackSink",
    "WebhookSink",
    "verify_signature",
]

logger = logging.getLogger("driftgate.notify")

SIGNATURE_HEADER = "X-Driftgate-Signature"
TIMESTAMP_HEADER = "X-Driftgate-Timestamp"


class Event(str, enum.Enum):
    """What a notification is about; the value is its wire name."""

    ADVANCED = "advanced"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"
    COMPLETED = "completed"
    WAITING_FOR_APPROVAL = "waiting_for_approval"
    ANALYSIS_FAILING = "analysis_failing"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Notification:
    """One event of one rollout, as every sink receives it."""

    event: Event
    rollout: str
    version: int
    from_stage: str
    to_stage: str
    from_percentage: float
    to_percentage: float
    actor: str  # "auto" for the automatic rules, else the person's name
    reason: str  # a fixed code: manual, error_rate, duration_met, approval_needed, ...
    error_rate: float | None = None
    status_url: str | None = None
    occurrence: int = 0  # tells repeated events at one version apart (analysis failing)
    comment: str | None = None  # the person's reason for a move (printable ASCII, bounded)
    # waiting_for_approval: approvals to enter `to_stage` so far, and how many it needs
    approvals_given: int | None = None
    approvals_required: int | None = None
    # Which state the version counts in: after a store lost the state, or a restore, version
    # numbers come again, and their events are new ones.
    incarnation: str = ""
    restore_generation: int = 0

    @property
    def key(self) -> str:
        """What a fleet deduplicates on: one notification per rollout, state (incarnation and
        restore generation), version and event."""
        suffix = f":{self.occurrence}" if self.occurrence else ""
        state = f"{self.incarnation}.{self.restore_generation}." if self.incarnation else ""
        return f"{self.rollout}:{state}{self.version}:{self.event.value}{suffix}"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["event"] = self.event.value
        for internal in ("occurrence", "incarnation", "restore_generation"):
            del out[internal]
        return out

    def text(self) -> str:
        """One line for people."""
        move = f"{self.from_stage} ({self.from_percentage:g}%) -> {self.to_stage} "
        move += f"({self.to_percentage:g}%)"
        rate = "" if self.error_rate is None else f", error rate {self.error_rate:.3%}"
        what = {
            Event.ADVANCED: f"advanced {move}",
            Event.ROLLED_BACK: f"rolled back {move}",
            Event.ABORTED: f"aborted {move}: nothing enforced",
            Event.COMPLETED: f"completed at {self.to_stage} ({self.to_percentage:g}%)",
            Event.WAITING_FOR_APPROVAL: f"waits for approval to enter {self.to_stage} "
            f"({self.to_percentage:g}%) from {self.from_stage}{self._approvals()}",
            Event.ANALYSIS_FAILING: f"cannot read its error rate at {self.to_stage}: holding",
        }[self.event]
        said = "" if self.comment is None else f': "{self.comment}"'
        return (
            f"Rollout {self.rollout} {what} (by {self.actor}, {self.reason}{rate}, "
            f"v{self.version}){said}"
        )

    def _approvals(self) -> str:
        if self.approvals_required is None or self.approvals_required < 2:
            return ""
        return f" ({self.approvals_given or 0} of {self.approvals_required} approvals so far)"


class SendError(Exception):
    """A send that failed; `retry_after` is the wait a 429 asked for, `final` that retrying
    cannot help (e.g. 404)."""

    def __init__(self, message: str, retry_after: float | None = None, final: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.final = final


class Sink(Protocol):
    """Where notifications go. `send` raises SendError when the receiver refused or failed."""

    name: str
    events: frozenset[Event]

    def send(self, notification: Notification, timeout: float) -> None: ...


#: How much of an answer's body is read (then discarded): the status code decides.
_BODY_LIMIT = 64 * 1024

#: A Retry-After of more digits than this is simply "very long" (and int() refuses thousands).
_LONGEST_DELTA = 12


def _retry_after(value: str | None, now: float) -> float | None:
    """A Retry-After header as seconds from `now` (the wall clock): delta-seconds (ASCII digits
    only) or an HTTP-date, a date in the past being 0; None if absent or neither of these (a
    hint that cannot be read is no hint)."""
    if value is None:
        return None
    value = value.strip(" \t")
    if value.isascii() and value.isdigit():
        return float(int(value)) if len(value) <= _LONGEST_DELTA else math.inf
    if not value.isascii():
        return None
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:  # "-0000": an HTTP-date is always GMT
            when = when.replace(tzinfo=timezone.utc)
        return max(0.0, when.timestamp() - now)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


class _HttpSink:
    """POSTs a JSON body; 2xx is sent, 429 and 5xx are retried, other 4xx are final.
    `wall_clock` (unix seconds, time.time by default) is what a Retry-After date is read
    against and what a webhook's timestamp says."""

    name = "http"

    def __init__(
        self,
        url: str,
        events: Iterable[Event] | None,
        kind: str,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            # The URL is a secret (Slack's carries its token): never shown.
            raise ValueError(f"{kind} URL: expected an http:// or https:// URL")
        try:
            self._parts = urllib.parse.urlsplit(url)
            valid = bool(self._parts.hostname) and self._parts.port != 0
        except ValueError:  # a port that is not a number
            valid = False
        if not valid:
            raise ValueError(f"{kind} URL: expected an http:// or https:// URL with a host")
        self.events = frozenset(Event) if events is None else frozenset(events)
        self._wall_clock = wall_clock or time.time

    def _post(self, body: bytes, headers: dict[str, str], timeout: float) -> None:
        try:
            answer = exchange(
                "POST",
                self._parts,
                timeout=timeout,
                body=body,
                headers=headers,
                body_limit=_BODY_LIMIT,
                whole_body=False,
            )
        except Unreached as error:
            if error.timed_out:
                raise SendError(f"{self.name}: no answer within {timeout:g} s") from None
            raise SendError(f"{self.name}: {error.kind}") from None
        except TimeoutError:
            raise SendError(f"{self.name}: no answer within {timeout:g} s") from None
        except (OSError, http.client.HTTPException) as error:
            raise SendError(f"{self.name}: {type(error).__name__}") from None
        code = answer.status
        if 200 <= code < 300:
            return
        if code == 429 or code >= 500:
            wait = _retry_after(answer.header("retry-after"), self._wall_clock())
            raise SendError(f"{self.name}: answered {code}", retry_after=wait)
        raise SendError(f"{self.name}: answered {code}", final=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<url from the environment>)"


class SlackSink(_HttpSink):
    """A Slack incoming webhook: `text` for notifications, `blocks` for the channel."""

    name = "slack"

    def __init__(
        self,
        url: str,
        events: Iterable[Event] | None = None,
        *,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(url, events, "slack", wall_clock)

    @staticmethod
    def payload(notification: Notification) -> dict[str, Any]:
        # A person's comment is free text: escaped, so it cannot become a link or a mention.
        if notification.comment is not None:
            notification = replace(notification, comment=_slack_escape(notification.comment))
        text = notification.text()
        waiting = notification.event is Event.WAITING_FOR_APPROVAL
        enforced = notification.from_percentage if waiting else notification.to_percentage
        fields = [
            f"*Stage:* {notification.from_stage} -> {notification.to_stage}",
            f"*Enforced:* {enforced:g}%",
            f"*By:* {notification.actor}",
            f"*Reason:* {notification.reason}",
        ]
        if notification.comment is not None:
            fields.append(f"*Comment:* {notification.comment}")
        blocks: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
        ]
        if notification.status_url:
            blocks.append(
                {
                    "type": "context",
                    "elements": [
                        {"type": "mrkdwn", "text": f"<{notification.status_url}|rollout status>"}
                    ],
                }
            )
        return {"text": text, "blocks": blocks}

    def send(self, notification: Notification, timeout: float) -> None:
        self._post(json.dumps(self.payload(notification)).encode(), {}, timeout)


def _slack_escape(text: str) -> str:
    """Text for Slack's mrkdwn: the three characters it reads as markup, as entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _signature(secret: bytes, timestamp: str, body: bytes) -> str:
    return (
        "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    )


def verify_signature(
    secret: str | bytes, body: bytes, timestamp: str, signature: str, *, max_age: float = 300
) -> bool:
    """For receivers of WebhookSink: True when `signature` (the X-Driftgate-Signature header)
    signs `timestamp` (X-Driftgate-Timestamp) and `body` with `secret`, and the timestamp is at
    most `max_age` seconds old (a replayed body fails)."""
    key = secret.encode() if isinstance(secret, str) else secret
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > max_age:
        return False
    return hmac.compare_digest(_signature(key, timestamp, body), signature)


class WebhookSink(_HttpSink):
    """A generic JSON webhook. The body is the notification's fields; the header
    X-Driftgate-Signature is "sha256=" and the HMAC-SHA256 of "<timestamp>.<body>" with the
    shared secret, the timestamp (unix seconds) in X-Driftgate-Timestamp."""

    name = "webhook"

    def __init__(
        self,
        url: str,
        secret: str,
        events: Iterable[Event] | None = None,
        *,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(url, events, "webhook", wall_clock)
        if len(secret) < 16:
            raise ValueError("webhook secret: expected at least 16 characters")
        self._secret = secret.encode()

    def send(self, notification: Notification, timeout: float) -> None:
        body = json.dumps(notification.as_dict(), sort_keys=True).encode()
        timestamp = str(int(self._wall_clock()))
        headers = {
            SIGNATURE_HEADER: _signature(self._secret, timestamp, body),
            TIMESTAMP_HEADER: timestamp,
        }
        self._post(body, headers, timeout)


#: claim(key) -> True for the first caller in the fleet.
Claim = Callable[[str], bool]
#: count(sink, event, outcome), e.g. into driftgate_notifications_total.
Count = Callable[[str, str, str], None]


class _LocalClaims:
    """Claims remembered in this process (the file store's single process)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def __call__(self, key: str) -> bool:
        with self._lock:
            if key in self._seen:
                return False
            self._seen[key] = None
            if len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
            return True


class Notifier:
    """Delivers notifications to sinks from a bounded queue in one worker thread.

    `claim` deduplicates across a fleet (default: within this process). `count` is told
    every outcome: sent, failed (retries exhausted or a final refusal), dropped (queue full),
    duplicate; a RolloutManager given a notifier without one counts them in
    driftgate_notifications_total. `timeout` is each attempt's whole deadline in seconds
    (connecting, sending and reading the answer). `sleep` and `rng` are injectable so tests
    never wait."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        queue_size: int = 1000,
        attempts: int = 5,
        timeout: float = 5.0,
        backoff: float = 0.5,
        max_backoff: float = 60.0,
        claim: Claim | None = None,
        count: Count | None = None,
        status_url: str | None = None,
        sleep: Callable[[float], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not 1 <= queue_size <= 1_000_000:
            raise ValueError(f"queue_size={queue_size!r}: expected 1 to 1000000")
        if not 1 <= attempts <= 100:
            raise ValueError(f"attempts={attempts!r}: expected 1 to 100")
        for name, value in (
            ("timeout", timeout),
            ("backoff", backoff),
            ("max_backoff", max_backoff),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value!r}: expected seconds > 0")
        self.sinks = list(sinks)
        self.status_url = status_url
        self._queue: queue.Queue[Notification | None] = queue.Queue(queue_size)
        self._attempts = attempts
        self._timeout = timeout
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._claim = claim or _LocalClaims()
        #: Told every outcome; a RolloutManager given this notifier without one counts them in
        #: driftgate_notifications_total.
        self.count: Count | None = count
        self._stopping = threading.Event()
        self._sleep: Callable[[float], object] = sleep or self._stopping.wait
        self._rng = rng or random.Random()
        # The worker starts with the first notification, and again after a close.
        self._worker_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def publish(self, notification: Notification) -> bool:
        """Queues `notification` unless another replica (or an earlier call) claimed it;
        never blocks, but for the moment of a `close` under way. False when it was a
        duplicate or the queue was full."""
        wanted = [s for s in self.sinks if notification.event in s.events]
        if not wanted:
            return False
        key = notification.key
        try:
            first = self._claim(key)
        except Exception as error:  # the store is away: better twice than never
            logger.warning("notification claim failed (%s); sending anyway", type(error).__name__)
            first = True
        if not first:
            for sink in wanted:
                self._counted(sink.name, notification.event.value, "duplicate")
            return False
        try:
            self._queue.put_nowait(notification)
            self._start_worker()
        except queue.Full:
            for sink in wanted:
                self._counted(sink.name, notification.event.value, "dropped")
            logger.warning("notification queue full: %s dropped", notification.event.value)
            return False
        return True

    def _counted(self, sink: str, event: str, outcome: str) -> None:
        if self.count is not None:
            self.count(sink, event, outcome)

    def _start_worker(self) -> None:
        with self._worker_lock:
            if self._thread is None:
                self._stopping.clear()
                self._thread = threading.Thread(
                    target=self._run, name="driftgate-notify", daemon=True
                )
                self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Sends what is queued (within `timeout`), then stops the worker; a notification
        published later starts it again."""
        with self._worker_lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            with contextlib.suppress(queue.Full):  # still full: stop without the rest
                self._queue.put(None, timeout=timeout)
            thread.join(timeout)
            self._stopping.set()

    def join(self) -> None:
        """Waits until everything queued so far was delivered or given up (for tests)."""
        self._queue.join()

    def _run(self) -> None:
        while True:
            notification = self._queue.get()
            try:
                if notification is None:
                    return
                for sink in self.sinks:
                    if notification.event in sink.events:
                        self._deliver(sink, notification)
            finally:
                self._queue.task_done()

    def _deliver(self, sink: Sink, notification: Notification) -> None:
        event = notification.event.value
        for attempt in range(1, self._attempts + 1):
            try:
                sink.send(notification, self._timeout)
            except SendError as error:
                if error.final or attempt == self._attempts:
                    logger.warning("notification %s to %s failed: %s", event, sink.name, error)
                    self._counted(sink.name, event, "failed")
                    return
                # Full jitter keeps a fleet of senders from retrying in step.
                wait = self._rng.uniform(
                    0, min(self._max_backoff, self._backoff * 2 ** (attempt - 1))
                )
                if error.retry_after is not None:
                    wait = min(max(wait, error.retry_after), self._max_backoff)
                self._sleep(wait)
            except Exception as error:  # a sink's bug must not kill the worker
                logger.warning("notification %s to %s failed (%s)", event, sink.name, error)
                self._counted(sink.name, event, "failed")
                return
            else:
                self._counted(sink.name, event, "sent")
                return
