"""Admin authentication for the rollout endpoints: who may move the rollout, and with which
scope. Three kinds of bearer token, any mix of them:

- the single admin token (DRIFTGATE_ADMIN_TOKEN), compared in constant time: actor
  "admin-token", every scope;
- a token file of named approvers with hashed tokens and scopes (`driftgate.identity`);
- OAuth2/OIDC JWTs from one issuer, checked against its published keys (the `oidc` extra).

Each endpoint asks for its scope (advance needs `rollout:advance`, rollback
`rollout:rollback`, a protected status `rollout:read`), and the OpenAPI declares the schemes in
use with that scope. Nothing configured means refused. A service may instead pass any FastAPI
dependency returning the actor's name."""

from __future__ import annotations

import hmac
import inspect
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPBearer, OpenIdConnect
from fastapi.security.base import SecurityBase
from fastapi.security.utils import get_authorization_scheme_param

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
    looks_like_jwt,
)
from driftgate.reasons import ReasonCode

if TYPE_CHECKING:
    from driftgate._core import MetricsRegistry
    from driftgate.settings import Settings

__all__ = [
    "TOKEN_ACTOR",
    "TOKEN_ENV",
    "TOKEN_FILE_ENV",
    "AdminDependency",
    "Approvers",
    "approvers_from_settings",
    "bearer_token_admin",
    "identified",
    "scoped",
    "status_guard",
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


class Approvers:
    """Who may move the rollout: the admin token, a token file, an OIDC issuer, or any mix.
    `require(scope)` is the FastAPI dependency of an endpoint that needs `scope`; it returns
    the approver's name, the actor of the rollout history. Called as a dependency itself, an
    Approvers answers any recognised approver whatever its scopes. `protect_status` makes the
    status endpoint ask for `rollout:read`. Immutable, so safe from any thread."""

    def __init__(
        self,
        *,
        token: str | None = None,
        token_file: TokenFile | None = None,
        oidc: OIDCVerifier | None = None,
        protect_status: bool = False,
        token_env: str = TOKEN_ENV,
        people: People | None = None,
    ):
        self._token = token.encode() if token else None
        self.people = people or People()
        self.token_file = token_file
        self.oidc = oidc
        self.protect_status = protect_status
        schemes: list[SecurityBase] = []
        if self._token is not None or token_file is not None or oidc is None:
            schemes.append(bearer_scheme(token_env))
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
        self.__signature__ = self._dependency(None, str).__signature__  # type: ignore[attr-defined]

    @property
    def configured(self) -> bool:
        return self._token is not None or self.token_file is not None or self.oidc is not None

    def __call__(self, request: Request, **_declared: Any) -> str:
        return self.authorize(request.headers.get("authorization"), None).name

    def require(self, scope: Scope | str) -> AdminDependency:
        """The dependency of an endpoint that needs `scope`, answering the approver's name."""
        return self._dependency(Scope(scope), str)

    def require_identity(self, scope: Scope | str) -> Callable[..., Identity]:
        """The dependency of an endpoint that needs `scope`, answering the whole Identity (a
        move needs the person behind the name)."""
        return self._dependency(Scope(scope), Identity)

    def _dependency(self, scope: Scope | None, answer: type[Any]) -> Callable[..., Any]:
        def require_approver(request: Request, **_declared: Any) -> Any:
            identity = self.authorize(request.headers.get("authorization"), scope)
            return identity if answer is Identity else identity.name

        # The schemes are parameters only so that FastAPI declares them, with the scope, in
        # the OpenAPI of the operation; the header is read once, above.
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
            for i, scheme in enumerate(self.schemes)
        ]
        require_approver.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            parameters, return_annotation=answer
        )
        return require_approver

    def authorize(self, authorization: str | None, scope: Scope | None) -> Identity:
        """The approver an Authorization header names, if it holds `scope`; else the
        HTTPException to answer: 403 ADMIN_DISABLED (nothing configured), 401
        MISSING_CREDENTIALS, 403 INVALID_CREDENTIALS / TOKEN_EXPIRED / INVALID_ACTOR,
        403 "MISSING_SCOPE: <scope>", 503 IDENTITY_PROVIDER (the issuer's keys are out of
        reach)."""
        if not self.configured:
            raise HTTPException(status.HTTP_403_FORBIDDEN, ReasonCode.ADMIN_DISABLED.value)
        kind, token = get_authorization_scheme_param(authorization)
        token = token.strip()
        if kind.lower() != "bearer" or not token:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                ReasonCode.MISSING_CREDENTIALS.value,
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            identity = self.identify(token)
        except IdentityError as error:
            logger.info("admin request refused: %s (%s)", error.reason.value, error)
            raise HTTPException(
                _ERROR_STATUS.get(error.reason, status.HTTP_403_FORBIDDEN), error.reason.value
            ) from None
        if scope is not None and not identity.allows(scope):
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
        return self.people.person(self._identify(token))

    def _identify(self, token: str) -> Identity:
        if len(token) > MAX_TOKEN_LENGTH:
            raise IdentityError(ReasonCode.INVALID_CREDENTIALS, "longer than any token")
        if self.oidc is not None and looks_like_jwt(token):
            return self.oidc.identify(token)
        found = self.token_file.identify(token) if self.token_file is not None else None
        # compared even when the file matched, so the timing does not say which one did
        matches_token = self._token is not None and hmac.compare_digest(
            token.encode("utf-8", "surrogateescape"), self._token
        )
        if found is not None:
            return found
        if matches_token:
            return Identity(TOKEN_ACTOR, ALL_SCOPES, "token")
        raise IdentityError(ReasonCode.INVALID_CREDENTIALS, "no approver holds this token")


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
    """The dependencies of the status endpoint: `rollout:read` when the approvers protect the
    status, none otherwise."""
    if isinstance(admin, Approvers) and admin.protect_status:
        return [Depends(admin.require(Scope.READ))]
    return []


def approvers_from_settings(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    *,
    registry: MetricsRegistry | None = None,
) -> Approvers:
    """The approvers a values file configures: the admin token from the variable
    `admin.token_env`, the token file at `admin.token_file` (else at $DRIFTGATE_TOKEN_FILE),
    and the OIDC issuer of `admin.oidc`, whose key-set fetches are exported in `registry`
    (none: not exported). A token file that cannot be used is a TokenFileError naming it and
    the line."""
    environ = os.environ if environ is None else environ
    token = environ.get(settings.admin_token_env) or None
    path = settings.admin_token_file or (
        Path(environ[TOKEN_FILE_ENV]) if environ.get(TOKEN_FILE_ENV) else None
    )
    token_file = None if path is None else TokenFile.load(path)
    oidc = None
    if settings.admin_oidc is not None:
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
    )
