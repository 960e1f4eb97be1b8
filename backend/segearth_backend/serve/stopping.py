"""The service's graceful stop: refuse new work, give running work a grace period, then answer 503.

When the service stops (SIGTERM, SIGINT, its parent gone), new requests and bodies still being received are
answered 503 ``shutting_down`` at once; running and queued work gets :data:`STOP_GRACE_SECONDS` to finish,
then it is cancelled between window batches and answered 503 ``shutting_down`` with ``Retry-After`` (the
client sends it again to a restarted backend).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Optional, TypeVar

from .engine_base import EngineBase
from .guards import shutting_down
from .progress import JobBoard

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds running work may take to finish once the service begins to stop; then it is cancelled.
STOP_GRACE_SECONDS = 3.0
#: Seconds uvicorn waits for the answers of a stopping service (more than the grace plus one window batch).
GRACEFUL_SHUTDOWN_SECONDS = 10


class Stopping:
    """The service's graceful stop (:meth:`begin`, when uvicorn begins to shut down; see the module)."""

    def __init__(self, engine: EngineBase, board: JobBoard, grace: float = STOP_GRACE_SECONDS) -> None:
        self.engine, self.board, self.grace = engine, board, grace
        self.begun: Optional[asyncio.Event] = None
        self.expired: Optional[asyncio.Event] = None

    def start(self) -> None:
        """Make the events on the service's event loop (at start-up)."""
        self.begun, self.expired = asyncio.Event(), asyncio.Event()

    def begin(self) -> None:
        """On the event loop: refuse new work, cancel what still runs after ``grace`` seconds."""
        if self.engine.stopping:
            return
        self.engine.stopping = True
        if self.begun is not None:
            self.begun.set()
        running = len(self.board.active())
        if running:
            log.info("stopping: %d request(s) in progress get %.0f s to finish", running, self.grace)
        asyncio.get_running_loop().call_later(self.grace, self._expire)

    def _expire(self) -> None:
        if self.expired is not None:
            self.expired.set()
        cancelled = self.board.cancel_active()
        if cancelled:
            log.warning("stopping: %d request(s) did not finish in time; they are answered 503 shutting_down",
                        cancelled)

    async def unless_expired(self, work: Awaitable[T]) -> T:
        """``await work``, unless the stop's grace expires first: then the 503 ``shutting_down`` answer."""
        if self.expired is None:
            return await work
        task = asyncio.ensure_future(work)
        expiry = asyncio.ensure_future(self.expired.wait())
        try:
            await asyncio.wait({task, expiry}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            expiry.cancel()
        if task.done():
            return task.result()
        task.cancel()
        raise shutting_down()
