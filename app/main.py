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
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from app import __version__
from app.agent import process
from app.agent.command import build_command, current_child_environment
from app.agent.run import AgentBusy, AgentRun, SyncFailed
from app.agent.stream import AgentResult
from app.aio import complete_even_if_cancelled, drain
from app.api import api_router
from app.api.openapi import OPEN_PATHS, install_openapi
from app.auth import BearerAuth
from app.errors import install_error_handlers
from app.instance import lock_data_dir, setting_problems
from app.jobs.events import JobEvents
from app.jobs.sqlite import SQLiteJobStore
from app.jobs.worker import JobRuntime, Worker
from app.limits import BodySizeLimit
from app.settings import get_settings
from app.shutdown import shutdown
from app.workspace import git

logger = logging.getLogger(__name__)

# One agent run at a time per workspace; a run that finds it held is refused.
execution_lock = asyncio.Lock()
_fetch_throttle = git.FetchThrottle()
# At shutdown, how long cancelled runs get to kill their process groups and push.
_CLEANUP_GRACE_S = 60.0
# Runs for requests, so that shutdown can end them cleanly (jobs: the worker).
_chat_runs: set[asyncio.Task[Any]] = set()
# Without GIT_BRANCH: the branch checked out at start-up, per workspace. The
# workspace is kept on it, whatever branch an agent switches to.
_startup_branch: dict[Path, str | None] = {}
# The workspace's git config at start-up, put back before the service's git runs.
_startup_config: dict[Path, git.ConfigSnapshot | None] = {}


def _restore_git_config() -> None:
    git.restore_config(_startup_config.get(get_settings().workspace_dir))


def _workspace_branch() -> str | None:
    settings = get_settings()
    return settings.git_branch or _startup_branch.get(settings.workspace_dir)


async def run_git_sync() -> str | None:
    """Bring the workspace up to date with its remote before a run.

    Returns None, or the error of a failed sync (logged; the run goes on with
    the local state unless GIT_SYNC_REQUIRED).
    """
    settings = get_settings()
    if not settings.git_sync:
        return None
    _restore_git_config()
    error = await git.sync_workspace(
        settings.workspace_dir,
        timeout_s=settings.git_sync_timeout_seconds,
        branch=_workspace_branch(),
        min_interval_s=settings.git_sync_min_interval_seconds,
        throttle=_fetch_throttle,
    )
    if error:
        logger.warning("git sync failed: %s", error)
    return error


async def run_agent(run: AgentRun, *, report: git.GitReport | None = None) -> AgentResult:
    """Run the agent once for a request: take the workspace, or fail at once.

    Raises `AgentBusy` if another run (a chat or a job) holds the workspace.
    """
    lock = execution_lock
    if lock.locked():
        raise AgentBusy("agent is busy")
    if shutdown.begun:
        raise AgentBusy("the service is shutting down")
    async with lock:
        this = asyncio.current_task()
        assert this is not None
        _chat_runs.add(this)
        try:
            return await run_in_workspace(run, report=report)
        finally:
            _chat_runs.discard(this)


async def run_in_workspace(
    run: AgentRun,
    *,
    report: git.GitReport | None = None,
    on_line: process.OnLine | None = None,
    on_start: process.OnStart | None = None,
) -> AgentResult:
    """Sync the workspace, run the CLI in it, publish its work; the caller holds
    `execution_lock`. `report` is filled in even when the run is cancelled."""
    settings = get_settings()
    report = report if report is not None else git.GitReport()
    # A sync cut short would leave a half-done rebase: it finishes (bounded) first.
    error = await complete_even_if_cancelled(run_git_sync())
    if isinstance(error, str):  # (a patched sync may return anything)
        report.sync_error = error
        if settings.git_sync_required:
            raise SyncFailed(error)
    if settings.git_push:
        workspace = git.Git(settings.workspace_dir, settings.git_sync_timeout_seconds)
        report.head_before = await workspace.head()
    command = build_command(
        claude_bin=settings.claude_bin,
        prompt=run.prompt,
        model=run.model,
        permission_mode=settings.claude_permission_mode,
        max_budget_usd=run.max_budget_usd,
        agent=run.agent,
        resume_session_id=run.resume_session_id,
    )
    try:
        return await process.run_agent_process(
            command,
            cwd=settings.workspace_dir,
            env=current_child_environment(),
            timeout_s=run.timeout_s,
            spawn=asyncio.create_subprocess_exec,
            on_line=on_line,
            on_start=on_start,
        )
    finally:
        if settings.git_push:
            _restore_git_config()
            await complete_even_if_cancelled(
                git.publish(
                    settings.workspace_dir,
                    report,
                    branch=_workspace_branch(),
                    subject=git.commit_subject(run.summary or run.prompt, run.label),
                    run_id=run.run_id,
                    author=(settings.git_author_name, settings.git_author_email),
                    timeout_s=settings.git_sync_timeout_seconds,
                )
            )


