"""Every delivery attempt ends by its deadline, reads at most a little of an answer, and reads
Retry-After as RFC 9110 writes it: against receivers on 127.0.0.1 that answer a gigabyte,
trickle a byte at a time, hang, or send a hint that is no number."""

import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from email.utils import formatdate
from pathlib import Path

import pytest

from driftgate.notify import Event, Notifier, SlackSink, WebhookSink
from test_notify import Counts, Receiver, Sleeps, notification, receiving

SECRET = "a-webhook-secret-of-some-length"
WALL = 1_700_000_000.0  # the sinks' wall clock in the Retry-After cases

Answer = Callable[[socket.socket, threading.Event], None]


def read_request(conn: socket.socket) -> bytes:
    """The whole request (headers and Content-Length body), so that the answer follows it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


@contextmanager
def raw_receiver(answer: Answer, requests: list[bytes] | None = None) -> Iterator[str]:
    """A bare TCP server: each connection's request is added to `requests`, then the
    connection is handed to `answer`, which writes what it likes until `stop` is set."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def serve(conn: socket.socket) -> None:
        with conn, suppress(OSError):
            request = read_request(conn)
            if requests is not None:
                requests.append(request)
            answer(conn, stop)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=serve, args=(conn,), daemon=True)
            threads.append(thread)
            thread.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    finally:
        stop.set()
        acceptor.join(5)
        listener.close()
        for thread in threads:
            thread.join(5)


def trickle(data: bytes, every: float, head: bytes = b"") -> Answer:
    """`head` at once, then `data` a byte every `every` seconds."""

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(head)
        for byte in data:
            conn.sendall(bytes([byte]))
            if stop.wait(every):
                return

    return answer


def hang_after(data: bytes) -> Answer:
    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(data)
        stop.wait(30)

    return answer


class Timed(Counts):
    """Counts, and when each outcome was told."""

    def __init__(self) -> None:
        super().__init__()
        self.at: list[float] = []

    def __call__(self, sink: str, event: str, outcome: str) -> None:
        self.at.append(time.monotonic())
        super().__call__(sink, event, outcome)


def kib_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def test_a_gigabyte_answer_is_sent_and_never_read_into_memory():
    gigabyte = 1 << 30
    written = [0]

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % gigabyte)
        block = bytes(64 * 1024)  # streamed: the gigabyte never exists anywhere
        while written[0] < gigabyte and not stop.is_set():
            conn.sendall(block)
            written[0] += len(block)

    counts = Counts()
    with raw_receiver(answer) as url:
        # The peak resident size is reset so that a body read whole and freed again still shows.
        with suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")
        rss, peak = kib_status("VmRSS"), kib_status("VmHWM")
        notifier = Notifier([WebhookSink(url, SECRET)], count=counts, sleep=Sleeps())
        started = time.monotonic()
        assert notifier.publish(notification())
        notifier.join()
        took = time.monotonic() - started
        notifier.close()
        grew = max(kib_status("VmRSS") - rss, kib_status("VmHWM") - peak)
    assert counts.seen == [("webhook", "advanced", "sent")]
    assert grew < 20 * 1024, f"the process grew by {grew} KiB"
    assert took < 5.0
    assert written[0] < 64 << 20  # the receiver was cut off, not drained


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        # headers a byte every 0.5 s: no status by the deadline
        (trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 0.5), "failed"),
        # the status at once, then a body a byte every 0.5 s: the status decides
        (trickle(b"x" * 100, 0.5, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"), "sent"),
    ],
    ids=["headers", "body"],
)
def test_a_trickling_receiver_ends_by_the_deadline_and_the_next_notification_follows(
    answer, outcome
):
    counts = Timed()
    fine = Receiver()
    with raw_receiver(answer) as slow_url, receiving(fine) as fine_url:
        notifier = Notifier(
            [
                WebhookSink(slow_url, SECRET, [Event.ADVANCED]),
                SlackSink(fine_url, [Event.COMPLETED]),
            ],
            count=counts,
            sleep=Sleeps(),
            attempts=1,
            timeout=1.5,
        )
        started = time.monotonic()
        assert notifier.publish(notification(Event.ADVANCED))
        assert notifier.publish(notification(Event.COMPLETED))  # queued behind it
        notifier.join()
        notifier.close()
    assert counts.seen == [("webhook", "advanced", outcome), ("slack", "completed", "sent")]
    slow_ended, next_sent = (at - started for at in counts.at)
    assert 1.4 <= slow_ended <= 2.0, f"the attempt ended after {slow_ended:.2f} s"
    assert next_sent <= slow_ended + 0.5, f"the next one was sent after {next_sent:.2f} s"
    assert len(fine.requests) == 1


@pytest.mark.parametrize(
    ("sent", "outcome"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", "sent"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "failed"),
        (b"", "failed"),
    ],
    ids=["after-headers", "within-headers", "before-answering"],
)
def test_a_receiver_that_hangs_ends_by_the_deadline(sent, outcome):
    counts = Timed()
    with raw_receiver(hang_after(sent)) as url:
        notifier = Notifier(
            [WebhookSink(url, SECRET)], count=counts, sleep=Sleeps(), attempts=1, timeout=1.0
        )
        started = time.monotonic()
        assert notifier.publish(notification())
        notifier.join()
        notifier.close()
    assert counts.seen == [("webhook", "advanced", outcome)]
    assert 0.9 <= counts.at[0] - started <= 1.5


JITTER = "jitter"  # no usable hint: the normal backoff, here at most 0.01 s


