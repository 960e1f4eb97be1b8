"""The change job: both dates' blocks in, backend calls, the change raster and its companions out (no QGIS).

The engine of ``segearth:change`` and ``segearth:change_vector`` (and, later, the dock's "Compare with…").
It walks the processing grid in the blocks :func:`~segearth_qgis.core.blocks.plan_grid_blocks` plans
(the same blocks, windows and stitching as a single-date job), reads each block from both dates (the after
date already on the before date's grid, see :mod:`.change_source`), gives both the same valid mask (valid
on both dates; the rest is nodata on both, so one date's nodata edge cannot show up as change on the
other) and sends both to the backend with probabilities. The backend's per-window cache keeps each date's
image work, so a second run with other classes or thresholds skips it. Each answered block is decided
pixel by pixel (:func:`~segearth_qgis.core.change.decide_change`), counted
(:class:`~segearth_qgis.core.change.TransitionTally`) and written. Blocks in flight, retries, progress and
cancel work as for :func:`~segearth_qgis.job.run_job`; every output is staged and moved into place at the
end, together, or not at all.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .backend_client import BackendError
from .change_raster import ChangeWriter, ConfidenceWriter, name_codes, sieve_changes
from .core.blocks import Block, plan_grid_blocks
from .core.change import DEFAULT_MIN_PIXELS, NODATA_CHANGE, ChangeRule, TransitionTally, change_summary, decide_change
from .core.change_legend import LegendEntry, change_legend
from .core.change_report import change_html
from .core.classes import class_colours, class_name
from .core.grid import Grid
from .errors import InputError, JobCancelledError, OutputError
from .gdal_errors import GdalError
from .inflight import BlockProgress, BlocksInFlight, choose_concurrency
from .job import StyleWriter
from .outputs import OutputPlan, StagedFiles, aux_path, output_error
from .raster_io import NODATA_LABEL, LabelWriter, PixelSource
from .retry import DEFAULT_RETRY, RetryPolicy, with_retries

#: ``write_change_style(geotiff, qml, legend)``: writes the QML style of the change raster (QGIS side).
ChangeStyleWriter = Callable[[Path, Path, list[LegendEntry]], None]
#: ``before_commit(result, staged)``: last writes before the outputs move into place (a table layer);
#: raising aborts the job.
BeforeCommit = Callable[["ChangeResult", StagedFiles], None]

_DATES = ("before", "after")


@dataclass(frozen=True)
class ChangeOutputs:
    """The files a change job writes, checked (built by :func:`~segearth_qgis.change_request.plan_change`).

    Attributes:
        change: the change GeoTIFF (``labels``) and its ``.qml`` (``style``).
        before, after: each date's class GeoTIFF (and style), or None.
        report: the HTML report, or None.
        confidence: a float32 GeoTIFF of each pixel's smaller top probability (for polygons), or None.
        overwrite: whether existing targets may be replaced.
        warnings: things the user should know (styles that were not written...).
    """

    change: OutputPlan
    before: Optional[OutputPlan] = None
    after: Optional[OutputPlan] = None
    report: Optional[Path] = None
    confidence: Optional[Path] = None
    overwrite: bool = False
    warnings: tuple[str, ...] = ()

    @property
    def rasters(self) -> list[OutputPlan]:
        return [plan for plan in (self.change, self.before, self.after) if plan is not None]


@dataclass(frozen=True)
class ChangeParams:
    """What to compare and where to write it, checked.

    Attributes:
        classes: class lines, synonyms separated by commas (one list for both dates).
        outputs: the checked output files.
        rule: when different labels count as change.
        threshold, background_index, bias_lambda: each date's segmentation, as for a single date
            (:class:`~segearth_qgis.job.JobParams`).
        block_size: pixels per block side.
        min_pixels: change patches smaller than this become uncertain (0 or 1: none).
        report_details: ``(label, value)`` lines describing the inputs in the report.
    """

    classes: tuple[str, ...]
    outputs: ChangeOutputs
    rule: ChangeRule = field(default_factory=ChangeRule)
    threshold: float = 0.0
    background_index: Optional[int] = 0
    bias_lambda: float = -0.3
    block_size: int = 1024
    min_pixels: int = DEFAULT_MIN_PIXELS
    report_details: tuple[tuple[str, str], ...] = ()


@dataclass
class ChangeResult:
    """What a finished change job wrote and found."""

    change_path: Path
    before_path: Optional[Path]
    after_path: Optional[Path]
    report_path: Optional[Path]
    confidence_path: Optional[Path]
    style_path: Optional[Path]
    names: list[str]
    colours: list[tuple[int, int, int, int]]
    legend: list[LegendEntry]
    tally: TransitionTally
    rule: ChangeRule
    seconds: float
    pixels: int
    blocks: int
    #: Pixels that the minimum mapping unit made uncertain.
    sieved_pixels: int = 0
    warnings: tuple[str, ...] = ()
    concurrency: int = 1
    retried: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        """One line: the largest confident changes ("12.4 ha cropland → building; …")."""
        return change_summary(self.tally, self.names)


def _cores(block: Block) -> tuple[int, int, int, int]:
    return block.rows.core_start, block.rows.core_stop, block.cols.core_start, block.cols.core_stop


def run_change_job(params: ChangeParams, grid: Grid, crs_wkt: str, before: PixelSource, after: PixelSource,
                   client: Any, row_areas: np.ndarray, progress: Callable[[float], None] = lambda p: None,
                   cancelled: Callable[[], bool] = lambda: False, write_style: Optional[StyleWriter] = None,
                   write_change_style: Optional[ChangeStyleWriter] = None, concurrency: int = 1,
                   log: Callable[[str], None] = lambda message: None, retry: RetryPolicy = DEFAULT_RETRY,
                   before_commit: Optional[BeforeCommit] = None) -> ChangeResult:
    """Compare ``before`` and ``after`` (both read on ``grid``) block by block through ``client``.

    Args:
        row_areas: ``grid.height`` float64, the area in m² of one pixel of each row.
        write_style: writes a class raster's ``.qml`` (the per-date rasters).
        write_change_style: writes the change raster's ``.qml``.
        concurrency: requests in flight at most (each block is two requests, one per date).
        before_commit: called once everything is written and staged, just before it moves into place.

    Raises:
        JobCancelledError: ``cancelled()`` became true (nothing written).
        InputError: a date has no valid pixel over the area, or the two have none in common (nothing written).
        BackendError, OutputError, LayerError: the failure (nothing written).
    """
    start = time.monotonic()
    outputs = params.outputs
    if len(row_areas) != grid.height:
        raise ValueError(f"{len(row_areas)} row areas for a grid of {grid.height} rows")
    names = [class_name(line) for line in params.classes]
    colours = class_colours(list(params.classes), params.background_index)
    background = params.background_index if params.background_index is not None else 0
    threshold = params.threshold if params.background_index is not None else 0.0
    staged = StagedFiles(outputs.overwrite)
    tally = TransitionTally(len(names))
    blocks = plan_grid_blocks(grid, params.block_size)
    shown = BlockProgress(2 * len(blocks), progress)
    retried: list[str] = []
    valid_counts = {"before": 0, "after": 0}
    answers: dict[int, dict[str, Any]] = {}
    writers: list[Any] = []
    failed_writing = _writing(outputs.change.labels.parent)

    def log_retry(message: str) -> None:
        retried.append(message)
        log(message)

    def segment(number: int, date: str, rgb: np.ndarray, valid: np.ndarray, stopping: Callable[[], bool]) -> Any:
        key = 2 * number + _DATES.index(date)
        return with_retries(lambda: client.segment(
            rgb, params.classes, prob_threshold=threshold, background_index=background,
            bias_lambda=params.bias_lambda, valid=valid, probabilities=True, progress=shown.within(key),
            cancelled=stopping), f"Block {number + 1} of {len(blocks)} ({date})", retry, stopping, log_retry)

    def write(block: Block, pair: Optional[dict[str, Any]]) -> None:
        """A block's decision into the outputs (``pair`` None: nothing valid there, the backend was not asked)."""
        row0, row1, col0, col1 = _cores(block)
        core = block.core_in_block()
        shape = (row1 - row0, col1 - col0)
        if pair is not None:
            labels = {date: pair[date].labels[core] for date in _DATES}
            probabilities = {date: pair[date].probabilities[(slice(None), *core)].astype(np.float32)
                             for date in _DATES}
            decided = decide_change(probabilities["before"], probabilities["after"], labels["before"],
                                    labels["after"], params.rule)
            codes, confidence = decided.codes, decided.confidence
        else:
            empty = np.full(shape, NODATA_LABEL, np.uint8)
            labels = {"before": empty, "after": empty}
            codes = np.full(shape, NODATA_CHANGE, np.uint16)
            confidence = np.full(shape, np.nan, np.float32)
        tally.add(labels["before"], labels["after"], codes, row_areas[row0:row1])
        try:
            change_out.write(codes, row0, col0)
            for date, writer in date_writers.items():
                writer.write(labels[date], row0, col0)
            if confidence_out is not None:
                confidence_out.write(confidence, row0, col0)
        except GdalError as error:
            raise failed_writing(error) from None

    def collect(tag: tuple[int, Block, str], answer: Any) -> None:
        number, block, date = tag
        shown.block_done(2 * number + _DATES.index(date))
        pair = answers.setdefault(number, {})
        pair[date] = answer
        if len(pair) == 2:
            del answers[number]
            write(block, pair)

    flight: BlocksInFlight[tuple[int, Block, str]] = BlocksInFlight(concurrency, cancelled)
    date_writers: dict[str, LabelWriter] = {}
    confidence_out: Optional[ConfidenceWriter] = None
    try:
        try:
            change_out = ChangeWriter(staged.stage(outputs.change.labels), grid, crs_wkt, names)
            writers.append(change_out)
            for date, plan in (("before", outputs.before), ("after", outputs.after)):
                if plan is not None:
                    date_writers[date] = LabelWriter(staged.stage(plan.labels), grid, crs_wkt, names, colours)
                    writers.append(date_writers[date])
            if outputs.confidence is not None:
                confidence_out = ConfidenceWriter(staged.stage(outputs.confidence), grid, crs_wkt)
                writers.append(confidence_out)
        except GdalError as error:
            raise failed_writing(error) from None
        try:
            with_retries(lambda: client.embed_classes(list(params.classes)), "Class embedding", retry, cancelled,
                         log_retry)
            for number, block in enumerate(blocks):
                if cancelled():
                    raise JobCancelledError("Cancelled: no output was written.")
                window = ((block.rows.start, block.rows.stop), (block.cols.start, block.cols.stop))
                rgb_before, valid_before = before.read(*window)
                rgb_after, valid_after = after.read(*window)
                core = block.core_in_block()
                valid_counts["before"] += int(valid_before[core].sum())
                valid_counts["after"] += int(valid_after[core].sum())
                valid = valid_before & valid_after  # nodata on either date is nodata on both
                if not valid[core].any():
                    shown.block_done(2 * number)
                    shown.block_done(2 * number + 1)
                    write(block, None)
                    continue
                for date, rgb in (("before", rgb_before), ("after", rgb_after)):
                    rgb[~valid] = 0
                    for finished, answer in flight.room():  # at most `concurrency` requests wait for answers
                        collect(finished, answer)
                    flight.submit((number, block, date), functools.partial(segment, number, date, rgb, valid))
                del rgb_before, rgb_after
            for finished, answer in flight.drain():
                collect(finished, answer)
        except BackendError as error:
            if error.code == "cancelled" and cancelled():
                raise JobCancelledError("Cancelled: no output was written.") from None
            raise
        finally:
            flight.close()
        if cancelled():
            raise JobCancelledError("Cancelled: no output was written.")
        _check_coverage(valid_counts, tally)
        try:
            for writer in writers:
                writer.close()
        except GdalError as error:
            raise failed_writing(error) from None
        try:
            sieved = sieve_changes(change_out.path, grid, params.min_pixels, row_areas, tally, cancelled)
        except InterruptedError:
            raise JobCancelledError("Cancelled: no output was written.") from None
        except GdalError as error:
            raise failed_writing(error) from None
        present = tally.present_codes()
        legend = change_legend(params.classes, present)
        try:
            name_codes(change_out.path, present, names)
        except GdalError as error:
            raise failed_writing(error) from None
        for writer in writers:  # GDAL's side files (category names) travel with their GeoTIFF
            sidecar, target = aux_path(writer.path), staged.target_of(writer.path)
            if sidecar.exists():
                staged.attach(sidecar, aux_path(target))
            else:
                staged.replace_stale(aux_path(target))
        for plan in outputs.rasters:
            for side in plan.stale:
                staged.replace_stale(side)
        warnings = list(outputs.warnings)
        change_style: Optional[Path] = None
        if outputs.change.style is not None and write_change_style is not None:
            problem = _stage_style(staged, outputs.change.style,
                                   lambda temporary: write_change_style(change_out.path, temporary, legend))
            warnings += problem
            change_style = None if problem else outputs.change.style
        for date, writer in date_writers.items():
            plan = outputs.before if date == "before" else outputs.after
            if plan is not None and plan.style is not None and write_style is not None:
                warnings += _stage_style(staged, plan.style, functools.partial(_class_style, write_style, writer.path,
                                                                               names, colours))
        result = ChangeResult(
            outputs.change.labels, outputs.before.labels if outputs.before else None,
            outputs.after.labels if outputs.after else None, outputs.report, outputs.confidence, change_style, names,
            colours, legend, tally, params.rule, 0.0, grid.width * grid.height, len(blocks), sieved,
            tuple(warnings), concurrency, tuple(retried))
        if outputs.report is not None:
            report = staged.stage(outputs.report, ".html")
            try:
                report.write_text(change_html(tally, names, params.rule, "Change between two dates",
                                              params.report_details), encoding="utf-8")
            except OSError as error:
                raise output_error(outputs.report.parent, error) from None
        if before_commit is not None:
            before_commit(result, staged)
        staged.commit()
    except BaseException:
        for writer in writers:
            writer.discard()
        staged.abort()
        raise
    result.seconds = time.monotonic() - start
    return result


