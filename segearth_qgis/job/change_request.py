"""What a user chose for a change between two dates, checked once, here (Processing and the dock).

Front ends fill a :class:`ChangeInputs` and call :func:`plan_change`: the classes and numbers are checked
as for a single date (:mod:`.request`), the rule by :class:`~segearth_qgis.core.change.ChangeRule`,
both rasters by :func:`~segearth_qgis.job.change_source.plan_change_source` and every output against the inputs
and against each other.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from qgis.core import QgsCoordinateTransformContext, QgsRasterLayer

from ..core.change import DEFAULT_CONFIDENCE, DEFAULT_MARGIN, ChangeRule
from ..core.classes import check_class_lines, class_lines
from ..core.grid import Rect
from ..core.request_rules import DEFAULT_BIAS_LAMBDA
from ..errors import InputError, OutputError
from .aoi import AreaOfInterest
from .change_params import ChangeOutputs, ChangeParams
from .change_source import ChangeSourcePlan, plan_change_source
from .layer_input import layer_files
from .outputs import OutputPlan, normalise_output, plan_outputs, style_path
from .request import JobInputs, _check_numbers, default_output_path


@dataclass(frozen=True)
class ChangeInputs:
    """What was asked for, as typed (not yet checked).

    Attributes:
        before, after: the two raster layers (any providers, any CRSs).
        classes: the class text (one class per line, synonyms separated by commas), for both dates.
        before_bands, after_bands: each date's bands (none: the layer's; one: repeated; three: R, G, B).
        aoi, resolution, clip: the area and resolution, on the before raster (as for a single date).
        threshold, background_index, bias_lambda: each date's segmentation (as for a single date).
        confidence, margin: the change rule.
        min_area: change patches smaller than this (m²) become uncertain (0: keep all).
        output: the change GeoTIFF ('': a new file in ``output_folder``).
        before_output, after_output: each date's class GeoTIFF: False (none), True (beside the change
            raster, ``<stem>_before.tif``) or a path.
        report: the HTML report's path, or ''.
        confidence_output: a float32 GeoTIFF of each pixel's confidence, or '' (for polygons).
        overwrite: replace existing outputs.
        block_size: pixels per block side.
        other_inputs: further files the job reads (a mask layer's file), never to be written.
        transform_context, ellipsoid: the project's (areas are measured on the ellipsoid).
    """

    before: Optional[QgsRasterLayer]
    after: Optional[QgsRasterLayer]
    classes: str
    before_bands: tuple[int, ...] = ()
    after_bands: tuple[int, ...] = ()
    aoi: AreaOfInterest = field(default_factory=AreaOfInterest)
    resolution: Optional[float] = None
    clip: Optional[Rect] = None
    threshold: float = 0.0
    background_index: Optional[int] = 0
    bias_lambda: float = DEFAULT_BIAS_LAMBDA
    confidence: float = DEFAULT_CONFIDENCE
    margin: float = DEFAULT_MARGIN
    min_area: float = 0.0
    output: str = ""
    output_folder: str = ""
    before_output: Union[bool, str] = False
    after_output: Union[bool, str] = False
    report: str = ""
    confidence_output: str = ""
    overwrite: bool = False
    block_size: int = 1024
    other_inputs: tuple[str, ...] = ()
    transform_context: Optional[QgsCoordinateTransformContext] = None
    ellipsoid: str = ""


@dataclass(frozen=True)
class ChangePlan:
    """A change job ready to run: where to read (``source``) and what to do and write (``params``)."""

    source: ChangeSourcePlan
    params: ChangeParams


def _beside(change: Path, choice: Union[bool, str], suffix: str) -> Optional[Path]:
    if isinstance(choice, str) and choice.strip():
        return normalise_output(choice)
    if choice is True:
        return change.with_name(f"{change.stem}_{suffix}.tif")
    return None


def _check_report(path: str, inputs: list[str], overwrite: bool) -> Path:
    """The HTML report's checked path."""
    target = Path(os.path.abspath(Path(path.strip()).expanduser()))
    if target.suffix.lower() not in (".html", ".htm"):
        target = target.with_name(target.name + ".html")
    for source in inputs:
        if source and os.path.exists(source) and os.path.exists(target) and os.path.samefile(source, target):
            raise OutputError(f"The report {target} would overwrite the input {source}: choose another file name.")
    if target.exists() and not overwrite:
        raise OutputError(f"{target} already exists: choose another file name, or confirm overwriting it.")
    if target.exists() and not target.is_file():
        raise OutputError(f"{target} is a folder, not a file: choose a file name inside it.")
    if not target.parent.is_dir():
        raise OutputError(f"The folder {target.parent} does not exist: create it or choose another folder.")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise OutputError(f"The folder {target.parent} is not writable (permission denied): choose another folder.")
    return target


def _check_distinct(plans: list[OutputPlan], others: list[Path]) -> None:
    """No two outputs (or their styles) may be the same file."""
    seen: dict[str, Path] = {}
    for path in [p for plan in plans for p in (plan.labels, style_path(plan.labels))] + others:
        key = os.path.normcase(os.path.realpath(path))
        if key in seen:
            raise OutputError(f"Two outputs would be written to {path}: give each output its own file name.")
        seen[key] = path


def plan_change(inputs: ChangeInputs) -> ChangePlan:
    """Check everything and build the change job; cheap except for 16-bit layers' stretch statistics.

    Raises:
        InputError (a ValueError: LayerError, AoiError, GridError, ClassesError) or OutputError, with a
        message for the user.
    """
    lines = class_lines(inputs.classes)
    check_class_lines(lines)
    _check_numbers(JobInputs(None, inputs.classes, threshold=inputs.threshold,
                             background_index=inputs.background_index, bias_lambda=inputs.bias_lambda,
                             block_size=inputs.block_size), len(lines))
    rule = ChangeRule(inputs.confidence, inputs.margin)
    if not (math.isfinite(inputs.min_area) and inputs.min_area >= 0):
        raise InputError(f"The minimum change patch area must be 0 or more square metres, got {inputs.min_area}.")
    if inputs.before is None or inputs.after is None:
        raise InputError("Choose two raster layers: the before date and the after date.")
    prepared = plan_change_source(inputs.before, inputs.after, inputs.before_bands, inputs.after_bands, inputs.aoi,
                              inputs.resolution, inputs.clip, inputs.transform_context, inputs.ellipsoid)
    read = [*layer_files(inputs.before), *layer_files(inputs.after), *inputs.other_inputs]
    output = inputs.output.strip() or default_output_path(inputs.output_folder, f"{prepared.before.layer_name}_change")
    create = not inputs.output.strip()  # the default folder: the run creates it
    change = plan_outputs(output, None, read, inputs.overwrite, create_folder=create)
    plans = [change]
    dates: dict[str, Optional[OutputPlan]] = {}
    for date, choice in (("before", inputs.before_output), ("after", inputs.after_output)):
        path = _beside(change.labels, choice, date)
        dates[date] = plan_outputs(str(path), None, read, inputs.overwrite, create_folder=create) \
            if path is not None else None
        if dates[date] is not None:
            plans.append(dates[date])  # type: ignore[arg-type]
    report = _check_report(inputs.report, read, inputs.overwrite) if inputs.report.strip() else None
    confidence = plan_outputs(inputs.confidence_output, None, read, inputs.overwrite).labels \
        if inputs.confidence_output.strip() else None
    _check_distinct(plans, [p for p in (report, confidence) if p is not None])
    mean_area = float(prepared.row_areas.mean())
    min_pixels = math.ceil(inputs.min_area / mean_area - 1e-9) if inputs.min_area > 0 and mean_area > 0 else 0
    warnings = tuple(w for plan in plans for w in plan.warnings)
    outputs = ChangeOutputs(change, dates["before"], dates["after"], report, confidence, inputs.overwrite, warnings)
    details = (("Before", _describe(inputs.before)), ("After", _describe(inputs.after)),
               ("After resampled onto the before grid", prepared.after.resampling),
               ("Processing grid", f"{prepared.grid.width} x {prepared.grid.height} px of "
                                   f"{prepared.grid.pixel_width:g} x {prepared.grid.pixel_height:g} map units"),
               ("Classes", "; ".join(lines)),
               ("Minimum change patch", f"{inputs.min_area:g} m² ({min_pixels} px)" if min_pixels else "none"))
    params = ChangeParams(tuple(lines), outputs, rule, inputs.threshold, inputs.background_index,
                          inputs.bias_lambda, inputs.block_size, min_pixels, details)
    return ChangePlan(prepared, params)


def _describe(layer: QgsRasterLayer) -> str:
    return f"{layer.name()} ({layer.crs().authid() or 'custom CRS'}) {layer.source()}"
