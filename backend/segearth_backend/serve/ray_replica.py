"""One Ray Serve replica: a :class:`~segearth_backend.serve.local_engine.LocalEngine` holding one segmenter.

The class is plain Python (no Ray import here); :mod:`.ray_engine` turns it
into a Serve deployment. Each replica loads and warms up its own segmenter,
runs one request at a time on its engine's inference thread (with the same
out-of-memory recovery as a single-process backend) and streams events back:

- ``("progress", state, windows_done, windows_total)`` while it works,
- then ``("answer", SegmentAnswer)``, or ``("error", status, code, message, headers)``
  for an answer the service gives as an HTTP error (bad input, out of memory).

When the caller cancels the stream, the prediction stops between window batches.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
from typing import Any, AsyncIterator

import numpy as np

from ..config import EngineConfig
from ..errors import ApiError, InputError
from .guards import input_error_answer
from .inference import SegmentRequest
from .local_engine import LocalEngine
from .progress import Job

#: Seconds between two progress events of a running request.
PROGRESS_SECONDS = 0.2

Event = tuple[Any, ...]


def limit_threads(cpus: float) -> int:
    """Give torch and numba as many threads as the replica has CPUs (Ray reserves them); returns that number."""
    import numba
    import torch

    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    return threads


def error_event(error: Exception) -> Event:
    """The ``("error", ...)`` event for an error the service answers with a status of its own."""
    api = error if isinstance(error, ApiError) else input_error_answer(error)  # type: ignore[arg-type]
    return ("error", api.status, api.code, api.message, dict(api.headers))


class SegmenterReplica:
    """The body of a Serve replica (see the module docstring).

    Args:
        config: the engine configuration (the same on every replica).
        warmup: run a tiny prediction after loading (compiles kernels).
        recover_after: successful requests after a CUDA out-of-memory error before the configured
            batch size is tried again.
        cpus: the CPUs Ray reserved for this replica (its torch and numba threads).
    """

    def __init__(self, config: EngineConfig, warmup: bool, recover_after: int, cpus: float) -> None:
        from ..pipeline.segmenter import load_segmenter

        limit_threads(cpus)
        self.engine = LocalEngine(functools.partial(load_segmenter, config=config), warmup, 0, recover_after)
        self.engine.load()  # a failure is reported by describe(), not raised: Ray would retry it in a loop

    def describe(self) -> dict[str, Any]:
        """``status`` (ready or failed), ``error``, ``info`` (the segmenter's facts) and ``pid``."""
        return {"status": self.engine.status, "error": self.engine.error, "info": dict(self.engine.info),
                "pid": os.getpid()}

    async def segment(self, request: SegmentRequest) -> AsyncIterator[Event]:
        """Run ``request``; progress events, then the answer or an error event."""
        if self.engine.status != "ready":
            yield error_event(_not_loaded(self.engine))
            return
        job = Job("replica")
        # Arrays from Ray's object store are read-only views: give the engine its own, as in one process.
        request = dataclasses.replace(request, image=_own(request.image), valid=_own(request.valid))
        task = asyncio.ensure_future(self.engine.segment(request, job))
        task.add_done_callback(_retrieve)
        try:
            last: Event = ()
            while True:
                done, _ = await asyncio.wait({task}, timeout=PROGRESS_SECONDS)
                now = ("progress", job.state, job.windows_done, job.windows_total)
                if now != last:
                    last = now
                    yield now
                if done:
                    break
            try:
                answer = task.result()
            except (ApiError, InputError) as error:
                yield error_event(error)
                return
            yield ("answer", answer)
        finally:
            if not task.done():  # cancelled by the caller (or the stream was dropped): stop the work
                job.cancel.set()

    async def embed(self, classes: list[str]) -> Event:
        """Compute the class embeddings: ``("answer", (classes, queries))`` or an error event."""
        if self.engine.status != "ready":
            return error_event(_not_loaded(self.engine))
        try:
            return ("answer", await self.engine.embed(classes))
        except (ApiError, InputError) as error:
            return error_event(error)


def _not_loaded(engine: LocalEngine) -> ApiError:
    try:
        engine.require_ready()
    except ApiError as error:
        return error
    return ApiError(503, "loading", "The replica is not ready.", {"Retry-After": "5"})


def _own(array: Any) -> Any:
    """A writable copy of a numpy array (anything else as it is)."""
    return np.array(array) if isinstance(array, np.ndarray) else array


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Collect a finished task's outcome, so an abandoned one logs no 'exception never retrieved'."""
    if not task.cancelled():
        task.exception()
