"""Who moves a rollout: named approvers with scopes, from a token file of hashed tokens or from
OAuth2/OIDC bearer JWTs checked against the issuer's published keys.

A token file holds one approver per line, `NAME  sha256:HEX  SCOPE[,SCOPE...]`:

    # approvers of the verifier's rollout
    alice  sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  rollout:advance
    bob    sha256:60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752  rollout:rollback

Fields are separated by spaces and tabs (a no-break space or another Unicode space is refused,
naming the line); `#` starts a comment line; a UTF-8 byte order mark at the start is skipped,
as in the values file. Whoever can write the file decides who approves, so, as ssh's
StrictModes does, a file writable by its group or by others is refused (a Kubernetes Secret's
default mode, 0644, is fine; `defaultMode: 0664` or `0666` is not).

The file holds SHA-256 digests, never the tokens. A fast hash is the right one here: the tokens
are random and long (at least 32 characters, e.g. `secrets.token_urlsafe(32)`, 256 bits), so
nobody recovers one from its digest by guessing, however fast each guess is; a deliberately
slow hash (argon2, scrypt) protects short human-chosen passwords, and on this path it would
only make every request, and every attacker's request, cost the service tens of milliseconds
of CPU. `driftgate token-hash` writes a line from a token read on stdin.

This module needs nothing beyond the standard library, except PyJWT (the `oidc` extra) for
`OIDCVerifier`. Nothing here reads the environment.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import re
import stat
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftgate._messages import read_capped, shown
from driftgate.reasons import ReasonCode

if TYPE_CHECKING:
    from driftgate._core import MetricsRegistry
    from driftgate._jwks import IssuerKeys

__all__ = [
    "ACTOR_PATTERN",
    "ALLOWED_ALGORITHMS",
    "MIN_TOKEN_LENGTH",
    "Identity",
    "IdentityError",
    "OIDCVerifier",
    "People",
    "Scope",
    "TokenFile",
    "TokenFileError",
    "oidc_person",
    "parse_grants",
    "token_digest",
    "token_file_line",
]

ACTOR_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
"""What an actor name may be (the rule of the rollout history): a name from a token file or
a JWT claim that breaks it is refused, never shortened or escaped."""

MIN_TOKEN_LENGTH = 32
"""Tokens shorter than this are refused by `driftgate token-hash`: the file's fast hash is
safe only for random tokens of that size or more."""

MAX_TOKEN_FILE_BYTES = 1 << 20
MAX_TOKEN_LENGTH = 8192
"""Longer bearer values are neither tokens nor JWTs a sane issuer signs; refused unread."""

ALLOWED_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
"""The JWT algorithms an approver's token may be signed with: asymmetric ones only. `none` and
the HMAC family (HS256...) are never accepted, so a token "signed" with the issuer's public key
as an HMAC secret is refused whatever the configuration says."""


class Scope(str, enum.Enum):
    """What an approver may do. The value is the scope's name in tokens and in the OpenAPI."""

    ADVANCE = "rollout:advance"
    ROLLBACK = "rollout:rollback"
    READ = "rollout:read"
    RELOAD = "config:reload"

    def __str__(self) -> str:
        return self.value


ALL_SCOPES = frozenset(Scope)
_SCOPES_BY_NAME = {scope.value: scope for scope in Scope}
# The scopes a grant may limit to one rollout: `rollout:advance:orders` (NAME by the actor rule).
_LIMITABLE = (Scope.ADVANCE, Scope.ROLLBACK, Scope.READ)
_LIMITED = re.compile(
    "(" + "|".join(re.escape(s.value) for s in _LIMITABLE) + r"):([A-Za-z0-9_.:-]{1,64})"
)


@dataclass(frozen=True)
class Identity:
    """An authenticated approver: the `name` recorded as the actor in the rollout history,
    the scopes it holds, and how it was recognised (`token`, `token_file`, `oidc`).

    `subject` is the stable id of the credential, as `People` names it: `token_file:NAME`,
    `oidc:SUB` (of the one configured issuer), empty for the shared admin token. `person` is
    who the approvals of a stage needing several people count it as: the person `People` maps
    the subject to, else the token file's name, else a digest of the issuer and `sub` (never
    the display name, which a person may change); empty for the admin token, which is nobody."""

    name: str
    scopes: frozenset[Scope]
    method: str
    subject: str = ""
    person: str = ""
    # Scopes held for one rollout only, as granted: `rollout:advance:orders`.
    rollout_scopes: frozenset[str] = frozenset()

    def allows(self, scope: Scope | str, rollout: str | None = None) -> bool:
        """Whether this approver holds `scope`: everywhere, or for `rollout` alone."""
        held = Scope(scope)
        return held in self.scopes or (
            rollout is not None and f"{held.value}:{rollout}" in self.rollout_scopes
        )


