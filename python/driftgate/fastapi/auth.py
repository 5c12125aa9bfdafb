"""Admin authentication for the rollout endpoints: who may move the rollout, and with which
scope. Three kinds of bearer token, any mix of them:

- the single admin token (DRIFTGATE_ADMIN_TOKEN), compared in constant time: actor
  "admin-token", every scope;
- a token file of named approvers with hashed tokens and scopes (`driftgate.identity`);
- OAuth2/OIDC JWTs from one issuer, checked against its published keys (the `oidc` extra).

Each endpoint asks for its scope (advance needs `rollout:advance`, rollback
`rollout:rollback`, a protected status `rollout:read`), and the OpenAPI declares the schemes in
use with that scope. Nothing configured means refused. A service may instead pass any FastAPI
dependency returning the actor's name.

The approvers are live: a configuration reload builds new ones from the values file and the
token file (`Approvers.reloaded`) and swaps them in whole (`Approvers.adopt`); each request
reads the ones in force once, without a lock."""

from __future__ import annotations

import hmac
import inspect
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPBearer, OpenIdConnect
from fastapi.security.base import SecurityBase
from fastapi.security.utils import get_authorization_scheme_param
from starlette.concurrency import run_in_threadpool

from driftgate._core import DEFAULT_ROLLOUT
from driftgate._messages import shown
from driftgate.identity import (
    ACTOR_PATTERN,
    ALL_SCOPES,
    MAX_TOKEN_LENGTH,
    Identity,
    IdentityError,
    OIDCVerifier,
    People,
    Scope,
    TokenFile,
    TokenFileError,
    looks_like_jwt,
)
from driftgate.reasons import ReasonCode
from driftgate.settings import Settings, SettingsError

if TYPE_CHECKING:
    from driftgate._core import MetricsRegistry

__all__ = [
    "TOKEN_ACTOR",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "AdminDependency",
    "Approvers",
    "approvers_from_settings",
    "bearer_token_admin",
    "configured_approvers",
    "identified",
    "scoped",
    "status_declared_protected",
    "status_guard",
    "token_file_path",
]

logger = logging.getLogger("driftgate.auth")

TOKEN_ACTOR = "admin-token"
TOKEN_FILE_ENV = "DRIFTGATE_TOKEN_FILE"
"""Where the token file is when the values file names none."""

TOKEN_ENV = "DRIFTGATE_ADMIN_TOKEN"
"""Where the admin token is when the values file names no other variable (`admin.token_env`)."""


def bearer_scheme(token_env: str = TOKEN_ENV) -> HTTPBearer:
    """The bearer scheme the OpenAPI declares on the operations that use it, naming the
    variable the admin token is read from; the checks below answer the errors themselves
    (auto_error=False), with driftgate's reason codes."""
    return HTTPBearer(
        auto_error=False,
        scheme_name="adminBearer",
        description=f"The admin token ({token_env}) or an approver's token from the "
        "token file, as `Authorization: Bearer <token>`.",
    )


AdminDependency = Callable[..., str]

_ERROR_STATUS = {ReasonCode.IDENTITY_PROVIDER: status.HTTP_503_SERVICE_UNAVAILABLE}


@dataclass(frozen=True, eq=False)
class _InForce:
    """What the approvers are at one moment: swapped whole by a reload, read once per
    request."""

    token: bytes | None
    token_file: TokenFile | None
    oidc: OIDCVerifier | None
    people: People
    protect_status: bool

    @property
    def configured(self) -> bool:
        return self.token is not None or self.token_file is not None or self.oidc is not None


