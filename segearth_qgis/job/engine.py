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
from typing import Any, Callable, Optional

import numpy as np

from ..client.backend_client import BackendError
from ..client.retry import DEFAULT_RETRY, RetryPolicy, with_retries
from ..core.blocks import CROP, STRIDE, Block, plan_grid_blocks, window_geometry
from ..core.classes import class_colours, class_name
from ..core.grid import Grid
from ..core.request_rules import DEFAULT_BIAS_LAMBDA, NODATA_LABEL
from ..errors import JobCancelledError, OutputError
from .gdal_errors import GdalError
from .inflight import BlockProgress, BlocksInFlight, choose_concurrency
from .outputs import OutputPlan, StagedFiles, aux_path, output_error
from .raster_io import LabelWriter, PixelSource, ProbabilityWriter

__all__ = ["JobCancelledError", "JobParams", "JobResult", "run_job", "execute"]

#: ``write_style(geotiff, qml, names, colours)``: writes the QML style of the class GeoTIFF (QGIS side).
StyleWriter = Callable[[Path, Path, list[str], list[tuple[int, int, int, int]]], None]


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


def _writing(folder: Path) -> Callable[[GdalError], OutputError]:
    return lambda error: output_error(folder, OSError(error.reason))


def run_job(params: JobParams, grid: Grid, crs_wkt: str, source: PixelSource, client: Any,
            progress: Callable[[float], None] = lambda p: None,
            cancelled: Callable[[], bool] = lambda: False,
            write_style: Optional[StyleWriter] = None, concurrency: int = 1,
            log: Callable[[str], None] = lambda message: None, retry: RetryPolicy = DEFAULT_RETRY,
            window: tuple[int, int] = (CROP, STRIDE)) -> JobResult:
    """Segment ``grid`` block by block through ``client`` (a BackendClient) and write the outputs.

    Up to ``concurrency`` blocks are computed at once (a backend with several replicas); they are
    read and written here, in place, as they finish, so the result does not depend on their order.
    ``progress`` gets 0-100 (fractions of blocks when the backend reports window progress);
    ``cancelled`` is polled between blocks and by the client during every block in flight. A request
    that fails in passing (lost connection, timeout, 503) is sent again as ``retry`` says; ``log``
    gets a line for every retry. Blocks are planned for the backend's sliding window ``window``
    (``(size, stride)``, see :func:`~segearth_qgis.core.blocks.window_geometry`).

    Raises:
        JobCancelledError: ``cancelled()`` became true (nothing written).
        BackendError, OutputError, LayerError: the failure (nothing written).
    """
    start = time.monotonic()
    plan = params.outputs
    names = [class_name(line) for line in params.classes]
    colours = class_colours(list(params.classes), params.background_index)
    # Without a background class nothing can fall below the threshold: every pixel keeps its best class.
    background = params.background_index if params.background_index is not None else 0
    threshold = params.threshold if params.background_index is not None else 0.0
    staged = StagedFiles(plan.overwrite)
    writers: list[Any] = []
    counts = np.zeros(256, np.int64)
    blocks = plan_grid_blocks(grid, params.block_size, *window)  # on the raster's anchor grid, with the context
    failed_writing = _writing(plan.labels.parent)
    shown = BlockProgress(len(blocks), progress)
    retried: list[str] = []

    def log_retry(message: str) -> None:
        retried.append(message)
        log(message)

    def segment(number: int, rgb: np.ndarray, valid: np.ndarray, stopping: Callable[[], bool]) -> Any:
        """Block ``number`` through the backend (on a worker thread), sent again after passing failures."""
        return with_retries(lambda: client.segment(
            rgb, params.classes, prob_threshold=threshold, background_index=background,
            bias_lambda=params.bias_lambda, valid=valid, probabilities=probs_out is not None,
            progress=shown.within(number), cancelled=stopping), f"Block {number + 1} of {len(blocks)}", retry,
            stopping, log_retry)

    def write(number: int, block: Block, valid: np.ndarray, answer: Any) -> None:
        """The core of a block's answer (None: nothing valid, the backend was not asked) into the outputs."""
        core_rows, core_cols = block.core_in_block()
        if answer is not None:
            labels = answer.labels[core_rows, core_cols]
        else:
            labels = np.full((block.rows.core_stop - block.rows.core_start,
                              block.cols.core_stop - block.cols.core_start), NODATA_LABEL, np.uint8)
        try:
            labels_out.write(labels, block.rows.core_start, block.cols.core_start)
            if probs_out is not None:
                if answer is not None:
                    probabilities = answer.probabilities[:, core_rows, core_cols]
                else:
                    probabilities = np.zeros((len(names),) + labels.shape, np.float32)
                probs_out.write(probabilities, labels != NODATA_LABEL, block.rows.core_start, block.cols.core_start)
        except GdalError as error:
            raise failed_writing(error) from None
        counts[:] += np.bincount(labels.ravel(), minlength=256)
        shown.block_done(number)

    flight: BlocksInFlight[tuple[int, Block, np.ndarray]] = BlocksInFlight(concurrency, cancelled)
    try:
        try:
            labels_out = LabelWriter(staged.stage(plan.labels), grid, crs_wkt, names, colours)
            writers.append(labels_out)
            probs_out: Optional[ProbabilityWriter] = None
            if plan.probabilities is not None:
                probs_out = ProbabilityWriter(staged.stage(plan.probabilities), grid, crs_wkt, names)
                writers.append(probs_out)
        except GdalError as error:
            raise failed_writing(error) from None
        try:
            if params.classes:
                with_retries(lambda: client.embed_classes(list(params.classes)), "Class embedding", retry,
                             cancelled, log_retry)
            for number, block in enumerate(blocks):
                for finished, answer in flight.room():  # at most `concurrency` blocks wait for answers
                    write(*finished, answer)
                if cancelled():
                    raise JobCancelledError("Cancelled: no output was written.")
                rgb, valid = source.read((block.rows.start, block.rows.stop), (block.cols.start, block.cols.stop))
                if valid.any():
                    flight.submit((number, block, valid), functools.partial(segment, number, rgb, valid))
                else:
                    write(number, block, valid, None)
                del rgb
            for finished, answer in flight.drain():
                write(*finished, answer)
        except BackendError as error:
            if error.code == "cancelled" and cancelled():
                raise JobCancelledError("Cancelled: no output was written.") from None
            raise
        finally:
            flight.close()  # after a failure: stops the blocks still in flight
        if cancelled():
            raise JobCancelledError("Cancelled: no output was written.")
        try:
            for writer in writers:
                writer.close()
        except GdalError as error:
            raise failed_writing(error) from None
        for writer in writers:  # GDAL's side files (category names) travel with their GeoTIFF
            sidecar = aux_path(writer.path)
            target = staged.target_of(writer.path)
            if sidecar.exists():
                staged.attach(sidecar, aux_path(target))
            else:
                staged.replace_stale(aux_path(target))
        for side in plan.stale:  # an old result's overviews and statistics go with it
            staged.replace_stale(side)
        warnings = list(plan.warnings)
        if plan.style is not None and write_style is not None:
            style_tmp = staged.stage(plan.style, ".qml")
            try:
                write_style(labels_out.path, style_tmp, names, colours)
            except OSError as error:
                warnings.append(f"The style {plan.style.name} could not be written ({error}); the result is styled "
                                "in this project only.")
                staged.drop(style_tmp)
                staged.replace_stale(plan.style)  # an older result's style would name the wrong classes
        staged.commit()
    except BaseException:
        for writer in writers:
            writer.discard()
        staged.abort()
        raise
    style = plan.style if plan.style is not None and plan.style.exists() and write_style is not None else None
    return JobResult(plan.labels, plan.probabilities, style, names, colours, time.monotonic() - start,
                     grid.width * grid.height, len(blocks), {k: int(v) for k, v in enumerate(counts) if v},
                     tuple(warnings), concurrency, tuple(retried))


