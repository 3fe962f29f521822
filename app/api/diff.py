"""`GET /jobs/{job_id}/diff`: the commits a job made, as a patch series."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import JobsDep, SettingsDep
from app.api.jobs import NotFound
from app.api.routing import StrictJsonRoute
from app.errors import ServiceError
from app.jobs.models import Job
from app.schemas.errors import ErrorBody, errors
from app.settings import Settings
from app.workspace.diff import DiffUnavailable, RunDiff, origin_of, read_diff
from app.workspace.pool import WorkspacePool, slot_path

router = APIRouter(tags=["jobs"], route_class=StrictJsonRoute)

# A diff larger than this is cut (at a line) and says so in X-Diff-Truncated.
MAX_DIFF_BYTES = 32 * 2**20


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The job's commits, oldest first, as `git format-patch` writes them "
        "(`git am` applies them); `X-Diff-Truncated: true` when cut at 32 MiB",
        "content": {"text/x-diff": {"schema": {"type": "string"}}},
    },
    **errors(401),
    404: {
        "model": ErrorBody,
        "description": "No such job (`not found`), or no commits (`no changes`)",
    },
    503: {
        "model": ErrorBody,
        "description": "The commits cannot be read (`diff unavailable`): gone from the "
        "workspace, and the remote unreachable or without them",
    },
}


# response_class=Response: its media type is per answer, so the error statuses
# are documented as JSON (a class-level text/x-diff would be given to them all)
@router.get("/jobs/{job_id}/diff", response_class=Response, responses=_RESPONSES)
async def job_diff(job_id: str, request: Request, jobs: JobsDep, settings: SettingsDep) -> Response:
    job = await jobs.store.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    found = await diff_of(
        job,
        settings,
        request.app.state.workspace_pool(),
        max_bytes=MAX_DIFF_BYTES,
        timeout_s=settings.git_sync_timeout_seconds,
    )
    headers = {"X-Diff-Truncated": "true"} if found.truncated else {}
    return Response(found.series(), media_type="text/x-diff", headers=headers)


def commits_of(job: Job) -> list[str]:
    """The commits a job's record names (recorded under GIT_PUSH, when it ended)."""
    commits = (job.git or {}).get("commits")
    return [sha for sha in commits if isinstance(sha, str)] if isinstance(commits, list) else []


async def diff_of(
    job: Job, settings: Settings, pool: WorkspacePool, *, max_bytes: int, timeout_s: float
) -> RunDiff:
    """A job's commits with their patches, from its slot or the remote.

    Raises ServiceError: 404 `no changes`, 503 `diff unavailable`.
    """
    shas = commits_of(job)
    if not shas:
        raise ServiceError(_why_none(job), error="no changes", status_code=404)
    repo = None
    if job.slot is not None:
        repo = slot_path(settings.data_dir, job.slot, settings.workspace_dir)
    remote = settings.git_repo_url or await origin_of(
        pool.workspaces[0].config, settings.data_dir, timeout_s
    )
    try:
        return await read_diff(
            shas,
            repo=repo,
            remote=remote,
            branch=(job.git or {}).get("branch"),
            data_dir=settings.data_dir,
            timeout_s=timeout_s,
            max_bytes=max_bytes,
        )
    except DiffUnavailable as exc:
        raise ServiceError(str(exc), error="diff unavailable", status_code=503) from None


def _why_none(job: Job) -> str:
    if not job.status.terminal:
        return f"job {job.id} is {job.status}; its commits are recorded when it ends"
    if job.git is None or job.git.get("head_before") is None:
        return f"job {job.id} recorded no commits (they are recorded only with GIT_PUSH=true)"
    if job.git.get("push_error"):
        return f"job {job.id} recorded no commits: {job.git['push_error']}"
    return f"job {job.id} made no changes"
