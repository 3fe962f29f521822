"""Bearer-token authentication, as a dependency."""

from __future__ import annotations

import secrets

from fastapi import Depends, Request

from app.api.deps import SettingsDep
from app.errors import Unauthorized


def require_token(request: Request, settings: SettingsDep) -> None:
    """Let the request through only with `Authorization: Bearer <API_BEARER_TOKEN>`.

    Fails closed: with no token configured, every request is refused.
    """
    expected = settings.bearer_token
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("missing bearer token")
    if expected is None or not secrets.compare_digest(given.strip().encode(), expected.encode()):
        raise Unauthorized("invalid bearer token")


AuthDep = Depends(require_token)
