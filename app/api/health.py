"""`GET /health` (and `HEAD`): liveness for load balancers; no auth."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app import __version__
from app.api.deps import WorkspacesDep
from app.api.routing import StrictJsonRoute
from app.jobs.worker import JobRuntime
from app.schemas.health import Health

router = APIRouter(tags=["health"], route_class=StrictJsonRoute)


@router.get("/health", response_model=Health)
@router.head("/health", response_model=Health, operation_id="health_head")
async def health(request: Request, workspaces: WorkspacesDep) -> Health:
    """Whether the service is up, and whether its job store takes writes."""
    jobs: JobRuntime | None = getattr(request.app.state, "jobs", None)
    store_error = jobs.store.write_error if jobs is not None else None
    return Health(
        status="ok" if store_error is None else "degraded",
        busy=workspaces.full,
        runs=workspaces.in_use,
        slots=len(workspaces),
        version=__version__,
        store="ok" if store_error is None else "failing",
        store_error=store_error,
    )
