"""The seam: the FastAPI `app`, its lifespan, `execution_lock`, `run_git_sync`,
and `run_agent`, the one coroutine that runs an agent.

`run_git_sync`, `execution_lock` and `asyncio.create_subprocess_exec` are looked
up here at call time, so that tests can patch them on this module.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI

from app import __version__
from app.agent import process
from app.agent.command import build_command, current_child_environment
from app.agent.run import AgentBusy, AgentRun
from app.agent.stream import AgentResult
from app.api import api_router
from app.errors import install_error_handlers
from app.jobs.store import JobStore
from app.jobs.worker import JobEvents, JobRuntime, Worker
from app.limits import BodySizeLimit
from app.settings import get_settings
from app.workspace import git

logger = logging.getLogger(__name__)

# One agent run at a time per workspace; a run that finds it held is refused.
execution_lock = asyncio.Lock()


async def run_git_sync() -> None:
    """Bring the workspace up to date with its remote before a run.

    A failure is logged and the run goes on with the local state.
    """
    settings = get_settings()
    if not settings.git_sync:
        return
    error = await git.sync_workspace(
        settings.workspace_dir, timeout_s=settings.git_sync_timeout_seconds
    )
    if error:
        logger.warning("git sync failed; running on the local state: %s", error)


async def run_agent(run: AgentRun) -> AgentResult:
    """Run the agent once for a request: take the workspace, or fail at once.

    Raises `AgentBusy` if another run (a chat or a job) holds the workspace.
    """
    lock = execution_lock
    if lock.locked():
        raise AgentBusy
    async with lock:
        return await run_in_workspace(run)


async def run_in_workspace(
    run: AgentRun,
    *,
    on_line: process.OnLine | None = None,
    on_start: process.OnStart | None = None,
) -> AgentResult:
    """Sync the workspace and run the CLI in it; the caller holds `execution_lock`."""
    await run_git_sync()
    settings = get_settings()
    command = build_command(
        claude_bin=settings.claude_bin,
        prompt=run.prompt,
        model=run.model,
        permission_mode=settings.claude_permission_mode,
        max_budget_usd=run.max_budget_usd,
        agent=run.agent,
        resume_session_id=run.resume_session_id,
    )
    return await process.run_agent_process(
        command,
        cwd=settings.workspace_dir,
        env=current_child_environment(),
        timeout_s=run.timeout_s,
        spawn=asyncio.create_subprocess_exec,
        on_line=on_line,
        on_start=on_start,
    )


def _workspace_lock() -> asyncio.Lock:
    return execution_lock


def is_busy() -> bool:
    return execution_lock.locked()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Check the settings and the workspace, open the job store, run the worker."""
    settings = get_settings()
    if settings.bearer_token is None:
        raise RuntimeError("API_BEARER_TOKEN is not set; refusing to serve without auth")
    await asyncio.to_thread(git.ensure_workspace, settings.workspace_dir)
    store = await JobStore.open(settings.data_dir)
    hub = JobEvents()
    worker = Worker(
        store,
        hub,
        execute=run_in_workspace,
        workspace_lock=_workspace_lock,
        max_event_bytes=settings.job_max_event_bytes,
        retention=timedelta(days=settings.job_retention_days),
    )
    await worker.recover()
    worker.start()
    app.state.jobs = JobRuntime(store, hub, worker)
    logger.info("serving workspace %s with %s", settings.workspace_dir, settings.claude_bin)
    try:
        yield
    finally:
        await worker.stop(settings.shutdown_grace_seconds)
        app.state.jobs = None
        await store.close()


app = FastAPI(title="Claude Agent Service", version=__version__, lifespan=lifespan)
app.state.run_agent = run_agent
app.state.is_busy = is_busy
install_error_handlers(app)
app.include_router(api_router)
app.add_middleware(BodySizeLimit, max_bytes=lambda: get_settings().max_request_bytes)
