"""What a change job compares and writes, and what it found (no QGIS).

Built by :func:`~segearth_qgis.job.change_request.plan_change`, run by
:func:`~segearth_qgis.job.change_engine.run_change_job`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..core.change import DEFAULT_MIN_PIXELS, ChangeRule, TransitionTally, change_summary
from ..core.change_legend import LegendEntry
from ..core.request_rules import DEFAULT_BIAS_LAMBDA
from .outputs import OutputPlan


@dataclass(frozen=True)
class ChangeOutputs:
    """The files a change job writes, checked (built by :func:`~segearth_qgis.job.change_request.plan_change`).

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

    @property
    def files(self) -> list[Path]:
        """The outputs that are not rasters with a plan of their own (the report, the confidence raster)."""
        return [path for path in (self.report, self.confidence) if path is not None]


@dataclass(frozen=True)
class ChangeParams:
    """What to compare and where to write it, checked.

    Attributes:
        classes: class lines, synonyms separated by commas (one list for both dates).
        outputs: the checked output files.
        rule: when different labels count as change.
        threshold, background_index, bias_lambda: each date's segmentation, as for a single date
            (:class:`~segearth_qgis.job.engine.JobParams`).
        block_size: pixels per block side.
        min_pixels: change patches smaller than this become uncertain (0 or 1: none).
        report_details: ``(label, value)`` lines describing the inputs in the report.
    """

    classes: tuple[str, ...]
    outputs: ChangeOutputs
    rule: ChangeRule = field(default_factory=ChangeRule)
    threshold: float = 0.0
    background_index: Optional[int] = 0
    bias_lambda: float = DEFAULT_BIAS_LAMBDA
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
    #: Every file the job put in place, and nothing else.
    written: tuple[Path, ...] = ()

    @property
    def summary(self) -> str:
        """One line: the largest confident changes ("12.4 ha cropland → building; …")."""
        return change_summary(self.tally, self.names)