class Approvers:
    """Who may move the rollout: the admin token, a token file, an OIDC issuer, or any mix.
    `require(scope)` is the FastAPI dependency of an endpoint that needs `scope`; it returns
    the approver's name, the actor of the rollout history. Called as a dependency itself, an
    Approvers answers any recognised approver whatever its scopes. `protect_status` makes the
    status endpoint ask for `rollout:read`.

    A reload replaces who they are (`adopt`): every dependency reads the approvers in force
    once per request, one reference swapped whole, so a request sees the old ones or the new
    ones, never a mix, and takes no lock. The security schemes, which the OpenAPI declares,
    stay those of construction. Safe from any thread."""

    def __init__(
        self,
        *,
        token: str | None = None,
        token_file: TokenFile | None = None,
        oidc: OIDCVerifier | None = None,
        protect_status: bool = False,
        token_env: str = TOKEN_ENV,
        people: People | None = None,
        registry: MetricsRegistry | None = None,
    ):
        # Where an OIDC verifier a reload builds exports its key-set fetches.
        self.registry = registry
        self._in_force = _InForce(
            token.encode() if token else None, token_file, oidc, people or People(), protect_status
        )
        schemes: list[SecurityBase] = []
        self._declares_bearer = bool(token) or token_file is not None or oidc is None
        if self._declares_bearer:
            schemes.append(bearer_scheme(token_env))
        # The issuer and audience the OpenAPI names for the oidc scheme, if it declares one.
        self._declared_oidc = None if oidc is None else (oidc.issuer, oidc.audience)
        if oidc is not None:
            schemes.append(
                OpenIdConnect(
                    openIdConnectUrl=oidc.issuer.rstrip("/") + "/.well-known/openid-configuration",
                    scheme_name="oidc",
                    description=f"A bearer JWT from {oidc.issuer} for the audience "
                    f"{oidc.audience}, holding the scope the operation names.",
                    auto_error=False,
                )
            )
        self.schemes: tuple[SecurityBase, ...] = tuple(schemes)
        self.declares_protected_status = protect_status
        """Whether the OpenAPI declares the status protected (as at construction)."""
        self.__signature__ = self._dependency(None, str).__signature__  # type: ignore[attr-defined]

    # What is in force now (each a snapshot: a request reads `_in_force` once).
    @property
    def token_file(self) -> TokenFile | None:
        return self._in_force.token_file

    @property
    def oidc(self) -> OIDCVerifier | None:
        return self._in_force.oidc

    @property
    def people(self) -> People:
        return self._in_force.people

    @property
    def protect_status(self) -> bool:
        return self._in_force.protect_status

    @property
    def configured(self) -> bool:
        return self._in_force.configured

    def __call__(self, request: Request, **_declared: Any) -> str:
        return self.authorize(request.headers.get("authorization"), None).name

    def require(self, scope: Scope | str) -> AdminDependency:
        """The dependency of an endpoint that needs `scope`, answering the approver's name."""
        return self._dependency(Scope(scope), str)

    def require_identity(self, scope: Scope | str) -> Callable[..., Identity]:
        """The dependency of an endpoint that needs `scope`, answering the whole Identity (a
        move needs the person behind the name)."""
        return self._dependency(Scope(scope), Identity)

    def require_status(self) -> Callable[..., Any]:
        """The dependency of the status endpoints: `rollout:read` while the approvers in force
        protect the status, nothing otherwise (no credentials read, on the event loop). The
        OpenAPI declares the schemes on the status only if they protected it at construction."""

        async def status_reader(request: Request, **_declared: Any) -> Identity | None:
            in_force = self._in_force
            if not in_force.protect_status:
                return None
            # Off the event loop: an OIDC token may make the key set be fetched.
            return await run_in_threadpool(
                self._authorize,
                in_force,
                request.headers.get("authorization"),
                Scope.READ,
                rollout_of(request),
            )

        return self._declared(status_reader, Scope.READ, Identity, self.declares_protected_status)

    def _dependency(self, scope: Scope | None, answer: type[Any]) -> Callable[..., Any]:
        def require_approver(request: Request, **_declared: Any) -> Any:
            identity = self.authorize(
                request.headers.get("authorization"), scope, rollout_of(request)
            )
            return identity if answer is Identity else identity.name

        return self._declared(require_approver, scope, answer, True)

    def _declared(
        self, dependency: Callable[..., Any], scope: Scope | None, answer: type[Any], schemes: bool
    ) -> Callable[..., Any]:
        """`dependency` with a signature that FastAPI reads: the request, and the schemes (when
        `schemes`) as parameters only so that FastAPI declares them, with the scope, in the
        OpenAPI of the operation; the header is read once, by `dependency`."""
        scopes = [] if scope is None else [scope.value]
        parameters = [
            inspect.Parameter(
                "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request
            )
        ]
        parameters += [
            inspect.Parameter(
                f"_scheme_{i}",
                inspect.Parameter.KEYWORD_ONLY,
                # a security scheme is a callable dependency; its stub type says only SecurityBase
                annotation=Annotated[
                    Any, Security(cast(Callable[..., Any], scheme), scopes=scopes)
                ],
            )
            for i, scheme in enumerate(self.schemes if schemes else ())
        ]
        dependency.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            parameters, return_annotation=answer
        )
        return dependency

    def authorize(
        self, authorization: str | None, scope: Scope | None, rollout: str | None = None
    ) -> Identity:
        """The approver an Authorization header names, if it holds `scope` (everywhere, or
        for `rollout`); else the HTTPException to answer: 403 ADMIN_DISABLED (nothing
        configured), 401 MISSING_CREDENTIALS, 403 INVALID_CREDENTIALS / TOKEN_EXPIRED /
        INVALID_ACTOR, 403 "MISSING_SCOPE: <scope>", 503 IDENTITY_PROVIDER (the issuer's keys
        are out of reach)."""
        return self._authorize(self._in_force, authorization, scope, rollout)

    def _authorize(
        self,
        in_force: _InForce,
        authorization: str | None,
        scope: Scope | None,
        rollout: str | None = None,
    ) -> Identity:
        if not in_force.configured:
            logger.info("admin request refused: %s", ReasonCode.ADMIN_DISABLED.value)
            raise HTTPException(status.HTTP_403_FORBIDDEN, ReasonCode.ADMIN_DISABLED.value)
        kind, token = get_authorization_scheme_param(authorization)
        token = token.strip()
        if kind.lower() != "bearer" or not token:
            logger.info("admin request refused: %s", ReasonCode.MISSING_CREDENTIALS.value)
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                ReasonCode.MISSING_CREDENTIALS.value,
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            identity = self._identify(in_force, token)
        except IdentityError as error:
            logger.info("admin request refused: %s (%s)", error.reason.value, error)
            raise HTTPException(
                _ERROR_STATUS.get(error.reason, status.HTTP_403_FORBIDDEN), error.reason.value
            ) from None
        if scope is not None and not identity.allows(scope, rollout):
            # the name passed the actor rule: no request data reaches the log
            logger.info(
                "admin request refused: %s %s for %s",
                ReasonCode.MISSING_SCOPE.value,
                scope.value,
                identity.name,
            )
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"{ReasonCode.MISSING_SCOPE.value}: {scope.value}",
                # RFC 6750's way of naming the scope a token lacks
                headers={
                    "WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope.value}"'
                },
            )
        return identity

    def identify(self, token: str) -> Identity:
        """The approver holding `token` (with the person `people` maps it to), or
        IdentityError."""
        return self._identify(self._in_force, token)

    @staticmethod
    def _identify(in_force: _InForce, token: str) -> Identity:
        return in_force.people.person(Approvers._credential(in_force, token))

    @staticmethod
    def _credential(in_force: _InForce, token: str) -> Identity:
        if len(token) > MAX_TOKEN_LENGTH:
            raise IdentityError(ReasonCode.INVALID_CREDENTIALS, "longer than any token")
        if in_force.oidc is not None and looks_like_jwt(token):
            return in_force.oidc.identify(token)
        found = in_force.token_file.identify(token) if in_force.token_file is not None else None
        # compared even when the file matched, so the timing does not say which one did
        matches_token = in_force.token is not None and hmac.compare_digest(
            token.encode("utf-8", "surrogateescape"), in_force.token
        )
        if found is not None:
            return found
        if matches_token:
            return Identity(TOKEN_ACTOR, ALL_SCOPES, "token")
        raise IdentityError(ReasonCode.INVALID_CREDENTIALS, "no approver holds this token")

    # -- reloads -------------------------------------------------------------------------------

    def reloaded(
        self, old: Settings, new: Settings, environ: Mapping[str, str] | None = None
    ) -> tuple[Approvers, list[str]]:
        """The approvers `new` configures, for `adopt` once the rest of the reload holds, and
        the values keys that changed (`admin.token_file (content)` for a token file whose
        approvers, tokens or scopes changed). The token file is read again; the running OIDC
        verifier is kept while `admin.oidc` is unchanged (with the keys it holds), a changed
        one builds a new verifier.

        The OpenAPI declares the schemes at start, so a reload may take a kind of approver
        away (revoking never waits for a restart) but not bring in one the OpenAPI does not
        declare: a token file where the service started with neither one nor the admin token,
        an OIDC issuer where it started without one, or another issuer or audience than the
        one declared. SettingsError naming the key for those (restart-only) and for a token
        file that cannot be used."""
        keep = self.oidc if new.admin_oidc == old.admin_oidc else None
        fresh = configured_approvers(new, environ, oidc=keep, registry=self.registry)
        in_force = fresh._in_force
        if (in_force.token is not None or in_force.token_file is not None) and not (
            self._declares_bearer
        ):
            raise SettingsError(
                "admin.token_file: a token file where the service started with neither one nor "
                "the admin token: its OpenAPI declares no bearer scheme; it changes only with a "
                "restart"
            )
        if in_force.oidc is not None:
            if self._declared_oidc is None:
                raise SettingsError(
                    "admin.oidc: an issuer where the service started without one: its OpenAPI "
                    "declares no oidc scheme; it changes only with a restart"
                )
            issuer, audience = self._declared_oidc
            for key, declared, value in (
                ("issuer", issuer, in_force.oidc.issuer),
                ("audience", audience, in_force.oidc.audience),
            ):
                if value != declared:
                    raise SettingsError(
                        f"admin.oidc.{key}: {shown(value)} differs from the {shown(declared)} "
                        "that the OpenAPI declares; it changes only with a restart"
                    )
        changed = []
        before, after = self.token_file, in_force.token_file
        if (None if before is None else before.path) != (None if after is None else after.path):
            changed.append("admin.token_file")
        elif before != after:  # the same file, other approvers, tokens or scopes
            changed.append("admin.token_file (content)")
        if new.admin_oidc != old.admin_oidc:
            changed.append("admin.oidc")
        if new.admin_people != old.admin_people:
            changed.append("admin.people")
        if new.admin_protect_status != old.admin_protect_status:
            changed.append("admin.protect_status")
        return fresh, changed

    def adopt(self, other: Approvers) -> None:
        """Makes `other`'s approvers the ones in force, from the next request on, in one step
        (its schemes are not taken: the OpenAPI keeps declaring these)."""
        self._in_force = other._in_force


