"""Named approvers with scopes: a token file of hashed tokens, and OIDC bearer JWTs checked
against a key set served on 127.0.0.1 by the test, with keys the test makes."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import driftgate
from driftgate import RolloutConfig, RolloutManager
from driftgate.fastapi import create_router
from driftgate.fastapi.auth import Approvers, approvers_from_settings
from driftgate.identity import (
    OIDCVerifier,
    Scope,
    TokenFile,
    TokenFileError,
    token_digest,
    token_file_line,
)
from driftgate.settings import SettingsError, parse_settings
from servers import demo_service, json_server

jwt = pytest.importorskip("jwt")
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402

ISSUER = "https://id.example.test/realms/ops"
AUDIENCE = "driftgate"
ADVANCE = "/api/guardian/rollout/advance"
ROLLBACK = "/api/guardian/rollout/rollback"
STATUS = "/api/guardian/rollout/status"

ALICE = "alice-" + "a" * 40
BOB = "bob-" + "b" * 40
CAROL = "carol-" + "c" * 40


# -- keys and tokens -------------------------------------------------------------------------


@functools.cache
def rsa_private_key(slot: int) -> rsa.RSAPrivateKey:
    """RSA keys made once per run (2048 bits take a while); `slot` tells them apart."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Key:
    """An RSA key pair with a kid, as an issuer has."""

    def __init__(self, kid: str, slot: int = 0):
        self.kid = kid
        self.private = rsa_private_key(slot)

    def jwk(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        return jwt.encode(
            claims, self.private, algorithm="RS256", headers={"kid": self.kid, **header}
        )


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "7f0c2d1e-0000-4000-8000-000000000001",
        "preferred_username": "dana.ops",
        "scope": "openid rollout:advance rollout:rollback",
        "iat": now,
        "exp": now + 300,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """The key set an issuer publishes, served by the test; `keys` may change (rotation)."""

    def __init__(self, *keys: Key):
        self.keys = list(keys)
        self.fetches = 0

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        self.fetches += 1
        return 200, {"keys": [key.jwk() for key in self.keys]}


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def first_key() -> Key:
    return Key("key-1")


@pytest.fixture
def issuer(first_key: Key) -> Issuer:
    return Issuer(first_key)


@pytest.fixture
def jwks_url(issuer: Issuer) -> Iterator[str]:
    with json_server(issuer.answer) as base:
        yield f"{base}/certs"


@pytest.fixture
def monotonic() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def verifier(jwks_url: str, monotonic: FakeMonotonic) -> OIDCVerifier:
    return OIDCVerifier(issuer=ISSUER, audience=AUDIENCE, jwks_url=jwks_url, monotonic=monotonic)


def rollout_app(approvers: Approvers, clock: driftgate.ManualClock) -> FastAPI:
    tracker = driftgate.DriftTracker(clock=clock, registry=driftgate.MetricsRegistry())
    enforcer = driftgate.Enforcer(driftgate.EnforceOptions(enforce=True), tracker)
    manager = RolloutManager(RolloutConfig.default(), enforcer, clock=clock)
    app = FastAPI()
    app.include_router(create_router(tracker=tracker, manager=manager, admin=approvers))
    app.state.manager = manager
    return app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def oidc_client(verifier: OIDCVerifier, rollout_clock: driftgate.ManualClock) -> TestClient:
    return TestClient(rollout_app(Approvers(oidc=verifier), rollout_clock))


# -- OIDC ------------------------------------------------------------------------------------


def test_a_good_token_advances_and_its_user_is_the_actor(oidc_client, first_key):
    response = oidc_client.post(ADVANCE, headers=bearer(first_key.sign(claims())))
    assert response.status_code == 200, response.text
    assert response.json()["new_stage"] == "quarter"
    history = oidc_client.app.state.manager.get_status()["transitions"]
    assert history[-1]["actor"] == "dana.ops"


def test_the_actor_falls_back_to_sub(oidc_client, first_key):
    token = first_key.sign(claims(preferred_username=None, sub="svc-rollout-bot"))
    assert oidc_client.post(ADVANCE, headers=bearer(token)).status_code == 200
    assert oidc_client.app.state.manager.get_status()["transitions"][-1]["actor"] == (
        "svc-rollout-bot"
    )


def test_an_actor_claim_outside_the_actor_rule_is_403_without_echo(oidc_client, first_key):
    token = first_key.sign(claims(preferred_username="dana@example.com"))
    response = oidc_client.post(ADVANCE, headers=bearer(token))
    assert response.status_code == 403
    assert response.json() == {"detail": "INVALID_ACTOR"}
    assert "example.com" not in response.text


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, "TOKEN_EXPIRED"),
        ({"aud": "another-service"}, "INVALID_CREDENTIALS"),
        ({"iss": "https://evil.example.test/realms/ops"}, "INVALID_CREDENTIALS"),
        ({"exp": None}, "INVALID_CREDENTIALS"),
        ({"aud": None}, "INVALID_CREDENTIALS"),
    ],
    ids=["expired", "wrong-audience", "wrong-issuer", "no-expiry", "no-audience"],
)
def test_tokens_with_bad_claims_are_refused(oidc_client, first_key, overrides, reason):
    response = oidc_client.post(ADVANCE, headers=bearer(first_key.sign(claims(**overrides))))
    assert (response.status_code, response.json()) == (403, {"detail": reason})
    assert oidc_client.app.state.manager.get_status()["current_stage"]["name"] == "canary"


