"""One HTTP exchange within one total deadline, on the standard library only: the notifier's
deliveries and the command line's requests to a service.

A socket timeout bounds each read, so a peer sending a byte every few seconds could hold a
request for as long as it likes; here resolving, connecting, the TLS handshake, sending and
every read share what is left of one deadline, and an answer's body is read up to a limit.
HTTP(S)_PROXY, ALL_PROXY and NO_PROXY are followed as other clients do (an http:// proxy,
with CONNECT for https). What failed before anything was sent is `Unreached`, so a caller can
tell "certainly not received" from "perhaps received".
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = ["Answer", "BodyTooLarge", "Deadline", "Unreached", "exchange"]


class Unreached(OSError):
    """Nothing was sent: the name did not resolve, no connection (or proxy tunnel, or TLS
    handshake) was made, or not within the deadline (`timed_out`). `kind` names the failure
    (an exception's class name), never a URL."""

    def __init__(self, error: BaseException):
        super().__init__(type(error).__name__)
        self.kind = type(error).__name__
        self.timed_out = isinstance(error, TimeoutError)


class BodyTooLarge(ValueError):
    """An answer's body longer than the caller's limit."""


class Deadline:
    """The end of one attempt: resolving, connecting, the TLS handshake, sending and every read
    get only what is left of it, so a receiver that trickles or hangs cannot stretch it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        left = self._end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"deadline of {self.seconds:g} s passed")
        return left


class _BoundedSocket(socket.socket):
    """A socket whose every send and read may take only what is left of its deadline (a
    socket timeout alone bounds each read, and a byte every few seconds resets it)."""

    deadline: Deadline

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self.settimeout(self.deadline.left())
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        self.settimeout(self.deadline.left())
        return super().recv_into(buffer, nbytes, flags)

    def send(self, data: ReadableBuffer, flags: int = 0) -> int:
        self.settimeout(self.deadline.left())
        return super().send(data, flags)

    def sendall(self, data: ReadableBuffer, flags: int = 0) -> None:
        self.settimeout(self.deadline.left())
        super().sendall(data, flags)


class _BoundedTLSSocket(ssl.SSLSocket):
    """The same over TLS (the handshake is bounded by the timeout set before it)."""

    deadline: Deadline

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        self.settimeout(self.deadline.left())
        return super().recv(buflen, flags)

    def recv_into(self, buffer: WriteableBuffer, nbytes: int | None = None, flags: int = 0) -> int:
        self.settimeout(self.deadline.left())
        return super().recv_into(buffer, nbytes, flags)

    def send(self, data: ReadableBuffer, flags: int = 0) -> int:
        self.settimeout(self.deadline.left())
        return super().send(data, flags)

    def sendall(self, data: ReadableBuffer, flags: int = 0) -> None:
        self.settimeout(self.deadline.left())
        super().sendall(data, flags)


_tls_context: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    global _tls_context
    if _tls_context is None:
        context = ssl.create_default_context()
        context.sslsocket_class = _BoundedTLSSocket
        _tls_context = context
    return _tls_context


def _resolve(host: str, port: int, deadline: Deadline) -> list[Any]:
    """getaddrinfo has no timeout: it runs in a thread the attempt stops waiting for."""
    found: list[Any] = []

    def lookup() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as error:
            found.append(error)

    thread = threading.Thread(target=lookup, name="driftgate-http-resolve", daemon=True)
    thread.start()
    thread.join(deadline.left())
    if not found:
        raise TimeoutError(f"no address within {deadline.seconds:g} s")
    if isinstance(found[0], OSError):
        raise found[0]
    addresses: list[Any] = found[0]
    return addresses


def _connect(host: str, port: int, deadline: Deadline) -> _BoundedSocket:
    error: OSError = OSError("no address")
    for family, kind, proto, _, address in _resolve(host, port, deadline):
        sock = _BoundedSocket(family, kind, proto)
        sock.deadline = deadline
        try:
            sock.settimeout(deadline.left())
            sock.connect(address)
        except OSError as failed:
            sock.close()
            if isinstance(failed, TimeoutError):
                raise
            error = failed
        else:
            return sock
    raise error


def _proxy(url: urllib.parse.SplitResult) -> urllib.parse.SplitResult | None:
    """The proxy that HTTPS_PROXY, HTTP_PROXY or ALL_PROXY name for `url`, unless NO_PROXY
    exempts its host: the same variables any HTTP client in the process follows."""
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(url.netloc):
        return None
    parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
    if parts.scheme != "http" or not parts.hostname:
        raise OSError("the proxy variable names no http:// proxy")
    return parts


def _proxy_headers(proxy: urllib.parse.SplitResult) -> dict[str, str]:
    if proxy.username is None:
        return {}
    user = urllib.parse.unquote(proxy.username) + ":" + urllib.parse.unquote(proxy.password or "")
    return {"Proxy-Authorization": "Basic " + base64.b64encode(user.encode()).decode()}


def _tunnel(sock: socket.socket, host: str, port: int, proxy: urllib.parse.SplitResult) -> None:
    """CONNECT through an HTTP proxy, on the attempt's bounded socket."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    lines += [f"{name}: {value}" for name, value in _proxy_headers(proxy).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
    answer = http.client.HTTPResponse(sock, method="CONNECT")
    try:
        answer.begin()
    finally:
        answer.close()  # its reader only: the socket goes on as the tunnel
    if answer.status != 200:
        raise OSError(f"the proxy answered {answer.status} to CONNECT")


def exchange(
    method: str,
    url: str | urllib.parse.SplitResult,
    *,
    timeout: float,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    body_limit: int = 8 << 20,
    whole_body: bool = True,
) -> Answer:
    """`method` on `url` within `timeout` seconds in all. With `whole_body`, the answer's
    body is read to its end (BodyTooLarge past `body_limit`; TimeoutError when the deadline
    passes first); without, at most `body_limit` bytes are read and the rest, or a failure
    while reading, is ignored (the status decides). Unreached when nothing was sent;
    TimeoutError, OSError or http.client.HTTPException after that."""
    parts = url if isinstance(url, urllib.parse.SplitResult) else urllib.parse.urlsplit(url)
    deadline = Deadline(timeout)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    extra: dict[str, str] = {}
    try:
        proxy = _proxy(parts)
        if proxy is None:
            sock: socket.socket = _connect(host, port, deadline)
        else:
            sock = _connect(proxy.hostname or "", proxy.port or 80, deadline)
    except OSError as error:
        raise Unreached(error) from None
    answer: http.client.HTTPResponse | None = None
    try:
        connection: http.client.HTTPConnection
        if https:
            try:
                if proxy is not None:
                    _tunnel(sock, host, port, proxy)
                tls = _tls().wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
                assert isinstance(tls, _BoundedTLSSocket)
                sock = tls
                tls.deadline = deadline
                tls.settimeout(deadline.left())
                tls.do_handshake()
            except (OSError, http.client.HTTPException) as error:
                raise Unreached(error) from None
            connection = http.client.HTTPSConnection(host, port, context=_tls())
        else:
            if proxy is not None:  # a plain HTTP proxy is asked for the whole URL
                path = urllib.parse.urlunsplit(parts._replace(fragment=""))
                extra = _proxy_headers(proxy)
            connection = http.client.HTTPConnection(host, port)
        connection.sock = sock  # connected and bounded: http.client only speaks HTTP over it
        sent = {"Connection": "close", **extra, **(headers or {})}
        if body is not None:
            sent.setdefault("Content-Type", "application/json")
        connection.request(method, path, body, sent)
        answer = connection.getresponse()
        content = _read(answer, body_limit, whole_body)
        return Answer(urllib.parse.urlunsplit(parts), answer.status, answer.headers, content)
    finally:
        if answer is not None:
            answer.close()
        sock.close()


def _read(answer: http.client.HTTPResponse, limit: int, whole: bool) -> bytes:
    chunks: list[bytes] = []
    unread = limit
    if not whole:
        # Reading a little lets the peer finish its answer; whatever goes wrong reading it
        # (the deadline, a reset) changes nothing.
        with contextlib.suppress(OSError, http.client.HTTPException):
            while unread > 0:
                chunk = answer.read(min(unread, 16 * 1024))
                if not chunk:
                    break
                chunks.append(chunk)
                unread -= len(chunk)
        return b"".join(chunks)
    while True:
        chunk = answer.read(min(unread + 1, 64 * 1024))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        unread -= len(chunk)
        if unread < 0:
            raise BodyTooLarge(f"an answer longer than {limit} bytes")


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: its status, headers and (as much as was read of) its body."""

    url: str
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)
