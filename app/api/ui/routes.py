"""The dashboard's routes under /ui/: sign-in, the runs list, a run's page, submit, cancel.

Every route requires a session unless it is marked `@public` (the sign-in
page, the static files, the redirect from /ui): `UiRoute` checks it before
the handler runs, so a route added later fails closed. It also refuses
every state-changing request that does not come from the dashboard's own
pages (Origin or Referer of this host, and the session's CSRF token in the
form), and puts the security headers on every answer, errors included.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api.diff import MAX_DIFF_BYTES, diff_of
from app.api.jobs import cancel, new_job, submit_job
from app.api.ui import render as view
from app.api.ui.session import (
    COOKIE,
    SESSION_TTL_S,
    Session,
    csrf_matches,
    issue,
    revoke,
    same_origin,
    signing_key,
    verify,
)
from app.auth import registry
from app.errors import ServiceError
from app.jobs.events import events_after
from app.jobs.models import Job, JobStatus, iso
from app.jobs.worker import JobRuntime
from app.schemas.jobs import ExecuteRequest
from app.settings import get_settings
from app.shutdown import SHUTDOWN_MARGIN_S
from app.workspace.pool import WorkspacePool

logger = logging.getLogger(__name__)

PAGE_SIZE = 25
# A run's page shows its first events up to this much data; live events
# then go on from the newest (the API has every event).
PAGE_EVENT_BYTES = 4 * 2**20
# Patch shown on a run's page at most (the whole one: the download link).
PAGE_DIFF_BYTES = 2 * 2**20
# git on a page render waits at most this (a remote that hangs must not hang the page).
PAGE_GIT_TIMEOUT_S = 15.0
SSE_PING_S = 15
MAX_FORM_BYTES = 1 * 2**20
_COUNTER = re.compile(r"^[0-9]{1,18}$")
_SAFE = frozenset({"GET", "HEAD"})
_PUBLIC = "__ui_public__"
# Everything a page needs is here: no inline script or style, no eval, no
# other origin; and no page of this service may be framed.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
NOTICES = {
    "cancelled": "The run was cancelled.",
    "finished": "The run had already ended; nothing was cancelled.",
    "pending": "The cancel has not taken effect yet; reload in a moment.",
}
STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])
Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class SignInRequired(Exception):
    """No valid session: a page goes to the sign-in, anything else gets 401."""


class Refused(ServiceError):
    """A state change the dashboard did not ask for (another origin, no CSRF token)."""

    status_code = 403
    error = "forbidden"


def public(endpoint: Endpoint) -> Endpoint:
    """Mark a route as open without a session (it shows no job data)."""
    setattr(endpoint, _PUBLIC, True)
    return endpoint


class UiRoute(APIRoute):
    """A dashboard route: session, CSRF and origin checks first; HTML errors; security headers."""

    def get_route_handler(self) -> Handler:
        handler: Handler = super().get_route_handler()
        is_public = bool(getattr(self.endpoint, _PUBLIC, False))

        async def guarded(request: Request) -> Response:
            try:
                response = await _checked(request, handler, is_public)
            except SignInRequired:
                response = _sign_in_needed(request)
            except ServiceError as exc:
                response = _error_page(request, exc.status_code, exc.message)
            except (RequestValidationError, ValidationError):
                response = _error_page(request, 400, "The request's parameters are not valid.")
            except Exception:
                logger.exception("dashboard error on %s %s", request.method, request.url.path)
                response = _error_page(request, 500, "The dashboard hit an unexpected error.")
            response.headers.update(SECURITY_HEADERS)
            response.headers.setdefault("Cache-Control", "no-store")
            return response

        return guarded


async def _checked(request: Request, handler: Handler, is_public: bool) -> Response:
    settings = get_settings()
    session = verify(
        signing_key(settings.data_dir),
        request.cookies.get(COOKIE),
        registry.current(settings),
    )
    request.state.ui_session = session
    if request.method not in _SAFE:
        if not same_origin(request.headers):
            raise Refused("the request did not come from this dashboard (Origin/Referer)")
        request.state.ui_form = await _form(request)
    if session is None and not is_public:
        raise SignInRequired
    if session is not None and request.method not in _SAFE and not is_public:
        given = request.state.ui_form.get("csrf")
        if not csrf_matches(session, given):
            raise Refused("the form's CSRF token is missing or wrong; reload the page")
    return await handler(request)


async def _form(request: Request) -> dict[str, str]:
    """An url-encoded form (what the pages post); anything else reads as empty."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return {}
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise ServiceError("the form is too large", status_code=413)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ServiceError("the form is not UTF-8") from None
    try:
        return dict(parse_qsl(text, keep_blank_values=True, max_num_fields=32))
    except ValueError:  # more fields than any page posts
        raise ServiceError("the form has too many fields") from None


