"""The baseline of the request-rate benchmarks: a minimal Starlette app whose
one route answers the same small JSON as the service's `GET /health`.

Served by plain uvicorn with httptools (bench/server.py: `baseline_uvicorn`),
it is what the framework and the server cost with nothing of the service's
own: no middleware, no auth, no store.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

HEALTH = {
    "status": "ok",
    "busy": False,
    "runs": 0,
    "slots": 1,
    "version": "0.1.0",
    "store": "ok",
    "store_error": None,
}


async def health(request: Request) -> JSONResponse:
    """The same body as the service's /health, built per request as it is there."""
    return JSONResponse(dict(HEALTH))


app = Starlette(routes=[Route("/health", health)])