def test_a_token_without_the_scope_is_403_naming_it(oidc_client, first_key):
    token = first_key.sign(claims(scope="openid rollout:advance"))
    response = oidc_client.post(ROLLBACK, headers=bearer(token))
    assert response.status_code == 403
    assert response.json() == {"detail": "MISSING_SCOPE: rollout:rollback"}
    assert response.headers["www-authenticate"] == (
        'Bearer error="insufficient_scope", scope="rollout:rollback"'
    )
    # the scope it has still works
    assert oidc_client.post(ADVANCE, headers=bearer(token)).status_code == 200


def test_scopes_as_an_scp_list_count(oidc_client, first_key):
    token = first_key.sign(claims(scope=None, scp=["rollout:advance"]))
    assert oidc_client.post(ADVANCE, headers=bearer(token)).status_code == 200


def test_alg_none_is_refused(oidc_client, first_key):
    header = b64(json.dumps({"alg": "none", "typ": "JWT", "kid": first_key.kid}).encode())
    body = b64(json.dumps(claims()).encode())
    response = oidc_client.post(ADVANCE, headers=bearer(f"{header}.{body}."))
    assert (response.status_code, response.json()) == (403, {"detail": "INVALID_CREDENTIALS"})


def test_an_hs256_token_signed_with_the_public_key_is_refused(oidc_client, first_key):
    # The classic confusion: the issuer's public key (which anyone can fetch) used as an HMAC
    # secret. Built by hand, as PyJWT itself refuses to sign with a PEM key as HMAC secret.
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": first_key.kid}).encode())
    body = b64(json.dumps(claims()).encode())
    signature = hmac.new(first_key.public_pem(), f"{header}.{body}".encode(), hashlib.sha256)
    token = f"{header}.{body}.{b64(signature.digest())}"
    response = oidc_client.post(ADVANCE, headers=bearer(token))
    assert (response.status_code, response.json()) == (403, {"detail": "INVALID_CREDENTIALS"})
    assert oidc_client.app.state.manager.get_status()["current_stage"]["name"] == "canary"


def test_a_token_signed_by_an_unknown_key_is_refused(oidc_client):
    stranger = Key("key-1", slot=1)  # the published kid, another key
    response = oidc_client.post(ADVANCE, headers=bearer(stranger.sign(claims())))
    assert (response.status_code, response.json()) == (403, {"detail": "INVALID_CREDENTIALS"})


def test_a_rotated_key_is_fetched_on_its_first_token_and_both_keys_work(
    oidc_client, issuer, first_key, monotonic
):
    assert oidc_client.post(ADVANCE, headers=bearer(first_key.sign(claims()))).status_code == 200
    assert issuer.fetches == 1
    second = Key("key-2", slot=1)
    issuer.keys.append(second)  # rotation: the issuer publishes both while tokens of both live
    monotonic.now += 60
    assert oidc_client.post(ROLLBACK, headers=bearer(second.sign(claims()))).status_code == 200
    assert issuer.fetches == 2
    # both keys are in the cached set: no further fetch for either
    assert oidc_client.post(ADVANCE, headers=bearer(first_key.sign(claims()))).status_code == 200
    assert oidc_client.post(ROLLBACK, headers=bearer(second.sign(claims()))).status_code == 200
    assert issuer.fetches == 2


