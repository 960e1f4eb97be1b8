"""What ``segearth:change`` and ``segearth:change_vector`` share: their parameters, the plan, the run of the change
engine (:mod:`segearth_qgis.job.change_engine`) with its log, and the styling of what Processing loads."""

from __future__ import annotations

from typing import Any, Optional

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterBand,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsRasterLayer,
)

from .. import settings
from ..client.backend_manager import shared_manager
from ..core.change import DEFAULT_CONFIDENCE, DEFAULT_MARGIN, format_area
from ..core.change_legend import LegendEntry
from ..core.classes import PRESETS
from ..errors import BackendError, OutputError
from ..job.change_engine import BeforeCommit, ChangeResult, execute_change
from ..job.change_request import ChangeInputs, ChangePlan, plan_change
from ..job.vector_outputs import DataInput
from ..map.change_style import change_style_text, change_vector_renderer, style_change_layer
from ..map.styling import class_style_text
from ..qgis_compat import DOUBLE_NUMBER
from .job_feedback import job_errors, report_run
from .post_processing import ResultPostProcessor
from .run_outputs import layer_inputs
from .segment import _SegmentBase

HELP_CHANGE = (
    "Open-vocabulary change detection between two dates with SegEarth-OV: both rasters are segmented into the "
    "classes you type, on one processing grid (the before raster's; the after raster is reprojected and "
    "resampled onto it on the fly: bilinearly with GDAL for files, by QGIS for other layers; pixels that are "
    "the before grid shifted by whole pixels are copied as they are), with the same windows and the same "
    "nodata mask, so unchanged ground gives exactly the same probabilities on both dates.\n\n"
    "A pixel changes from class a to class b only when both dates are confident (the top probability is at "
    f"least the change confidence, default {DEFAULT_CONFIDENCE:g}, on each date, and is the label's own) and "
    f"b's probability grew by at least the change margin (default {DEFAULT_MARGIN:g}); a pixel whose label "
    "differs without passing that is uncertain. Change patches smaller than the minimum change patch area "
    "(m², 0: none) become uncertain too (GDAL's sieve, 4-connected).\n\n"
    "Each date has its own bands (one, or R, G, B; default: the layer's renderer bands), nodata and stretch: "
    "they may come from different sensors. Nodata on either date is nodata in the result. Extent, mask and "
    "resolution work as in Segment raster, on the before raster.\n\n"
    "Classes, threshold, background and lambda: as in Segment raster. Running again with other classes or "
    "thresholds reuses the backend's per-window image work for both dates (a fraction of the first run).")


#: The re-query cache size suggested in the log: what this job's images took, and this much more.
CACHE_HEADROOM = 1.1