async def _end_chat_runs(grace_s: float) -> None:
    """Give the chat runs `grace_s` to finish, then cancel them and wait for
    their clean-up (bounded)."""
    runs = set(_chat_runs)
    if not runs:
        return
    _, running = await asyncio.wait(runs, timeout=grace_s)
    for task in running:
        logger.warning("shutting down: cancelling a chat run")
        task.cancel()
    if running:
        await asyncio.wait(running, timeout=_CLEANUP_GRACE_S)


async def _drain(begun: asyncio.Event, worker: Worker, grace_s: float) -> None:
    """When the shutdown begins: stop claiming jobs, give the running job and the
    chat runs `grace_s`, then end them."""
    await begun.wait()
    logger.info("shutting down: the running job and chats get %gs to finish", grace_s)
    await asyncio.gather(worker.stop(grace_s), _end_chat_runs(grace_s))


def _workspace_lock() -> asyncio.Lock:
    return execution_lock


def is_busy() -> bool:
    return execution_lock.locked()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Check the settings and the workspace, open the job store, run the worker."""
    settings = get_settings()
    problems = setting_problems(settings)
    if problems:
        raise RuntimeError("; ".join(problems))
    lock_data_dir(settings.data_dir)  # held already under `serve`
    await asyncio.to_thread(
        git.ensure_workspace,
        settings.workspace_dir,
        repo_url=settings.git_repo_url,
        branch=settings.git_branch,
    )
    if not settings.git_branch:
        _startup_branch[settings.workspace_dir] = await asyncio.to_thread(
            git.checked_out_branch, settings.workspace_dir
        )
    _startup_config[settings.workspace_dir] = git.snapshot_config(settings.workspace_dir)
    store = await SQLiteJobStore.open(settings.data_dir)
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
    begun = shutdown.arm()
    draining = asyncio.create_task(_drain(begun, worker, settings.shutdown_grace_seconds))
    app.state.jobs = JobRuntime(store, hub, worker)
    logger.info("serving workspace %s with %s", settings.workspace_dir, settings.claude_bin)
    try:
        yield
    finally:
        begun.set()  # already set when `serve` saw the signal
        await draining
        shutdown.disarm()
        left = await drain(_CLEANUP_GRACE_S)
        if left:
            logger.error("%d clean-ups (process kills, pushes) did not finish at shutdown", left)
        app.state.jobs = None
        await store.close()


# The OpenAPI schema is served (behind auth) at /openapi.json; the HTML docs
# are off: they would fetch the schema without the token.
app = FastAPI(
    title="Claude Agent Service",
    version=__version__,
    lifespan=lifespan,
    docs_url=None,
    redoc_url=None,
)
app.state.run_agent = run_agent
app.state.is_busy = is_busy
install_error_handlers(app)
app.include_router(api_router)
install_openapi(app)
app.add_middleware(BodySizeLimit, max_bytes=lambda: get_settings().max_request_bytes)
app.add_middleware(  # outermost: refuse strangers before reading anything
    BearerAuth, token=lambda: get_settings().bearer_token, open_paths=OPEN_PATHS
)