def test_unknown_kids_refetch_the_key_set_at_most_once_per_interval(
    oidc_client, issuer, first_key, monotonic
):
    assert oidc_client.post(ADVANCE, headers=bearer(first_key.sign(claims()))).status_code == 200
    for i in range(5):  # made-up kids: no flood of requests at the issuer
        token = Key(f"made-up-{i}", slot=2).sign(claims())
        assert oidc_client.post(ADVANCE, headers=bearer(token)).status_code == 403
    assert issuer.fetches == 1
    monotonic.now += 31
    assert (
        oidc_client.post(ADVANCE, headers=bearer(Key("made-up", slot=2).sign(claims()))).status_code
        == 403
    )
    assert issuer.fetches == 2


def test_an_unreachable_key_set_is_503(rollout_clock, first_key):
    with json_server(lambda *_: (200, {})) as base:
        dead = f"{base}/certs"
    verifier = OIDCVerifier(issuer=ISSUER, audience=AUDIENCE, jwks_url=dead, timeout=2)
    client = TestClient(rollout_app(Approvers(oidc=verifier), rollout_clock))
    response = client.post(ADVANCE, headers=bearer(first_key.sign(claims())))
    assert (response.status_code, response.json()) == (503, {"detail": "IDENTITY_PROVIDER"})


