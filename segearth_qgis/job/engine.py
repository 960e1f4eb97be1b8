"""The segmentation job: blocks in, backend calls, GeoTIFFs out (no QGIS imports).

One implementation serves the dock panel (inside a QgsTask) and the
Processing algorithms. Up to ``concurrency`` blocks are in flight at once
(:mod:`.inflight`); a block that fails in passing is sent again (:mod:`~segearth_qgis.client.retry`).
Progress goes to a callback; cancellation is polled between blocks and,
while blocks are computed, by the backend client, which drops the requests
(the backend then stops their work). Outputs are written under temporary names and moved into place
together at the very end, so a failure or a cancel leaves the folder as it was.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np

from ..client.backend_client import BackendError, SegmentResult
from ..client.retry import DEFAULT_RETRY, RetryPolicy, with_retries
from ..core.blocks import CROP, STRIDE, Block, plan_grid_blocks, window_geometry
from ..core.classes import class_colours, class_name
from ..core.grid import Grid
from ..core.request_rules import DEFAULT_BIAS_LAMBDA, NODATA_LABEL
from ..errors import JobCancelledError, OutputError
from .gdal_errors import GdalError
from .inflight import BlockProgress, BlocksInFlight, choose_concurrency
from .outputs import OutputPlan, aux_path, output_error
from .raster_io import LabelWriter, PixelSource, ProbabilityWriter
from .staging import StagedFiles, prepare_targets

__all__ = ["JobCancelledError", "JobParams", "JobResult", "run_job", "execute"]

#: ``make_style(geotiff, names, colours)``: the QML style of the class GeoTIFF, as text (QGIS side; raises OSError
#: when QGIS cannot make it). The job writes it beside the result like every other file.
StyleMaker = Callable[[Path, list[str], list[tuple[int, int, int, int]]], str]


class SegmentClient(Protocol):
    """What the job needs of a backend client (:class:`~segearth_qgis.client.backend_client.BackendClient`)."""

    def health(self, timeout: float = ...) -> dict[str, Any]: ...

    def embed_classes(self, classes: Sequence[str]) -> dict[str, Any]: ...

    def segment(self, image: np.ndarray, classes: Sequence[str], prob_threshold: float = ...,
                background_index: int = ..., bias_lambda: float = ..., valid: Optional[np.ndarray] = ...,
                probabilities: bool = ..., progress: Optional[Callable[[int, int], None]] = ...,
                cancelled: Optional[Callable[[], bool]] = ...) -> SegmentResult: ...


class ReadPlan(Protocol):
    """Where a job reads (:class:`~segearth_qgis.job.source_plan.SourcePlan`): the grid and its pixel source."""

    grid: Grid
    crs_wkt: str

    def open(self) -> PixelSource: ...


@dataclass(frozen=True)
class JobParams:
    """What to segment and where to write it, checked (built by :func:`~segearth_qgis.job.request.plan_job`).

    Attributes:
        classes: class lines, synonyms separated by commas.
        outputs: the checked output files.
        threshold: pixels whose top probability is below it get the background class.
        background_index: the background class's index, or None (then nothing falls back: the
            threshold is not applied).
        bias_lambda: weight of the global-bias subtraction.
        block_size: pixels per block side.
    """

    classes: tuple[str, ...]
    outputs: OutputPlan
    threshold: float = 0.0
    background_index: Optional[int] = 0
    bias_lambda: float = DEFAULT_BIAS_LAMBDA
    block_size: int = 1024


@dataclass
class JobResult:
    """What a finished job wrote and how it went."""

    output_path: Path
    probabilities_path: Optional[Path]
    style_path: Optional[Path]
    names: list[str]
    colours: list[tuple[int, int, int, int]]
    seconds: float
    pixels: int
    blocks: int
    #: Pixel count per label value (NODATA_LABEL: nodata).
    class_pixels: dict[int, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    #: Blocks that were in flight at once at most.
    concurrency: int = 1
    #: What was sent again (the log lines).
    retried: tuple[str, ...] = ()
    #: Every file the job put in place (its GeoTIFFs, their style and GDAL side files), and nothing else.
    written: tuple[Path, ...] = ()


def _writing(folder: Path) -> Callable[[GdalError], OutputError]:
    """GDAL's write failure in ``folder`` as an OutputError (GDAL gives no errno: see :func:`output_error`)."""
    return lambda error: output_error(folder, OSError(error.reason))


