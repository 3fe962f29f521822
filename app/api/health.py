"""`GET /health` (and `HEAD`): liveness for load balancers; no auth."""

from __future__ import annotations

from fastapi import APIRouter

from app import __version__
from app.api.deps import IsBusyDep

router = APIRouter(tags=["health"])


@router.api_route("/health", methods=["GET", "HEAD"])
async def health(is_busy: IsBusyDep) -> dict[str, object]:
    return {"status": "ok", "busy": is_busy(), "version": __version__}