def test_an_ec_key_set_verifies_es256_tokens(rollout_clock):
    private = ec.generate_private_key(ec.SECP256R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    with json_server(lambda *_: (200, {"keys": [{**public, "kid": "ec-1"}]})) as base:
        verifier = OIDCVerifier(issuer=ISSUER, audience=AUDIENCE, jwks_url=f"{base}/certs")
        client = TestClient(rollout_app(Approvers(oidc=verifier), rollout_clock))
        token = jwt.encode(claims(), private, algorithm="ES256", headers={"kid": "ec-1"})
        assert client.post(ADVANCE, headers=bearer(token)).status_code == 200
        # an RS256 header on the EC key's kid: refused
        forged = Key("ec-1", slot=1).sign(claims())
        assert client.post(ROLLBACK, headers=bearer(forged)).status_code == 403


@pytest.mark.parametrize("algorithms", [["HS256"], ["none"], [], ["RS256", "HS512"]])
def test_symmetric_or_no_algorithms_cannot_be_configured(algorithms):
    with pytest.raises(ValueError, match="no none, no HS"):
        OIDCVerifier(
            issuer=ISSUER, audience=AUDIENCE, jwks_url="https://x/certs", algorithms=algorithms
        )


# -- the token file --------------------------------------------------------------------------


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "approvers.tokens"
    path.write_text(
        "# approvers\n"
        f"{token_file_line('alice', ALICE, ['rollout:advance', 'rollout:rollback'])}\n"
        "\n"
        f"{token_file_line('bob', BOB, ['rollout:rollback'])}\n"
        f"{token_file_line('carol', CAROL, ['rollout:read'])}\n"
    )
    return path


@pytest.fixture
def file_client(token_file: Path, rollout_clock) -> TestClient:
    return TestClient(rollout_app(Approvers(token_file=TokenFile.load(token_file)), rollout_clock))


def test_the_token_file_holds_digests_never_tokens(token_file):
    text = token_file.read_text()
    for token in (ALICE, BOB, CAROL):
        assert token not in text
        assert token_digest(token) == "sha256:" + hashlib.sha256(token.encode()).hexdigest()
        assert token_digest(token) in text


def test_the_approvers_name_is_in_the_history_after_an_advance(file_client):
    response = file_client.post(ADVANCE, headers=bearer(ALICE))
    assert response.status_code == 200, response.text
    move = file_client.app.state.manager.get_status()["transitions"][-1]
    assert (move["actor"], move["to"]) == ("alice", "quarter")


def test_a_wrong_token_is_403(file_client):
    response = file_client.post(ADVANCE, headers=bearer(ALICE[:-1] + "x"))
    assert (response.status_code, response.json()) == (403, {"detail": "INVALID_CREDENTIALS"})


def test_a_name_without_the_scope_is_403_naming_it(file_client):
    response = file_client.post(ADVANCE, headers=bearer(BOB))
    assert (response.status_code, response.json()) == (
        403,
        {"detail": "MISSING_SCOPE: rollout:advance"},
    )
    assert file_client.app.state.manager.get_status()["current_stage"]["name"] == "canary"
    assert file_client.post(ROLLBACK, headers=bearer(BOB)).status_code == 200


def test_missing_credentials_are_401(file_client):
    response = file_client.post(ADVANCE)
    assert (response.status_code, response.json()) == (401, {"detail": "MISSING_CREDENTIALS"})
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_protected_status_needs_rollout_read(token_file, rollout_clock):
    approvers = Approvers(token_file=TokenFile.load(token_file), protect_status=True)
    client = TestClient(rollout_app(approvers, rollout_clock))
    assert client.get(STATUS).status_code == 401
    assert client.get(STATUS, headers=bearer(CAROL)).status_code == 200
    response = client.get(STATUS, headers=bearer(BOB))
    assert (response.status_code, response.json()) == (
        403,
        {"detail": "MISSING_SCOPE: rollout:read"},
    )
    # a reader cannot move
    assert client.post(ADVANCE, headers=bearer(CAROL)).status_code == 403


def test_the_admin_token_and_the_file_work_side_by_side(token_file, rollout_clock):
    approvers = Approvers(
        token="the-admin-token-" + "z" * 20, token_file=TokenFile.load(token_file)
    )
    client = TestClient(rollout_app(approvers, rollout_clock))
    assert client.post(ADVANCE, headers=bearer("the-admin-token-" + "z" * 20)).status_code == 200
    assert client.post(ROLLBACK, headers=bearer(BOB)).status_code == 200
    actors = [t["actor"] for t in client.app.state.manager.get_status()["transitions"][-2:]]
    assert actors == ["admin-token", "bob"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice sha256:abc rollout:advance\n", ":1: the second field of alice is not sha256:"),
        (f"alice {ALICE} rollout:advance\n", ":1: the second field of alice is not sha256:"),
        ("# c\nalice " + token_digest(ALICE) + "\n", ":2: expected 3 fields"),
        ("alice " + token_digest(ALICE) + " rollout:deploy\n", ":1: alice: unknown scope"),
        (
            "alice " + token_digest(ALICE) + " rollout:advance,rollout:advance\n",
            ":1: alice: scope listed twice",
        ),
        ("al ice " + token_digest(ALICE) + " rollout:advance\n", ":1: expected 3 fields"),
        ("al/ice " + token_digest(ALICE) + " rollout:advance\n", ":1: the first field (the name)"),
        (
            f"alice {token_digest(ALICE)} rollout:advance\n"
            f"alice {token_digest(BOB)} rollout:read\n",
            ":2: name alice appears twice (first on line 1)",
        ),
        (
            f"alice {token_digest(ALICE)} rollout:advance\n"
            f"bob {token_digest(ALICE)} rollout:read\n",
            ":2: bob has the token of line 1",
        ),
        ("alice " + token_digest(ALICE).upper() + " rollout:read\n", ":1: the second field"),
    ],
)
def test_a_bad_token_file_is_refused_naming_the_line(tmp_path, text, message):
    path = tmp_path / "approvers.tokens"
    path.write_text(text)
    with pytest.raises(TokenFileError) as raised:
        TokenFile.load(path)
    assert str(raised.value).startswith(f"{path}{message}"), str(raised.value)
    assert ALICE not in str(raised.value)  # a pasted token is never echoed


@pytest.mark.parametrize(
    ("mode", "who"),
    [
        (0o664, "its group"),
        (0o646, "others"),
        (0o666, "its group and others"),
        (0o620, "its group"),
    ],
)
def test_a_token_file_others_may_write_is_refused(tmp_path, token_file, mode, who):
    token_file.chmod(mode)
    with pytest.raises(TokenFileError) as raised:
        TokenFile.load(token_file)
    assert str(raised.value) == (
        f"{token_file}: writable by {who} (mode {mode:04o}), who could make themselves "
        "approvers: chmod go-w it (a Kubernetes Secret's default mode, 0644, is fine)"
    )