class _BlockRun:
    """One run of :func:`run_job`: the writers, the blocks in flight, the counts (see there)."""

    def __init__(self, params: JobParams, grid: Grid, crs_wkt: str, client: SegmentClient,
                 progress: Callable[[float], None], retry: RetryPolicy, log: Callable[[str], None],
                 window: tuple[int, int]) -> None:
        self.params, self.grid, self.crs_wkt, self.client, self.retry, self.log = params, grid, crs_wkt, client, \
            retry, log
        self.names = [class_name(line) for line in params.classes]
        self.colours = class_colours(list(params.classes), params.background_index)
        # Without a background class nothing can fall below the threshold: every pixel keeps its best class.
        self.background = params.background_index if params.background_index is not None else 0
        self.threshold = params.threshold if params.background_index is not None else 0.0
        self.staged = StagedFiles(params.outputs.overwrite, protected=params.outputs.inputs)
        self.writers: list[Any] = []
        self.labels_out: Optional[LabelWriter] = None
        self.probs_out: Optional[ProbabilityWriter] = None
        self.counts = np.zeros(256, np.int64)
        self.blocks = plan_grid_blocks(grid, params.block_size, *window)  # on the anchor grid, with the context
        self.failed_writing = _writing(params.outputs.labels.parent)
        self.shown = BlockProgress(len(self.blocks), progress)
        self.retried: list[str] = []
        self.warnings: list[str] = []

    def log_retry(self, message: str) -> None:
        self.retried.append(message)
        self.log(message)

    def open_writers(self) -> None:
        """The run's disk work before writing (:func:`~.staging.prepare_targets`), then the staged GeoTIFFs."""
        plan = self.params.outputs
        self.warnings += prepare_targets(plan)
        try:
            self.labels_out = LabelWriter(self.staged.stage(plan.labels), self.grid, self.crs_wkt, self.names,
                                          self.colours)
            self.writers.append(self.labels_out)
            if plan.probabilities is not None:
                self.probs_out = ProbabilityWriter(self.staged.stage(plan.probabilities), self.grid, self.crs_wkt,
                                                   self.names)
                self.writers.append(self.probs_out)
        except GdalError as error:
            raise self.failed_writing(error) from None

    def segment(self, number: int, rgb: np.ndarray, valid: np.ndarray, stopping: Callable[[], bool]) -> Any:
        """Block ``number`` through the backend (on a worker thread), sent again after passing failures."""
        params = self.params
        return with_retries(lambda: self.client.segment(
            rgb, params.classes, prob_threshold=self.threshold, background_index=self.background,
            bias_lambda=params.bias_lambda, valid=valid, probabilities=self.probs_out is not None,
            progress=self.shown.within(number), cancelled=stopping), f"Block {number + 1} of {len(self.blocks)}",
            self.retry, stopping, self.log_retry)

    def write(self, number: int, block: Block, valid: np.ndarray, answer: Any) -> None:
        """The core of a block's answer (None: nothing valid, the backend was not asked) into the outputs."""
        assert self.labels_out is not None  # opened before any block is written
        core_rows, core_cols = block.core_in_block()
        if answer is not None:
            labels = answer.labels[core_rows, core_cols]
        else:
            labels = np.full((block.rows.core_stop - block.rows.core_start,
                              block.cols.core_stop - block.cols.core_start), NODATA_LABEL, np.uint8)
        try:
            self.labels_out.write(labels, block.rows.core_start, block.cols.core_start)
            if self.probs_out is not None:
                if answer is not None:
                    probabilities = answer.probabilities[:, core_rows, core_cols]
                else:
                    probabilities = np.zeros((len(self.names),) + labels.shape, np.float32)
                self.probs_out.write(probabilities, labels != NODATA_LABEL, block.rows.core_start,
                                     block.cols.core_start)
        except GdalError as error:
            raise self.failed_writing(error) from None
        self.counts[:] += np.bincount(labels.ravel(), minlength=256)
        self.shown.block_done(number)

    def run_blocks(self, source: PixelSource, concurrency: int, cancelled: Callable[[], bool]) -> None:
        """Every block read, sent (up to ``concurrency`` at once) and written as its answer comes."""
        flight: BlocksInFlight[tuple[int, Block, np.ndarray]] = BlocksInFlight(concurrency, cancelled)
        try:
            if self.params.classes:
                with_retries(lambda: self.client.embed_classes(list(self.params.classes)), "Class embedding",
                             self.retry, cancelled, self.log_retry)
            for number, block in enumerate(self.blocks):
                for finished, answer in flight.room():  # at most `concurrency` blocks wait for answers
                    self.write(*finished, answer)
                if cancelled():
                    raise JobCancelledError("Cancelled: no output was written.")
                rgb, valid = source.read((block.rows.start, block.rows.stop), (block.cols.start, block.cols.stop))
                if valid.any():
                    flight.submit((number, block, valid), functools.partial(self.segment, number, rgb, valid))
                else:
                    self.write(number, block, valid, None)
                del rgb
            for finished, answer in flight.drain():
                self.write(*finished, answer)
        except BackendError as error:
            if error.code == "cancelled" and cancelled():
                raise JobCancelledError("Cancelled: no output was written.") from None
            raise
        finally:
            flight.close()  # after a failure: stops the blocks still in flight

    def finish(self, make_style: Optional[StyleMaker]) -> tuple[Optional[Path], list[Path]]:
        """Close the GeoTIFFs, add their side files and the style, and move everything into place at once.

        Returns the style written (or None) and every file put in place.
        """
        plan, staged = self.params.outputs, self.staged
        try:
            for writer in self.writers:
                writer.close()
        except GdalError as error:
            raise self.failed_writing(error) from None
        for writer in self.writers:  # GDAL's side files (category names) travel with their GeoTIFF
            sidecar = aux_path(writer.path)
            target = staged.target_of(writer.path)
            if sidecar.exists():
                staged.attach(sidecar, aux_path(target))
            else:
                staged.replace_stale(aux_path(target))
        for side in plan.stale:  # an old result's overviews and statistics go with it
            staged.replace_stale(side)
        self.warnings += plan.warnings
        style: Optional[Path] = None
        if plan.style is not None and make_style is not None and self.labels_out is not None:
            try:
                text = make_style(self.labels_out.path, self.names, self.colours)
            except OSError as error:
                self.warnings.append(f"The style {plan.style.name} could not be made ({error}); the result is "
                                     "styled in this project only.")
                staged.replace_stale(plan.style)  # an older result's style would name the wrong classes
            else:  # written whole like the rasters: a full disk fails the job here, nothing is written
                staged.write(plan.style, text.encode("utf-8"), ".qml")
                style = plan.style
        return style, staged.commit()

    def abort(self) -> None:
        for writer in self.writers:
            writer.discard()
        self.staged.abort()