def rollout_of(request: Request) -> str | None:
    """The rollout a request acts on, for scopes limited to one: its `{rollout}` path
    parameter, `default` on the rollout's own paths (`/api/guardian/rollout/...`), None
    elsewhere (a configuration reload is no rollout's)."""
    named = request.path_params.get("rollout")
    if isinstance(named, str):
        return named
    route = request.scope.get("route")
    name = getattr(route, "name", "") or ""
    return DEFAULT_ROLLOUT if name.startswith("driftgate:rollout_") else None


def bearer_token_admin(token: str | None) -> Approvers:
    """Admin by one bearer token: `Authorization: Bearer <token>` is the actor "admin-token"
    with every scope. Missing credentials are 401, wrong ones 403; with no token configured
    every request is refused (403), so the admin endpoints are never open by accident."""
    return Approvers(token=token)


def scoped(admin: AdminDependency, scope: Scope | str) -> AdminDependency:
    """The dependency for an endpoint that needs `scope`: an Approvers' own, or a service's
    `admin` dependency (that one decides for itself) whose answer is checked to be a name."""
    return admin.require(scope) if isinstance(admin, Approvers) else _service_actor(admin)


def identified(admin: AdminDependency, scope: Scope | str) -> Callable[..., Identity]:
    """As `scoped`, answering the Identity. A name from a service's own `admin` dependency is
    its own person: the service vouches that it names one."""
    if isinstance(admin, Approvers):
        return admin.require_identity(scope)

    def service_identity(actor: str) -> Identity:
        return Identity(actor, ALL_SCOPES, "service", "service:" + actor, actor)

    return _depending_on(service_identity, _service_actor(admin), Identity)


