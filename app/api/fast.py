"""The two hottest reads without the framework: `GET`/`HEAD /health` and
`GET /jobs/{id}`.

FastAPI 0.165 spends about 100 µs a request on routing, dependency solving
and response validation, several times what these two answers cost; load
balancers probe the first and pollers ask the second many times a second.
This ASGI middleware, the innermost of the service's, answers them directly,
with the same bodies and headers as their routes (a test holds the two
equal). Their routes still define them (the OpenAPI) and answer everything
else: a job that is not there, a store that fails, the app run without its
lifespan. The
middlewares outside this one (request id, access log, metrics, auth, body
limit) treat these requests as any other.
"""

from __future__ import annotations

from starlette._utils import get_route_path  # how routing reads the path
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import health
from app.api import jobs as jobs_api
from app.api.health import health_of
from app.jobs.worker import JobRuntime
from app.schemas.jobs import JobView
from app.workspace.pool import WorkspacePool

_JOB_PREFIX = "/jobs/"


class FastReads:
    """Answer `/health` and a stored job's `/jobs/{id}` without routing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._routes: dict[str, BaseRoute] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            body = await self._answer(scope)
            if body is not None:
                response = Response(body, media_type="application/json")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope) -> bytes | None:
        """The JSON body, or None for the routes to answer."""
        path = get_route_path(scope)
        state = scope["app"].state
        if path == "/health":
            self._label(scope, "/health")
            pool: WorkspacePool = state.workspace_pool()
            return health_of(getattr(state, "jobs", None), pool).model_dump_json().encode()
        if scope["method"] != "GET" or not path.startswith(_JOB_PREFIX):
            return None
        job_id = path[len(_JOB_PREFIX) :]
        jobs: JobRuntime | None = getattr(state, "jobs", None)
        if not job_id or "/" in job_id or jobs is None:
            return None
        try:
            job = await jobs.store.get(job_id)
        except Exception:  # the store failing: the route answers it
            return None  # (the error handlers, 503 in the documented shape, are inside)
        if job is None:
            return None  # the route answers the 404
        self._label(scope, "/jobs/{job_id}")
        return JobView.of(job).model_dump_json().encode()

    def _label(self, scope: Scope, template: str) -> None:
        """Set the route the metrics and the access log name (telemetry.py)."""
        if template not in self._routes:
            routes = [*health.router.routes, *jobs_api.router.routes]
            self._routes[template] = next(r for r in routes if getattr(r, "path", None) == template)
        scope["route"] = self._routes[template]