def execute(job: Any, params: JobParams, client: Any, progress: Callable[[float], None] = lambda p: None,
            cancelled: Callable[[], bool] = lambda: False, write_style: Optional[StyleWriter] = None,
            log: Callable[[str], None] = lambda message: None) -> JobResult:
    """:func:`run_job` on a :class:`~segearth_qgis.job.source_plan.SourcePlan`, opening and closing its source here.

    As many blocks are kept in flight as :func:`~segearth_qgis.job.inflight.choose_concurrency` says
    (``$SEGEARTH_CONCURRENCY``, else the backend's replicas); the blocks are planned for the sliding window
    the backend's ``/health`` names.

    Raises:
        BackendError: the backend's ``/health`` names a window that makes no sense (``bad_answer``).
    """
    try:
        health = client.health()
    except BackendError:
        health = {}  # the job's first request reports the problem
    try:
        window = window_geometry(health)
    except ValueError as error:
        raise BackendError(f"The backend's /health is malformed: {error}: is it a SegEarth-OV backend?",
                           "bad_answer") from None
    concurrency = choose_concurrency(client, health=health)
    source = job.open()
    try:
        return run_job(params, job.grid, job.crs_wkt, source, client, progress, cancelled, write_style,
                       concurrency, log, window=window)
    finally:
        source.close()
