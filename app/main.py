"""The seam: the FastAPI `app`, its lifespan, `execution_lock`, `run_git_sync`,
and `run_agent`, the one coroutine that runs an agent.

`run_git_sync`, `execution_lock` and `asyncio.create_subprocess_exec` are looked
up here at call time, so that tests can patch them on this module.
`execution_lock` is slot 0's lock: with MAX_CONCURRENT_RUNS=1 (the default) it
is the one workspace's.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import ValidationError

from app import __version__, logs, metrics
from app.agent import process, sessions
from app.agent.command import build_command, current_child_environment
from app.agent.run import AgentBusy, AgentRun, SyncFailed
from app.agent.stream import AgentResult
from app.aio import complete_even_if_cancelled, drain
from app.api import api_router
from app.api.fast import FastReads
from app.api.openapi import METRICS_OPEN, OPEN_PATHS, OPEN_PREFIXES, install_openapi
from app.auth import BearerAuth
from app.auth import registry as token_registry
from app.errors import install_error_handlers
from app.instance import lock_data_dir, setting_problems
from app.jobs.backends import instance_id, open_store
from app.jobs.events import JobEvents
from app.jobs.webhooks import WebhookSender
from app.jobs.worker import JobRuntime, Worker
from app.limits import BodySizeLimit
from app.schemas.jobs import JobView
from app.settings import get_settings
from app.shutdown import shutdown
from app.telemetry import Telemetry
from app.workspace.bootstrap import restore_config
from app.workspace.git import Git
from app.workspace.pool import Workspace, WorkspacePool, prepare_slots
from app.workspace.publish import GitReport, commit_subject, publish, publish_result
from app.workspace.sync import sync_workspace

logger = logging.getLogger(__name__)

# Slot 0's lock: a run holds it while it uses WORKSPACE_DIR; one that finds
# every slot held is refused.
execution_lock = asyncio.Lock()
# At shutdown, how long cancelled runs get to kill their process groups and push.
_CLEANUP_GRACE_S = 60.0
# Runs for requests, so that shutdown can end them cleanly (jobs: the worker).
_chat_runs: set[asyncio.Task[Any]] = set()


def _slot_zero_lock() -> asyncio.Lock:
    return execution_lock  # read at call time: tests replace it


def workspace_pool() -> WorkspacePool:
    """The pool the lifespan set up; without a lifespan (an app driven in
    process), one slot: WORKSPACE_DIR as the settings name it."""
    pool: WorkspacePool | None = getattr(app.state, "pool", None)
    if pool is None:
        pool = WorkspacePool([Workspace(0, get_settings().workspace_dir, _slot_zero_lock)])
    return pool


async def run_git_sync(workspace: Workspace | None = None) -> str | None:
    """Bring a workspace (slot 0 by default) up to date with its remote before a run.

    Returns None, or the error of a failed sync (logged; the run goes on with
    the local state unless GIT_SYNC_REQUIRED).
    """
    settings = get_settings()
    if not settings.git_sync:
        return None
    workspace = workspace or workspace_pool().workspaces[0]
    restore_config(workspace.config)
    error = await sync_workspace(
        workspace.path,
        timeout_s=settings.git_sync_timeout_seconds,
        branch=settings.git_branch or workspace.branch,
        min_interval_s=settings.git_sync_min_interval_seconds,
        throttle=workspace.throttle,
        has_origin=workspace.has_origin,
        author=(settings.git_author_name, settings.git_author_email),
    )
    metrics.git_operations.labels("sync", "failed" if error else "ok").inc()
    if error:
        logger.warning("slot %d: git sync failed: %s", workspace.slot, error)
    return error


async def run_agent(run: AgentRun, *, report: GitReport | None = None) -> AgentResult:
    """Run the agent once for a request in a free workspace, or fail at once.

    Raises `AgentBusy` if every workspace is in use (by chats or jobs).
    """
    if shutdown.begun:
        raise AgentBusy("the service is shutting down")
    pool = workspace_pool()
    workspace = await pool.try_acquire()
    if workspace is None:
        raise AgentBusy("agent is busy")
    this = asyncio.current_task()
    assert this is not None
    _chat_runs.add(this)
    try:
        return await run_in_workspace(run, workspace=workspace, report=report)
    finally:
        _chat_runs.discard(this)
        pool.release(workspace)


async def run_in_workspace(
    run: AgentRun,
    *,
    workspace: Workspace | None = None,
    report: GitReport | None = None,
    on_line: process.OnLine | None = None,
    on_start: process.OnStart | None = None,
) -> AgentResult:
    """Sync a workspace, run the CLI in it, publish its work; the caller holds
    the workspace. `report` is filled in even when the run is cancelled."""
    settings = get_settings()
    workspace = workspace or workspace_pool().workspaces[0]
    report = report if report is not None else GitReport()
    # A sync cut short would leave a half-done rebase: it finishes (bounded) first.
    error = await complete_even_if_cancelled(run_git_sync(workspace))
    if isinstance(error, str):  # (a patched sync may return anything)
        report.sync_error = error
        if settings.git_sync_required:
            raise SyncFailed(error)
    if settings.git_push:
        report.head_before = await Git(workspace.path, settings.git_sync_timeout_seconds).head()
    env = current_child_environment()
    if run.resume_session_id:
        home = env.get("HOME")
        if home:
            await asyncio.to_thread(
                sessions.make_resumable, run.resume_session_id, cwd=workspace.path, home=Path(home)
            )
    command = build_command(
        claude_bin=settings.claude_bin,
        prompt=run.prompt,
        model=run.model,
        permission_mode=settings.claude_permission_mode,
        max_budget_usd=run.max_budget_usd,
        agent=run.agent,
        resume_session_id=run.resume_session_id,
        json_schema=run.json_schema,
        allowed_tools=run.allowed_tools,
        disallowed_tools=run.disallowed_tools,
        append_system_prompt=run.append_system_prompt,
        content=run.content,
    )
    try:
        return await process.run_agent_process(
            command,
            cwd=workspace.path,
            env=env,
            timeout_s=run.timeout_s,
            spawn=asyncio.create_subprocess_exec,
            on_line=on_line,
            on_start=on_start,
            max_turns=run.max_turns,
        )
    finally:
        if settings.git_push:
            restore_config(workspace.config)
            await complete_even_if_cancelled(
                publish(
                    workspace.path,
                    report,
                    branch=settings.git_branch or workspace.branch,
                    subject=commit_subject(run.summary or run.prompt, run.label),
                    run_id=run.run_id,
                    author=(settings.git_author_name, settings.git_author_email),
                    timeout_s=settings.git_sync_timeout_seconds,
                )
            )
            metrics.git_operations.labels("publish", publish_result(report)).inc()


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
    """When the shutdown begins: stop claiming jobs, give the running jobs and the
    chat runs `grace_s`, then end them."""
    await begun.wait()
    logger.info("shutting down: running jobs and chats get %gs to finish", grace_s)
    await asyncio.gather(worker.stop(grace_s), _end_chat_runs(grace_s))


async def _open_pool() -> WorkspacePool:
    settings = get_settings()
    slots = await asyncio.to_thread(
        prepare_slots,
        count=settings.max_concurrent_runs,
        workspace_dir=settings.workspace_dir,
        data_dir=settings.data_dir,
        repo_url=settings.git_repo_url,
        branch=settings.git_branch,
    )
    workspaces = []
    for number, slot in enumerate(slots):
        lock_of = _slot_zero_lock if number == 0 else _own_lock()
        workspaces.append(
            Workspace(
                number,
                slot.path,
                lock_of,
                branch=slot.branch,
                config=slot.config,
                has_origin=slot.has_origin,
            )
        )
    return WorkspacePool(workspaces)


def _own_lock() -> Any:
    lock = asyncio.Lock()
    return lambda: lock


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Check the settings, set up the workspaces, open the job store, run the worker."""
    settings = get_settings()
    logs.configure(settings.log_format, settings.log_level)  # done already under `serve`
    problems = setting_problems(settings)
    if problems:
        raise RuntimeError("; ".join(problems))
    lock_data_dir(settings.data_dir)  # held already under `serve`
    pool = await _open_pool()
    store = await open_store(settings)
    hub = JobEvents()
    worker = Worker(
        store,
        hub,
        execute=run_in_workspace,
        pool=pool,
        max_event_bytes=settings.job_max_event_bytes,
        retention=timedelta(days=settings.job_retention_days),
        owner=instance_id(settings),
        lease_s=settings.job_lease_seconds,
        log_prompts=settings.log_prompts,
    )
    await worker.recover()
    webhooks = WebhookSender(
        store,
        secret=None
        if settings.webhook_secret is None
        else settings.webhook_secret.get_secret_value(),
        allowed_hosts=settings.webhook_allowed_hosts,
        render=lambda job: JobView.of(job).model_dump(mode="json"),
    )
    worker.on_end(webhooks.wake)
    app.state.pool = pool
    worker.start()
    webhooks.start()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, lambda: token_registry.reload(get_settings()))
    begun = shutdown.arm()
    draining = asyncio.create_task(_drain(begun, worker, settings.shutdown_grace_seconds))
    app.state.jobs = JobRuntime(store, hub, worker)
    logger.info(
        "instance %s serving %d workspace%s (%s) with %s, jobs in %s",
        worker.owner,
        len(pool),
        "" if len(pool) == 1 else "s",
        ", ".join(str(w.path) for w in pool.workspaces),
        settings.claude_bin,
        "PostgreSQL" if store.shared else settings.data_dir / "jobs.sqlite3",
    )
    try:
        yield
    finally:
        begun.set()  # already set when `serve` saw the signal
        await draining
        await webhooks.stop()
        shutdown.disarm()
        left = await drain(_CLEANUP_GRACE_S)
        if left:
            logger.error("%d clean-ups (process kills, pushes) did not finish at shutdown", left)
        loop.remove_signal_handler(signal.SIGHUP)
        app.state.jobs = None
        app.state.pool = None
        await store.close()