def _depending_on(
    function: Callable[..., Any], dependency: Callable[..., Any], answer: type[Any]
) -> Callable[..., Any]:
    """`function(actor)` as a FastAPI dependency whose `actor` is `dependency`'s answer (a
    signature of objects: annotations in this module are strings, and a closure's variable
    is not among the names FastAPI resolves them with)."""
    actor = inspect.Parameter(
        "actor",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        annotation=Annotated[Any, Depends(dependency)],
    )
    function.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [actor], return_annotation=answer
    )
    return function


def _service_actor(admin: AdminDependency) -> AdminDependency:
    """`admin` with its answer checked against the actor rule: anything else (an e-mail
    address, a name too long, not a string) is refused as 403 INVALID_ACTOR, and the log says
    what kind of value it was, never the value (it may be PII, or forge a log line)."""

    def service_actor(actor: Any) -> str:
        if isinstance(actor, str) and ACTOR_PATTERN.fullmatch(actor) is not None:
            return actor
        what = (
            f"a string of {len(actor)} characters"
            if isinstance(actor, str)
            else type(actor).__name__
        )
        logger.warning(
            "admin request refused (%s): the service's admin dependency %s answered %s, not "
            "1-64 characters of [A-Za-z0-9_.:-]",
            ReasonCode.INVALID_ACTOR.value,
            getattr(admin, "__name__", type(admin).__name__),
            what,
        )
        raise HTTPException(status.HTTP_403_FORBIDDEN, ReasonCode.INVALID_ACTOR.value)

    return _depending_on(service_actor, admin, str)