class _ChangeBase(_SegmentBase):
    BEFORE, AFTER, BEFORE_BANDS, AFTER_BANDS = "BEFORE", "AFTER", "BEFORE_BANDS", "AFTER_BANDS"
    CONFIDENCE, MARGIN, MIN_PATCH = "CONFIDENCE", "MARGIN", "MIN_PATCH"

    def add_change_parameters(self) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer(self.BEFORE, "Before (earlier date) raster"))
        self.addParameter(QgsProcessingParameterRasterLayer(self.AFTER, "After (later date) raster"))
        self.addParameter(QgsProcessingParameterString(
            self.CLASSES, "Classes (one per line, synonyms separated by commas)", multiLine=True,
            defaultValue="\n".join(PRESETS[0].classes),
            optional=True))  # "optional" to QGIS only: checkParameterValues refuses no classes with our words
        for name, parent, label in ((self.BEFORE_BANDS, self.BEFORE, "Before bands (one, or R, G, B)"),
                                    (self.AFTER_BANDS, self.AFTER, "After bands (one, or R, G, B)")):
            self.addParameter(QgsProcessingParameterBand(name, label, None, parent, optional=True,
                                                         allowMultiple=True))
        self.add_area_and_decision_parameters("map units of the before raster per pixel")
        self.addParameter(QgsProcessingParameterNumber(
            self.CONFIDENCE, "Change confidence (top probability needed on both dates)",
            DOUBLE_NUMBER, DEFAULT_CONFIDENCE, minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.MARGIN, "Change margin (probability the after class must gain)", DOUBLE_NUMBER,
            DEFAULT_MARGIN, minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.MIN_PATCH, "Minimum change patch area (m²; smaller patches become uncertain; 0: none)",
            DOUBLE_NUMBER, 0.0, minValue=0.0))

    def data_inputs(self, parameters: dict[str, Any], context: QgsProcessingContext) -> list[DataInput]:
        """What the run reads (both rasters' files, the mask's layer): no output may be one of them."""
        inputs = [*layer_inputs(self.parameterAsRasterLayer(parameters, self.BEFORE, context)),
                  *layer_inputs(self.parameterAsRasterLayer(parameters, self.AFTER, context))]
        if parameters.get(self.MASK):
            inputs += layer_inputs(self.parameterAsVectorLayer(parameters, self.MASK, context))
        return inputs

    def layer(self, parameters: dict[str, Any], name: str, context: QgsProcessingContext) -> QgsRasterLayer:
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            raise QgsProcessingException(f"{name} is not a raster layer QGIS can open.")
        return layer

    def plan(self, parameters: dict[str, Any], context: QgsProcessingContext, output: str, before_output: str = "",
             after_output: str = "", report: str = "", confidence: str = "") -> ChangePlan:
        before, after = self.layer(parameters, self.BEFORE, context), self.layer(parameters, self.AFTER, context)
        aoi, clip, resolution, other_inputs = self.area(parameters, context, before)
        inputs = ChangeInputs(
            before, after, self.parameterAsString(parameters, self.CLASSES, context),
            tuple(self.parameterAsInts(parameters, self.BEFORE_BANDS, context)),
            tuple(self.parameterAsInts(parameters, self.AFTER_BANDS, context)), aoi, resolution, clip,
            threshold=self.parameterAsDouble(parameters, self.THRESHOLD, context),
            background_index=self.background_index(parameters, context),
            bias_lambda=self.parameterAsDouble(parameters, self.BIAS_LAMBDA, context),
            confidence=self.parameterAsDouble(parameters, self.CONFIDENCE, context),
            margin=self.parameterAsDouble(parameters, self.MARGIN, context),
            min_area=self.parameterAsDouble(parameters, self.MIN_PATCH, context), output=output,
            before_output=before_output or False, after_output=after_output or False, report=report,
            confidence_output=confidence, overwrite=True, block_size=settings.load("block_size"),
            other_inputs=other_inputs, transform_context=context.transformContext(), ellipsoid=context.ellipsoid())
        try:
            return plan_change(inputs)
        except (ValueError, OutputError, OSError) as error:
            raise QgsProcessingException(str(error)) from None

    def run_change(self, planned: ChangePlan, feedback: QgsProcessingFeedback, progress_scale: float = 1.0,
                   styles: bool = True, before_commit: Optional[BeforeCommit] = None) -> ChangeResult:
        """Run the change engine; every failure is a QgsProcessingException."""
        prepared = planned.source
        feedback.pushInfo(f"Comparing {prepared.grid.width} x {prepared.grid.height} px of "
                          f"'{prepared.before.layer_name}' (before) and '{prepared.after_name}' (after) in "
                          f"{len(planned.params.classes)} classes; after resampled: {prepared.after.resampling}")
        with job_errors(feedback):
            client = shared_manager().client(cancelled=feedback.isCanceled)
            result = execute_change(prepared, planned.params, client,
                                    progress=lambda p: feedback.setProgress(p * progress_scale),
                                    cancelled=feedback.isCanceled,
                                    make_style=class_style_text if styles else None,
                                    make_change_style=change_style_text if styles else None,
                                    log=feedback.pushWarning, before_commit=before_commit)
        report_run(feedback, result, "block(s) of two dates", "requests at once")
        tally = result.tally
        changed, uncertain = format_area(float(tally.changed.sum())), format_area(float(tally.uncertain.sum()))
        feedback.pushInfo(f"Compared {format_area(float(tally.crosstab.sum()))} ({tally.valid_pixels} px; "
                          f"{tally.nodata_pixels} px nodata on either date): changed {changed}, uncertain {uncertain}"
                          + (f" ({result.sieved_pixels} px of patches under the minimum area)" if result.sieved_pixels
                             else ""))
        feedback.pushInfo(f"Change: {result.summary}")
        hint = cache_hint(client, result.blocks)
        if hint:
            feedback.pushInfo(hint)
        return result


def cache_hint(client: Any, blocks: int) -> str:
    """A line for the log when the backend's re-query cache could not keep both dates' upsampler work (a re-query
    then recomputes it): how much to give it. Empty when it could, or when the backend does not say (Ray)."""
    try:
        cache = client.health().get("feature_cache")
    except BackendError:
        return ""
    if not isinstance(cache, dict) or not cache.get("images") or not cache.get("capacity_mb"):
        return ""
    kept, needed = int(cache["images"]), 2 * blocks
    if kept >= needed:
        return ""
    per_image = float(cache.get("used_mb", 0.0)) / kept
    return (f"The backend's re-query cache ({cache['capacity_mb']:.0f} MB) keeps the upsampler's work of {kept} of "
            f"this job's {needed} images (two per block): a re-query with other classes or thresholds reuses every "
            f"window but recomputes the rest. For fast re-queries of this area give it about "
            f"{per_image * needed * CACHE_HEADROOM:.0f} MB (SEGEARTH_FEATURE_CACHE_MB).")


class ChangePostProcessor(ResultPostProcessor):
    """Styles a change output when Processing loads it: the change palette (raster) or transitions (polygons)."""

    def __init__(self, result: ChangeResult, generic_name: str, background_index: Optional[int]) -> None:
        super().__init__(result.names, result.colours, generic_name, background_index)
        self.legend: list[LegendEntry] = list(result.legend)

    def postProcessLayer(self, layer: Any, context: QgsProcessingContext,  # noqa: N802 - QGIS's name
                         feedback: Optional[QgsProcessingFeedback]) -> None:
        super().postProcessLayer(layer, context, feedback)  # the name; the class style is replaced below
        if isinstance(layer, QgsRasterLayer):
            style_change_layer(layer, self.legend)
        elif layer is not None and hasattr(layer, "setRenderer"):
            layer.setRenderer(change_vector_renderer(self.legend))
            layer.triggerRepaint()


