"""The change job: both dates' blocks in, backend calls, the change raster and its companions out (no QGIS).

The engine of ``segearth:change``, ``segearth:change_vector`` and the dock's "Compare with…". It walks the
processing grid in the blocks :func:`~segearth_qgis.core.blocks.plan_grid_blocks` plans (the same blocks,
windows and stitching as a single-date job), reads each block from both dates (the after date already on the
before date's grid, see :mod:`.change_source`), gives both the same valid mask (valid on both dates; the rest
is nodata on both, so one date's nodata edge cannot show up as change on the other) and sends both to the
backend with probabilities. The backend's per-window cache keeps each date's image work, so a second run with
other classes or thresholds skips it. Each answered block is decided pixel by pixel
(:func:`~segearth_qgis.core.change.decide_change`), counted
(:class:`~segearth_qgis.core.change.TransitionTally`) and written. Blocks in flight, retries, progress and
cancel work as for :func:`~segearth_qgis.job.engine.run_job`; every output is staged
(:class:`~segearth_qgis.job.staging.StagedFiles`) and moved into place at the end, together, or not at all.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..client.backend_client import BackendError
from ..client.retry import DEFAULT_RETRY, RetryPolicy, with_retries
from ..core.blocks import CROP, STRIDE, Block, plan_grid_blocks
from ..core.change import NODATA_CHANGE, TransitionTally, decide_change
from ..core.change_legend import LegendEntry, change_legend
from ..core.change_report import change_html
from ..core.classes import class_colours, class_name
from ..core.grid import Grid
from ..core.request_rules import NODATA_LABEL
from ..errors import InputError, JobCancelledError
from .change_params import ChangeOutputs, ChangeParams, ChangeResult
from .change_raster import ChangeWriter, ConfidenceWriter, name_codes, sieve_changes
from .engine import SegmentClient, StyleMaker, _writing, job_window
from .gdal_errors import GdalError
from .inflight import BlockProgress, BlocksInFlight, choose_concurrency
from .leftovers import recover_leftovers
from .outputs import aux_path
from .raster_io import LabelWriter, PixelSource
from .staging import StagedFiles, prepare_targets

__all__ = ["ChangeOutputs", "ChangeParams", "ChangeResult", "run_change_job", "execute_change"]

#: ``make_change_style(geotiff, legend)``: the QML style of the change raster, as text (QGIS side; raises OSError
#: when QGIS cannot make it). The job writes it beside the result like every other file.
ChangeStyleMaker = Callable[[Path, list[LegendEntry]], str]
#: ``before_commit(result, staged)``: last writes before the outputs move into place (a table layer joining the
#: same commit); raising aborts the job.
BeforeCommit = Callable[[ChangeResult, StagedFiles], None]

_DATES = ("before", "after")
_CANCELLED = "Cancelled: no output was written."


def _cores(block: Block) -> tuple[int, int, int, int]:
    return block.rows.core_start, block.rows.core_stop, block.cols.core_start, block.cols.core_stop


class _ChangeRun:
    """One run of :func:`run_change_job`: the writers, the blocks in flight, the tally (see there)."""

    def __init__(self, params: ChangeParams, grid: Grid, crs_wkt: str, client: SegmentClient,
                 row_areas: np.ndarray, progress: Callable[[float], None], retry: RetryPolicy,
                 log: Callable[[str], None], window: tuple[int, int]) -> None:
        if len(row_areas) != grid.height:
            raise ValueError(f"{len(row_areas)} row areas for a grid of {grid.height} rows")
        self.params, self.grid, self.crs_wkt, self.client, self.row_areas = params, grid, crs_wkt, client, row_areas
        self.retry, self.log = retry, log
        self.names = [class_name(line) for line in params.classes]
        self.colours = class_colours(list(params.classes), params.background_index)
        self.background = params.background_index if params.background_index is not None else 0
        self.threshold = params.threshold if params.background_index is not None else 0.0
        outputs = params.outputs
        self.staged = StagedFiles(outputs.overwrite, protected=outputs.change.inputs)
        self.tally = TransitionTally(len(self.names))
        self.blocks = plan_grid_blocks(grid, params.block_size, *window)
        self.shown = BlockProgress(2 * len(self.blocks), progress)
        self.retried: list[str] = []
        self.warnings: list[str] = []
        self.valid_counts = {"before": 0, "after": 0}
        self.answers: dict[int, dict[str, Any]] = {}
        self.writers: list[Any] = []
        self.date_writers: dict[str, LabelWriter] = {}
        self.change_out: Optional[ChangeWriter] = None
        self.confidence_out: Optional[ConfidenceWriter] = None
        self.failed_writing = _writing(outputs.change.labels.parent)

    def log_retry(self, message: str) -> None:
        self.retried.append(message)
        self.log(message)

    def open_writers(self) -> None:
        """The run's disk work before writing (:func:`~.staging.prepare_targets`), then the staged GeoTIFFs."""
        outputs, staged = self.params.outputs, self.staged
        for plan in outputs.rasters:
            self.warnings += prepare_targets(plan)
        for path in outputs.files:
            self.warnings += recover_leftovers(path)
        try:
            self.change_out = ChangeWriter(staged.stage(outputs.change.labels), self.grid, self.crs_wkt, self.names)
            self.writers.append(self.change_out)
            for date, dated in (("before", outputs.before), ("after", outputs.after)):
                if dated is not None:
                    self.date_writers[date] = LabelWriter(staged.stage(dated.labels), self.grid, self.crs_wkt,
                                                          self.names, self.colours)
                    self.writers.append(self.date_writers[date])
            if outputs.confidence is not None:
                self.confidence_out = ConfidenceWriter(staged.stage(outputs.confidence), self.grid, self.crs_wkt)
                self.writers.append(self.confidence_out)
        except GdalError as error:
            raise self.failed_writing(error) from None

    def segment(self, number: int, date: str, rgb: np.ndarray, valid: np.ndarray, stopping: Callable[[], bool]) -> Any:
        """One date of block ``number`` through the backend (on a worker thread), sent again after passing failures."""
        params = self.params
        key = 2 * number + _DATES.index(date)
        return with_retries(lambda: self.client.segment(
            rgb, params.classes, prob_threshold=self.threshold, background_index=self.background,
            bias_lambda=params.bias_lambda, valid=valid, probabilities=True, progress=self.shown.within(key),
            cancelled=stopping), f"Block {number + 1} of {len(self.blocks)} ({date})", self.retry, stopping,
            self.log_retry)

    def write(self, block: Block, pair: Optional[dict[str, Any]]) -> None:
        """A block's decision into the outputs (``pair`` None: nothing valid there, the backend was not asked)."""
        assert self.change_out is not None  # opened before any block is written
        row0, row1, col0, col1 = _cores(block)
        core = block.core_in_block()
        shape = (row1 - row0, col1 - col0)
        if pair is not None:
            labels = {date: pair[date].labels[core] for date in _DATES}
            probabilities = {date: pair[date].probabilities[(slice(None), *core)].astype(np.float32)
                             for date in _DATES}
            decided = decide_change(probabilities["before"], probabilities["after"], labels["before"],
                                    labels["after"], self.params.rule)
            codes, confidence = decided.codes, decided.confidence
        else:
            empty = np.full(shape, NODATA_LABEL, np.uint8)
            labels = {"before": empty, "after": empty}
            codes = np.full(shape, NODATA_CHANGE, np.uint16)
            confidence = np.full(shape, np.nan, np.float32)
        self.tally.add(labels["before"], labels["after"], codes, self.row_areas[row0:row1])
        try:
            self.change_out.write(codes, row0, col0)
            for date, writer in self.date_writers.items():
                writer.write(labels[date], row0, col0)
            if self.confidence_out is not None:
                self.confidence_out.write(confidence, row0, col0)
        except GdalError as error:
            raise self.failed_writing(error) from None

    def collect(self, tag: tuple[int, Block, str], answer: Any) -> None:
        """One date's answer; a block is written once both dates have answered."""
        number, block, date = tag
        self.shown.block_done(2 * number + _DATES.index(date))
        pair = self.answers.setdefault(number, {})
        pair[date] = answer
        if len(pair) == 2:
            del self.answers[number]
            self.write(block, pair)

    def run_blocks(self, before: PixelSource, after: PixelSource, concurrency: int,
                   cancelled: Callable[[], bool]) -> None:
        """Every block read from both dates, sent (up to ``concurrency`` requests at once) and written."""
        flight: BlocksInFlight[tuple[int, Block, str]] = BlocksInFlight(concurrency, cancelled)
        try:
            with_retries(lambda: self.client.embed_classes(list(self.params.classes)), "Class embedding",
                         self.retry, cancelled, self.log_retry)
            for number, block in enumerate(self.blocks):
                if cancelled():
                    raise JobCancelledError(_CANCELLED)
                window = ((block.rows.start, block.rows.stop), (block.cols.start, block.cols.stop))
                rgb_before, valid_before = before.read(*window)
                rgb_after, valid_after = after.read(*window)
                core = block.core_in_block()
                self.valid_counts["before"] += int(valid_before[core].sum())
                self.valid_counts["after"] += int(valid_after[core].sum())
                valid = valid_before & valid_after  # nodata on either date is nodata on both
                if not valid[core].any():
                    self.shown.block_done(2 * number)
                    self.shown.block_done(2 * number + 1)
                    self.write(block, None)
                    continue
                for date, rgb in (("before", rgb_before), ("after", rgb_after)):
                    rgb[~valid] = 0
                    for finished, answer in flight.room():  # at most `concurrency` requests wait for answers
                        self.collect(finished, answer)
                    flight.submit((number, block, date), functools.partial(self.segment, number, date, rgb, valid))
                del rgb_before, rgb_after
            for finished, answer in flight.drain():
                self.collect(finished, answer)
        except BackendError as error:
            if error.code == "cancelled" and cancelled():
                raise JobCancelledError(_CANCELLED) from None
            raise
        finally:
            flight.close()

    def close_and_sieve(self, cancelled: Callable[[], bool]) -> int:
        """Close the GeoTIFFs, refuse an empty comparison, apply the minimum mapping unit and name the codes.

        Returns the pixels the minimum mapping unit made uncertain.
        """
        assert self.change_out is not None
        _check_coverage(self.valid_counts, self.tally)
        try:
            for writer in self.writers:
                writer.close()
        except GdalError as error:
            raise self.failed_writing(error) from None
        sieved = 0
        try:
            if self.params.min_pixels > 1:
                scratch = self.staged.stage(self.params.outputs.change.labels, ".sieve.tif")  # locked, then dropped
                try:
                    sieved = sieve_changes(self.change_out.path, scratch, self.grid, self.params.min_pixels,
                                           self.row_areas, self.tally, cancelled)
                finally:
                    self.staged.drop(scratch)
            name_codes(self.change_out.path, self.tally.present_codes(), self.names)
        except InterruptedError:
            raise JobCancelledError(_CANCELLED) from None
        except GdalError as error:
            raise self.failed_writing(error) from None
        return sieved

    def stage_companions(self, make_style: Optional[StyleMaker], make_change_style: Optional[ChangeStyleMaker],
                         legend: list[LegendEntry]) -> Optional[Path]:
        """GDAL's side files, the styles and the report, staged beside their GeoTIFFs. Returns the change style."""
        assert self.change_out is not None
        outputs, staged = self.params.outputs, self.staged
        for writer in self.writers:  # GDAL's side files (category names) travel with their GeoTIFF
            sidecar, target = aux_path(writer.path), staged.target_of(writer.path)
            if sidecar.exists():
                staged.attach(sidecar, aux_path(target))
            else:
                staged.replace_stale(aux_path(target))
        for plan in outputs.rasters:
            for side in plan.stale:
                staged.replace_stale(side)
        self.warnings += outputs.warnings
        change_style = None
        if outputs.change.style is not None and make_change_style is not None:
            path = self.change_out.path
            if self._stage_style(outputs.change.style, lambda: make_change_style(path, legend)):
                change_style = outputs.change.style
        for date, writer in self.date_writers.items():
            dated = outputs.before if date == "before" else outputs.after
            if dated is not None and dated.style is not None and make_style is not None:
                self._stage_style(dated.style, functools.partial(make_style, writer.path, self.names, self.colours))
        if outputs.report is not None:
            html = change_html(self.tally, self.names, self.params.rule, "Change between two dates",
                               self.params.report_details)
            staged.write(outputs.report, html.encode("utf-8"), ".html")
        return change_style

    def _stage_style(self, style: Path, make: Callable[[], str]) -> bool:
        """Stage the ``.qml`` ``style`` made by ``make()``; a style QGIS cannot make is a warning, not an error."""
        try:
            text = make()
        except OSError as error:
            self.warnings.append(f"The style {style.name} could not be made ({error}); the result is styled in this "
                                 "project only.")
            self.staged.replace_stale(style)  # an older result's style would name the wrong classes
            return False
        self.staged.write(style, text.encode("utf-8"), ".qml")  # written whole: a full disk fails the job here
        return True

    def abort(self) -> None:
        for writer in self.writers:
            writer.discard()
        self.staged.abort()