@pytest.mark.parametrize(
    ("header", "wait"),
    [
        ("2", 2.0),
        ("0", JITTER),  # "now": the jittered backoff is the wait
        (" 7 ", 7.0),
        (formatdate(WALL + 30, usegmt=True), 30.0),
        (formatdate(WALL + 30).replace("-0000", "+0000"), 30.0),
        ("Tue, 14 Nov 2023 22:13:50 -0000", 30.0),  # "-0000" is GMT too
        (formatdate(WALL - 30, usegmt=True), JITTER),  # in the past
        ("Wed, 21 Oct 2015 07:28:00 GMT", JITTER),
        ("²", JITTER),  # a digit to int(), but not delta-seconds
        ("1²", JITTER),
        ("-5", JITTER),
        ("", JITTER),
        ("1.5", JITTER),
        ("0x10", JITTER),
        ("3 s", JITTER),
        ("soon", JITTER),
        ("Mon, 99 Foo 2023 25:61:00 GMT", JITTER),
        ("Fri, 31 Dec 99999 23:59:59 GMT", JITTER),
        ("99999999999999999999", 60.0),  # at most max_backoff
        ("9" * 5000, 60.0),
        (formatdate(WALL + 86_400 * 365, usegmt=True), 60.0),
    ],
)
def test_retry_after_is_delta_seconds_or_an_http_date_else_the_normal_backoff(header, wait):
    receiver = Receiver([(429, {"Retry-After": header}), (200, {})])
    counts, sleeps = Counts(), Sleeps()
    with receiving(receiver) as url:
        notifier = Notifier(
            [SlackSink(url, wall_clock=lambda: WALL)],
            count=counts,
            sleep=sleeps,
            backoff=0.01,
            rng=random.Random(7),
        )
        assert notifier.publish(notification())
        notifier.join()
        notifier.close()
    assert counts.seen == [("slack", "advanced", "sent")]
    assert len(receiver.requests) == 2
    [waited] = sleeps.waits
    if wait == JITTER:
        assert 0 <= waited <= 0.01
    else:
        assert waited == pytest.approx(wait)


def test_a_huge_retry_after_is_bounded_by_max_backoff_and_a_503_hint_is_honoured_too():
    receiver = Receiver([(503, {"Retry-After": "3600"}), (503, {"Retry-After": "4"}), (200, {})])
    counts, sleeps = Counts(), Sleeps()
    with receiving(receiver) as url:
        notifier = Notifier(
            [SlackSink(url)], count=counts, sleep=sleeps, backoff=0.01, max_backoff=10.0
        )
        assert notifier.publish(notification())
        notifier.join()
        notifier.close()
    assert sleeps.waits == [10.0, 4.0]
    assert counts.seen == [("slack", "advanced", "sent")]


def proxy_variables(monkeypatch, **values: str) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        for spelled in (name, name.upper()):
            monkeypatch.delenv(spelled, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_an_http_proxy_named_in_the_environment_is_asked_for_the_whole_url(monkeypatch):
    seen: list[bytes] = []
    with raw_receiver(hang_after(b"HTTP/1.1 204 No Content\r\n\r\n"), seen) as proxy:
        proxy_variables(monkeypatch, HTTP_PROXY=proxy.removesuffix("/hook"))
        counts, _ = deliver_once(WebhookSink("http://hooks.invalid:8080/in?x=1", SECRET))
    assert counts.seen == [("webhook", "advanced", "sent")]
    [request] = seen
    assert request.startswith(b"POST http://hooks.invalid:8080/in?x=1 HTTP/1.1\r\n")
    assert b"\r\nHost: hooks.invalid:8080\r\n" in request


def test_https_goes_through_the_proxys_tunnel_and_no_proxy_is_followed(monkeypatch):
    seen: list[bytes] = []
    established = b"HTTP/1.1 200 Connection established\r\n\r\n"
    with raw_receiver(hang_after(established), seen) as proxy:
        proxy_variables(monkeypatch, HTTPS_PROXY=proxy.removesuffix("/hook"))
        # The proxy opens no tunnel anywhere: the TLS handshake finds nobody and times out.
        counts, _ = deliver_once(SlackSink("https://hooks.invalid/services/x"), timeout=1.0)
    assert counts.seen == [("slack", "advanced", "failed")]
    assert [request.split(b"\r\n")[0] for request in seen] == [
        b"CONNECT hooks.invalid:443 HTTP/1.1"
    ]
    receiver = Receiver()
    with receiving(receiver) as url:
        proxy_variables(monkeypatch, HTTP_PROXY="http://127.0.0.1:9", NO_PROXY="127.0.0.1")
        counts, _ = deliver_once(SlackSink(url))
    assert counts.seen == [("slack", "advanced", "sent")]
    assert len(receiver.requests) == 1


def deliver_once(sink, **kwargs) -> tuple[Counts, Sleeps]:
    counts, sleeps = Counts(), Sleeps()
    notifier = Notifier([sink], count=counts, sleep=sleeps, attempts=1, **kwargs)
    assert notifier.publish(notification())
    notifier.join()
    notifier.close()
    return counts, sleeps


def test_a_resolver_that_never_answers_ends_the_attempt_by_its_deadline(monkeypatch):
    released = threading.Event()
    resolve = socket.getaddrinfo

    def stuck(host, *args, **kwargs):
        if host == "hooks.invalid":
            released.wait(30)
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", stuck)
    proxy_variables(monkeypatch)
    counts = Timed()
    notifier = Notifier(
        [WebhookSink("http://hooks.invalid/hook", SECRET)],
        count=counts,
        sleep=Sleeps(),
        attempts=1,
        timeout=0.5,
    )
    started = time.monotonic()
    try:
        assert notifier.publish(notification())
        notifier.join()
    finally:
        released.set()
        notifier.close()
    assert counts.seen == [("webhook", "advanced", "failed")]
    assert 0.45 <= counts.at[0] - started <= 1.0
