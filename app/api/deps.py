"""Dependencies shared by the routers, as `Annotated` aliases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from app.agent.run import RunAgent
from app.errors import ServiceError
from app.jobs.worker import JobRuntime
from app.settings import Settings, get_settings
from app.workspace.pool import WorkspacePool


async def _settings() -> Settings:
    # async: a plain function would run in FastAPI's thread pool on every request
    return get_settings()


SettingsDep = Annotated[Settings, Depends(_settings)]


def resolve_model(requested: str | None, settings: Settings) -> str:
    """The model alias to run: the requested one if supported, else the default."""
    model = requested or settings.default_model
    if model not in settings.models:
        raise ServiceError(
            f"model {model!r} is not supported",
            error="unsupported model",
            extra={"supported": list(settings.models)},
        )
    return model


async def _run_agent(request: Request) -> RunAgent:
    runner: RunAgent = request.app.state.run_agent
    return runner


async def _workspaces(request: Request) -> WorkspacePool:
    pool_of: Callable[[], WorkspacePool] = request.app.state.workspace_pool
    return pool_of()


RunAgentDep = Annotated[RunAgent, Depends(_run_agent)]
WorkspacesDep = Annotated[WorkspacePool, Depends(_workspaces)]


async def _jobs(request: Request) -> JobRuntime:
    jobs: JobRuntime | None = getattr(request.app.state, "jobs", None)
    if jobs is None:
        raise ServiceError(
            "the job queue is not running (the app was started without its lifespan)",
            error="service unavailable",
            status_code=503,
        )
    return jobs


JobsDep = Annotated[JobRuntime, Depends(_jobs)]