def status_guard(admin: AdminDependency) -> Sequence[DependsParam]:
    """The dependencies of the status endpoint: an Approvers' `rollout:read` check, which asks
    for credentials only while the approvers in force protect the status; none for a service's
    own `admin` dependency."""
    if isinstance(admin, Approvers):
        return [Depends(admin.require_status())]
    return []


def status_declared_protected(admin: AdminDependency) -> bool:
    """Whether the OpenAPI declares the status protected: as the approvers were at start."""
    return isinstance(admin, Approvers) and admin.declares_protected_status


def token_file_path(settings: Settings, environ: Mapping[str, str] | None = None) -> Path | None:
    """The token file a values file configures: `admin.token_file`, else $DRIFTGATE_TOKEN_FILE,
    else none."""
    environ = os.environ if environ is None else environ
    if settings.admin_token_file is not None:
        return settings.admin_token_file
    return Path(environ[TOKEN_FILE_ENV]) if environ.get(TOKEN_FILE_ENV) else None


def approvers_from_settings(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    *,
    registry: MetricsRegistry | None = None,
    oidc: OIDCVerifier | None = None,
) -> Approvers:
    """The approvers a values file configures: the admin token from the variable
    `admin.token_env`, the token file at `admin.token_file` (else at $DRIFTGATE_TOKEN_FILE),
    and the OIDC issuer of `admin.oidc`, whose key-set fetches are exported in `registry`
    (none: not exported); `oidc`, when given, is the verifier to use for it (a reload keeps
    the running one, with the keys it holds). A token file that cannot be used is a
    TokenFileError naming it and the line."""
    environ = os.environ if environ is None else environ
    token = environ.get(settings.admin_token_env) or None
    path = token_file_path(settings, environ)
    token_file = None if path is None else TokenFile.load(path)
    if settings.admin_oidc is None:
        oidc = None
    elif oidc is None:
        o = settings.admin_oidc
        oidc = OIDCVerifier(
            issuer=o.issuer,
            audience=o.audience,
            jwks_url=o.jwks_url,
            actor_claim=o.actor_claim,
            algorithms=o.algorithms,
            registry=registry,
        )
    return Approvers(
        token=token,
        token_file=token_file,
        oidc=oidc,
        protect_status=settings.admin_protect_status,
        token_env=settings.admin_token_env,
        people=People(settings.admin_people),
        registry=registry,
    )


def configured_approvers(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    *,
    oidc: OIDCVerifier | None = None,
    registry: MetricsRegistry | None = None,
) -> Approvers:
    """As `approvers_from_settings`, with a problem as a SettingsError naming the values key:
    `admin.token_file: FILE:LINE: ...` (never a digest or a token), or `admin.oidc: ...` when
    PyJWT is not installed."""
    try:
        return approvers_from_settings(settings, environ, registry=registry, oidc=oidc)
    except TokenFileError as error:
        raise SettingsError(f"admin.token_file: {error}") from None
    except ImportError as error:
        raise SettingsError(f"admin.oidc: {error}") from None
