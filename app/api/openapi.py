"""The OpenAPI document: FastAPI's, with the bearer scheme the middleware enforces."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.settings import get_settings

# Paths the bearer middleware lets through: the liveness probe, and the
# dashboard, which signs its users in with a cookie of its own.
OPEN_PATHS = frozenset({"/health", "/health/ready", "/ui"})
OPEN_PREFIXES = ("/ui/",)
# ...and /metrics, unless METRICS_REQUIRE_AUTH=true.
METRICS_OPEN = OPEN_PATHS | {"/metrics"}


def install_openapi(app: FastAPI) -> None:
    """Serve an OpenAPI document that says which operations need the token."""

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            open_paths = OPEN_PATHS if get_settings().metrics_require_auth else METRICS_OPEN
            document = get_openapi(
                title=app.title, version=app.version, routes=app.routes, description=app.description
            )
            components = document.setdefault("components", {})
            components.setdefault("securitySchemes", {})["bearer"] = {
                "type": "http",
                "scheme": "bearer",
            }
            for path, operations in document.get("paths", {}).items():
                for operation in operations.values():
                    is_open = path in open_paths or path.startswith(OPEN_PREFIXES)
                    operation["security"] = [] if is_open else [{"bearer": []}]
                    _own_validation_error(operation.get("responses", {}))
            schemas = components.get("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]


def _own_validation_error(responses: dict[str, Any]) -> None:
    """FastAPI documents its own 422 shape; the service answers with ErrorBody."""
    invalid = responses.get("422")
    if invalid is not None:
        invalid["description"] = _INVALID
        invalid["content"] = {
            "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
        }


_INVALID = "Wrong types, missing fields or values out of range; `detail` lists them"