TOKEN_FILE_SUBJECT = "token_file:"
OIDC_SUBJECT = "oidc:"
_SUBJECT = re.compile(r"(token_file:[A-Za-z0-9_.:-]{1,64}|oidc:[\x21-\x7e]{1,255})")


def oidc_person(issuer: str, sub: str) -> str:
    """The person id of an OIDC subject no `People` entry names: `oidc:` and 32 hex digits of
    SHA-256 over the issuer and `sub`, so it fits the history's actor rule whatever
    characters the issuer puts in `sub`, and two issuers' equal `sub`s stay apart."""
    digest = hashlib.sha256(f"{issuer}\n{sub}".encode("utf-8", "surrogatepass")).hexdigest()
    return OIDC_SUBJECT + digest[:32]


class People:
    """Which credentials belong to one person, so that a stage asking for two approvals gets
    two people however many names each signs in with. Built from `{person: [subject, ...]}`
    (a subject is `token_file:NAME` or `oidc:SUB`); ValueError naming a bad person or subject,
    or a subject listed under two people. Immutable."""

    def __init__(self, people: Mapping[str, Sequence[str]] | None = None):
        owners: dict[str, str] = {}
        for person, subjects in (people or {}).items():
            if ACTOR_PATTERN.fullmatch(person) is None:
                raise ValueError(
                    f"person {shown(person)}: expected 1-64 characters of [A-Za-z0-9_.:-]"
                )
            for subject in subjects:
                if _SUBJECT.fullmatch(subject) is None:
                    raise ValueError(
                        f"{person}: subject {shown(subject)}: expected token_file:NAME (a "
                        "name of the token file) or oidc:SUB (the issuer's sub claim, "
                        "printable ASCII without spaces)"
                    )
                if subject in owners and owners[subject] != person:
                    raise ValueError(
                        f"subject {shown(subject)} is listed under both {owners[subject]} "
                        f"and {person}: one credential belongs to one person"
                    )
                owners[subject] = person
        self._owners = owners

    def __len__(self) -> int:
        return len(self._owners)

    def person(self, identity: Identity) -> Identity:
        """`identity` with the person its subject is mapped to, if any."""
        owner = self._owners.get(identity.subject)
        return identity if owner is None else replace(identity, person=owner)


class IdentityError(Exception):
    """A bearer value that identifies nobody, with the fixed reason code to answer; the
    message is for logs and never holds the token or a claim's value."""

    def __init__(self, reason: ReasonCode, message: str = ""):
        super().__init__(message or reason.value)
        self.reason = reason


