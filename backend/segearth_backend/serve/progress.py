"""The service's record of its requests: state, windows done, and the flag that cancels one.

A client may name its ``/segment`` request (``request_id`` in ``params.json``)
and ask ``GET /progress/{request_id}`` while it runs. Finished requests stay
visible for a while (the most recent ``KEEP_FINISHED``), then are forgotten.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

#: A client-chosen request id: 1 to 64 letters, digits, '.', '_' or '-'.
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
KEEP_FINISHED = 256
ACTIVE_STATES = ("queued", "running")


@dataclass
class Job:
    """One request in the service. ``cancel`` is set when its client goes away (or the service stops).

    Attributes:
        pixels: the image's pixel count (to estimate how long it runs).
        running_since: ``time.monotonic()`` when its work began (None while it waits).
    """

    request_id: str
    state: str = "queued"  # queued, running, done, failed, cancelled
    windows_done: int = 0
    windows_total: int = 0
    started: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    pixels: int = 0
    running_since: Optional[float] = None

    def update(self, state: str, done: int, total: int) -> None:
        """The state and windows done / total, as the engine reports them."""
        if state == "running" and self.running_since is None:
            self.running_since = time.monotonic()
        self.state, self.windows_done, self.windows_total = state, done, total

    def progress(self, done: int, total: int) -> None:
        """``Segmenter.predict``'s progress callback (called on the inference thread)."""
        self.update("running", done, total)

    def seconds_left(self, seconds_per_megapixel: Optional[float], now: float) -> Optional[float]:
        """The seconds its work should still take, from its windows so far (else from the measured speed);
        None when it is not running or nothing is known yet."""
        if self.state != "running" or self.running_since is None:
            return None
        elapsed = now - self.running_since
        if self.windows_done > 0 and self.windows_total > 0:
            total = elapsed * self.windows_total / self.windows_done
        elif seconds_per_megapixel is not None and self.pixels:
            total = seconds_per_megapixel * self.pixels / 1e6
        else:
            return None
        return max(0.0, total - elapsed)

    def document(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "state": self.state, "windows_done": self.windows_done,
                "windows_total": self.windows_total, "seconds": round(time.monotonic() - self.started, 3)}


class JobBoard:
    """Thread-safe registry of the jobs the service runs and ran recently."""

    def __init__(self, keep_finished: int = KEEP_FINISHED) -> None:
        self.keep_finished = keep_finished
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, request_id: Optional[str]) -> Optional[Job]:
        """A new job named ``request_id`` (a random name when None); None when that name is in use."""
        name = request_id or f"auto-{uuid.uuid4().hex}"
        with self._lock:
            current = self._jobs.get(name)
            if current is not None and current.state in ACTIVE_STATES:
                return None
            job = Job(name)
            self._jobs.pop(name, None)
            self._jobs[name] = job
            self._forget_old()
            return job

    def get(self, request_id: str) -> Optional[Job]:
        with self._lock:
            return self._jobs.get(request_id)

    def active(self) -> list[Job]:
        """The jobs queued or running now."""
        with self._lock:
            return [job for job in self._jobs.values() if job.state in ACTIVE_STATES]

    def cancel_active(self) -> int:
        """Ask every queued or running job to stop (the service is shutting down); returns how many."""
        jobs = self.active()
        for job in jobs:
            job.cancel.set()
        return len(jobs)

    def close(self, job: Job, state: str) -> None:
        with self._lock:
            job.state = state
            self._forget_old()

    def _forget_old(self) -> None:
        finished = [name for name, job in self._jobs.items() if job.state not in ACTIVE_STATES]
        for name in finished[:max(0, len(finished) - self.keep_finished)]:
            del self._jobs[name]


def seconds_until_free(jobs: Sequence[Job], seconds_per_megapixel: Optional[float], fallback: float,
                       now: Optional[float] = None) -> float:
    """Seconds until the first of the running ``jobs`` should finish (and free its place): from each one's
    windows so far, else the measured speed; ``fallback`` when none of them tells."""
    now = time.monotonic() if now is None else now
    left = [seconds for job in jobs if (seconds := job.seconds_left(seconds_per_megapixel, now)) is not None]
    return min(left) if left else fallback