def _session(request: Request) -> Session:
    session: Session | None = getattr(request.state, "ui_session", None)
    if session is None:  # UiRoute let a public route through: never for data
        raise SignInRequired
    return session


def _form_of(request: Request) -> dict[str, str]:
    form: dict[str, str] = getattr(request.state, "ui_form", {})
    return form


def _is_page(request: Request) -> bool:
    path = request.url.path
    return request.method == "GET" and not (
        path.startswith("/ui/fragments/") or path.endswith(("/live", "/diff"))
    )


def _sign_in_needed(request: Request) -> Response:
    if _is_page(request):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/ui/sign-in?next={quote(target, safe='')}", status_code=303)
    return PlainTextResponse("sign in again: /ui/sign-in", status_code=401)


def _error_page(request: Request, status_code: int, message: str) -> Response:
    session = getattr(request.state, "ui_session", None)
    if not _is_page(request) and request.method in _SAFE:
        return PlainTextResponse(message, status_code=status_code)
    html = view.render(
        "error.html",
        title=f"Error {status_code}",
        session=session,
        stats=None,
        status_code=status_code,
        message=message,
    )
    return HTMLResponse(html, status_code=status_code)


def _runtime(request: Request) -> JobRuntime:
    jobs: JobRuntime | None = getattr(request.app.state, "jobs", None)
    if jobs is None:
        raise ServiceError(
            "the job queue is not running (the app was started without its lifespan)",
            error="service unavailable",
            status_code=503,
        )
    return jobs


def _pool(request: Request) -> WorkspacePool:
    pool_of: Callable[[], WorkspacePool] = request.app.state.workspace_pool
    return pool_of()


async def _stats(request: Request) -> dict[str, Any]:
    jobs = _runtime(request)
    pool = _pool(request)
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return {
        "in_use": pool.in_use,
        "slots": len(pool),
        "queued": await jobs.store.queue_depth(),
        "cost_today": view.cost(await jobs.store.cost_since(iso(midnight))),
    }


