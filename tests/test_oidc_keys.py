"""The OIDC key set is fetched like a well-behaved client: one fetch at a time, failures
remembered, the last good set served while a refresh runs or fails (within its stale bound),
unknown kids refetched at most once per interval, and no token waiting on a fetch beyond
`max_wait_seconds` (none whose key is held). Against a key-set server on 127.0.0.1 that
answers, fails, hangs or answers garbage, with a fake monotonic clock for the cache's times."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio.to_thread
import httpx
import pytest
from fastapi.testclient import TestClient

import driftgate
from driftgate.fastapi.auth import Approvers, approvers_from_settings
from driftgate.identity import IdentityError, OIDCVerifier
from driftgate.reasons import ReasonCode
from driftgate.settings import parse_settings

jwt = pytest.importorskip("jwt")
from driftgate._jwks import FETCH_OUTCOMES, MAX_KEY_SET_BYTES, MAX_WAITING  # noqa: E402
from test_identity import (  # noqa: E402
    ADVANCE,
    AUDIENCE,
    ISSUER,
    ROLLBACK,
    STATUS,
    FakeMonotonic,
    Key,
    bearer,
    claims,
    rollout_app,
)

CACHE = 300.0
INTERVAL = 30.0
FAILURE_CACHE = 10.0
MAX_STALE = 3600.0
FETCHES = "driftgate_oidc_key_set_fetches_total"
AGE = "driftgate_oidc_key_set_age_seconds"
PROMPT = 0.1  # what "at once" means for a token whose key is held: well under any fetch


class KeyServer:
    """The issuer's JWKS endpoint. `mode`: `ok` (the keys), `error` (500), `hold` (the keys,
    once `release` is set: a slow or hanging issuer), `not_json`, `huge` (over the cap),
    `empty` (a set without keys)."""

    def __init__(self, *keys: Key):
        self.keys = list(keys)
        self.mode = "ok"
        self.release = threading.Event()
        self._fetches = 0
        self._arrived = threading.Condition()

    @property
    def fetches(self) -> int:
        with self._arrived:
            return self._fetches

    def wait_for_fetches(self, count: int, timeout: float = 10.0) -> None:
        with self._arrived:
            assert self._arrived.wait_for(lambda: self._fetches >= count, timeout), (
                f"{self._fetches} fetches, expected {count}"
            )

    def answer(self) -> tuple[int, bytes]:
        with self._arrived:
            self._fetches += 1
            self._arrived.notify_all()
        mode = self.mode
        if mode == "hold":
            self.release.wait(30)
        if mode == "error":
            return 500, b'{"error": "internal"}'
        if mode == "not_json":
            return 200, b"<html>maintenance</html>"
        if mode == "huge":
            return 200, b'{"keys": [' + b" " * MAX_KEY_SET_BYTES + b"]}"
        if mode == "empty":
            return 200, b'{"keys": []}'
        return 200, json.dumps({"keys": [key.jwk() for key in self.keys]}).encode()


@pytest.fixture
def first_key() -> Key:
    return Key("key-1")


@pytest.fixture
def server(first_key: Key) -> Iterator[KeyServer]:
    keys = KeyServer(first_key)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = keys.answer()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the client gave up first
                self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    http.daemon_threads = True
    thread = threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    keys.url = f"http://127.0.0.1:{http.server_address[1]}/certs"  # type: ignore[attr-defined]
    try:
        yield keys
    finally:
        keys.release.set()
        http.shutdown()
        http.server_close()
        thread.join(5)


@pytest.fixture
def clock() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def registry() -> driftgate.MetricsRegistry:
    return driftgate.MetricsRegistry()


@pytest.fixture
def make(
    server: KeyServer, clock: FakeMonotonic, registry: driftgate.MetricsRegistry
) -> Callable[..., OIDCVerifier]:
    def make(**options: Any) -> OIDCVerifier:
        settings: dict[str, Any] = {
            "cache_seconds": CACHE,
            "refresh_interval": INTERVAL,
            "failure_cache_seconds": FAILURE_CACHE,
            "max_stale_seconds": MAX_STALE,
            "timeout": 5.0,
            "max_wait_seconds": 5.0,
            **options,
        }
        return OIDCVerifier(
            issuer=ISSUER,
            audience=AUDIENCE,
            jwks_url=server.url,  # type: ignore[attr-defined]
            monotonic=clock,
            registry=registry,
            **settings,
        )

    return make


@pytest.fixture
def valid(first_key: Key) -> str:
    return first_key.sign(claims())


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(kid: str) -> str:
    """An unauthenticated token: any kid, RS256, a signature nobody made."""
    header = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": kid}).encode())
    return f"{header}.{b64(json.dumps(claims()).encode())}.{b64(b'not a signature')}"


def reason(verifier: OIDCVerifier, token: str) -> ReasonCode | str:
    """The reason `token` is refused with, or the actor it names."""
    try:
        return verifier.identify(token).name
    except IdentityError as error:
        return error.reason


def timed(verifier: OIDCVerifier, token: str) -> tuple[ReasonCode | str, float]:
    start = time.monotonic()
    answer = reason(verifier, token)
    return answer, time.monotonic() - start


def fetches(registry: driftgate.MetricsRegistry) -> dict[str, float]:
    for name, _, _, samples in registry.collect():
        if name == FETCHES:
            return {labels["outcome"]: value for _, labels, value in samples}
    return {}


def gauge(registry: driftgate.MetricsRegistry, wanted: str) -> float | None:
    for name, _, _, samples in registry.collect():
        if name == wanted:
            return samples[0][2]
    return None


def from_threads(count: int, work: Callable[[int], Any], threads: int = 16) -> list[Any]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(work, range(count)))


def warm(verifier: OIDCVerifier, token: str, server: KeyServer) -> None:
    assert reason(verifier, token) == "dana.ops"
    assert server.fetches == 1


# -- failures are remembered -----------------------------------------------------------------


def test_a_failing_key_set_is_fetched_once_per_failure_interval_whatever_the_requests(
    make, server, clock, registry
):
    server.mode = "error"
    verifier = make()
    answers = from_threads(1000, lambda i: reason(verifier, forged(f"made-up-{i}")))
    assert set(answers) == {ReasonCode.IDENTITY_PROVIDER}
    assert server.fetches == 1
    # the failure is remembered for failure_cache_seconds, to the millisecond
    clock.now += FAILURE_CACHE - 0.001
    answers = from_threads(100, lambda i: reason(verifier, forged(f"again-{i}")))
    assert set(answers) == {ReasonCode.IDENTITY_PROVIDER}
    assert server.fetches == 1
    clock.now += 0.001
    answers = from_threads(100, lambda i: reason(verifier, forged(f"later-{i}")))
    assert set(answers) == {ReasonCode.IDENTITY_PROVIDER}
    assert server.fetches == 2
    assert fetches(registry) == {**dict.fromkeys(FETCH_OUTCOMES, 0.0), "http_error": 2.0}


@pytest.mark.parametrize(
    ("mode", "outcome"),
    [
        ("not_json", "not_json"),
        ("huge", "too_large"),
        ("empty", "invalid"),
        ("error", "http_error"),
    ],
)
def test_an_unusable_answer_is_503_and_counted_by_its_outcome(
    make, server, registry, valid, mode, outcome
):
    server.mode = mode
    verifier = make()
    assert reason(verifier, valid) == ReasonCode.IDENTITY_PROVIDER
    assert fetches(registry)[outcome] == 1.0
    assert sum(fetches(registry).values()) == 1.0
    assert gauge(registry, AGE) is None  # no key set in use yet


def test_an_unreachable_issuer_is_counted_as_unreachable(registry, clock, valid):
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        url = f"http://127.0.0.1:{closed.server_address[1]}/certs"
    verifier = OIDCVerifier(
        issuer=ISSUER, audience=AUDIENCE, jwks_url=url, monotonic=clock, registry=registry
    )
    assert reason(verifier, valid) == ReasonCode.IDENTITY_PROVIDER
    assert fetches(registry)["unreachable"] == 1.0


def test_a_fetch_past_its_deadline_is_a_timeout(make, server, registry, valid):
    server.mode = "hold"  # released only at the end of the test
    verifier = make(timeout=0.2, max_wait_seconds=0.05)
    assert reason(verifier, valid) == ReasonCode.IDENTITY_PROVIDER
    assert verifier.keys.settle(5)
    assert fetches(registry)["timeout"] == 1.0
    assert server.fetches == 1


# -- nobody waits on a fetch for a key that is held ------------------------------------------


def test_valid_tokens_are_answered_at_once_while_a_refresh_hangs(
    make, server, clock, registry, valid
):
    verifier = make()
    warm(verifier, valid, server)
    server.mode = "hold"
    clock.now += CACHE  # expired: refreshed in the background, the set is served meanwhile
    answers = from_threads(50, lambda _: timed(verifier, valid), threads=8)
    server.wait_for_fetches(2)
    assert {answer for answer, _ in answers} == {"dana.ops"}
    assert max(elapsed for _, elapsed in answers) < PROMPT
    assert server.fetches == 2  # one refresh, however many tokens
    assert gauge(registry, AGE) == CACHE  # the stale set's age, as of its last use
    server.release.set()  # the slow issuer answers: the refreshed set replaces the stale one
    assert verifier.keys.settle(5)
    assert fetches(registry)["success"] == 2.0
    assert gauge(registry, AGE) == 0.0
    assert reason(verifier, valid) == "dana.ops"
    assert server.fetches == 2


def test_forged_unknown_kids_never_make_a_valid_token_wait(make, server, clock, valid):
    verifier = make(max_wait_seconds=1.0)
    warm(verifier, valid, server)
    server.mode = "hold"
    clock.now += INTERVAL  # an unknown kid may refetch now: the refetch hangs
    with ThreadPoolExecutor(32) as pool:
        attacks = [pool.submit(timed, verifier, forged(f"made-up-{i}")) for i in range(200)]
        server.wait_for_fetches(2)
        own = [timed(verifier, valid) for _ in range(20)]
        refused = [attack.result() for attack in attacks]
    assert {answer for answer, _ in own} == {"dana.ops"}
    assert max(elapsed for _, elapsed in own) < PROMPT
    # the forged ones could not be looked up (503), none waited past the bound, one fetch
    assert {answer for answer, _ in refused} == {ReasonCode.IDENTITY_PROVIDER}
    assert max(elapsed for _, elapsed in refused) < 1.0 + 0.5
    assert server.fetches == 2


def test_a_cold_start_waits_for_the_first_fetch_only_up_to_the_bound(make, server, valid):
    server.mode = "hold"
    verifier = make(max_wait_seconds=0.3)
    answer, elapsed = timed(verifier, valid)
    assert answer == ReasonCode.IDENTITY_PROVIDER
    assert 0.3 <= elapsed < 0.3 + 0.5
    # however many tokens arrive meanwhile, at most MAX_WAITING of them wait
    answers = from_threads(3 * MAX_WAITING, lambda _: timed(verifier, valid), 3 * MAX_WAITING)
    assert {answer for answer, _ in answers} == {ReasonCode.IDENTITY_PROVIDER}
    waited = [elapsed for _, elapsed in answers if elapsed >= 0.15]
    assert 1 <= len(waited) <= MAX_WAITING
    assert max(elapsed for _, elapsed in answers) < 0.3 + 0.5
    assert server.fetches == 1
    server.release.set()  # the slow issuer answers at last
    assert verifier.keys.settle(5)
    assert timed(verifier, valid)[0] == "dana.ops"
    assert server.fetches == 1


def test_a_slow_first_fetch_within_the_bound_answers_the_token_that_waited(make, server, valid):
    server.mode = "hold"
    verifier = make(max_wait_seconds=10.0)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(reason, verifier, valid)
        server.wait_for_fetches(1)
        assert not waiting.done()
        server.release.set()
        assert waiting.result(10) == "dana.ops"
    assert server.fetches == 1


def test_an_expired_set_under_load_is_refreshed_once(make, server, clock, valid):
    verifier = make()
    warm(verifier, valid, server)
    clock.now += CACHE
    answers = from_threads(20, lambda _: reason(verifier, valid))
    assert set(answers) == {"dana.ops"}
    assert verifier.keys.settle(5)
    assert server.fetches == 2
    # refreshed: fresh again for cache_seconds
    clock.now += CACHE - 0.001
    assert set(from_threads(20, lambda _: reason(verifier, valid))) == {"dana.ops"}
    assert server.fetches == 2


# -- rotation and the stale bound ------------------------------------------------------------


def test_a_rotated_key_is_picked_up_after_at_most_one_refetch_interval(make, server, clock, valid):
    verifier = make()
    warm(verifier, valid, server)
    second = Key("key-2", slot=1)
    server.keys.append(second)
    rotated = second.sign(claims())
    clock.now += INTERVAL - 0.001
    assert reason(verifier, rotated) == ReasonCode.INVALID_CREDENTIALS  # no refetch yet
    assert server.fetches == 1
    clock.now += 0.001
    assert reason(verifier, rotated) == "dana.ops"  # one refetch, waited for by its token
    assert server.fetches == 2
    assert reason(verifier, valid) == "dana.ops"
    assert server.fetches == 2


def test_unknown_kids_refetch_at_most_once_per_interval_from_many_threads(
    make, server, clock, valid
):
    verifier = make()
    warm(verifier, valid, server)
    for round_ in range(1, 4):
        clock.now += INTERVAL
        tokens = [forged(f"k{round_}-{i}") for i in range(300)]
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(functools.partial(reason, verifier), tokens))
        assert verifier.keys.settle(5)
        assert set(answers) <= {ReasonCode.INVALID_CREDENTIALS, ReasonCode.IDENTITY_PROVIDER}
        assert server.fetches == 1 + round_


def test_a_stale_set_serves_up_to_its_bound_then_tokens_are_refused_503(
    make, server, clock, registry, valid, rollout_clock
):
    verifier = make()
    client = TestClient(rollout_app(Approvers(oidc=verifier), rollout_clock))
    assert client.post(ADVANCE, headers=bearer(valid)).status_code == 200
    fetched = clock.now
    server.mode = "error"  # the issuer fails from now on
    clock.now = fetched + CACHE + MAX_STALE - 0.001
    response = client.post(ROLLBACK, headers=bearer(valid))
    assert response.status_code == 200, response.text  # served from the stale set
    assert verifier.keys.settle(5)
    assert fetches(registry)["http_error"] == 1.0
    assert gauge(registry, AGE) == pytest.approx(CACHE + MAX_STALE - 0.001)
    clock.now = fetched + CACHE + MAX_STALE
    response = client.post(ADVANCE, headers=bearer(valid))
    assert (response.status_code, response.json()) == (503, {"detail": "IDENTITY_PROVIDER"})
    # the issuer is back: the next fetch after the failure interval restores the service
    server.mode = "ok"
    clock.now += FAILURE_CACHE
    assert client.post(ADVANCE, headers=bearer(valid)).status_code == 200
    assert fetches(registry)["success"] == 2.0


def test_with_no_stale_allowance_an_expired_set_is_not_served(make, server, clock, valid):
    verifier = make(max_stale_seconds=0)
    warm(verifier, valid, server)
    server.mode = "error"
    clock.now += CACHE - 0.001
    assert reason(verifier, valid) == "dana.ops"
    clock.now += 0.001
    assert reason(verifier, valid) == ReasonCode.IDENTITY_PROVIDER
    assert server.fetches == 2


# -- metrics and wiring ----------------------------------------------------------------------


def test_fetch_outcomes_exist_at_zero_and_the_age_follows_the_set_in_use(
    make, server, clock, registry, valid
):
    verifier = make()
    assert fetches(registry) == dict.fromkeys(FETCH_OUTCOMES, 0.0)
    assert gauge(registry, AGE) is None
    warm(verifier, valid, server)
    assert fetches(registry)["success"] == 1.0
    assert gauge(registry, AGE) == 0.0
    clock.now += 42
    assert reason(verifier, valid) == "dana.ops"
    assert gauge(registry, AGE) == 42.0


def test_the_values_file_wires_the_registry(server, registry, valid, rollout_clock):
    settings = parse_settings(
        {"admin": {"oidc": {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": server.url}}}
    )
    approvers = approvers_from_settings(settings, environ={}, registry=registry)
    client = TestClient(rollout_app(approvers, rollout_clock))
    assert client.post(ADVANCE, headers=bearer(valid)).status_code == 200
    assert fetches(registry)["success"] == 1.0
    assert approvers_from_settings(settings, environ={}).oidc is not None  # no registry: fine


def test_the_demo_exports_the_key_set_metrics(server, tmp_path):
    from driftgate.demo import create_demo_app

    settings = parse_settings(
        {"admin": {"oidc": {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": server.url}}}
    )
    text = TestClient(create_demo_app(settings)).get("/api/v1/metrics").text
    assert f'{FETCHES}{{outcome="success"}} 0' in text
    assert server.fetches == 0  # nothing is fetched before a token needs it


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("cache_seconds", 0, "cache_seconds=0: expected seconds > 0"),
        ("failure_cache_seconds", -1, "failure_cache_seconds=-1: expected seconds > 0"),
        ("timeout", float("nan"), "timeout=nan: expected seconds > 0"),
        ("max_stale_seconds", -0.5, "max_stale_seconds=-0.5: expected seconds >= 0"),
        ("max_wait_seconds", -1, "max_wait_seconds=-1: expected seconds >= 0"),
        ("refresh_interval", float("nan"), "refresh_interval=nan: expected seconds >= 0"),
    ],
)
def test_bad_cache_settings_are_refused_naming_them(option, value, message):
    with pytest.raises(ValueError, match=message):
        OIDCVerifier(
            issuer=ISSUER, audience=AUDIENCE, jwks_url="https://x/certs", **{option: value}
        )


# -- over HTTP -------------------------------------------------------------------------------


def test_probes_answer_at_once_while_the_key_set_hangs_and_forged_tokens_hit_the_admin_endpoints(
    make, server, rollout_clock
):
    server.mode = "hold"
    verifier = make(timeout=1.0, max_wait_seconds=0.2)
    app = rollout_app(Approvers(oidc=verifier, protect_status=False), rollout_clock)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            attacks = [
                asyncio.create_task(
                    client.post(ADVANCE if i % 2 else ROLLBACK, headers=bearer(forged(f"x{i}")))
                )
                for i in range(45)
            ]
            await asyncio.sleep(0)  # the attacks are sent first
            for _ in range(10):
                for path in ("/api/v1/readyz", "/api/v1/healthz", STATUS):
                    started = time.monotonic()
                    response = await asyncio.wait_for(client.get(path), timeout=2)
                    assert response.status_code == 200, (path, response.text)
                    assert time.monotonic() - started < PROMPT, path
            answers = await asyncio.gather(*attacks)
        assert {(r.status_code, r.json()["detail"]) for r in answers} == {
            (503, "IDENTITY_PROVIDER")
        }

    async def main() -> None:
        # a small shared pool, as a loaded service has: the waits must not reach the probes
        anyio.to_thread.current_default_thread_limiter().total_tokens = 4
        await scenario()

    asyncio.run(main())
    assert server.fetches == 1
