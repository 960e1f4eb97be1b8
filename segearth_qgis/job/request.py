"""One place that turns what a user chose — in the dock or in Processing — into a checked job.

Both front ends fill a :class:`JobInputs` and call :func:`plan_job`; every
check (classes, background, numbers, outputs against inputs, the grid) lives
here, so the two can never disagree.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from qgis.core import QgsRasterLayer

from ..core.classes import check_class_lines, class_lines
from ..core.grid import Rect
from ..core.request_rules import BIAS_LAMBDA_RANGE, DEFAULT_BIAS_LAMBDA
from ..core.sar import SarSettings
from ..errors import ClassesError, InputError, LayerError
from .aoi import AreaOfInterest
from .engine import JobParams
from .layer_input import layer_files
from .outputs import OutputPlan, normalise_output, plan_outputs, raster_side_files
from .source_plan import SourcePlan, plan_source


@dataclass(frozen=True)
class JobInputs:
    """What was asked for, as typed (not yet checked).

    Attributes:
        layer: the raster layer.
        classes: the class text (one class per line, synonyms separated by commas).
        bands: band numbers (none: the layer's; one: repeated; three: R, G, B).
        aoi: the area of interest (whole layer by default).
        resolution: processing resolution in the raster's map units per pixel (None: native).
        clip: a further limit in the raster's CRS (Processing's EXTENT), or None.
        threshold: pixels whose top probability is below it get the background class.
        background_index: the background class's line (0-based), or None for no background class.
        bias_lambda: weight of the global-bias subtraction.
        output: the class GeoTIFF ('' : a new file in ``output_folder``).
        output_folder: where unnamed outputs go.
        probabilities: also write class probabilities: False, True (beside the output) or a path.
        overwrite: replace existing outputs.
        block_size: pixels per block side sent to the backend.
        other_inputs: further files the job reads (a mask layer's file), never to be written.
        sar: SAR input preparation for the first band (:mod:`..core.sar`), or None for optical bands.
    """

    layer: Optional[QgsRasterLayer]
    classes: str
    bands: tuple[int, ...] = ()
    aoi: AreaOfInterest = field(default_factory=AreaOfInterest)
    resolution: Optional[float] = None
    clip: Optional[Rect] = None
    threshold: float = 0.0
    background_index: Optional[int] = 0
    bias_lambda: float = DEFAULT_BIAS_LAMBDA
    output: str = ""
    output_folder: str = ""
    probabilities: Union[bool, str] = False
    overwrite: bool = False
    block_size: int = 1024
    other_inputs: tuple[str, ...] = ()
    sar: Optional[SarSettings] = None


@dataclass(frozen=True)
class JobPlan:
    """A checked job, ready to run: where to read (``source``) and what to do and write (``params``)."""

    source: SourcePlan
    params: JobParams

    @property
    def outputs(self) -> OutputPlan:
        return self.params.outputs


def default_output_path(folder: str, stem: str, probabilities: bool = False) -> str:
    """A fresh file name in ``folder``: ``<stem>_segearth.tif``, then ``<stem>_segearth_2.tif``..., free together
    with its style, side files and (``probabilities``) its ``_probabilities.tif``. Nothing is created: a missing
    folder is made by the run (:func:`~segearth_qgis.job.staging.prepare_targets`)."""
    if not folder:
        raise InputError("No output file and no default output folder: choose an output file, or set the default "
                         "folder in the panel's options.")
    base = Path(folder).expanduser()
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) or "layer"
    for number in range(1, 100000):
        candidate = base / (f"{safe}_segearth_{number}.tif" if number > 1 else f"{safe}_segearth.tif")
        taken = [candidate, candidate.with_suffix(".qml"), *raster_side_files(candidate)]
        if probabilities:
            taken.append(Path(probabilities_beside(str(candidate))))
        if not any(os.path.lexists(path) for path in taken):
            return str(candidate)
    raise InputError(f"No free output name in {base}: choose an output file.")


def probabilities_beside(labels: str) -> str:
    """``<labels without suffix>_probabilities.tif``."""
    path = normalise_output(labels)
    return str(path.with_name(path.stem + "_probabilities.tif"))


def _check_numbers(inputs: JobInputs, classes: int) -> None:
    if not (isinstance(inputs.threshold, (int, float)) and 0.0 <= inputs.threshold <= 1.0):
        raise InputError(f"The probability threshold must be between 0 and 1, got {inputs.threshold}.")
    low, high = BIAS_LAMBDA_RANGE
    if not (math.isfinite(inputs.bias_lambda) and low <= inputs.bias_lambda <= high):
        raise InputError(f"The global-bias lambda must be between {low:g} and {high:g} (the paper uses "
                         f"{DEFAULT_BIAS_LAMBDA:g}), got "
                         f"{inputs.bias_lambda}.")
    index = inputs.background_index
    if index is not None and not 0 <= index < classes:
        raise ClassesError(f"The background class is line {index + 1}, but there are only {classes} classes: pick "
                           "one of them as the background, or none.")
    if inputs.block_size < 1:
        raise InputError(f"The block size must be positive, got {inputs.block_size}.")


def refuse_inputs_as_outputs(inputs: JobInputs) -> None:
    """Only the output checks that no answer to "Overwrite?" can change (an output that is one of the files
    the job reads, a folder in place of a file): run before asking, so such a job is refused at once.

    Raises:
        OutputError: with the reason and what to do.
    """
    if inputs.layer is None or not inputs.layer.isValid() or not inputs.output.strip():
        return
    plan_outputs(inputs.output, _probabilities_path(inputs, inputs.output),
                 [*layer_files(inputs.layer), *inputs.other_inputs], overwrite=True)


def _probabilities_path(inputs: JobInputs, output: str) -> Optional[str]:
    """Where the probabilities go: the path given, beside ``output`` (True), or None."""
    if isinstance(inputs.probabilities, str) and inputs.probabilities.strip():
        return inputs.probabilities
    return probabilities_beside(output) if inputs.probabilities is True else None


def plan_job(inputs: JobInputs) -> JobPlan:
    """Check everything and build the job; cheap except for a 16-bit layer's stretch statistics.

    Raises:
        InputError (a ValueError: LayerError, AoiError, GridError, ClassesError) or
        OutputError, with a message for the user.
    """
    if inputs.layer is None or not inputs.layer.isValid():
        raise LayerError("Choose a valid raster layer to segment.")
    lines = class_lines(inputs.classes)
    check_class_lines(lines)
    _check_numbers(inputs, len(lines))
    source = plan_source(inputs.layer, inputs.bands, inputs.aoi, inputs.resolution, inputs.clip, inputs.sar)
    output = inputs.output.strip() or default_output_path(inputs.output_folder, source.layer_name,
                                                          inputs.probabilities is True)
    outputs = plan_outputs(output, _probabilities_path(inputs, output),
                           [*layer_files(inputs.layer), *inputs.other_inputs], inputs.overwrite,
                           create_folder=not inputs.output.strip())
    params = JobParams(tuple(lines), outputs, inputs.threshold, inputs.background_index, inputs.bias_lambda,
                       inputs.block_size)
    return JobPlan(source, params)