# The OpenAPI schema is served (behind auth) at /openapi.json; the HTML docs
# are off: they would fetch the schema without the token.
def _take_over_uvicorns_logging() -> None:
    """Under a bare `uvicorn app.main:app`, uvicorn set up its own handlers
    before it imported the app: take them over now, so that its first lines
    ("Started server process") are in the service's format too. Imported by
    `serve` (configured already), by tests or tools, there is nothing to do."""
    if not logging.getLogger("uvicorn").handlers:
        return
    try:
        settings = get_settings()
    except ValidationError:
        return  # the lifespan reports the settings' problem
    logs.configure(settings.log_format, settings.log_level)


_take_over_uvicorns_logging()

app = FastAPI(
    title="Claude Agent Service",
    version=__version__,
    lifespan=lifespan,
    docs_url=None,
    redoc_url=None,
    # FastAPI's own OpenTelemetry looks up the global providers on every request
    # (about 10 µs); the service's telemetry is its Prometheus metrics and logs.
    telemetry={"tracing": False, "metrics": False, "logs": False},
)
app.state.run_agent = run_agent
app.state.workspace_pool = workspace_pool
metrics.watch_workspaces(lambda: workspace_pool().in_use, lambda: len(workspace_pool()))
install_error_handlers(app)
app.include_router(api_router)
install_openapi(app)
app.add_middleware(FastReads)  # innermost: /health and /jobs/{id} without the routing
app.add_middleware(BodySizeLimit, max_bytes=lambda: get_settings().max_request_bytes)
app.add_middleware(  # refuse strangers before reading anything
    BearerAuth,
    tokens=lambda: token_registry.current(get_settings()),
    open_paths=lambda: OPEN_PATHS if get_settings().metrics_require_auth else METRICS_OPEN,
    open_prefixes=OPEN_PREFIXES,
)
app.add_middleware(Telemetry)  # outermost: every answer has a request id, a log line, metrics
