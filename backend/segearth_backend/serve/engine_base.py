"""What every inference engine behind the service shares: loading state, admission, the measured speed.

The HTTP layer (:mod:`.app`) talks to an engine through this interface
only, so the same routes, guards and answers serve the single-process engine
(:class:`~segearth_backend.serve.local_engine.LocalEngine`) and the Ray Serve one
(:class:`~segearth_backend.serve.ray_engine.RayEngine`).

Requests are admitted (:meth:`EngineBase.admit`) once their whole body has
arrived and been read (a slow client holds no place); ``slots`` run at once
(1 in one process, one per replica on Ray) and at most ``max_queue`` more
wait, the rest get 503 with a ``Retry-After`` estimated from the running work.
A full queue is also answered before the body is read (:meth:`EngineBase.check_room`).
"""

from __future__ import annotations

import math
import threading
from types import TracebackType
from typing import Any, Optional, Sequence

from ..errors import ApiError
from .guards import shutting_down
from .inference import SegmentAnswer, SegmentRequest
from .progress import Job, seconds_until_free

#: The longest ``Retry-After`` a busy answer asks for.
MAX_RETRY_AFTER = 60


class Admission:
    """A place in the queue, held from when the body has been read until the answer is ready."""

    def __init__(self, engine: EngineBase) -> None:
        self.engine = engine

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, kind: Optional[type[BaseException]], error: Optional[BaseException],
                 trace: Optional[TracebackType]) -> None:
        self.engine.admitted -= 1


class EngineBase:
    """Loading state, the admission count and the last measured speed; subclasses do the work.

    Args:
        max_queue: requests that may wait while ``slots`` run.
    """

    def __init__(self, max_queue: int = 4) -> None:
        self.max_queue = max_queue
        self.status = "loading"  # loading, ready, failed
        self.error: Optional[str] = None
        self.info: dict[str, Any] = {}
        self.loaded = threading.Event()
        self.admitted = 0  # requests between admission and answer (reading, waiting or running)
        self.seconds_per_megapixel: Optional[float] = None
        self.last_seconds = 1.0
        #: Set when the service begins to shut down: new work is refused with 503 ``shutting_down``.
        self.stopping = False

    # ------------------------------------------------------------------ subclass interface
    @property
    def slots(self) -> int:
        """Requests that run at the same time."""
        return 1

    def load(self) -> None:
        """Build what does the work (on a loader thread); sets ``status``, ``info``, ``error``, then ``loaded``."""
        raise NotImplementedError

    async def segment(self, request: SegmentRequest, job: Job) -> SegmentAnswer:
        """Segment one image; ``job`` reports progress and carries the cancel flag."""
        raise NotImplementedError

    async def embed(self, classes: list[str]) -> tuple[int, int]:
        """Compute the class embeddings now: (classes, queries)."""
        raise NotImplementedError

    def health_fields(self) -> dict[str, Any]:
        """Fields added to ``/health`` beyond ``info`` (fresh device memory, replicas...)."""
        return {}

    def close(self) -> None:
        """Release what :meth:`load` started (at shutdown)."""

    # ------------------------------------------------------------------ shared
    def require_ready(self) -> None:
        """Raise the 503 answer while the model loads or after it failed to."""
        if self.status == "loading":
            raise ApiError(503, "loading", "The model is still loading; retry in a few seconds.",
                           {"Retry-After": "5"})
        if self.status == "failed":
            raise ApiError(503, "model_failed", "The model failed to load; the backend log (or /health with the "
                           "token) says why. Fix the weights or settings and restart the backend.")

    def check_room(self, jobs: Sequence[Job] = ()) -> None:
        """Raise the 503 answer unless a request may be admitted now (``jobs``: the active ones, for
        ``Retry-After``): while loading, after a failed load, when shutting down or when the queue is full."""
        self.require_ready()
        if self.stopping:
            raise shutting_down()
        if self.admitted >= self.slots + self.max_queue:
            waiting = self.admitted - self.slots
            retry = self.retry_after(jobs)
            raise ApiError(503, "busy", f"The backend is busy: {waiting} requests are waiting (at most "
                           f"{self.max_queue}). Retry in about {retry} s.", {"Retry-After": str(retry)})

    def admit(self, jobs: Sequence[Job] = ()) -> Admission:
        """A place in the queue, or the 503 answer of :meth:`check_room`."""
        self.check_room(jobs)
        self.admitted += 1
        return Admission(self)

    def retry_after(self, jobs: Sequence[Job]) -> int:
        """Whole seconds until a place should be free: when the first running job should end (from its
        windows so far), else the last request's time for each request ahead."""
        waiting = max(1, self.admitted - self.slots + 1)
        fallback = self.last_seconds * waiting / self.slots
        seconds = seconds_until_free(jobs, self.seconds_per_megapixel, fallback)
        return max(1, min(MAX_RETRY_AFTER, math.ceil(seconds)))

    def record_speed(self, seconds: float, pixels: int) -> None:
        """Remember how long a request took (for ``Retry-After`` and ``seconds_per_megapixel``)."""
        self.last_seconds = seconds
        if pixels:
            self.seconds_per_megapixel = seconds / (pixels / 1e6)
