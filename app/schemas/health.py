"""The answer of `GET /health`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class Health(BaseModel):
    """Liveness, and what is degraded: 200 whatever it says."""

    status: Literal["ok", "degraded"]
    """`degraded` while the job store cannot be written."""
    busy: bool
    """No run can start now (every workspace is in use)."""
    runs: int
    """Workspaces in use (chats and jobs)."""
    slots: int
    """Workspaces there are (MAX_CONCURRENT_RUNS)."""
    version: str
    store: Literal["ok", "failing"]
    store_error: str | None = None
    """Why the store's last write failed, while it fails."""


class CheckView(BaseModel):
    """One check of `doctor`: what, whether it passed, what was found, the fix."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None


class Readiness(BaseModel):
    status: Literal["ready"]
    checks: list[CheckView]


class NotReady(BaseModel):
    """The error shape, with every check."""

    error: Literal["not ready"]
    detail: str
    message: str
    checks: list[CheckView]
