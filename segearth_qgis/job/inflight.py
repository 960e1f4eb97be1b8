"""Several blocks in flight at once: how many, the worker threads that send them, the job's progress.

A backend with several replicas (``serve --ray``) computes several blocks at
the same time; the job keeps up to ``concurrency`` of them in flight. Blocks
are read and written on the job's own thread (GDAL handles are not shared);
only the backend calls run on worker threads, so at most ``concurrency``
blocks wait for answers while one more is read or written.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Generic, Iterator, Mapping, Optional, TypeVar

from ..errors import BackendError, InputError

ENV_CONCURRENCY = "SEGEARTH_CONCURRENCY"
#: The most blocks a job keeps in flight, whatever the backend advertises (bounds the plugin's memory).
MAX_CONCURRENCY = 32

Tag = TypeVar("Tag")


def choose_concurrency(client: Any, env: Mapping[str, str] = os.environ,
                       health: Optional[Mapping[str, Any]] = None) -> int:
    """Blocks to keep in flight: ``$SEGEARTH_CONCURRENCY``, else the backend's replicas (``/health``), else 1.

    With ``--autoscale MIN:MAX`` the backend advertises MAX: blocks waiting for a replica are what makes
    Ray Serve add replicas. ``health``: the backend's ``/health`` when the caller has asked it already.

    Raises:
        InputError: ``SEGEARTH_CONCURRENCY`` is not a whole number from 1 to :data:`MAX_CONCURRENCY`.
    """
    text = env.get(ENV_CONCURRENCY, "").strip()
    if text:
        if not text.isdigit() or not 1 <= int(text) <= MAX_CONCURRENCY:
            raise InputError(f"{ENV_CONCURRENCY} must be a whole number from 1 to {MAX_CONCURRENCY} (blocks sent "
                             f"to the backend at once), not {text[:20]!r}: fix or unset it.")
        return int(text)
    if health is None:
        try:
            health = client.health()
        except BackendError:
            return 1  # the job's first request reports the problem
    replicas = health.get("replicas")
    if not isinstance(replicas, dict):
        return 1  # a backend from before replicas were advertised
    count = replicas.get("max", replicas.get("total"))
    return min(MAX_CONCURRENCY, count) if isinstance(count, int) and count > 0 else 1


class BlockProgress:
    """The job's 0-100 progress from finished blocks plus the window progress of those in flight (monotonic)."""

    def __init__(self, blocks: int, report: Callable[[float], None]) -> None:
        self.blocks, self.report = max(blocks, 1), report
        self.finished = 0
        self.fractions: dict[int, float] = {}
        self.shown = 0.0
        self.lock = threading.Lock()

    def within(self, number: int) -> Callable[[int, int], None]:
        """The backend client's ``progress(windows_done, windows_total)`` for block ``number``."""
        def report(done: int, windows: int) -> None:
            if windows > 0:
                with self.lock:
                    self.fractions[number] = min(done / windows, 1.0)
                    self._show(always=False)
        return report

    def block_done(self, number: int) -> None:
        """Block ``number`` is written (always reported, so every block moves the progress)."""
        with self.lock:
            self.fractions.pop(number, None)
            self.finished += 1
            self._show(always=True)

    def _show(self, always: bool) -> None:
        value = 100.0 * (self.finished + sum(self.fractions.values())) / self.blocks
        if value > self.shown or always:
            self.shown = max(value, self.shown)
            self.report(self.shown)


class BlocksInFlight(Generic[Tag]):
    """Up to ``limit`` calls on worker threads; their results come back in the order they finish.

    Each call gets a ``stopping()`` function to pass on as its cancel flag: true once the job is
    cancelled or :meth:`close` is called (after a failure), so every call in flight stops promptly.

    Args:
        limit: calls in flight at most.
        cancelled: the job's cancel flag.
    """

    def __init__(self, limit: int, cancelled: Callable[[], bool], poll: float = 0.1) -> None:
        self.limit, self.cancelled, self.poll = max(1, limit), cancelled, poll
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(self.limit, thread_name_prefix="segearth-block")
        self.pending: dict[Future[Any], Tag] = {}

    def stopping(self) -> bool:
        return self.stop.is_set() or self.cancelled()

    def submit(self, tag: Tag, call: Callable[[Callable[[], bool]], Any]) -> None:
        """Start ``call(stopping)`` (wait for room first: see :meth:`room`)."""
        self.pending[self.pool.submit(call, self.stopping)] = tag

    def room(self) -> Iterator[tuple[Tag, Any]]:
        """Finished calls (tag, result), until fewer than ``limit`` are in flight; a failed call raises its error."""
        while len(self.pending) >= self.limit:
            yield from self._collect()

    def drain(self) -> Iterator[tuple[Tag, Any]]:
        """Every call still in flight, as it finishes."""
        while self.pending:
            yield from self._collect()

    def _collect(self) -> Iterator[tuple[Tag, Any]]:
        done, _ = wait(self.pending, timeout=self.poll, return_when=FIRST_COMPLETED)
        for future in done:
            tag = self.pending.pop(future)
            yield tag, future.result()

    def close(self) -> None:
        """Stop the calls still in flight and wait for their threads (they end within a poll of the client)."""
        self.stop.set()
        self.pool.shutdown(wait=True)
        self.pending.clear()
