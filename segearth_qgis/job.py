"""The segmentation job: blocks in, backend calls, GeoTIFFs out (no QGIS imports).

One implementation serves the dock panel (inside a QgsTask) and the
Processing algorithms. Progress goes to a callback; cancellation is polled
between blocks and, while a block is computed, by the backend client, which drops the request
(the backend then stops its work). Outputs are written under temporary names and moved into place
together at the very end, so a failure or a cancel leaves the folder as it was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .backend_client import BackendError
from .core.blocks import plan_blocks
from .core.classes import class_colours, class_name
from .core.grid import Grid
from .errors import JobCancelledError, OutputError
from .gdal_errors import GdalError
from .outputs import OutputPlan, StagedFiles, aux_path, output_error
from .raster_io import NODATA_LABEL, LabelWriter, PixelSource, ProbabilityWriter

__all__ = ["JobCancelledError", "JobParams", "JobResult", "run_job", "execute"]

#: ``write_style(geotiff, qml, names, colours)``: writes the QML style of the class GeoTIFF (QGIS side).
StyleWriter = Callable[[Path, Path, list[str], list[tuple[int, int, int, int]]], None]


@dataclass(frozen=True)
class JobParams:
    """What to segment and where to write it, checked (built by :func:`~segearth_qgis.job_request.plan_job`).

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
    bias_lambda: float = -0.3
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
    #: Pixel count per label value (255: nodata).
    class_pixels: dict[int, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def _writing(folder: Path) -> Callable[[GdalError], OutputError]:
    return lambda error: output_error(folder, OSError(error.reason))


def run_job(params: JobParams, grid: Grid, crs_wkt: str, source: PixelSource, client: Any,
            progress: Callable[[float], None] = lambda p: None,
            cancelled: Callable[[], bool] = lambda: False,
            write_style: Optional[StyleWriter] = None) -> JobResult:
    """Segment ``grid`` block by block through ``client`` (a BackendClient) and write the outputs.

    ``progress`` gets 0-100 (fractions of a block when the backend reports
    window progress); ``cancelled`` is polled between blocks and by the client
    during a block.

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
    blocks = plan_blocks(grid.height, grid.width, params.block_size)
    failed_writing = _writing(plan.labels.parent)
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
        if params.classes:
            client.embed_classes(list(params.classes))
        for number, block in enumerate(blocks):
            if cancelled():
                raise JobCancelledError("Cancelled: no output was written.")
            rows, cols = (block.rows.start, block.rows.stop), (block.cols.start, block.cols.stop)
            rgb, valid = source.read(rows, cols)
            core_rows, core_cols = block.core_in_block()
            if valid.any():
                try:
                    answer = client.segment(
                        rgb, params.classes, prob_threshold=threshold, background_index=background,
                        bias_lambda=params.bias_lambda, valid=valid, probabilities=probs_out is not None,
                        progress=_within_block(progress, number, len(blocks)), cancelled=cancelled)
                except BackendError as error:
                    if error.code == "cancelled":
                        raise JobCancelledError("Cancelled: no output was written.") from None
                    raise
                labels = answer.labels[core_rows, core_cols]
            else:  # nothing valid: no need to ask the backend
                labels = np.full((block.rows.core_stop - block.rows.core_start,
                                  block.cols.core_stop - block.cols.core_start), NODATA_LABEL, np.uint8)
            try:
                labels_out.write(labels, block.rows.core_start, block.cols.core_start)
                if probs_out is not None:
                    if valid.any():
                        probabilities = answer.probabilities[:, core_rows, core_cols]
                    else:
                        probabilities = np.zeros((len(names),) + labels.shape, np.float32)
                    probs_out.write(probabilities, labels != NODATA_LABEL, block.rows.core_start,
                                    block.cols.core_start)
            except GdalError as error:
                raise failed_writing(error) from None
            counts += np.bincount(labels.ravel(), minlength=256)
            progress(100.0 * (number + 1) / len(blocks))
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
        warnings = list(plan.warnings)
        if plan.style is not None and write_style is not None:
            style_tmp = staged.stage(plan.style, ".qml")
            try:
                write_style(labels_out.path, style_tmp, names, colours)
            except OSError as error:
                warnings.append(f"The style {plan.style.name} could not be written ({error}); the result is styled "
                                "in this project only.")
                staged.drop(style_tmp)
        staged.commit()
    except BaseException:
        for writer in writers:
            writer.discard()
        staged.abort()
        raise
    style = plan.style if plan.style is not None and plan.style.exists() and write_style is not None else None
    return JobResult(plan.labels, plan.probabilities, style, names, colours, time.monotonic() - start,
                     grid.width * grid.height, len(blocks), {k: int(v) for k, v in enumerate(counts) if v},
                     tuple(warnings))


def _within_block(progress: Callable[[float], None], number: int, total: int) -> Callable[[int, int], None]:
    """The backend's window progress within block ``number`` as the job's 0-100 progress."""
    def report(done: int, windows: int) -> None:
        if windows > 0:
            progress(100.0 * (number + min(done / windows, 1.0)) / total)
    return report


def execute(job: Any, params: JobParams, client: Any, progress: Callable[[float], None] = lambda p: None,
            cancelled: Callable[[], bool] = lambda: False, write_style: Optional[StyleWriter] = None) -> JobResult:
    """:func:`run_job` on a :class:`~segearth_qgis.job_setup.PreparedJob`, opening and closing its source here."""
    source = job.source()
    try:
        return run_job(params, job.grid, job.crs_wkt, source, client, progress, cancelled, write_style)
    finally:
        source.close()
