"""`GET /metrics`: Prometheus text format (open unless METRICS_REQUIRE_AUTH=true)."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import metrics
from app.api.routing import StrictJsonRoute
from app.jobs.store import StoreUnavailable
from app.jobs.worker import JobRuntime

router = APIRouter(tags=["operations"], route_class=StrictJsonRoute)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def scrape(request: Request) -> Response:
    """The service's metrics (see the README's Operations section)."""
    jobs: JobRuntime | None = getattr(request.app.state, "jobs", None)
    if jobs is not None:
        with contextlib.suppress(StoreUnavailable):  # the last depth seen stands
            metrics.queue_depth.set(await jobs.store.queue_depth())
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