@pytest.mark.parametrize("mode", [0o644, 0o600, 0o640, 0o444, 0o400, 0o755])
def test_a_token_file_only_its_owner_may_write_is_read(tmp_path, token_file, mode):
    token_file.chmod(mode)
    assert TokenFile.load(token_file).names == ["alice", "bob", "carol"]


def test_a_group_writable_token_file_stops_the_start_naming_the_key(tmp_path, token_file):
    from driftgate.fastapi.auth import configured_approvers

    token_file.chmod(0o664)
    settings = parse_settings({"admin": {"token_file": str(token_file)}})
    with pytest.raises(SettingsError) as raised:
        configured_approvers(settings)
    assert str(raised.value).startswith(f"admin.token_file: {token_file}: writable by its group")


def test_a_byte_order_mark_at_the_start_is_skipped():
    text = "\ufeff" + token_file_line("alice", ALICE, ["rollout:advance"]) + "\n"
    assert TokenFile.parse(text.encode()).names == ["alice"]
    commented = "\ufeff# approvers\n" + token_file_line("bob", BOB, ["rollout:read"]) + "\n"
    assert TokenFile.parse(commented.encode()).names == ["bob"]


def test_a_byte_order_mark_inside_the_file_is_refused_naming_it():
    text = "# approvers\n\ufeff" + token_file_line("alice", ALICE, ["rollout:advance"])
    with pytest.raises(TokenFileError) as raised:
        TokenFile.parse(text.encode(), "t.tokens")
    assert str(raised.value) == (
        "t.tokens:2: contains U+FEFF (ZERO WIDTH NO-BREAK SPACE): fields are separated by "
        "spaces and tabs only"
    )


@pytest.mark.parametrize(
    ("space", "name"),
    [
        ("\u00a0", "U+00A0 (NO-BREAK SPACE)"),
        ("\u2003", "U+2003 (EM SPACE)"),
        ("\u3000", "U+3000 (IDEOGRAPHIC SPACE)"),
        ("\u200b", "U+200B (ZERO WIDTH SPACE)"),
        ("\u2028", "U+2028 (LINE SEPARATOR)"),
    ],
)
def test_a_unicode_space_between_fields_is_refused_naming_the_line(space, name):
    line = f"alice{space}{token_digest(ALICE)} rollout:advance"
    text = f"# approvers\n{token_file_line('bob', BOB, ['rollout:read'])}\n{line}\n"
    with pytest.raises(TokenFileError) as raised:
        TokenFile.parse(text.encode(), "t.tokens")
    assert str(raised.value) == (
        f"t.tokens:3: contains {name}: fields are separated by spaces and tabs only"
    )
    assert ALICE not in str(raised.value) and token_digest(ALICE) not in str(raised.value)


@pytest.mark.parametrize("character", ["\x0b", "\x0c", "\x1f", "\x7f", "\x85"])
def test_a_control_character_is_refused_naming_the_line(character):
    text = f"alice{character}{token_digest(ALICE)} rollout:advance\n"
    with pytest.raises(TokenFileError, match=r"^t.tokens:1: contains a control character$"):
        TokenFile.parse(text.encode(), "t.tokens")


def test_spaces_and_tabs_separate_fields_and_comments_may_be_any_text():
    text = (
        "# Genehmigende Personen \u2013 J\u00fcrgens Team\u00a0\n"
        f"alice \t  {token_digest(ALICE)}\t\trollout:advance  \n"
    )
    assert TokenFile.parse(text.encode()).names == ["alice"]


def test_an_unreadable_token_file_names_it(tmp_path):
    with pytest.raises(TokenFileError, match=r"missing.tokens: cannot read"):
        TokenFile.load(tmp_path / "missing.tokens")


def test_token_file_line_refuses_short_tokens_without_showing_them():
    with pytest.raises(ValueError, match="the token has 12 characters") as raised:
        token_file_line("alice", "short-secret", [Scope.ADVANCE])
    assert "short-secret" not in str(raised.value)


# -- configuration ---------------------------------------------------------------------------