def run_job(params: JobParams, grid: Grid, crs_wkt: str, source: PixelSource, client: SegmentClient,
            progress: Callable[[float], None] = lambda p: None,
            cancelled: Callable[[], bool] = lambda: False,
            make_style: Optional[StyleMaker] = None, concurrency: int = 1,
            log: Callable[[str], None] = lambda message: None, retry: RetryPolicy = DEFAULT_RETRY,
            window: tuple[int, int] = (CROP, STRIDE)) -> JobResult:
    """Segment ``grid`` block by block through ``client`` and write the outputs.

    Up to ``concurrency`` blocks are computed at once (a backend with several replicas); they are
    read and written here, in place, as they finish, so the result does not depend on their order.
    ``progress`` gets 0-100 (fractions of blocks when the backend reports window progress);
    ``cancelled`` is polled between blocks and by the client during every block in flight. A request
    that fails in passing (lost connection, timeout, 503) is sent again as ``retry`` says; ``log``
    gets a line for every retry. Blocks are planned for the backend's sliding window ``window``
    (``(size, stride)``, see :func:`~segearth_qgis.core.blocks.window_geometry`). The disk work the
    plan left to the run (the default folder, an interrupted run's leftovers) is done first.

    Raises:
        JobCancelledError: ``cancelled()`` became true (nothing written).
        BackendError, OutputError, InputError: the failure (nothing written).
    """
    start = time.monotonic()
    plan = params.outputs
    run = _BlockRun(params, grid, crs_wkt, client, progress, retry, log, window)
    try:
        run.open_writers()
        run.run_blocks(source, concurrency, cancelled)
        if cancelled():
            raise JobCancelledError("Cancelled: no output was written.")
        style, written = run.finish(make_style)
    except BaseException:
        run.abort()
        raise
    return JobResult(plan.labels, plan.probabilities, style, run.names, run.colours, time.monotonic() - start,
                     grid.width * grid.height, len(run.blocks), {k: int(v) for k, v in enumerate(run.counts) if v},
                     tuple(run.warnings), concurrency, tuple(run.retried), tuple(written))


def job_window(client: SegmentClient) -> tuple[tuple[int, int], dict[str, Any]]:
    """The sliding window ``(size, stride)`` the backend's ``/health`` names (the default one when it cannot be
    asked: the job's first request then reports the problem), and that ``/health``.

    Raises:
        BackendError: the window makes no sense (``bad_answer``).
    """
    try:
        health = client.health()
    except BackendError:
        health = {}
    try:
        return window_geometry(health), health
    except ValueError as error:
        raise BackendError(f"The backend's /health is malformed: {error}: is it a SegEarth-OV backend?",
                           "bad_answer") from None


def execute(job: ReadPlan, params: JobParams, client: SegmentClient, progress: Callable[[float], None] = lambda p: None,
            cancelled: Callable[[], bool] = lambda: False, make_style: Optional[StyleMaker] = None,
            log: Callable[[str], None] = lambda message: None) -> JobResult:
    """:func:`run_job` on a :class:`~segearth_qgis.job.source_plan.SourcePlan`, opening and closing its source here.

    As many blocks are kept in flight as :func:`~segearth_qgis.job.inflight.choose_concurrency` says
    (``$SEGEARTH_CONCURRENCY``, else the backend's replicas); the blocks are planned for the sliding window
    the backend's ``/health`` names.

    Raises:
        BackendError: the backend's ``/health`` names a window that makes no sense (``bad_answer``).
    """
    window, health = job_window(client)
    concurrency = choose_concurrency(client, health=health)
    source = job.open()
    try:
        return run_job(params, job.grid, job.crs_wkt, source, client, progress, cancelled, make_style,
                       concurrency, log, window=window)
    finally:
        source.close()
