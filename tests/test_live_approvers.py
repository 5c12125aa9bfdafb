"""Who approves changes live: a reload reads the token file and the `admin` values again and
swaps the approvers whole, so a line removed from the token file revokes that token from the
next request, and a token file that cannot be used keeps the old approvers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from driftgate.demo import create_demo_app
from driftgate.fastapi.auth import Approvers
from driftgate.identity import People, Scope, TokenFile, token_digest, token_file_line
from driftgate.reload import ConfigReloader, ReloadResult
from driftgate.settings import load_settings

ADVANCE = "/api/guardian/rollout/advance"
ROLLBACK = "/api/guardian/rollout/rollback"
STATUS = "/api/guardian/rollout/status"
SUCCESSFUL = "driftgate_config_last_reload_successful"

ALICE = "alice-" + "a" * 40
BOB = "bob-" + "b" * 40
CAROL = "carol-" + "c" * 40
ISSUER = "https://id.example.test/realms/ops"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def lines(*entries: tuple[str, str, list[str]]) -> str:
    return "".join(token_file_line(name, token, scopes) + "\n" for name, token, scopes in entries)


EVERYONE = lines(
    ("alice", ALICE, ["rollout:advance", "rollout:rollback"]),
    ("bob", BOB, ["rollout:advance", "rollout:rollback", "rollout:read"]),
)
WITHOUT_ALICE = lines(("bob", BOB, ["rollout:advance", "rollout:rollback", "rollout:read"]))


class Service:
    """The demo service in process, its values file and token file in `folder`."""

    def __init__(
        self,
        folder: Path,
        admin: dict[str, Any],
        tokens: str | None = EVERYONE,
        rollout: str = "rollout: {enabled: true}\n",
    ):
        self.folder = folder
        self.rollout = rollout
        folder.mkdir(parents=True, exist_ok=True)
        self.values = folder / "values.yaml"
        self.tokens = folder / "approvers.tokens"
        if tokens is not None:
            self.tokens.write_text(tokens)
        self.write(admin)
        self.app = create_demo_app(
            load_settings(self.values), values_file=self.values, state_dir=folder / "state"
        )
        self.client = TestClient(self.app)
        self.reloader: ConfigReloader = self.app.state.driftgate.reloader
        self.reloader._sleep = lambda seconds: None  # two reads agree at once: nobody writes

    def write(self, admin: dict[str, Any]) -> None:
        self.values.write_text(f"{self.rollout}admin: {json.dumps(admin)}\n")

    def reload(self) -> ReloadResult:
        return self.reloader.reload("test")

    def metric(self, name: str) -> str:
        exposition = self.app.state.driftgate.registry.exposition()
        return next(line for line in exposition.splitlines() if line.startswith(name + " "))


@pytest.fixture(autouse=True)
def no_admin_token(monkeypatch):
    monkeypatch.delenv("DRIFTGATE_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("DRIFTGATE_TOKEN_FILE", raising=False)


@pytest.fixture
def service(tmp_path: Path) -> Service:
    return Service(tmp_path, {"token_file": str(tmp_path / "approvers.tokens")})


# -- the token file --------------------------------------------------------------------------


def test_a_line_removed_from_the_token_file_revokes_it_from_the_next_request(service):
    assert service.client.post(ADVANCE, headers=bearer(ALICE)).status_code == 200
    service.tokens.write_text(WITHOUT_ALICE)
    result = service.reload()
    assert result.success, result.message
    assert result.changed == ("admin.token_file (content)",)
    assert result.message.endswith("applied (admin.token_file (content) changed)")
    refused = service.client.post(ROLLBACK, headers=bearer(ALICE))
    assert (refused.status_code, refused.json()) == (403, {"detail": "INVALID_CREDENTIALS"})
    assert service.client.post(ROLLBACK, headers=bearer(BOB)).status_code == 200


def test_a_token_file_of_the_same_approvers_is_no_change(service):
    service.tokens.write_text(
        "# reordered, commented\n" + "\n".join(reversed(EVERYONE.split("\n")))
    )
    result = service.reload()
    assert (result.success, result.changed) == (True, ())


def test_a_scope_taken_away_applies_from_the_next_request(service):
    service.tokens.write_text(
        lines(("alice", ALICE, ["rollout:rollback"]), ("bob", BOB, ["rollout:advance"]))
    )
    assert service.reload().changed == ("admin.token_file (content)",)
    refused = service.client.post(ADVANCE, headers=bearer(ALICE))
    assert (refused.status_code, refused.json()) == (
        403,
        {"detail": "MISSING_SCOPE: rollout:advance"},
    )


def test_a_token_file_that_cannot_be_used_keeps_the_old_approvers_and_says_where(service, caplog):
    service.tokens.write_text(WITHOUT_ALICE + f"carol {ALICE}\n")  # a pasted token, 2 fields
    with caplog.at_level(logging.INFO, logger="driftgate"):
        result = service.reload()
    assert not result.success
    assert result.message == (
        f"{service.values}: admin.token_file: {service.tokens}:2: expected 3 fields "
        "'NAME sha256:HEX SCOPE[,SCOPE...]', got 2"
    )
    assert service.metric(SUCCESSFUL) == f"{SUCCESSFUL} 0"
    for token in (ALICE, BOB):  # neither a token nor a digest of one
        assert token not in caplog.text
        assert token_digest(token).removeprefix("sha256:") not in caplog.text
    assert f"admin.token_file: {service.tokens}:2" in caplog.text
    # alice, whom the refused file would have dropped, still approves
    assert service.client.post(ADVANCE, headers=bearer(ALICE)).status_code == 200


def test_a_missing_token_file_keeps_the_old_approvers(service):
    service.tokens.unlink()
    result = service.reload()
    assert not result.success
    assert f"admin.token_file: {service.tokens}: cannot read" in result.message
    assert service.client.post(ADVANCE, headers=bearer(ALICE)).status_code == 200


def test_a_token_file_named_anew_is_read_and_reported(service):
    other = service.folder / "other.tokens"
    other.write_text(lines(("carol", CAROL, ["rollout:advance"])))
    service.write({"token_file": str(other)})
    assert service.reload().changed == ("admin.token_file",)
    assert service.client.post(ADVANCE, headers=bearer(CAROL)).status_code == 200
    assert service.client.post(ROLLBACK, headers=bearer(BOB)).status_code == 403


def test_the_token_file_from_the_environment_is_read_again(tmp_path, monkeypatch):
    tokens = tmp_path / "secret" / "approvers.tokens"
    tokens.parent.mkdir()
    tokens.write_text(EVERYONE)
    monkeypatch.setenv("DRIFTGATE_TOKEN_FILE", str(tokens))
    service = Service(tmp_path, {"protect_status": False}, tokens=None)
    assert service.reloader.folders() == [tmp_path, tokens.parent]
    tokens.write_text(WITHOUT_ALICE)
    assert service.reload().changed == ("admin.token_file (content)",)
    assert service.client.post(ADVANCE, headers=bearer(ALICE)).status_code == 403


def test_the_token_file_goes_away_with_its_key(service):
    service.write({})
    result = service.reload()
    assert result.changed == ("admin.token_file",)
    refused = service.client.post(ADVANCE, headers=bearer(BOB))
    assert (refused.status_code, refused.json()) == (403, {"detail": "ADMIN_DISABLED"})
    # and comes back: the OpenAPI declared its bearer scheme from the start
    service.write({"token_file": str(service.tokens)})
    assert service.reload().changed == ("admin.token_file",)
    assert service.client.post(ADVANCE, headers=bearer(BOB)).status_code == 200


# -- people and the status -------------------------------------------------------------------


def test_protect_status_applies_live_both_ways(service):
    tokens = str(service.tokens)
    assert service.client.get(STATUS).status_code == 200
    service.write({"token_file": tokens, "protect_status": True})
    assert service.reload().changed == ("admin.protect_status",)
    assert service.client.get(STATUS).status_code == 401
    refused = service.client.get(STATUS, headers=bearer(ALICE))
    assert (refused.status_code, refused.json()) == (403, {"detail": "MISSING_SCOPE: rollout:read"})
    assert service.client.get(STATUS, headers=bearer(BOB)).status_code == 200
    assert service.client.get("/api/guardian/rollout/state").status_code == 401
    service.write({"token_file": tokens, "protect_status": False})
    assert service.reload().changed == ("admin.protect_status",)
    assert service.client.get(STATUS).status_code == 200
    # the OpenAPI describes the service as it started: the status unprotected
    schema = service.client.get("/openapi.json").json()
    assert "security" not in schema["paths"][STATUS]["get"]


def test_people_apply_live(tmp_path):
    four_eyes = (
        "rollout:\n"
        "  enabled: true\n"
        "  stages:\n"
        "    - {name: canary, percentage: 10}\n"
        "    - {name: half, percentage: 50, requires_approval: true, approvals_required: 2}\n"
    )
    tokens = str(tmp_path / "approvers.tokens")
    service = Service(tmp_path, {"token_file": tokens}, rollout=four_eyes)
    first = service.client.post(ADVANCE, headers=bearer(ALICE)).json()
    assert first["action"] == "approval_recorded"
    # alice and bob are one person now: bob's approval is alice's again
    service.write(
        {"token_file": tokens, "people": {"alice": ["token_file:alice", "token_file:bob"]}}
    )
    assert service.reload().changed == ("admin.people",)
    second = service.client.post(ADVANCE, headers=bearer(BOB))
    assert (second.status_code, second.json()) == (
        400,
        {"detail": "bob already approved entering half; it needs 2 different people"},
    )
    assert service.client.get(STATUS).json()["current_stage"]["name"] == "canary"


# -- the kinds of approver the OpenAPI declares ----------------------------------------------


def oidc(jwks_url: str = "https://id.example.test/certs", **more: Any) -> dict[str, Any]:
    return {"issuer": ISSUER, "audience": "driftgate", "jwks_url": jwks_url, **more}


def test_an_unchanged_oidc_keeps_its_verifier_and_a_changed_one_builds_anew(service):
    pytest.importorskip("jwt")
    tokens = str(service.tokens)
    service.write({"token_file": tokens, "oidc": oidc()})
    # the service started without OIDC: its OpenAPI declares no oidc scheme
    refused = service.reload()
    assert not refused.success
    assert "admin.oidc: an issuer where the service started without one" in refused.message
    assert "it changes only with a restart" in refused.message

    started = Service(service.folder / "oidc", {"token_file": tokens, "oidc": oidc()}, None)
    approvers: Approvers = started.app.state.driftgate.approvers
    verifier = approvers.oidc
    assert started.reload().changed == ()
    assert approvers.oidc is verifier  # its cached keys kept
    started.write({"token_file": tokens, "oidc": oidc(actor_claim="sub")})
    assert started.reload().changed == ("admin.oidc",)
    assert approvers.oidc is not verifier and approvers.oidc.actor_claim == "sub"
    for key, value in (("issuer", "https://other.example.test"), ("audience", "other")):
        started.write({"token_file": tokens, "oidc": {**oidc(), key: value}})
        refused = started.reload()
        assert f"admin.oidc.{key}: '{value}' differs from the" in refused.message
        assert "that the OpenAPI declares; it changes only with a restart" in refused.message
    # taken away: revoking never waits for a restart
    started.write({"token_file": tokens})
    assert started.reload().changed == ("admin.oidc",)
    assert approvers.oidc is None


def test_a_token_file_where_the_openapi_declares_no_bearer_is_refused(tmp_path):
    pytest.importorskip("jwt")
    service = Service(tmp_path, {"oidc": oidc()}, tokens=EVERYONE)
    service.write({"oidc": oidc(), "token_file": str(service.tokens)})
    refused = service.reload()
    assert not refused.success
    assert "admin.token_file: a token file where the service started with neither" in (
        refused.message
    )
    assert service.client.post(ADVANCE, headers=bearer(ALICE)).status_code == 403


def test_a_token_file_where_nothing_was_configured_applies(tmp_path):
    # No approvers at all still declares the bearer scheme (every admin request is refused).
    service = Service(tmp_path, {}, tokens=EVERYONE)
    refused = service.client.post(ADVANCE, headers=bearer(ALICE))
    assert (refused.status_code, refused.json()) == (403, {"detail": "ADMIN_DISABLED"})
    service.write({"token_file": str(service.tokens)})
    assert service.reload().changed == ("admin.token_file",)
    assert service.client.post(ADVANCE, headers=bearer(ALICE)).status_code == 200


def test_admin_keys_are_restart_only_where_the_service_hands_over_no_approvers(tmp_path):
    from driftgate import DriftTracker, Enforcer, MetricsRegistry
    from driftgate.reload import LiveSettings

    path = tmp_path / "values.yaml"
    path.write_text("admin: {protect_status: false}\n")
    settings = load_settings(path)
    tracker = DriftTracker(registry=MetricsRegistry())
    live = LiveSettings(settings, tracker=tracker, enforcer=Enforcer(settings.enforce, tracker))
    reloader = ConfigReloader(path, live.apply, registry=MetricsRegistry(), sleep=lambda s: None)
    path.write_text("admin: {protect_status: true}\n")
    refused = reloader.reload("test")
    assert refused.message == (
        f"{path}: admin.protect_status: true differs from the running false; it changes only "
        "with a restart"
    )


# -- one set of approvers or the other -------------------------------------------------------


def test_requests_during_swaps_see_the_old_approvers_or_the_new_never_a_mix():
    # A: alice may advance and is person p1; B: alice may roll back and is person p2. A mix
    # would give alice advance as p2, or roll back as p1.
    def approvers(scope: Scope, person: str) -> Approvers:
        tokens = TokenFile.parse(token_file_line("alice", ALICE, [scope]).encode())
        return Approvers(token_file=tokens, people=People({person: ["token_file:alice"]}))

    a, b = approvers(Scope.ADVANCE, "p1"), approvers(Scope.ROLLBACK, "p2")
    running = approvers(Scope.ADVANCE, "p1")
    allowed = {(frozenset({Scope.ADVANCE}), "p1"), (frozenset({Scope.ROLLBACK}), "p2")}
    done = threading.Event()
    seen: set[tuple[frozenset[Scope], str]] = set()
    mixed: list[tuple[frozenset[Scope], str]] = []

    def ask() -> None:
        while not done.is_set():
            identity = running.authorize(f"Bearer {ALICE}", None)
            answer = (identity.scopes, identity.person)
            seen.add(answer)
            if answer not in allowed:
                mixed.append(answer)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns often, between any two bytecodes
    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        swaps = 0
        deadline = time.monotonic() + 30
        while (swaps < 20_000 or len(seen) < 2) and time.monotonic() < deadline:
            running.adopt(b if swaps % 2 == 0 else a)
            swaps += 1
    finally:
        done.set()
        for thread in threads:
            thread.join()
        sys.setswitchinterval(interval)
    assert not mixed
    assert seen == allowed


# -- watching the token file's folder --------------------------------------------------------


def watcher(service: Service, *, watch: bool) -> tuple[ConfigReloader, list[tuple[str, ...]]]:
    """A reloader of `service`'s files whose watcher (watchfiles, or the polling fallback)
    records the changed keys of each reload it makes."""
    live = service.app.state.driftgate.live
    results: list[tuple[str, ...]] = []

    def apply(settings):  # runs in a worker thread
        changed = live.apply(settings)
        results.append(tuple(changed))
        return changed

    reloader = ConfigReloader(
        service.values,
        apply,
        registry=service.app.state.driftgate.registry,
        parse=service.reloader._parse,
        also_watch=service.reloader._also_watch,
        settings=live.current.settings,
        watch=watch,
        poll_interval=0.05,
        sleep=lambda seconds: None,
    )
    return reloader, results


async def repeat_until(change, done, timeout: float = 20.0) -> None:
    """Makes `change(n)` every 0.2 s until `done()`: a watch that is not yet set up (inotify
    reports only later changes) sees one of them. Each change must differ from the last."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    n = 0
    while not done():
        if loop.time() > deadline:
            raise TimeoutError("the watcher did not reload")
        await asyncio.to_thread(change, n)
        n += 1
        for _ in range(10):
            if done():
                return
            await asyncio.sleep(0.02)