def test_the_values_file_configures_file_and_oidc(token_file, jwks_url, rollout_clock, first_key):
    settings = parse_settings(
        {
            "admin": {
                "token_file": str(token_file),
                "oidc": {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": jwks_url},
                "protect_status": True,
            }
        }
    )
    approvers = approvers_from_settings(settings, environ={})
    client = TestClient(rollout_app(approvers, rollout_clock))
    assert client.get(STATUS, headers=bearer(CAROL)).status_code == 200
    assert client.post(ADVANCE, headers=bearer(first_key.sign(claims()))).status_code == 200
    assert client.post(ROLLBACK, headers=bearer(ALICE)).status_code == 200


def test_the_token_file_path_may_come_from_the_environment(token_file, rollout_clock):
    approvers = approvers_from_settings(
        parse_settings({}), environ={"DRIFTGATE_TOKEN_FILE": str(token_file)}
    )
    assert approvers.token_file is not None and approvers.token_file.names == [
        "alice",
        "bob",
        "carol",
    ]


@pytest.mark.parametrize(
    ("oidc", "message"),
    [
        ({"issuer": "http://id.example.test", "audience": "a", "jwks_url": "https://x/c"},
         "admin.oidc.issuer: expected an https:// URL"),
        ({"issuer": ISSUER, "audience": "a", "jwks_url": "http://10.0.0.1/certs"},
         "admin.oidc.jwks_url: expected an https:// URL"),
        ({"issuer": ISSUER, "audience": "a", "jwks_url": "https://x/c", "algorithms": ["HS256"]},
         "admin.oidc.algorithms[0]: expected"),
        ({"issuer": ISSUER, "jwks_url": "https://x/c"}, "admin.oidc.audience: missing"),
        ({"issuer": ISSUER, "audience": "a", "jwks_url": "https://x/c", "secret": "s"},
         "admin.oidc: unknown key 'secret'"),
    ],
)  # fmt: skip
def test_bad_oidc_settings_name_the_key(oidc, message):
    with pytest.raises(SettingsError) as raised:
        parse_settings({"admin": {"oidc": oidc}})
    assert str(raised.value).startswith(message), str(raised.value)


# -- the OpenAPI -----------------------------------------------------------------------------


def test_the_openapi_declares_bearer_and_oidc_with_each_operations_scope(
    token_file, verifier, rollout_clock
):
    from openapi_spec_validator import validate

    approvers = Approvers(token_file=TokenFile.load(token_file), oidc=verifier, protect_status=True)
    schema = rollout_app(approvers, rollout_clock).openapi()
    validate(schema)
    schemes = schema["components"]["securitySchemes"]
    assert schemes["adminBearer"]["scheme"] == "bearer"
    assert schemes["oidc"] == {
        "type": "openIdConnect",
        "openIdConnectUrl": f"{ISSUER}/.well-known/openid-configuration",
        "description": schemes["oidc"]["description"],
    }
    for path, method, scope in (
        (ADVANCE, "post", "rollout:advance"),
        (ROLLBACK, "post", "rollout:rollback"),
        (STATUS, "get", "rollout:read"),
    ):
        assert schema["paths"][path][method]["security"] == [
            {"adminBearer": [scope]},
            {"oidc": [scope]},
        ]
        assert {"401", "403"} <= set(schema["paths"][path][method]["responses"])


def test_oidc_alone_declares_no_bearer_scheme(verifier, rollout_clock):
    schema = rollout_app(Approvers(oidc=verifier), rollout_clock).openapi()
    assert set(schema["components"]["securitySchemes"]) == {"oidc"}
    assert "security" not in schema["paths"][STATUS]["get"]


@pytest.mark.slow
@pytest.mark.integration
def test_the_served_demo_records_the_token_files_name(token_file, tmp_path):
    values = f"rollout: {{enabled: true}}\nadmin: {{token_file: {json.dumps(str(token_file))}}}\n"
    driftgate_command = Path(sys.executable).parent / "driftgate"
    with demo_service(tmp_path / "service", values) as url:

        def cli(*args: str, token: str) -> subprocess.CompletedProcess[str]:
            env = {**os.environ, "DRIFTGATE_ADMIN_TOKEN": token}
            return subprocess.run(
                [str(driftgate_command), *args, "--url", url],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )

        assert cli("advance", token=ALICE).returncode == 0
        refused = cli("advance", token=BOB)
        assert refused.returncode == 2
        assert "MISSING_SCOPE: rollout:advance" in refused.stderr
        status = json.loads(cli("status", "--json", token=CAROL).stdout)
    assert [(t["actor"], t["to"]) for t in status["transitions"]][-1] == ("alice", "quarter")
