"""`GET /health` (and `HEAD`): liveness for load balancers; no auth."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app import __version__
from app.api.deps import SettingsDep, WorkspacesDep
from app.api.routing import StrictJsonRoute
from app.doctor import readiness
from app.jobs.worker import JobRuntime
from app.schemas.health import CheckView, Health, NotReady, Readiness
from app.workspace.pool import WorkspacePool

router = APIRouter(tags=["health"], route_class=StrictJsonRoute)


@router.get("/health", response_model=Health)
@router.head("/health", response_model=Health, operation_id="health_head")
async def health(request: Request, workspaces: WorkspacesDep) -> Health:
    """Whether the service is up, and whether its job store takes writes."""
    return health_of(getattr(request.app.state, "jobs", None), workspaces)


def health_of(jobs: JobRuntime | None, workspaces: WorkspacePool) -> Health:
    """The answer of `/health` (the route and the fast lane, app/api/fast.py)."""
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


@router.get(
    "/health/ready",
    response_model=Readiness,
    responses={503: {"model": NotReady, "description": "A check failed (the list says which)"}},
)
async def ready(request: Request, settings: SettingsDep) -> JSONResponse:
    """Readiness: the cheap checks of `doctor` (the CLI found, the store taking
    writes, the workspace a work tree, a token set); 200, or 503 with the failing ones."""
    jobs: JobRuntime | None = getattr(request.app.state, "jobs", None)
    store_error = jobs.store.write_error if jobs is not None else "the job store is not open"
    checks = [CheckView(**asdict(c)) for c in readiness(settings, store_error=store_error)]
    failing = [c for c in checks if not c.ok]
    if not failing:
        return JSONResponse(Readiness(status="ready", checks=checks).model_dump())
    detail = "; ".join(f"{c.name}: {c.detail}" for c in failing)
    body = NotReady(error="not ready", detail=detail, message=detail, checks=checks).model_dump()
    return JSONResponse(body, status_code=503)