async def _page(
    request: Request, template: str, status_code: int = 200, **context: Any
) -> Response:
    context.setdefault("session", _session(request))
    html = view.render(template, stats=await _stats(request), **context)
    return HTMLResponse(html, status_code=status_code)


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: a dashboard path of this service only."""
    if target and target.startswith("/ui/") and "\\" not in target and "//" not in target:
        return target
    return "/ui/"


router = APIRouter(route_class=UiRoute, include_in_schema=False)


# -- public: the way in -------------------------------------------------------


@router.get("/ui")
@public
async def ui_root() -> Response:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/static/{name}")
@public
async def static(name: str) -> Response:
    if name not in STATIC:
        raise ServiceError("no such file", error="not found", status_code=404)
    return Response(_asset(name), media_type=STATIC[name], headers={"Cache-Control": "no-cache"})


@functools.cache
def _asset(name: str) -> bytes:
    return (resources.files("app.api.ui") / "static" / name).read_bytes()


@router.get("/ui/sign-in")
@public
async def sign_in_page(
    request: Request, next_page: Annotated[str | None, Query(alias="next")] = None
) -> Response:
    if getattr(request.state, "ui_session", None) is not None:
        return RedirectResponse(_safe_next(next_page), status_code=303)
    return _sign_in_form(next_page, message=None, status_code=200)


def _sign_in_form(target: str | None, message: str | None, status_code: int) -> Response:
    html = view.render(
        "sign_in.html",
        title="Sign in",
        session=None,
        stats=None,
        next=_safe_next(target),
        message=message,
    )
    return HTMLResponse(html, status_code=status_code)


@router.post("/ui/sign-in")
@public
async def sign_in(request: Request) -> Response:
    form = _form_of(request)
    settings = get_settings()
    tokens = registry.current(settings)
    given = form.get("token", "").strip()
    name = tokens.identify(given) if given else None
    if name is None:
        return _sign_in_form(form.get("next"), "That token is not valid.", status_code=401)
    token = next(value for named, value in tokens.entries if named == name)
    cookie, _ = issue(signing_key(settings.data_dir), name, token)
    response = RedirectResponse(_safe_next(form.get("next")), status_code=303)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=SESSION_TTL_S,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    logger.info("dashboard: %s signed in", name)
    return response


@router.post("/ui/sign-out")
async def sign_out(request: Request) -> Response:
    session = _session(request)
    revoke(session)
    response = RedirectResponse("/ui/sign-in", status_code=303)
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
    logger.info("dashboard: %s signed out", session.name)
    return response


# -- the runs -----------------------------------------------------------------


def _list_query(status: str | None, before: str | None) -> tuple[JobStatus | None, int | None]:
    wanted = None
    if status:
        try:
            wanted = JobStatus(status)
        except ValueError:
            raise ServiceError(f"unknown status {status!r}") from None
    cursor = None
    if before:
        if not _COUNTER.match(before):
            raise ServiceError("before must be a cursor from a previous page")
        cursor = int(before)
    return wanted, cursor


async def _runs(request: Request, status: str | None, before: str | None) -> dict[str, Any]:
    wanted, cursor = _list_query(status, before)
    found, next_cursor = await _runtime(request).store.list_jobs(
        status=wanted, limit=PAGE_SIZE, before=cursor
    )
    now = datetime.now(UTC)
    query = {k: v for k, v in (("status", status), ("before", before)) if v}
    older = {**({"status": status} if status else {}), "before": str(next_cursor)}
    return {
        "rows": [view.RunRow.of(job, now) for job in found],
        "status": wanted.value if wanted else "",
        "statuses": [s.value for s in JobStatus],
        "query": urlencode(query),
        "older": urlencode(older) if next_cursor is not None else None,
        "paged": cursor is not None,
        "newest": urlencode({"status": status} if status else {}),
    }


@router.get("/ui/")
async def runs_page(
    request: Request, status: str | None = None, before: str | None = None
) -> Response:
    return await _page(request, "runs.html", title="Runs", **await _runs(request, status, before))


@router.get("/ui/fragments/runs")
async def runs_fragment(
    request: Request, status: str | None = None, before: str | None = None
) -> Response:
    _session(request)
    return HTMLResponse(view.render("_runs.html", **await _runs(request, status, before)))


@router.get("/ui/fragments/stats")
async def stats_fragment(request: Request) -> Response:
    _session(request)
    return HTMLResponse(view.render("_stats.html", stats=await _stats(request)))


# -- submitting ---------------------------------------------------------------


def _form_context(
    request: Request, values: dict[str, str], message: str | None = None
) -> dict[str, Any]:
    settings = get_settings()
    return {
        "title": "New run",
        "models": list(settings.models),
        "default_model": settings.default_model,
        "max_budget": settings.job_max_budget_usd,
        "max_timeout": settings.job_timeout_seconds,
        "values": values,
        "form_id": f"ui-{secrets.token_urlsafe(16)}",
        "message": message,
    }


@router.get("/ui/new")
async def new_page(request: Request, session_id: str | None = None) -> Response:
    values = {"session_id": session_id} if session_id else {}
    return await _page(request, "new.html", **_form_context(request, values))


@router.post("/ui/jobs")
async def submit(request: Request) -> Response:
    session = _session(request)
    form = _form_of(request)
    names = ("prompt", "model", "budget", "timeout", "session_id")
    values = {key: form.get(key, "") for key in names}
    values["prompt"] = values["prompt"].replace("\r\n", "\n")
    settings = get_settings()
    try:
        body = _execute_request(values)
        new = new_job(
            body,
            settings,
            idempotency_key=form.get("form_id") or None,
            submitted_by=session.name,
        )
        job, _ = await submit_job(_runtime(request), settings, new)
    except ServiceError as exc:
        context = _form_context(request, values, exc.message)
        return await _page(request, "new.html", status_code=exc.status_code, **context)
    return RedirectResponse(f"/ui/jobs/{quote(job.id, safe='')}", status_code=303)


def _execute_request(values: dict[str, str]) -> ExecuteRequest:
    fields: dict[str, Any] = {"prompt": values["prompt"]}
    for key, name in (("budget", "max_budget_usd"), ("timeout", "timeout_seconds")):
        text = values[key].strip()
        if text:
            try:
                fields[name] = float(text)
            except ValueError:
                raise ServiceError(f"{key} must be a number", error="invalid request") from None
    if values["model"].strip():
        fields["model"] = values["model"].strip()
    if values["session_id"].strip():
        fields["session_id"] = values["session_id"].strip()
    try:
        return ExecuteRequest.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise ServiceError(problems, error="invalid request", status_code=422) from None


# -- one run ------------------------------------------------------------------


async def _job(request: Request, job_id: str) -> Job:
    job = await _runtime(request).store.get(job_id)
    if job is None:
        raise ServiceError(f"no run {job_id!r}", error="not found", status_code=404)
    return job


_NO_GIT_YET: dict[str, Any] = {
    "commits": [],
    "why": "Commits are recorded when the run ends.",
    "cut": False,
}


async def _git_section(request: Request, job: Job) -> dict[str, Any]:
    """The commits and their diffs of a finished job, or why there are none."""
    if not job.status.terminal:
        return _NO_GIT_YET
    settings = get_settings()
    try:
        found = await diff_of(
            job,
            settings,
            _pool(request),
            max_bytes=PAGE_DIFF_BYTES,
            timeout_s=min(settings.git_sync_timeout_seconds, PAGE_GIT_TIMEOUT_S),
        )
    except ServiceError as exc:
        return {"commits": [], "why": exc.message, "cut": False}
    commits = []
    for commit in found.commits:
        lines, left_out = view.diff_lines(commit.text)
        commits.append({"commit": commit, "lines": lines, "left_out": left_out})
    return {"commits": commits, "why": None, "cut": found.truncated}


def _run_context(job: Job, git: dict[str, Any], session: Session) -> dict[str, Any]:
    return {
        "session": session,
        "job": job,
        "row": view.RunRow.of(job, datetime.now(UTC)),
        "denials": view.denials_of(job),
        "git": git,
        "form_id": f"ui-{secrets.token_urlsafe(16)}",
    }


@router.get("/ui/jobs/{job_id}")
async def run_page(request: Request, job_id: str, notice: str | None = None) -> Response:
    jobs = _runtime(request)
    # read before the events: a job that had ended then has all of them
    # stored; one that had not is followed live from the last one shown
    job = await _job(request, job_id)
    items: list[view.Item] = []
    tools: dict[str, str] = {}
    after, size, cut = 0, 0, False
    while rows := await jobs.store.events(job_id, after=after, limit=500):
        for row in rows:
            items.extend(view.items_of(row, tools))
            after = row.seq
            size += len(row.data)
        if size >= PAGE_EVENT_BYTES:
            cut = True
            break
    newest = (await jobs.store.event_state(job_id)).last_seq if cut else after
    if newest > after:
        items.append(
            view.Item(
                "note",
                after,
                title="events left out",
                detail=f"events {after + 1} to "
                f"{newest} are not shown here; GET /jobs/{job_id}/events has them all",
            )
        )
        after = newest
    return await _page(
        request,
        "run.html",
        title=view.first_line(job.prompt, 60) or job.id,
        items=items,
        after=after,
        live=not job.status.terminal,
        notice=NOTICES.get(notice or ""),
        **_run_context(job, await _git_section(request, job), _session(request)),
    )


@router.get("/ui/jobs/{job_id}/live")
async def run_live(request: Request, job_id: str, after: str | None = None) -> Response:
    """The run's events after `after` (or Last-Event-ID) as HTML items, as they
    happen; the summary and the commits again at each status change; `end`."""
    session = _session(request)
    jobs = _runtime(request)
    await _job(request, job_id)
    start = request.headers.get("last-event-id") or after or "0"
    if not _COUNTER.match(start.strip()):
        raise ServiceError("after must be an event id")
    settings = get_settings()

    async def stream() -> AsyncIterator[ServerSentEvent]:
        # the page's summary may predate the events it shows (or a reconnect
        # may follow a status change): the stream starts with a fresh one
        yield _summary_event(await _job(request, job_id), session)
        tools: dict[str, str] = {}
        events = events_after(jobs.store, jobs.hub, job_id, int(start))
        async with contextlib.aclosing(events):
            async for event in events:
                html = view.render_items(view.items_of(event, tools))
                if html:
                    yield ServerSentEvent(data=html, event="item", id=str(event.seq))
                if event.kind == "status":
                    job = await _job(request, job_id)
                    if not job.status.terminal:
                        yield _summary_event(job, session)
        job = await _job(request, job_id)
        yield _summary_event(job, session)
        git = _run_context(job, await _git_section(request, job), session)
        yield ServerSentEvent(data=view.render("_git.html", **git), event="git")
        yield ServerSentEvent(data="final" if job.status.terminal else "stopped", event="end")

    grace_s = settings.shutdown_grace_seconds + SHUTDOWN_MARGIN_S - 2
    return EventSourceResponse(
        stream(),
        ping=SSE_PING_S,
        shutdown_grace_period=grace_s,
        headers={"Cache-Control": "no-store"},
    )


def _summary_event(job: Job, session: Session) -> ServerSentEvent:
    html = view.render("_summary.html", **_run_context(job, _NO_GIT_YET, session))
    return ServerSentEvent(data=html, event="summary")


@router.get("/ui/jobs/{job_id}/diff")
async def run_diff(request: Request, job_id: str) -> Response:
    """The whole patch series, as a download (never rendered by the browser)."""
    _session(request)
    job = await _job(request, job_id)
    settings = get_settings()
    found = await diff_of(
        job,
        settings,
        _pool(request),
        max_bytes=MAX_DIFF_BYTES,
        timeout_s=settings.git_sync_timeout_seconds,
    )
    return Response(
        found.series(),
        media_type="text/plain; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{job.id}.diff"'},
    )


@router.post("/ui/jobs/{job_id}/cancel")
async def cancel_run(request: Request, job_id: str) -> Response:
    _session(request)
    notice = "cancelled"
    try:
        await cancel(_runtime(request), job_id)
    except ServiceError as exc:
        if exc.error == "job finished":
            notice = "finished"
        elif exc.error == "cancel pending":
            notice = "pending"
        else:
            raise
    target = f"/ui/jobs/{quote(job_id, safe='')}?notice={notice}"
    return RedirectResponse(target, status_code=303)


@router.api_route(
    "/ui/{rest:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
)
async def not_found(request: Request, rest: str) -> Response:
    _session(request)
    raise ServiceError("there is no such dashboard page", error="not found", status_code=404)