def run_change_job(params: ChangeParams, grid: Grid, crs_wkt: str, before: PixelSource, after: PixelSource,
                   client: SegmentClient, row_areas: np.ndarray, progress: Callable[[float], None] = lambda p: None,
                   cancelled: Callable[[], bool] = lambda: False, make_style: Optional[StyleMaker] = None,
                   make_change_style: Optional[ChangeStyleMaker] = None, concurrency: int = 1,
                   log: Callable[[str], None] = lambda message: None, retry: RetryPolicy = DEFAULT_RETRY,
                   before_commit: Optional[BeforeCommit] = None,
                   window: tuple[int, int] = (CROP, STRIDE)) -> ChangeResult:
    """Compare ``before`` and ``after`` (both read on ``grid``) block by block through ``client``.

    Args:
        row_areas: ``grid.height`` float64, the area in m² of one pixel of each row.
        make_style: a class raster's ``.qml`` text (the per-date rasters).
        make_change_style: the change raster's ``.qml`` text.
        concurrency: requests in flight at most (each block is two requests, one per date).
        before_commit: called once everything is written and staged, just before it moves into place.
        window: the backend's sliding window ``(size, stride)``.

    Raises:
        JobCancelledError: ``cancelled()`` became true (nothing written).
        InputError: a date has no valid pixel over the area, or the two have none in common (nothing written).
        BackendError, OutputError, LayerError: the failure (nothing written).
    """
    start = time.monotonic()
    outputs = params.outputs
    run = _ChangeRun(params, grid, crs_wkt, client, row_areas, progress, retry, log, window)
    try:
        run.open_writers()
        run.run_blocks(before, after, concurrency, cancelled)
        if cancelled():
            raise JobCancelledError(_CANCELLED)
        sieved = run.close_and_sieve(cancelled)
        legend = change_legend(params.classes, run.tally.present_codes())
        change_style = run.stage_companions(make_style, make_change_style, legend)
        result = ChangeResult(
            outputs.change.labels, outputs.before.labels if outputs.before else None,
            outputs.after.labels if outputs.after else None, outputs.report, outputs.confidence, change_style,
            run.names, run.colours, legend, run.tally, params.rule, 0.0, grid.width * grid.height, len(run.blocks),
            sieved, tuple(run.warnings), concurrency, tuple(run.retried))
        if before_commit is not None:
            before_commit(result, run.staged)
        result.written = tuple(run.staged.commit())
    except BaseException:
        run.abort()
        raise
    result.seconds = time.monotonic() - start
    return result


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


def execute_change(plan: Any, params: ChangeParams, client: SegmentClient,
                   progress: Callable[[float], None] = lambda p: None, cancelled: Callable[[], bool] = lambda: False,
                   make_style: Optional[StyleMaker] = None, make_change_style: Optional[ChangeStyleMaker] = None,
                   log: Callable[[str], None] = lambda message: None,
                   before_commit: Optional[BeforeCommit] = None) -> ChangeResult:
    """:func:`run_change_job` on a :class:`~segearth_qgis.job.change_source.ChangeSourcePlan`, opening and closing
    its sources here (on the job's thread), with the backend's window and as many requests in flight as
    :func:`~segearth_qgis.job.inflight.choose_concurrency` says."""
    window, health = job_window(client)
    concurrency = choose_concurrency(client, health=health)
    before, after = plan.open()
    try:
        return run_change_job(params, plan.grid, plan.crs_wkt, before, after, client, plan.row_areas, progress,
                              cancelled, make_style, make_change_style, concurrency, log, before_commit=before_commit,
                              window=window)
    finally:
        before.close()
        after.close()
