"""The configuration reload endpoint: `POST {prefix}/admin/reload`, admin only."""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, Field

from driftgate.fastapi.auth import AdminDependency
from driftgate.reload import ReloadResult

__all__ = ["ReloadBody", "create_admin_router"]


class ReloadBody(BaseModel):
    success: bool
    message: str = Field(description="The values file and what the reload changed.")
    changed: list[str] = Field(description="The values-file keys whose new values apply now.")


class _ErrorBody(BaseModel):
    detail: str = Field(description="A fixed reason code, or why the values file was refused.")


def create_admin_router(
    *, reload: Callable[[str], ReloadResult], admin: AdminDependency, prefix: str = "/api/v1"
) -> APIRouter:
    """A router with `POST {prefix}/admin/reload`: re-reads the values file through `reload`
    (e.g. `ConfigReloader.reload`) and answers what changed, or 400 with the reason the file
    was refused (the running configuration then stays). `admin` guards it."""
    router = APIRouter()

    @router.post(
        f"{prefix}/admin/reload",
        response_model=ReloadBody,
        responses={code: {"model": _ErrorBody} for code in (400, 401, 403)},
        name="driftgate:config_reload",
    )
    def config_reload(actor: Annotated[str, Depends(admin)]) -> dict[str, Any]:
        # Sync: reading the file and swapping the configuration run in the threadpool.
        result = reload(f"admin:{actor}")
        if not result.success:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, result.message)
        return {"success": True, "message": result.message, "changed": list(result.changed)}

    return router