def token_digest(token: str) -> str:
    """The token file's form of a token: `sha256:` and the hex digest of its UTF-8 bytes."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def parse_scopes(text: str) -> frozenset[Scope]:
    """`rollout:advance,rollout:rollback` as scopes; ValueError naming an unknown or repeated
    one, or one limited to a rollout (see `parse_grants`)."""
    scopes, limited = parse_grants(text)
    if limited:
        raise ValueError(f"scope {shown(sorted(limited)[0])} is limited to one rollout")
    return scopes


def parse_grants(text: str) -> tuple[frozenset[Scope], frozenset[str]]:
    """`rollout:advance,rollout:read:orders` as (scopes held everywhere, scopes held for one
    rollout): a rollout scope followed by `:NAME` holds it for the rollout NAME only.
    ValueError naming an unknown or repeated one."""
    names = text.split(",")
    unknown = [n for n in names if n not in _SCOPES_BY_NAME and _LIMITED.fullmatch(n) is None]
    if unknown:
        known = ", ".join(_SCOPES_BY_NAME)
        raise ValueError(
            f"unknown scope {shown(unknown[0])} (known: {known}; a rollout scope may name one "
            "rollout: rollout:advance:NAME)"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"scope listed twice in {shown(text)}")
    return (
        frozenset(_SCOPES_BY_NAME[n] for n in names if n in _SCOPES_BY_NAME),
        frozenset(n for n in names if n not in _SCOPES_BY_NAME),
    )


def token_file_line(name: str, token: str, scopes: Iterable[Scope | str]) -> str:
    """One token-file line for `name` holding `token` (hashed) and `scopes`; ValueError for a
    bad name, a token shorter than MIN_TOKEN_LENGTH, or an unknown scope."""
    if ACTOR_PATTERN.fullmatch(name) is None:
        raise ValueError(f"name {shown(name)}: expected 1-64 characters of [A-Za-z0-9_.:-]")
    if len(token) < MIN_TOKEN_LENGTH:
        # the length only: the token itself is never shown
        raise ValueError(
            f"the token has {len(token)} characters: expected at least {MIN_TOKEN_LENGTH} "
            "random ones (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    if any(ch.isspace() for ch in token):
        raise ValueError("the token contains whitespace: a bearer token cannot")
    listed = [Scope(s).value if isinstance(s, Scope) else s for s in scopes]
    if not listed:
        raise ValueError("no scope: expected at least one of " + ", ".join(_SCOPES_BY_NAME))
    parse_grants(",".join(listed))
    return f"{name}  {token_digest(token)}  {','.join(listed)}"


class TokenFileError(ValueError):
    """A token file that cannot be used: one line naming the file and the line. A digest field
    is never shown (it may be a token pasted by mistake)."""


_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_FIELD_SEPARATOR = re.compile(r"[ \t]+")


@dataclass(frozen=True)
class _Entry:
    name: str
    digest: bytes
    scopes: frozenset[Scope]
    rollout_scopes: frozenset[str] = frozenset()


def _odd_character(content: str) -> str | None:
    """What a line must not hold, said without the line itself: a control character, or a
    Unicode space or invisible character (it would separate fields, or hide inside one)."""
    if content.isascii():
        if any((ord(ch) < 32 and ch != "\t") or ch == "\x7f" for ch in content):
            return "a control character"
        return None
    for ch in content:
        category = unicodedata.category(ch)
        if category == "Cc" and ch != "\t":
            return "a control character"
        if ch.isspace() or category in ("Zs", "Zl", "Zp", "Cf"):
            name = unicodedata.name(ch, "a Unicode space")
            return f"U+{ord(ch):04X} ({name}): fields are separated by spaces and tabs only"
    return None


_WRITERS = ((stat.S_IWGRP, "its group"), (stat.S_IWOTH, "others"))


def _refuse_writable_by_others(path: str) -> Callable[[os.stat_result], None]:
    """A check of the token file as opened: whoever may write it decides who approves."""

    def check(status: os.stat_result) -> None:
        mode = stat.S_IMODE(status.st_mode)
        writable = [who for bit, who in _WRITERS if mode & bit]
        if os.name == "posix" and writable:
            raise TokenFileError(
                f"{path}: writable by {' and '.join(writable)} (mode {mode:04o}), who could make "
                "themselves approvers: chmod go-w it (a Kubernetes Secret's default mode, 0644, "
                "is fine)"
            )

    return check


class TokenFile:
    """Named approvers read from a token file (see the module's docstring). Immutable once
    read, so any number of threads may look tokens up at once. Two token files are equal when
    they hold the same approvers with the same tokens and scopes (comments, order and spacing
    aside)."""

    def __init__(self, entries: Sequence[_Entry], path: str = "<token file>"):
        self._entries = tuple(entries)
        self.path = path

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TokenFile):
            return NotImplemented
        return set(self._entries) == set(other._entries)

    @property
    def names(self) -> list[str]:
        return [entry.name for entry in self._entries]

    @classmethod
    def load(cls, path: str | Path) -> TokenFile:
        """The token file at `path`; TokenFileError naming the file (and the line) when it
        cannot be read or used, or when its group or others may write it."""
        check = _refuse_writable_by_others(str(path))
        raw = read_capped(path, MAX_TOKEN_FILE_BYTES, TokenFileError, opened=check)
        return cls.parse(raw, str(path))

    @classmethod
    def parse(cls, raw: bytes, path: str = "<token file>") -> TokenFile:
        try:
            text = raw.decode("utf-8-sig")  # a byte order mark at the start is skipped
        except UnicodeDecodeError as error:
            at = raw.count(b"\n", 0, error.start) + 1
            raise TokenFileError(f"{path}:{at}: not UTF-8") from None
        entries: list[_Entry] = []
        names: dict[str, int] = {}
        digests: dict[str, int] = {}
        for number, line in enumerate(text.split("\n"), start=1):
            content = line.rstrip("\r").strip(" \t")
            if not content or content.startswith("#"):
                continue
            where = f"{path}:{number}"
            odd = _odd_character(content)
            if odd is not None:
                raise TokenFileError(f"{where}: contains {odd}")
            fields = _FIELD_SEPARATOR.split(content)
            if len(fields) != 3:
                raise TokenFileError(
                    f"{where}: expected 3 fields 'NAME sha256:HEX SCOPE[,SCOPE...]', "
                    f"got {len(fields)}"
                )
            name, digest, scopes = fields
            if ACTOR_PATTERN.fullmatch(name) is None:
                # not shown: a field out of place may be a token
                raise TokenFileError(
                    f"{where}: the first field (the name) is not 1-64 characters of [A-Za-z0-9_.:-]"
                )
            if name in names:
                raise TokenFileError(
                    f"{where}: name {name} appears twice (first on line {names[name]})"
                )
            if _DIGEST.fullmatch(digest) is None:
                raise TokenFileError(
                    f"{where}: the second field of {name} is not sha256:<64 lowercase hex "
                    "digits> (driftgate token-hash writes it; a plain token never belongs here)"
                )
            if digest in digests:
                raise TokenFileError(
                    f"{where}: {name} has the token of line {digests[digest]}: one token, one name"
                )
            try:
                parsed, limited = parse_grants(scopes)
            except ValueError as error:
                raise TokenFileError(f"{where}: {name}: {error}") from None
            names[name] = digests[digest] = number
            entries.append(_Entry(name, digest.encode(), parsed, limited))
        return cls(entries, path)

    def identify(self, token: str) -> Identity | None:
        """The approver holding `token`, or None. Every entry is compared, in constant time,
        so the answer's timing tells nothing about which digest came close."""
        presented = token_digest(token).encode()
        found: _Entry | None = None
        for entry in self._entries:
            if hmac.compare_digest(presented, entry.digest):
                found = entry
        if found is None:
            return None
        return Identity(
            found.name,
            found.scopes,
            "token_file",
            TOKEN_FILE_SUBJECT + found.name,
            found.name,
            found.rollout_scopes,
        )


# -- OIDC ------------------------------------------------------------------------------------

_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def looks_like_jwt(token: str) -> bool:
    """Three base64url segments: a JWS in compact form (a token-file token has no dots)."""
    return _JWT_SHAPE.fullmatch(token) is not None


class OIDCVerifier:
    """Checks bearer JWTs from one OAuth2/OIDC issuer with PyJWT: signature against the keys the
    issuer publishes at `jwks_url`, `iss`, `aud`, `exp` (required), and the algorithm against
    `algorithms` (a subset of ALLOWED_ALGORITHMS). The actor is the `actor_claim` claim, else
    `sub`; scopes come from `scope` (space-separated) or `scp` (a list).

    The key set (`keys`, a `driftgate._jwks.IssuerKeys`) is fetched on first use, on a thread
    of its own, one fetch at a time, and used for `cache_seconds`; then it is refreshed in the
    background while tokens go on being checked against it, for up to `max_stale_seconds`
    past its expiry while refreshes fail, after which JWTs are refused with
    IDENTITY_PROVIDER until a fetch succeeds. A failed fetch is not retried for
    `failure_cache_seconds`. A token whose `kid` is not in the set makes one refetch (a
    rotated key), at most once per `refresh_interval` seconds in this process, so tokens with
    made-up `kid`s cannot turn the service into a flood of requests at the issuer. A token
    waits for a fetch only when there is no key to check it with (no set yet, one past its
    stale bound, a `kid` being refetched), for `max_wait_seconds` at most; a token whose key
    is held never waits. Each fetch has one deadline of `timeout` seconds and reads at most
    1 MiB. With `registry`, fetches by outcome and the set's age are exported there.
    Thread-safe."""

    keys: IssuerKeys

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_url: str,
        actor_claim: str = "preferred_username",
        algorithms: Sequence[str] = ALLOWED_ALGORITHMS,
        leeway_seconds: float = 30.0,
        cache_seconds: float = 300.0,
        refresh_interval: float = 30.0,
        timeout: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
        failure_cache_seconds: float = 10.0,
        max_stale_seconds: float = 3600.0,
        max_wait_seconds: float = 1.0,
        registry: MetricsRegistry | None = None,
    ):
        try:
            import jwt

            from driftgate._jwks import IssuerKeys
        except ImportError:
            raise ImportError("OIDC approvers need PyJWT: pip install 'driftgate[oidc]'") from None
        refused = [a for a in algorithms if a not in ALLOWED_ALGORITHMS]
        if refused or not algorithms:
            raise ValueError(
                f"algorithms={list(algorithms)!r}: expected a non-empty subset of "
                f"{', '.join(ALLOWED_ALGORITHMS)} (no none, no HS*)"
            )
        self.issuer = issuer
        self.audience = audience
        self.jwks_url = jwks_url
        self.actor_claim = actor_claim
        self.algorithms = tuple(algorithms)
        self.leeway_seconds = leeway_seconds
        self.refresh_interval = refresh_interval
        self._jwt = jwt
        self.keys = IssuerKeys(
            jwks_url,
            cache_seconds=cache_seconds,
            refresh_interval=refresh_interval,
            failure_cache_seconds=failure_cache_seconds,
            max_stale_seconds=max_stale_seconds,
            timeout=timeout,
            max_wait_seconds=max_wait_seconds,
            monotonic=monotonic,
            registry=registry,
        )

    def _signing_key(self, kid: str) -> Any:
        from driftgate._jwks import KeySetUnavailable

        try:
            key = self.keys.key(kid)
        except KeySetUnavailable as error:
            raise IdentityError(ReasonCode.IDENTITY_PROVIDER, str(error)) from None
        if key is None:
            raise IdentityError(ReasonCode.INVALID_CREDENTIALS, "no published key has this kid")
        return key

    def identify(self, token: str) -> Identity:
        """The approver a JWT names, or IdentityError with the reason to answer."""
        jwt = self._jwt
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise IdentityError(ReasonCode.INVALID_CREDENTIALS, "not a JWT") from None
        algorithm = header.get("alg")
        kid = header.get("kid")
        if algorithm not in self.algorithms:
            raise IdentityError(ReasonCode.INVALID_CREDENTIALS, "algorithm not allowed")
        if not isinstance(kid, str) or not kid:
            raise IdentityError(ReasonCode.INVALID_CREDENTIALS, "no kid in the header")
        key = self._signing_key(kid)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_seconds,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise IdentityError(ReasonCode.TOKEN_EXPIRED, "expired") from None
        except (jwt.PyJWTError, TypeError, ValueError) as error:
            # a bad signature or claim, or a key of another family than the algorithm's
            raise IdentityError(
                ReasonCode.INVALID_CREDENTIALS, f"refused: {type(error).__name__}"
            ) from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 255:
            # the subject is who approves: a token without one names nobody in particular
            raise IdentityError(ReasonCode.INVALID_ACTOR, "no usable sub claim")
        scopes, limited = _claimed_scopes(claims)
        return Identity(
            self._actor(claims),
            scopes,
            "oidc",
            OIDC_SUBJECT + sub,
            oidc_person(self.issuer, sub),
            limited,
        )

    def _actor(self, claims: Mapping[str, Any]) -> str:
        actor = claims.get(self.actor_claim)
        if actor is None:
            actor = claims.get("sub")
        if not isinstance(actor, str) or ACTOR_PATTERN.fullmatch(actor) is None:
            # the claim's value is never echoed: it may be an e-mail address
            raise IdentityError(
                ReasonCode.INVALID_ACTOR,
                f"claim {self.actor_claim} (or sub) is not 1-64 of [A-Za-z0-9_.:-]",
            )
        return actor


def _claimed_scopes(claims: Mapping[str, Any]) -> tuple[frozenset[Scope], frozenset[str]]:
    """The rollout scopes a token holds, everywhere and for one rollout: `scope` as a
    space-separated string (RFC 8693, RFC 9068) or `scp` as a list or string (Azure AD,
    Okta); other scopes are ignored."""
    names: list[str] = []
    for claim in ("scope", "scp"):
        value = claims.get(claim)
        if isinstance(value, str):
            names += value.split()
        elif isinstance(value, list):
            names += [v for v in value if isinstance(v, str)]
    return (
        frozenset(_SCOPES_BY_NAME[n] for n in names if n in _SCOPES_BY_NAME),
        frozenset(n for n in names if _LIMITED.fullmatch(n) is not None),
    )
