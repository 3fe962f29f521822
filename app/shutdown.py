"""Shutdown that starts when the signal arrives, not when the last connection closes.

uvicorn runs the lifespan's shutdown only after every open connection has
ended or its graceful timeout has passed, and an event stream watching a
running job would never end on its own before the job does. So `serve` calls
`shutdown.begin()` at once (from uvicorn's signal handler), and the lifespan
starts draining then: no job is claimed any more, the running job and chat
runs get `SHUTDOWN_GRACE_SECONDS`, and event streams end with what they saw.
Under a bare `uvicorn app.main:app` the same drain starts at lifespan shutdown.
"""

from __future__ import annotations

import asyncio

# What the shutdown needs beyond the grace period: SIGTERM to SIGKILL of the
# CLI's group (5 s), then recording the outcome. The bound on open connections.
SHUTDOWN_MARGIN_S = 10.0


class Shutdown:
    """The shutdown signal, raised from a signal handler, seen on the event loop."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def arm(self) -> asyncio.Event:
        """Bind to the running loop (once per lifespan); the event returned is
        set when `begin` is called."""
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        return self._event

    def disarm(self) -> None:
        self._loop = self._event = None

    def begin(self) -> None:
        """Start the shutdown. Safe from a signal handler or another thread."""
        loop, event = self._loop, self._event
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    @property
    def begun(self) -> bool:
        return self._event is not None and self._event.is_set()


shutdown = Shutdown()
