"""Admin authentication for the rollout endpoints: a bearer token compared in constant time,
or any FastAPI dependency the application brings. Nothing configured means refused."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import HTTPException, Request, status

TOKEN_ACTOR = "admin-token"

AdminDependency = Callable[..., str]


def bearer_token_admin(token: str | None) -> AdminDependency:
    """A dependency that accepts `Authorization: Bearer <token>` and returns the actor
    "admin-token". Missing credentials are 401, wrong ones 403; with no token configured every
    request is refused (403), so the admin endpoints are never open by accident."""
    expected = token.encode() if token else None

    def require_admin(request: Request) -> str:
        if expected is None:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "ADMIN_DISABLED")
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer" or not credentials:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "MISSING_CREDENTIALS",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(credentials.strip().encode(), expected):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "INVALID_CREDENTIALS")
        return TOKEN_ACTOR

    return require_admin
