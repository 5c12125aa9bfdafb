"""driftgate's FastAPI router: health, readiness (the drift gate), metrics, rollout status and
admin advance/rollback. Needs the `fastapi` extra: ``pip install driftgate[fastapi]``."""

from driftgate.fastapi.auth import bearer_token_admin
from driftgate.fastapi.router import MAX_BODY_BYTES, create_router

__all__ = ["MAX_BODY_BYTES", "bearer_token_admin", "create_router"]