def revoke_alice(secret: Path) -> Any:
    def change(n: int) -> None:  # as the kubelet updates a Secret: a new file renamed over
        (secret / "new.tokens").write_text(f"# update {n}\n" + WITHOUT_ALICE)
        os.replace(secret / "new.tokens", secret / "approvers.tokens")

    return change


@pytest.mark.parametrize("watch", [True, False], ids=["watchfiles", "polling"])
def test_a_token_file_change_in_its_own_folder_reloads(tmp_path, watch):
    pytest.importorskip("watchfiles")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "approvers.tokens").write_text(EVERYONE)
    service = Service(tmp_path / "config", {"token_file": str(secret / "approvers.tokens")}, None)
    reloader, results = watcher(service, watch=watch)
    assert reloader.folders() == [service.folder, secret]

    async def run() -> None:
        async with reloader.running():
            await repeat_until(revoke_alice(secret), lambda: bool(results))

    asyncio.run(run())
    assert results[0] == ("admin.token_file (content)",)
    assert service.client.post(ADVANCE, headers=bearer(ALICE)).status_code == 403


def test_the_watch_follows_the_token_file_to_another_folder(tmp_path):
    pytest.importorskip("watchfiles")
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
        (folder / "approvers.tokens").write_text(EVERYONE)
    service = Service(tmp_path / "config", {"token_file": str(first / "approvers.tokens")}, None)
    reloader, results = watcher(service, watch=True)
    values = service.values.read_text().replace(str(first), str(second))

    def move(n: int) -> None:
        service.values.write_text(f"# move {n}\n{values}")

    async def run() -> None:
        async with reloader.running():
            await repeat_until(move, lambda: ("admin.token_file",) in results)
            assert reloader.folders() == [service.folder, second]
            await repeat_until(
                revoke_alice(second), lambda: ("admin.token_file (content)",) in results
            )

    asyncio.run(run())
    assert service.client.post(ADVANCE, headers=bearer(ALICE)).status_code == 403


def test_a_refused_file_naming_another_token_file_leaves_both_watched(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
        (folder / "approvers.tokens").write_text(EVERYONE)
    service = Service(tmp_path / "config", {"token_file": str(first / "approvers.tokens")}, None)
    moved = service.values.read_text().replace(str(first), str(second))
    service.values.write_text(moved + "log_level: debug\n")  # restart-only: refused
    assert not service.reload().success
    assert service.reloader.folders() == [service.folder, first, second]
    assert service.reloader.reload_if_changed("poll") is None  # nothing changed since
    revoke_alice(first)(0)  # the token file in force still counts
    assert service.reloader.reload_if_changed("poll") is not None
    service.values.write_text(moved)
    assert service.reload().changed == ("admin.token_file",)
    assert service.reloader.folders() == [service.folder, second]
    assert service.reloader.reload_if_changed("poll") is None  # no reload for the move itself
