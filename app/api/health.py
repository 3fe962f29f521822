"""`GET /health` (and `HEAD`): liveness for load balancers; no auth."""

from __future__ import annotations

from fastapi import APIRouter

from app import __version__
from app.api.deps import IsBusyDep

router = APIRouter(tags=["health"])


@router.get("/health")
@router.head("/health", include_in_schema=False)
async def health(is_busy: IsBusyDep) -> dict[str, object]:
    return {"status": "ok", "busy": is_busy(), "version": __version__}
