"""Admin authentication for the rollout endpoints: a bearer token compared in constant time,
or any FastAPI dependency the application brings. Nothing configured means refused."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import HTTPException, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from driftgate.reasons import ReasonCode

TOKEN_ACTOR = "admin-token"

# Declares the bearer scheme in the OpenAPI of the operations that use it; the checks below
# answer the errors themselves (auto_error=False), with driftgate's reason codes.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="adminBearer",
    description="The admin token (DRIFTGATE_ADMIN_TOKEN) as `Authorization: Bearer <token>`.",
)

AdminDependency = Callable[..., str]


def bearer_token_admin(token: str | None) -> AdminDependency:
    """A dependency that accepts `Authorization: Bearer <token>` and returns the actor
    "admin-token". Missing credentials are 401, wrong ones 403; with no token configured every
    request is refused (403), so the admin endpoints are never open by accident."""
    expected = token.encode() if token else None

    def require_admin(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    ) -> str:
        if expected is None:
            raise HTTPException(status.HTTP_403_FORBIDDEN, ReasonCode.ADMIN_DISABLED.value)
        if credentials is None or not credentials.credentials:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                ReasonCode.MISSING_CREDENTIALS.value,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(credentials.credentials.strip().encode(), expected):
            raise HTTPException(status.HTTP_403_FORBIDDEN, ReasonCode.INVALID_CREDENTIALS.value)
        return TOKEN_ACTOR

    return require_admin
