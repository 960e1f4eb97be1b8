"""What every inference engine behind the service shares: loading state, admission, the measured speed.

The HTTP layer (:mod:`.app`) talks to an engine through this interface
only, so the same routes, guards and answers serve the single-process engine
(:class:`~segearth_backend.serve.local_engine.LocalEngine`) and the Ray Serve one
(:class:`~segearth_backend.serve.ray_engine.RayEngine`).

Requests are admitted (:meth:`EngineBase.admit`) before their body is read;
``slots`` run at once (1 in one process, one per replica on Ray) and at most
``max_queue`` more wait, the rest get 503 with ``Retry-After``.
"""

from __future__ import annotations

import math
import threading
from types import TracebackType
from typing import Any, Optional

from ..errors import ApiError
from .inference import SegmentAnswer, SegmentRequest
from .progress import Job


class Admission:
    """A place in the queue, held from before the body is read until the answer is ready."""

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

    def admit(self) -> Admission:
        """A place in the queue, or the 503 answer when ``max_queue`` requests already wait."""
        self.require_ready()
        if self.admitted >= self.slots + self.max_queue:
            waiting = self.admitted - self.slots
            retry = max(1, min(60, math.ceil(self.last_seconds * waiting / self.slots)))
            raise ApiError(503, "busy", f"The backend is busy: {waiting} requests are waiting (at most "
                           f"{self.max_queue}). Retry in about {retry} s.", {"Retry-After": str(retry)})
        self.admitted += 1
        return Admission(self)

    def record_speed(self, seconds: float, pixels: int) -> None:
        """Remember how long a request took (for ``Retry-After`` and ``seconds_per_megapixel``)."""
        self.last_seconds = seconds
        if pixels:
            self.seconds_per_megapixel = seconds / (pixels / 1e6)
