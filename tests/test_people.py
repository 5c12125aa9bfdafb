"""Four eyes counts people: an approval is compared by the person behind a credential (the
token file's name, the OIDC issuer and `sub`, or a `people` entry tying several together),
never by the display name; the shared admin token is nobody."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Header
from fastapi.testclient import TestClient

import driftgate
from driftgate import RolloutConfig, RolloutManager, RolloutStage
from driftgate.fastapi import create_router
from driftgate.fastapi.auth import Approvers, approvers_from_settings
from driftgate.identity import Identity, People, Scope, TokenFile, oidc_person, token_file_line
from driftgate.settings import SettingsError, parse_settings
from servers import json_server

jwt = pytest.importorskip("jwt")
from test_identity import AUDIENCE, ISSUER, Issuer, Key, bearer, claims  # noqa: E402

ADVANCE = "/api/guardian/rollout/advance"
STATUS = "/api/guardian/rollout/status"
ADMIN = "the-break-glass-token-" + "z" * 20
ALICE = "alice-" + "a" * 40
BOB = "bob-" + "b" * 40
ALICE_SUB = "auth0|5f7c8ec7c33c6c004bbafe82"  # a sub outside the actor rule, as Auth0 writes it
BOB_SUB = "9b2c1f4e-0000-4000-8000-00000000000b"

# canary -> half (two people) -> full (one approval)
STAGES = [
    RolloutStage("canary", 10, 0, 0.1),
    RolloutStage("half", 50, 0, 0.1, True, approvals_required=2),
    RolloutStage("full", 100, 0, 0.1, True),
]


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "approvers.tokens"
    path.write_text(
        f"{token_file_line('alice', ALICE, [Scope.ADVANCE])}\n"
        f"{token_file_line('bob', BOB, [Scope.ADVANCE])}\n"
    )
    return path


@pytest.fixture
def key() -> Key:
    return Key("key-1")


@pytest.fixture
def jwks_url(key: Key):
    with json_server(Issuer(key).answer) as base:
        yield f"{base}/certs"


def four_eyes_app(approvers: Any, tmp_path: Path, clock: driftgate.ManualClock) -> TestClient:
    manager = RolloutManager(RolloutConfig(STAGES), clock=clock, state_path=tmp_path / "s.json")
    app = FastAPI()
    app.include_router(
        create_router(tracker=driftgate.DriftTracker(clock=clock), manager=manager, admin=approvers)
    )
    return TestClient(app)


def approvers(token_file: Path, jwks_url: str, people: dict[str, list[str]] | None = None):
    admin: dict[str, Any] = {
        "token_env": "DG_TEST_ADMIN_TOKEN",
        "token_file": str(token_file),
        "oidc": {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": jwks_url},
    }
    if people is not None:
        admin["people"] = people
    settings = parse_settings({"admin": admin})
    return approvers_from_settings(settings, environ={"DG_TEST_ADMIN_TOKEN": ADMIN})


def sso(key: Key, sub: str, username: str) -> dict[str, str]:
    return bearer(key.sign(claims(sub=sub, preferred_username=username)))


def approved_by(client: TestClient) -> list[str]:
    return client.get(STATUS).json()["approvals"]["approved_by"]


def test_the_break_glass_token_is_not_a_second_person(
    token_file, jwks_url, tmp_path, rollout_clock
):
    client = four_eyes_app(approvers(token_file, jwks_url), tmp_path, rollout_clock)
    assert client.post(ADVANCE, headers=bearer(ALICE)).json()["action"] == "approval_recorded"
    refused = client.post(ADVANCE, headers=bearer(ADMIN))
    assert refused.status_code == 400
    assert refused.json()["detail"] == (
        "admin-token is not a person and never counts as an approval of half; "
        "it needs 2 different people"
    )
    status = client.get(STATUS).json()
    assert status["current_stage"]["name"] == "canary"
    assert status["version"] == 2  # nothing recorded for the token
    assert approved_by(client) == ["alice"]
    # nor as the first of them
    assert client.post("/api/guardian/rollout/rollback", headers=bearer(ADMIN)).status_code == 200
    assert client.post(ADVANCE, headers=bearer(ADMIN)).json()["action"] == "resumed"
    assert client.post(ADVANCE, headers=bearer(ADMIN)).status_code == 400
    assert client.get(STATUS).json()["approvals"]["approved_by"] == []


def test_the_break_glass_token_enters_a_stage_needing_one_approval(
    token_file, jwks_url, tmp_path, rollout_clock
):
    client = four_eyes_app(approvers(token_file, jwks_url), tmp_path, rollout_clock)
    assert client.post(ADVANCE, headers=bearer(ALICE)).status_code == 200
    assert client.post(ADVANCE, headers=bearer(BOB)).json()["new_stage"] == "half"
    entered = client.post(ADVANCE, headers=bearer(ADMIN))
    assert entered.status_code == 200
    assert entered.json()["new_stage"] == "full"


def test_one_sub_under_two_usernames_is_one_person(
    token_file, jwks_url, key, tmp_path, rollout_clock
):
    client = four_eyes_app(approvers(token_file, jwks_url), tmp_path, rollout_clock)
    first = client.post(ADVANCE, headers=sso(key, ALICE_SUB, "alice"))
    assert first.json()["action"] == "approval_recorded"
    again = client.post(ADVANCE, headers=sso(key, ALICE_SUB, "alice.renamed"))
    assert again.status_code == 400
    assert "alice.renamed already approved entering half" in again.json()["detail"]
    # the history shows the name; the approval is the person's stable id
    status = client.get(STATUS).json()
    assert status["transitions"][-1]["actor"] == "alice"
    assert approved_by(client) == [oidc_person(ISSUER, ALICE_SUB)]
    entered = client.post(ADVANCE, headers=sso(key, BOB_SUB, "bob"))
    assert entered.json()["new_stage"] == "half"


def test_a_mapped_token_file_name_and_oidc_subject_are_one_person(
    token_file, jwks_url, key, tmp_path, rollout_clock
):
    people = {"alice": ["token_file:alice", f"oidc:{ALICE_SUB}"]}
    client = four_eyes_app(approvers(token_file, jwks_url, people), tmp_path, rollout_clock)
    assert client.post(ADVANCE, headers=bearer(ALICE)).json()["action"] == "approval_recorded"
    again = client.post(ADVANCE, headers=sso(key, ALICE_SUB, "a.smith"))
    assert again.status_code == 400
    assert again.json()["detail"].startswith("a.smith already approved entering half")
    assert approved_by(client) == ["alice"]
    # the same pair unmapped: two people
    (tmp_path / "u").mkdir()
    unmapped = four_eyes_app(approvers(token_file, jwks_url), tmp_path / "u", rollout_clock)
    assert unmapped.post(ADVANCE, headers=bearer(ALICE)).status_code == 200
    assert unmapped.post(ADVANCE, headers=sso(key, ALICE_SUB, "a.smith")).status_code == 200


def test_two_different_people_enter_the_stage(token_file, jwks_url, key, tmp_path, rollout_clock):
    people = {"alice": ["token_file:alice", f"oidc:{ALICE_SUB}"]}
    client = four_eyes_app(approvers(token_file, jwks_url, people), tmp_path, rollout_clock)
    assert client.post(ADVANCE, headers=sso(key, ALICE_SUB, "a.smith")).status_code == 200
    entered = client.post(ADVANCE, headers=bearer(BOB))
    assert entered.status_code == 200
    assert entered.json()["action"] == "advanced"
    assert entered.json()["new_stage"] == "half"


def test_an_approval_recorded_by_name_in_an_older_state_file_still_counts(
    token_file, jwks_url, tmp_path, rollout_clock
):
    # A state file written before approvals were kept by person: the token file's name is
    # that person, so alice cannot approve twice across the upgrade.
    client = four_eyes_app(approvers(token_file, jwks_url), tmp_path, rollout_clock)
    assert client.post(ADVANCE, headers=bearer(ALICE)).status_code == 200
    state = json.loads((tmp_path / "s.json").read_text())
    assert state["approvals"] == ["alice"]
    reopened = four_eyes_app(approvers(token_file, jwks_url), tmp_path, rollout_clock)
    assert approved_by(reopened) == ["alice"]
    assert reopened.post(ADVANCE, headers=bearer(ALICE)).status_code == 400
    assert reopened.post(ADVANCE, headers=bearer(BOB)).json()["new_stage"] == "half"


def test_the_person_of_an_oidc_subject_depends_on_issuer_and_sub():
    assert oidc_person(ISSUER, "a") == oidc_person(ISSUER, "a")
    assert oidc_person(ISSUER, "a") != oidc_person(ISSUER + "x", "a")
    assert oidc_person(ISSUER, "a") != oidc_person(ISSUER, "b")
    assert oidc_person(ISSUER, ALICE_SUB).startswith("oidc:")
    assert len(oidc_person(ISSUER, ALICE_SUB)) == 37


def test_a_token_without_sub_names_nobody(token_file, jwks_url, key, tmp_path, rollout_clock):
    client = four_eyes_app(approvers(token_file, jwks_url), tmp_path, rollout_clock)
    answer = client.post(ADVANCE, headers=bearer(key.sign(claims(sub=None))))
    assert answer.status_code == 403
    assert answer.json()["detail"] == "INVALID_ACTOR"


# -- the mapping -------------------------------------------------------------------------------


def test_people_maps_subjects_to_their_person():
    people = People({"alice": ["token_file:alice-ci", "oidc:abc"]})
    mapped = people.person(
        Identity("alice-ci", frozenset(), "token_file", "token_file:alice-ci", "alice-ci")
    )
    assert mapped.person == "alice"
    assert mapped.name == "alice-ci"
    other = Identity("bob", frozenset(), "token_file", "token_file:bob", "bob")
    assert people.person(other) is other
    nobody = Identity("admin-token", frozenset(), "token")
    assert people.person(nobody).person == ""


def test_people_built_in_code_refuses_a_person_that_is_no_actor_name():
    # the values file refuses such a key first; a People made in code checks it itself
    with pytest.raises(ValueError, match="person 'al ice': expected 1-64 characters"):
        People({"al ice": ["token_file:a"]})
    assert len(People({"a" * 64: ["token_file:a"]})) == 1
    # the same subject twice under one person is still one credential of that person
    assert len(People({"alice": ["token_file:a", "token_file:a"]})) == 1


@pytest.mark.parametrize(
    ("people", "message"),
    [
        ({"alice": ["token_file:a"], "bob": ["token_file:a"]}, "listed under both alice and bob"),
        ({"alice": ["email:alice@example.com"]}, "subject 'email:alice@example.com'"),
        ({"alice": ["oidc:has space"]}, "subject 'oidc:has space'"),
        ({"alice": ["token_file:"]}, "subject 'token_file:'"),
        ({"alice": ["token_file:" + "x" * 65]}, "expected token_file:NAME"),
        ({"alice": []}, "admin.people.alice"),
        ({"al ice": ["token_file:a"]}, "admin.people"),
    ],
)
def test_a_bad_people_mapping_is_refused_naming_it(people, message):
    with pytest.raises(SettingsError) as refused:
        parse_settings({"admin": {"people": people}})
    assert message in str(refused.value)


def test_the_values_file_maps_people(tmp_path):
    settings = parse_settings(
        {"admin": {"people": {"alice": ["token_file:alice", "oidc:248289761001"]}}}
    )
    assert settings.admin_people == {"alice": ("token_file:alice", "oidc:248289761001")}
    assert len(approvers_from_settings(settings, environ={}).people) == 2


# -- a service's own admin dependency ------------------------------------------------------------


@pytest.mark.parametrize(
    "answer", ["alice@example.com", "a" * 65, "bob\nINFO forged line", "", 42, None]
)
def test_a_service_dependency_answering_no_name_is_403_without_echo(
    answer, tmp_path, rollout_clock, caplog
):
    def who() -> Any:
        return answer

    client = four_eyes_app(who, tmp_path, rollout_clock)
    with caplog.at_level(logging.WARNING, logger="driftgate.auth"):
        refused = client.post(ADVANCE)
        rollback = client.post("/api/guardian/rollout/rollback")
    assert refused.status_code == 403
    assert refused.json() == {"detail": "INVALID_ACTOR"}
    assert rollback.status_code == 403
    assert client.get(STATUS).json()["version"] == 1
    logged = caplog.text
    assert "INVALID_ACTOR" in logged
    assert "who answered" in logged
    if isinstance(answer, str) and answer:
        assert answer not in logged
        assert "forged" not in logged


def test_a_service_dependency_names_its_own_people(tmp_path, rollout_clock):
    def who(x_actor: str = Header()) -> str:
        return x_actor

    client = four_eyes_app(who, tmp_path, rollout_clock)
    assert client.post(ADVANCE, headers={"X-Actor": "alice"}).status_code == 200
    assert client.post(ADVANCE, headers={"X-Actor": "alice"}).status_code == 400
    assert client.post(ADVANCE, headers={"X-Actor": "bob"}).json()["new_stage"] == "half"


def test_the_admin_token_alone_is_the_approvers_nobody():
    identity = Approvers(token=ADMIN).identify(ADMIN)
    assert identity.person == ""
    assert identity.subject == ""
    alice = Approvers(
        token_file=TokenFile.parse(token_file_line("alice", ALICE, [Scope.ADVANCE]).encode())
    ).identify(ALICE)
    assert (alice.subject, alice.person) == ("token_file:alice", "alice")


def test_a_reload_by_a_service_dependency_logs_only_a_checked_name(tmp_path, rollout_clock):
    from driftgate.reload import ReloadResult

    triggers: list[str] = []

    def reload(trigger: str) -> ReloadResult:
        triggers.append(trigger)
        return ReloadResult(True, "applied (no change)", (), trigger)

    def app_answering(answer: str) -> TestClient:
        def who() -> str:
            return answer

        app = FastAPI()
        app.include_router(
            create_router(
                tracker=driftgate.DriftTracker(clock=rollout_clock), admin=who, reload=reload
            )
        )
        return TestClient(app)

    forged = app_answering("bob\nERROR driftgate: forged")
    assert forged.post("/api/v1/admin/reload").status_code == 403
    assert triggers == []
    assert app_answering("bob").post("/api/v1/admin/reload").status_code == 200
    assert triggers == ["admin:bob"]


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        ("alice@example.com", 403),
        ("a" * 65, 403),
        ("a" * 64, 200),  # the actor rule's boundary, both sides
        ("bob\nERROR driftgate.reload: forged", 403),
    ],
)
def test_the_reload_log_names_only_a_checked_actor(tmp_path, rollout_clock, caplog, answer, status):
    from driftgate.reload import ConfigReloader

    path = tmp_path / "values.yaml"
    path.write_text("drift_max_ratio: 0.01\n")
    reloader = ConfigReloader(
        path, lambda settings: [], registry=driftgate.MetricsRegistry(), sleep=lambda s: None
    )

    def who() -> str:
        return answer

    app = FastAPI()
    app.include_router(
        create_router(
            tracker=driftgate.DriftTracker(clock=rollout_clock), admin=who, reload=reloader.reload
        )
    )
    with caplog.at_level(logging.INFO, logger="driftgate"):
        response = TestClient(app).post("/api/v1/admin/reload")
    assert response.status_code == status, response.text
    if status == 403:
        assert response.json() == {"detail": "INVALID_ACTOR"}
        assert "configuration reload" not in caplog.text  # refused before any reload
        assert answer not in caplog.text and "forged" not in caplog.text
    else:
        assert f"configuration reload (admin:{answer}): {path}: applied (no change)" in (
            caplog.text
        )


def test_a_reload_trigger_outside_the_rule_is_logged_quoted_on_one_line(tmp_path, caplog):
    from driftgate.reload import ConfigReloader

    path = tmp_path / "values.yaml"
    path.write_text("drift_max_ratio: 0.01\n")
    reloader = ConfigReloader(
        path, lambda settings: [], registry=driftgate.MetricsRegistry(), sleep=lambda s: None
    )
    with caplog.at_level(logging.INFO, logger="driftgate.reload"):
        result = reloader.reload("admin:bob\nERROR driftgate: forged")
    assert result.trigger == "'admin:bob\\nERROR driftgate: forged'"
    assert len(caplog.records) == 1
    assert "\n" not in caplog.records[0].getMessage()


def test_every_refused_admin_request_is_logged_by_reason_and_never_by_token(tmp_path, caplog):
    import logging

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from driftgate.fastapi import create_router
    from driftgate.fastapi.auth import Approvers
    from driftgate.identity import TokenFile, token_file_line

    reader_token = "reader-" + "r" * 40
    line = token_file_line("reader", reader_token, ["rollout:read"])
    approvers = Approvers(token_file=TokenFile.parse(line.encode()))
    tracker = driftgate.DriftTracker(registry=driftgate.MetricsRegistry())
    enforcer = driftgate.Enforcer(driftgate.EnforceOptions(enforce=True), tracker)
    manager = driftgate.RolloutManager(
        driftgate.RolloutConfig.default(), enforcer=enforcer, state_path=tmp_path / "r.json"
    )
    app = FastAPI()
    app.include_router(create_router(tracker=tracker, manager=manager, admin=approvers))
    advance = "/api/guardian/rollout/advance"
    with caplog.at_level(logging.INFO, logger="driftgate.auth"), TestClient(app) as client:
        assert client.post(advance).status_code == 401
        assert (
            client.post(advance, headers={"Authorization": "Bearer " + "x" * 40}).status_code == 403
        )
        headers = {"Authorization": f"Bearer {reader_token}"}
        assert client.post(advance, headers=headers).status_code == 403
    logged = [r.getMessage() for r in caplog.records if r.name == "driftgate.auth"]
    assert logged[0] == "admin request refused: MISSING_CREDENTIALS"
    assert logged[1].startswith("admin request refused: INVALID_CREDENTIALS")
    assert logged[2] == "admin request refused: MISSING_SCOPE rollout:advance for reader"
    assert not any(reader_token in message for message in logged)
