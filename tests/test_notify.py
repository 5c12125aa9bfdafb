"""Notifications: Slack and signed webhooks against receivers on 127.0.0.1, retries, 429s,
timeouts, dead receivers, and one notification per committed transition."""

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import driftgate
from driftgate import ManualClock, RolloutConfig, RolloutStage
from driftgate.notify import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Event,
    Notification,
    Notifier,
    SlackSink,
    WebhookSink,
    _LocalClaims,
    verify_signature,
)

SECRET = "a-webhook-secret-of-some-length"


class Receiver:
    """Records every POST (headers and body); answers from a script of (status, headers),
    the last entry repeating."""

    def __init__(self, script: list[tuple[int, dict[str, str]]] | None = None) -> None:
        self.script = script or [(200, {})]
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()

    def answer(self) -> tuple[int, dict[str, str]]:
        with self.lock:
            index = min(len(self.requests) - 1, len(self.script) - 1)
            return self.script[index]


@contextmanager
def receiving(receiver: Receiver) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with receiver.lock:
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            status, headers = receiver.answer()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class Counts:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def __call__(self, sink: str, event: str, outcome: str) -> None:
        self.seen.append((sink, event, outcome))


class Sleeps:
    """An injected sleep: records each wait, never waits."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def notification(event: Event = Event.ADVANCED, version: int = 2) -> Notification:
    return Notification(
        event=event,
        rollout="checkout",
        version=version,
        from_stage="canary",
        to_stage="quarter",
        from_percentage=10,
        to_percentage=25,
        actor="alice",
        reason="manual",
        status_url="https://ops.example/api/guardian/rollout/status",
    )


def deliver(sink, **kwargs) -> tuple[Counts, Sleeps]:
    counts, sleeps = Counts(), Sleeps()
    notifier = Notifier([sink], count=counts, sleep=sleeps, **kwargs)
    assert notifier.publish(notification())
    notifier.join()
    notifier.close()
    return counts, sleeps


def test_slack_gets_text_and_blocks_naming_stages_actor_and_reason():
    receiver = Receiver()
    with receiving(receiver) as url:
        counts, _ = deliver(SlackSink(url))
    assert counts.seen == [("slack", "advanced", "sent")]
    [(headers, body)] = receiver.requests
    assert headers["content-type"] == "application/json"
    payload = json.loads(body)
    assert set(payload) == {"text", "blocks"}
    assert "checkout" in payload["text"] and "canary (10%) -> quarter (25%)" in payload["text"]
    assert [block["type"] for block in payload["blocks"]] == ["section", "section", "context"]
    fields = [f["text"] for f in payload["blocks"][1]["fields"]]
    assert fields == [
        "*Stage:* canary -> quarter",
        "*Enforced:* 25%",
        "*By:* alice",
        "*Reason:* manual",
    ]
    assert "ops.example/api/guardian/rollout/status" in payload["blocks"][2]["elements"][0]["text"]


def test_webhook_body_is_signed_and_the_signature_verifies():
    receiver = Receiver()
    with receiving(receiver) as url:
        deliver(WebhookSink(url, SECRET))
    [(headers, body)] = receiver.requests
    assert json.loads(body) == notification().as_dict()
    signature, timestamp = headers[SIGNATURE_HEADER.lower()], headers[TIMESTAMP_HEADER.lower()]
    assert signature.startswith("sha256=")
    assert verify_signature(SECRET, body, timestamp, signature)
    assert not verify_signature("another-secret-of-some-length", body, timestamp, signature)
    assert not verify_signature(SECRET, body + b" ", timestamp, signature)
    assert not verify_signature(SECRET, body, str(int(timestamp) - 3600), signature)  # replayed


def test_a_500_is_retried_with_backoff_then_sent():
    receiver = Receiver([(500, {}), (503, {}), (200, {})])
    with receiving(receiver) as url:
        counts, sleeps = deliver(SlackSink(url), backoff=1.0)
    assert len(receiver.requests) == 3
    assert counts.seen == [("slack", "advanced", "sent")]
    assert len(sleeps.waits) == 2
    assert 0 <= sleeps.waits[0] <= 1.0 and 0 <= sleeps.waits[1] <= 2.0  # full jitter


def test_a_429_waits_its_retry_after():
    receiver = Receiver([(429, {"Retry-After": "2"}), (200, {})])
    with receiving(receiver) as url:
        counts, sleeps = deliver(SlackSink(url), backoff=0.01)
    assert sleeps.waits == [2.0]
    assert counts.seen == [("slack", "advanced", "sent")]


def test_a_404_is_final_and_retries_give_up_after_the_attempts():
    receiver = Receiver([(404, {})])
    with receiving(receiver) as url:
        counts, sleeps = deliver(SlackSink(url))
    assert len(receiver.requests) == 1 and sleeps.waits == []
    assert counts.seen == [("slack", "advanced", "failed")]
    always = Receiver([(500, {})])
    with receiving(always) as url:
        counts, sleeps = deliver(SlackSink(url), attempts=3)
    assert len(always.requests) == 3 and len(sleeps.waits) == 2
    assert counts.seen == [("slack", "advanced", "failed")]


def test_a_receiver_that_never_answers_times_out():
    listener = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
        counts, sleeps = deliver(SlackSink(url), attempts=2, timeout=0.2)
    finally:
        listener.close()
    assert counts.seen == [("slack", "advanced", "failed")]
    assert len(sleeps.waits) == 1


def test_a_full_queue_drops_and_counts_without_blocking():
    gate = threading.Event()

    class Stuck:
        name = "stuck"
        events = frozenset(Event)

        def send(self, notification, timeout):
            gate.wait(5)

    counts = Counts()
    notifier = Notifier([Stuck()], queue_size=1, count=counts)
    results = [notifier.publish(notification(version=v)) for v in range(2, 6)]
    gate.set()
    notifier.join()
    notifier.close()
    # The worker holds one, the queue one more; the rest are dropped.
    assert results.count(False) >= 2
    assert ("stuck", "advanced", "dropped") in counts.seen


def test_the_same_rollout_version_and_event_is_sent_once():
    receiver = Receiver()
    with receiving(receiver) as url:
        counts = Counts()
        notifier = Notifier([SlackSink(url)], count=counts)
        assert notifier.publish(notification())
        assert not notifier.publish(notification())
        assert notifier.publish(notification(Event.COMPLETED))
        notifier.join()
        notifier.close()
    assert len(receiver.requests) == 2
    assert ("slack", "advanced", "duplicate") in counts.seen


def test_boundary_a_process_remembers_exactly_its_capacity_of_notifications():
    # Within one process claims are kept for the last `capacity` keys: the oldest is forgotten
    # only when one more arrives.
    claim = _LocalClaims(capacity=2)
    assert claim("a") and claim("b")
    assert not claim("a") and not claim("b")  # two keys: both still remembered
    assert claim("c")  # a third: "a", the oldest, is forgotten
    assert not claim("b") and not claim("c")
    assert claim("a")


def test_sinks_get_only_the_events_they_asked_for():
    receiver = Receiver()
    with receiving(receiver) as url:
        notifier = Notifier([SlackSink(url, [Event.ROLLED_BACK])])
        assert not notifier.publish(notification(Event.ADVANCED))
        assert notifier.publish(notification(Event.ROLLED_BACK))
        notifier.join()
        notifier.close()
    assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    "url", ["ftp://x", "hooks.slack.com/x", "", "https:///services/x", "https://h:port/x"]
)
def test_bad_sink_urls_are_refused_without_showing_them(url):
    with pytest.raises(ValueError, match="expected an http") as error:
        SlackSink(url)
    assert url not in str(error.value) or not url
    assert "slack.com" not in repr(SlackSink("https://hooks.slack.com/services/T/B/secret"))


def test_a_short_webhook_secret_is_refused():
    with pytest.raises(ValueError, match="at least 16"):
        WebhookSink("https://example.org/hook", "short")


# -- the manager announces what it commits ------------------------------------------------------


def manager_with(notifier, tmp_path, stages=None, **kwargs):
    config = RolloutConfig(stages) if stages else RolloutConfig.default()
    return driftgate.RolloutManager(
        config,
        clock=ManualClock(1_700_000_000.0),
        state_path=tmp_path / "rollout.json",
        notifier=notifier,
        name="checkout",
        **kwargs,
    )


class Collect:
    name = "collect"
    events = frozenset(Event)

    def __init__(self) -> None:
        self.got: list[Notification] = []

    def send(self, notification, timeout):
        self.got.append(notification)


def test_every_transition_is_announced_by_who_made_it(tmp_path):
    sink = Collect()
    notifier = Notifier([sink])
    stages = [
        RolloutStage("a", 10, 0, 0.1),
        RolloutStage("b", 50, 0, 0.1, requires_approval=True),
        RolloutStage("c", 100, 0, 0.1),
    ]
    manager = manager_with(notifier, tmp_path, stages)
    manager.evaluate(0.0)  # waits for approval to enter b
    manager.evaluate(0.0)  # still waiting: not announced again
    manager.manual_advance("alice")
    manager.evaluate(0.5)  # rolled back automatically
    manager.manual_rollback("bob")  # aborted
    manager.manual_advance("carol")  # resumed at a
    manager.manual_advance("carol")
    manager.manual_advance("carol")  # completed
    notifier.join()
    got = [(n.event.value, n.from_stage, n.to_stage, n.actor, n.reason) for n in sink.got]
    assert got == [
        ("waiting_for_approval", "a", "b", "auto", "approval_needed"),
        ("advanced", "a", "b", "alice", "manual"),
        ("rolled_back", "b", "a", "auto", "error_rate"),
        ("aborted", "a", "aborted", "bob", "manual"),
        ("advanced", "aborted", "a", "carol", "manual"),
        ("advanced", "a", "b", "carol", "manual"),
        ("completed", "b", "c", "carol", "manual"),
    ]
    assert sink.got[2].error_rate == 0.5
    assert {n.rollout for n in sink.got} == {"checkout"}
    notifier.close()


def test_a_dead_receiver_leaves_the_transition_committed_and_counts_it(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    counts = Counts()
    notifier = Notifier(
        [SlackSink(f"http://127.0.0.1:{port}/hook")], count=counts, sleep=Sleeps(), attempts=2
    )
    manager = manager_with(notifier, tmp_path)
    decision = manager.manual_advance("alice")
    assert decision.success and manager.version == 2
    notifier.join()
    assert counts.seen == [("slack", "advanced", "failed")]
    notifier.close()


def test_a_failing_source_is_announced_once_per_streak(tmp_path):
    import asyncio

    sink = Collect()
    notifier = Notifier([sink])

    def broken() -> float:
        raise OSError("no metrics")

    manager = manager_with(notifier, tmp_path, error_rate_source=broken)
    manager.analysis_failures_to_notify = 2
    for _ in range(5):
        asyncio.run(manager.check_and_advance())
    notifier.join()
    assert [n.event for n in sink.got] == [Event.ANALYSIS_FAILING]
    manager.error_rate_source = lambda: 0.0
    asyncio.run(manager.check_and_advance())  # recovered: a new streak may be announced
    manager.error_rate_source = broken
    for _ in range(2):
        asyncio.run(manager.check_and_advance())
    notifier.join()
    assert [n.event for n in sink.got] == [Event.ANALYSIS_FAILING] * 2
    notifier.close()


def test_outcomes_are_counted_in_the_managers_registry(tmp_path):
    sink = Collect()
    notifier = Notifier([sink])
    registry = driftgate.MetricsRegistry()
    manager = manager_with(notifier, tmp_path, registry=registry)
    manager.manual_advance("alice")
    notifier.publish(manager._notification(manager.manual_advance("bob"), Event.ADVANCED, "x"))
    notifier.join()
    text = registry.exposition()
    assert (
        'driftgate_notifications_total{event="advanced",outcome="sent",rollout="default",'
        'sink="collect"} 2' in text
    )
    assert (
        'driftgate_notifications_total{event="advanced",outcome="duplicate",rollout="default",'
        'sink="collect"} 1' in text
    )
    notifier.close()


def test_three_replicas_on_one_redis_send_each_event_once(tmp_path):
    from fleet_servers import RedisServer

    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    try:
        url = redis_server.url
        sink = Collect()
        managers = []
        for name in ("a", "b", "c"):
            store = driftgate.RedisStateStore(url, "checkout", replica=name)
            notifier = Notifier([sink], claim=store.claim)
            stages = [RolloutStage("s1", 10, 0, 0.1), RolloutStage("s2", 50, 0, 0.1, True)]
            managers.append(
                driftgate.RolloutManager(
                    RolloutConfig(stages),
                    clock=ManualClock(1_700_000_000.0),
                    store=store,
                    notifier=notifier,
                )
            )
        # Every replica sees the same wait for approval (as evaluators in turn would): one
        # notification. Then one advance, made on b: one notification.
        for manager in managers:
            assert manager.evaluate(0.0).action == driftgate.DecisionAction.WAITING_FOR_APPROVAL
        assert managers[1].manual_advance("bob").success
        for manager in managers:
            manager.notifier.join()
        assert [(n.event, n.version) for n in sink.got] == [
            (Event.WAITING_FOR_APPROVAL, 1),
            (Event.COMPLETED, 2),
        ]
        for manager in managers:
            manager.close()
    finally:
        redis_server.stop()


def test_the_demo_service_sends_signed_webhooks_named_in_its_values(tmp_path):
    import httpx

    from servers import demo_service

    receiver = Receiver()
    values = (
        "enforce_enabled: true\n"
        "rollout: {enabled: true, check_interval_seconds: 3600,"
        " status_url: 'https://ops.example/status'}\n"
        "notifications:\n"
        "  - {kind: webhook, url_env: HOOK_URL, secret_env: HOOK_SECRET, events: [advanced]}\n"
    )
    with receiving(receiver) as url:
        env = {"HOOK_URL": url, "HOOK_SECRET": SECRET}
        with demo_service(tmp_path, values, "t0ken", env) as base:
            moved = httpx.post(
                f"{base}/api/guardian/rollout/advance", headers={"Authorization": "Bearer t0ken"}
            )
            assert moved.status_code == 200
            wait_for_requests(receiver, 1)
            metrics = httpx.get(f"{base}/api/v1/metrics").text
    [(headers, body)] = receiver.requests
    assert verify_signature(
        SECRET, body, headers[TIMESTAMP_HEADER.lower()], headers[SIGNATURE_HEADER.lower()]
    )
    sent = json.loads(body)
    assert (sent["event"], sent["from_stage"], sent["to_stage"]) == (
        "advanced",
        "canary",
        "quarter",
    )
    assert (sent["actor"], sent["reason"], sent["version"]) == ("admin-token", "manual", 2)
    assert sent["status_url"] == "https://ops.example/status"
    assert (
        'driftgate_notifications_total{event="advanced",outcome="sent",rollout="default",'
        'sink="webhook"} 1' in metrics
    )


def test_the_demo_service_refuses_notification_variables_that_are_unset(tmp_path):
    import subprocess
    import sys

    values = tmp_path / "values.yaml"
    values.write_text(
        "rollout: {enabled: true}\nnotifications: [{kind: slack, url_env: NOT_SET_ANYWHERE}]\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "driftgate.cli", "serve", "--config", str(values)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "notifications[0].url_env names NOT_SET_ANYWHERE, which is not set" in result.stderr
    assert "Traceback" not in result.stderr


def wait_for_requests(receiver: Receiver, count: int) -> None:
    from servers import wait_for

    wait_for(lambda: len(receiver.requests) >= count or None, "the notification")
