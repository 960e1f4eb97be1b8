"""The segmentation job: blocks in, backend calls, GeoTIFFs out (no QGIS imports).

One implementation serves the dock panel (inside a QgsTask) and the
Processing algorithms. Progress goes to a callback; cancellation is polled
between blocks and, while a block is computed, by the backend client, which
drops the request (the backend then stops its work); partial outputs are removed.
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
from .raster_io import NODATA_LABEL, LabelWriter, PixelSource, ProbabilityWriter


class JobCancelledError(Exception):
    """The user cancelled; no output was kept."""


@dataclass(frozen=True)
class JobParams:
    """What to segment and where to write it (built by the panel or a Processing algorithm)."""

    classes: tuple[str, ...]
    output_path: str
    threshold: float = 0.0
    background_index: Optional[int] = 0
    bias_lambda: float = -0.3
    probabilities_path: Optional[str] = None
    overwrite: bool = False
    block_size: int = 1024


@dataclass
class JobResult:
    output_path: Path
    probabilities_path: Optional[Path]
    names: list[str]
    colours: list[tuple[int, int, int, int]]
    seconds: float
    pixels: int
    blocks: int
    class_pixels: dict[int, int] = field(default_factory=dict)


def run_job(params: JobParams, grid: Grid, crs_wkt: str, source: PixelSource, client: Any,
            progress: Callable[[float], None] = lambda p: None,
            cancelled: Callable[[], bool] = lambda: False) -> JobResult:
    """Segment ``grid`` block by block through ``client`` (a BackendClient) and write the outputs.

    Raises:
        JobCancelledError: ``cancelled()`` became true (outputs removed).
        BackendError, OutputError, OSError: the failure (outputs removed).
    """
    start = time.monotonic()
    names = [class_name(line) for line in params.classes]
    colours = class_colours(list(params.classes), params.background_index)
    labels_out = LabelWriter(params.output_path, grid, crs_wkt, names, colours, params.overwrite)
    probs_out: Optional[ProbabilityWriter] = None
    counts = np.zeros(256, np.int64)
    try:
        if params.probabilities_path:
            probs_out = ProbabilityWriter(params.probabilities_path, grid, crs_wkt, names, params.overwrite)
        if params.classes:
            client.embed_classes(list(params.classes))
        blocks = plan_blocks(grid.height, grid.width, params.block_size)
        for number, block in enumerate(blocks):
            if cancelled():
                raise JobCancelledError("Cancelled: no output was written.")
            rows, cols = (block.rows.start, block.rows.stop), (block.cols.start, block.cols.stop)
            rgb, valid = source.read(rows, cols)
            core_rows, core_cols = block.core_in_block()
            if valid.any():
                try:
                    answer = client.segment(rgb, params.classes, prob_threshold=params.threshold,
                                            background_index=params.background_index or 0,
                                            bias_lambda=params.bias_lambda, valid=valid,
                                            probabilities=probs_out is not None, cancelled=cancelled)
                except BackendError as error:
                    if error.code == "cancelled":
                        raise JobCancelledError("Cancelled: no output was written.") from None
                    raise
                labels = answer.labels[core_rows, core_cols]
                if probs_out is not None:
                    probs_out.write(answer.probabilities[:, core_rows, core_cols], valid[core_rows, core_cols],
                                    block.rows.core_start, block.cols.core_start)
            else:  # nothing valid: no need to ask the backend
                labels = np.full((block.rows.core_stop - block.rows.core_start,
                                  block.cols.core_stop - block.cols.core_start), NODATA_LABEL, np.uint8)
            labels_out.write(labels, block.rows.core_start, block.cols.core_start)
            counts += np.bincount(labels.ravel(), minlength=256)
            progress(100.0 * (number + 1) / len(blocks))
        if cancelled():
            raise JobCancelledError("Cancelled: no output was written.")
        output = labels_out.commit()
        probabilities = probs_out.commit() if probs_out is not None else None
    except BaseException:
        labels_out.abort()
        if probs_out is not None:
            probs_out.abort()
        raise
    return JobResult(output, probabilities, names, colours, time.monotonic() - start, grid.width * grid.height,
                     len(blocks), {k: int(v) for k, v in enumerate(counts) if v})


def execute(job: Any, params: JobParams, client: Any, progress: Callable[[float], None] = lambda p: None,
            cancelled: Callable[[], bool] = lambda: False) -> JobResult:
    """:func:`run_job` on a :class:`~segearth_qgis.job_setup.PreparedJob`, opening and closing its source here."""
    source = job.source()
    try:
        return run_job(params, job.grid, job.crs_wkt, source, client, progress, cancelled)
    finally:
        source.close()


def default_output_path(folder: str, stem: str) -> str:
    """A fresh file name in ``folder``: ``<stem>_segearth_<n>.tif``."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) or "layer"
    for number in range(1, 10000):
        candidate = Path(folder) / f"{safe}_segearth_{number}.tif"
        if not candidate.exists():
            return str(candidate)
    raise OSError(f"no free output name in {folder}")

