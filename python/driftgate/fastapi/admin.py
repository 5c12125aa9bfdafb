"""The configuration reload endpoint: `POST {prefix}/admin/reload`, admin only."""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, status
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

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
    *,
    reload: Callable[[str], ReloadResult],
    admin: AdminDependency,
    prefix: str = "/api/v1",
    run: Callable[[Callable[[], ReloadResult]], Awaitable[ReloadResult]] | None = None,
) -> APIRouter:
    """A router with `POST {prefix}/admin/reload`: re-reads the values file through `reload`
    (e.g. `ConfigReloader.reload`) and answers what changed, or 400 with the reason the file
    was refused (the running configuration then stays). `admin` guards it. `run` runs the
    reload off the event loop (`create_router` passes its move queue, so a reload waits its
    turn with the moves and is refused as they are when too many wait); without it, the
    reload runs in the shared thread pool."""
    router = APIRouter()
    run_reload = run or run_in_threadpool

    @router.post(
        f"{prefix}/admin/reload",
        response_model=ReloadBody,
        responses={code: {"model": _ErrorBody} for code in (400, 401, 403, 503)},
        name="driftgate:config_reload",
    )
    async def config_reload(actor: Annotated[str, Depends(admin)]) -> dict[str, Any]:
        # Reading the file and swapping the configuration block: off the event loop.
        result = await run_reload(lambda: reload(f"admin:{actor}"))
        if not result.success:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, result.message)
        return {"success": True, "message": result.message, "changed": list(result.changed)}

    return router
