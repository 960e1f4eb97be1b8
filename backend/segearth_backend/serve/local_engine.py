"""The segmenter in this process: loading, one inference thread, out-of-memory recovery.

Requests are admitted (:meth:`~.engine_base.EngineBase.admit`) before their body is read; at
most ``max_queue`` wait while one runs, the rest get 503 with
``Retry-After``. Work runs on a single thread, so concurrent clients cannot
exhaust device memory. A CUDA out-of-memory error halves the window batch
and retries; after ``recover_after`` successful requests the configured
batch size is tried again.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

import numpy as np

from ..errors import ApiError, PredictionCancelledError, SegEarthError
from .engine_base import EngineBase
from .inference import SegmentAnswer, SegmentRequest, run_embed, run_segment
from .progress import Job

log = logging.getLogger(__name__)


class LocalEngine(EngineBase):
    """The segmenter in this process: loading, the inference thread and its queue.

    Args:
        factory: builds the segmenter (called once, on a loader thread).
        warmup: run a tiny prediction after loading (compiles kernels).
        max_queue: requests that may wait while one runs.
        recover_after: successful requests after an out-of-memory error
            before the configured batch size is tried again.
    """

    def __init__(self, factory: Callable[[], Any], warmup: bool, max_queue: int = 4, recover_after: int = 20) -> None:
        super().__init__(max_queue)
        self.factory = factory
        self.warmup = warmup
        self.recover_after = recover_after
        self.segmenter: Any = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segearth-inference")
        self.configured_batch: Optional[int] = None
        self.successes_since_oom = 0

    def load(self) -> None:
        """Build the segmenter and warm it up (compiles kernels); runs on a thread."""
        try:
            segmenter = self.factory()
            if self.warmup:
                segmenter.predict(np.zeros((64, 64, 3), np.uint8), ["warm-up a", "warm-up b"])
            self.configured_batch = segmenter.batch_size
            self.segmenter, self.info, self.status = segmenter, segmenter.describe(), "ready"
        except SegEarthError as error:
            self.status, self.error = "failed", str(error)
            log.error("the model could not be loaded: %s", error)
        except Exception as error:  # noqa: BLE001 - reported through /health and the exit code
            self.status, self.error = "failed", f"{type(error).__name__}: {error}"
            log.error("the model could not be loaded:\n%s", traceback.format_exc())
        finally:
            self.loaded.set()

    async def segment(self, request: SegmentRequest, job: Job) -> SegmentAnswer:
        return await self.run(lambda segmenter, job: run_segment(segmenter, request, job), job)

    async def embed(self, classes: list[str]) -> tuple[int, int]:
        return await self.run(lambda segmenter, job: run_embed(segmenter, classes))

    def health_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"replicas": {"ready": int(self.status == "ready"), "total": 1}}
        if self.segmenter is not None:
            if self.segmenter.device.type == "cuda":
                from ..device import describe

                fields["device"] = describe(self.segmenter.device)  # fresh free-memory figure
            fields["batch_size"] = self.segmenter.batch_size
            fields["feature_cache"] = self.segmenter.feature_cache.stats()  # live counters
        return fields

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def run(self, function: Callable[..., Any], job: Optional[Job] = None) -> Any:
        """Run ``function(segmenter, job)`` on the inference thread (queued); returns its result."""
        return await asyncio.wrap_future(self.executor.submit(self._call, function, job))

    def _call(self, function: Callable[..., Any], job: Optional[Job]) -> Any:
        """On the worker: start the job unless it was cancelled while waiting; retry out-of-memory errors."""
        import torch

        if job is not None:
            if job.cancel.is_set():
                raise PredictionCancelledError("The request was cancelled before it started.")
            job.update("running", job.windows_done, job.windows_total)
        while True:
            try:
                result = function(self.segmenter, job)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if self.segmenter.batch_size <= 1:
                    raise ApiError(503, "out_of_memory", "The GPU ran out of memory even one window at a time; "
                                   "send smaller blocks or free GPU memory.") from None
                self.segmenter.batch_size = max(1, self.segmenter.batch_size // 2)
                self.successes_since_oom = 0
                log.warning("CUDA out of memory: retrying with batches of %d windows", self.segmenter.batch_size)
                continue
            self._recover_batch_size()
            return result

    def _recover_batch_size(self) -> None:
        if self.configured_batch is None or self.segmenter.batch_size >= self.configured_batch:
            return
        self.successes_since_oom += 1
        if self.successes_since_oom >= self.recover_after:
            log.info("trying batches of %d windows again after %d successful requests",
                     self.configured_batch, self.successes_since_oom)
            self.segmenter.batch_size = self.configured_batch
            self.successes_since_oom = 0