def _writing(folder: Path) -> Callable[[GdalError], OutputError]:
    return lambda error: output_error(folder, OSError(error.reason))


def _stage_style(staged: StagedFiles, style: Path, write: Callable[[Path], None]) -> list[str]:
    """Stage the ``.qml`` ``style``, written by ``write(temporary)``; a failure is a warning, not an error."""
    temporary = staged.stage(style, ".qml")
    try:
        write(temporary)
    except OSError as error:
        staged.drop(temporary)
        staged.replace_stale(style)  # an older result's style would name the wrong classes
        return [f"The style {style.name} could not be written ({error}); the result is styled in this project only."]
    return []


def _class_style(write_style: StyleWriter, geotiff: Path, names: list[str], colours: list[tuple[int, int, int, int]],
                 qml: Path) -> None:
    write_style(geotiff, qml, names, colours)


def _check_coverage(valid_counts: dict[str, int], tally: TransitionTally) -> None:
    """Refuse an empty comparison: a date without data over the area, or no pixel valid on both."""
    for date in _DATES:
        if valid_counts[date] == 0:
            raise InputError(f"The {date} raster has no data over the area: every pixel is nodata there, so "
                             "nothing can be compared. Check its nodata value and alpha band, the extent and the "
                             "mask, or choose another raster.")
    if tally.valid_pixels == 0:
        raise InputError("The two rasters have no valid pixel in common over the area (where one has data, the "
                         "other is nodata): nothing can be compared. Choose rasters that cover the same ground.")


def execute_change(prepared: Any, params: ChangeParams, client: Any,
                   progress: Callable[[float], None] = lambda p: None, cancelled: Callable[[], bool] = lambda: False,
                   write_style: Optional[StyleWriter] = None,
                   write_change_style: Optional[ChangeStyleWriter] = None,
                   log: Callable[[str], None] = lambda message: None,
                   before_commit: Optional[BeforeCommit] = None) -> ChangeResult:
    """:func:`run_change_job` on a :class:`~segearth_qgis.change_source.PreparedChange`, opening and closing
    its sources here (on the job's thread), with as many requests in flight as
    :func:`~segearth_qgis.inflight.choose_concurrency` says."""
    concurrency = choose_concurrency(client)
    before, after = prepared.sources()
    try:
        return run_change_job(params, prepared.grid, prepared.crs_wkt, before, after, client, prepared.row_areas,
                              progress, cancelled, write_style, write_change_style, concurrency, log,
                              before_commit=before_commit)
    finally:
        before.close()
        after.close()
