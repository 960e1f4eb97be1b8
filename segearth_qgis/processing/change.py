"""``segearth:change`` and ``segearth:change_vector``: open-vocabulary change between two dates, as Processing
algorithms (the engine is :mod:`segearth_qgis.change_job`)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

from qgis.core import (
    QgsFeature,
    QgsField,
    QgsFields,
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBand,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsRasterLayer,
    QgsWkbTypes,
)

from .. import settings
from ..backend_manager import shared_manager
from ..change_job import ChangeResult, execute_change
from ..change_request import ChangeInputs, PlannedChange, plan_change
from ..change_style import change_vector_renderer, style_change_layer, write_change_style
from ..core.change import DEFAULT_CONFIDENCE, DEFAULT_MARGIN, HECTARE, format_area
from ..core.change_legend import LegendEntry
from ..core.change_report import class_rows
from ..core.classes import MAX_CLASSES, PRESETS
from ..errors import BackendError, JobCancelledError, OutputError
from ..layer_input import layer_files
from ..outputs import StagedFiles
from ..qt_compat import field_type
from ..styling import write_class_style
from .change_polygons import change_polygons
from .layer_output import FeatureOutput, check_destination
from .post_processing import ResultPostProcessor, attach
from .segment import NO_BACKGROUND, _failure, _SegmentBase
from .vector_style import planned_vector_style, write_vector_style

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
            defaultValue="\n".join(PRESETS[0].classes)))
        for name, parent, label in ((self.BEFORE_BANDS, self.BEFORE, "Before bands (one, or R, G, B)"),
                                    (self.AFTER_BANDS, self.AFTER, "After bands (one, or R, G, B)")):
            self.addParameter(QgsProcessingParameterBand(name, label, None, parent, optional=True,
                                                         allowMultiple=True))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Area of interest (extent)", optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.MASK, "Area of interest (polygons; outside becomes nodata)", [QgsProcessing.TypeVectorPolygon],
            optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.RESOLUTION, "Processing resolution (map units of the before raster per pixel; empty: native)",
            QgsProcessingParameterNumber.Double, optional=True, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.THRESHOLD, "Probability threshold", QgsProcessingParameterNumber.Double, PRESETS[0].threshold,
            minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.BACKGROUND, "Background class (line number from 0; -1: none)", QgsProcessingParameterNumber.Integer,
            PRESETS[0].background_index, minValue=NO_BACKGROUND, maxValue=MAX_CLASSES - 1))
        self.addParameter(QgsProcessingParameterNumber(
            self.BIAS_LAMBDA, "Global-bias lambda", QgsProcessingParameterNumber.Double, -0.3, minValue=-10.0,
            maxValue=10.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.CONFIDENCE, "Change confidence (top probability needed on both dates)",
            QgsProcessingParameterNumber.Double, DEFAULT_CONFIDENCE, minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.MARGIN, "Change margin (probability the after class must gain)", QgsProcessingParameterNumber.Double,
            DEFAULT_MARGIN, minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.MIN_PATCH, "Minimum change patch area (m²; smaller patches become uncertain; 0: none)",
            QgsProcessingParameterNumber.Double, 0.0, minValue=0.0))

    def layer(self, parameters: dict[str, Any], name: str, context: QgsProcessingContext) -> QgsRasterLayer:
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            raise QgsProcessingException(f"{name} is not a raster layer QGIS can open.")
        return layer

    def plan(self, parameters: dict[str, Any], context: QgsProcessingContext, output: str, before_output: str = "",
             after_output: str = "", report: str = "", confidence: str = "") -> PlannedChange:
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

    def run_change(self, planned: PlannedChange, feedback: QgsProcessingFeedback, progress_scale: float = 1.0,
                   styles: bool = True, before_commit: Any = None) -> ChangeResult:
        """Run the change engine; every failure is a QgsProcessingException."""
        prepared = planned.prepared
        feedback.pushInfo(f"Comparing {prepared.grid.width} x {prepared.grid.height} px of "
                          f"'{prepared.before.layer_name}' (before) and '{prepared.after_name}' (after) in "
                          f"{len(planned.params.classes)} classes; after resampled: {prepared.after.resampling}")
        try:
            client = shared_manager().client(cancelled=feedback.isCanceled)
            result = execute_change(prepared, planned.params, client,
                                    progress=lambda p: feedback.setProgress(p * progress_scale),
                                    cancelled=feedback.isCanceled,
                                    write_style=write_class_style if styles else None,
                                    write_change_style=write_change_style if styles else None,
                                    log=feedback.pushWarning, before_commit=before_commit)
        except JobCancelledError:
            raise QgsProcessingException("Cancelled: no output was written.") from None
        except BackendError as error:
            if error.code == "cancelled" or feedback.isCanceled():
                raise QgsProcessingException("Cancelled: no output was written.") from None
            raise _failure(shared_manager().explain(error), feedback) from None
        except (ValueError, OutputError, OSError) as error:
            raise QgsProcessingException(str(error)) from None
        for warning in result.warnings:
            feedback.reportError(warning, fatalError=False)
        at_once = f", up to {result.concurrency} requests at once" if result.concurrency > 1 else ""
        retried = f"; {len(result.retried)} request(s) sent again (see above)" if result.retried else ""
        feedback.pushInfo(f"{result.blocks} block(s) of two dates in {result.seconds:.1f} s{at_once}{retried}")
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


def _input_files(parameters: dict[str, Any], algorithm: _ChangeBase, context: QgsProcessingContext) -> list[str]:
    """The files the inputs read (no output may be one of them)."""
    files: list[str] = []
    for name in (algorithm.BEFORE, algorithm.AFTER):
        layer = algorithm.parameterAsRasterLayer(parameters, name, context)
        if layer is not None:
            files += layer_files(layer)
    if parameters.get(algorithm.MASK):
        mask = algorithm.parameterAsVectorLayer(parameters, algorithm.MASK, context)
        if mask is not None:
            files.append(mask.source().split("|")[0])
    return files


class _ChangePostProcessor(ResultPostProcessor):
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


def _matrix_fields(names: list[str]) -> QgsFields:
    fields = QgsFields()
    fields.append(QgsField("class_id", field_type("Int")))
    fields.append(QgsField("class_name", field_type("String")))
    for index in range(len(names)):
        fields.append(QgsField(f"to_{index}", field_type("Double")))
    for name in ("before_m2", "after_m2", "net_m2", "gained_m2", "lost_m2", "uncertain_m2"):
        fields.append(QgsField(name, field_type("Double")))
    return fields


class ChangeAlgorithm(_ChangeBase):
    OUTPUT, OUTPUT_BEFORE, OUTPUT_AFTER = "OUTPUT", "OUTPUT_BEFORE", "OUTPUT_AFTER"
    OUTPUT_MATRIX, OUTPUT_HTML = "OUTPUT_MATRIX", "OUTPUT_HTML"
    CHANGED_AREA, UNCERTAIN_AREA, COMPARED_AREA, SUMMARY = "CHANGED_AREA", "UNCERTAIN_AREA", "COMPARED_AREA", "SUMMARY"

    def name(self) -> str:
        return "change"

    def displayName(self) -> str:  # noqa: N802
        return "Change between two dates (open vocabulary)"

    def shortHelpString(self) -> str:  # noqa: N802
        return HELP_CHANGE + (
            "\n\nChange: a GeoTIFF of uint16 codes (0 no change, 1 uncertain, 2 + before x K + after for a "
            "transition between the K classes, 65535 nodata; the names in its metadata and category names) with a "
            ".qml beside it naming each transition present (tree → building), unchanged transparent, uncertain "
            "grey.\n\n"
            "Before / after segmentations: optional class GeoTIFFs of each date, styled like Segment raster's.\n\n"
            "Transition matrix: one row per class (before) with the area in m² that became each class (to_0, "
            "to_1, ...: labels of both dates, confident or not), the before and after areas, the net change, the "
            "confident gains and losses and the uncertain area. The HTML report holds the same, the confident "
            "transitions and the rule. Nothing is written unless everything is.")

    def createInstance(self) -> ChangeAlgorithm:  # noqa: N802
        return ChangeAlgorithm()

    def initAlgorithm(self, config: Optional[dict[str, Any]] = None) -> None:  # noqa: N802
        self.add_change_parameters()
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Change"))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT_BEFORE, "Before segmentation", optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT_AFTER, "After segmentation", optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT_MATRIX, "Transition matrix",
                                                            QgsProcessing.TypeVector, optional=True,
                                                            createByDefault=True))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_HTML, "Change report",
                                                                "HTML files (*.html)", optional=True))
        for name, label in ((self.CHANGED_AREA, "Changed area (m², confident)"),
                            (self.UNCERTAIN_AREA, "Uncertain area (m²)"), (self.COMPARED_AREA, "Compared area (m²)")):
            self.addOutput(QgsProcessingOutputNumber(name, label))
        self.addOutput(QgsProcessingOutputString(self.SUMMARY, "Summary"))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        before_out = self.parameterAsOutputLayer(parameters, self.OUTPUT_BEFORE, context) or ""
        after_out = self.parameterAsOutputLayer(parameters, self.OUTPUT_AFTER, context) or ""
        report = self.parameterAsFileOutput(parameters, self.OUTPUT_HTML, context) or ""
        planned = self.plan(parameters, context, output, before_out, after_out, report)
        inputs = _input_files(parameters, self, context)
        check_destination(parameters, self.OUTPUT_MATRIX, context, inputs)
        matrix: dict[str, str] = {}

        def write_matrix(result: ChangeResult, staged: StagedFiles) -> None:
            """The table, written last before the rasters move into place (a new GeoPackage moves with them)."""
            if not parameters.get(self.OUTPUT_MATRIX):
                return
            fields = _matrix_fields(result.names)
            table = FeatureOutput(self, parameters, self.OUTPUT_MATRIX, context, fields, QgsWkbTypes.NoGeometry,
                                  planned.prepared.crs, inputs, staged,
                                  self.output_description(self.OUTPUT_MATRIX))
            for row in class_rows(result.tally, result.names):
                feature = QgsFeature(fields)
                feature.setAttributes([row.class_id, row.class_name, *row.to_areas, row.before, row.after, row.net,
                                       row.gained, row.lost, row.uncertain])
                table.add(feature)
            table.close()
            matrix["dest"] = table.destination

        result = self.run_change(planned, feedback, before_commit=write_matrix)
        background = self.background_index(parameters, context)
        attach(_ChangePostProcessor(result, self.output_description(self.OUTPUT), background), context, output)
        for name, path in ((self.OUTPUT_BEFORE, result.before_path), (self.OUTPUT_AFTER, result.after_path)):
            if path is not None:
                attach(ResultPostProcessor(result.names, result.colours, self.output_description(name), background),
                       context, str(path))
        if result.report_path is not None:
            feedback.pushInfo(f"Report: {result.report_path}")
        tally = result.tally
        return {self.OUTPUT: str(result.change_path),
                self.OUTPUT_BEFORE: str(result.before_path) if result.before_path else None,
                self.OUTPUT_AFTER: str(result.after_path) if result.after_path else None,
                self.OUTPUT_MATRIX: matrix.get("dest"),
                self.OUTPUT_HTML: str(result.report_path) if result.report_path else None,
                self.CHANGED_AREA: float(tally.changed.sum()), self.UNCERTAIN_AREA: float(tally.uncertain.sum()),
                self.COMPARED_AREA: float(tally.crosstab.sum()), self.SUMMARY: result.summary}


class ChangeVectorAlgorithm(_ChangeBase):
    OUTPUT, MIN_AREA, SIMPLIFY = "OUTPUT", "MIN_AREA", "SIMPLIFY"

    def name(self) -> str:
        return "change_vector"

    def displayName(self) -> str:  # noqa: N802
        return "Change between two dates as polygons"

    def shortHelpString(self) -> str:  # noqa: N802
        return HELP_CHANGE + (
            "\n\nChange polygons: one polygon per 4-connected patch of one transition, with from_id, from_name, "
            "to_id, to_name, transition (tree → building), area_m2 and area_ha (the sum of its pixels' areas on the "
            "ellipsoid, as in the transition matrix) and confidence (the mean over its pixels of the smaller of the "
            "two dates' top probabilities). Polygons smaller than the minimum polygon area (m²) are dropped; the "
            "simplification tolerance (map units) simplifies the outlines.\n\n"
            "Into a GeoPackage, only this layer is added or replaced (named as given, else after the file): the "
            "file's other layers stay. A new GeoPackage gets a .qml beside it, so it opens styled anywhere.")

    def createInstance(self) -> ChangeVectorAlgorithm:  # noqa: N802
        return ChangeVectorAlgorithm()

    def initAlgorithm(self, config: Optional[dict[str, Any]] = None) -> None:  # noqa: N802
        self.add_change_parameters()
        self.addParameter(QgsProcessingParameterNumber(
            self.MIN_AREA, "Minimum polygon area (m²)", QgsProcessingParameterNumber.Double, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.SIMPLIFY, "Simplification tolerance (map units; 0: none)", QgsProcessingParameterNumber.Double,
            0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, "Change polygons",
                                                            QgsProcessing.TypeVectorPolygon))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        work = Path(tempfile.mkdtemp(prefix="segearth_change_", dir=QgsProcessingUtils.tempFolder()))
        try:
            return self._run(parameters, context, feedback, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _run(self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback,
             work: Path) -> dict[str, Any]:
        planned = self.plan(parameters, context, str(work / "change.tif"), confidence=str(work / "confidence.tif"))
        inputs = _input_files(parameters, self, context)
        check_destination(parameters, self.OUTPUT, context, inputs)
        # Progress: the two dates 0-80 %, polygons 80-100 %.
        result = self.run_change(planned, feedback, progress_scale=0.8, styles=False)
        if result.confidence_path is None:
            raise QgsProcessingException("The confidence raster was not written.")
        style = planned_vector_style(parameters.get(self.OUTPUT), context)
        fields = QgsFields()
        for name, kind in (("from_id", "Int"), ("from_name", "String"), ("to_id", "Int"), ("to_name", "String"),
                           ("transition", "String"), ("area_m2", "Double"), ("area_ha", "Double"),
                           ("confidence", "Double"), ("pixels", "LongLong")):
            fields.append(QgsField(name, field_type(kind)))
        minimum = self.parameterAsDouble(parameters, self.MIN_AREA, context)
        tolerance = self.parameterAsDouble(parameters, self.SIMPLIFY, context)
        staged = StagedFiles(overwrite=True)
        try:
            output = FeatureOutput(self, parameters, self.OUTPUT, context, fields, QgsWkbTypes.MultiPolygon,
                                   planned.prepared.crs, inputs, staged, self.output_description(self.OUTPUT))
            kept = 0
            for polygon in change_polygons(result.change_path, result.confidence_path, planned.prepared.grid,
                                           planned.prepared.crs_wkt, planned.prepared.row_areas, len(result.names),
                                           work, feedback.isCanceled,
                                           lambda fraction: feedback.setProgress(80 + 20 * fraction)):
                if polygon.area < minimum:
                    continue
                geometry = polygon.geometry.simplify(tolerance) if tolerance > 0 else polygon.geometry
                geometry.convertToMultiType()
                feature = QgsFeature(fields)
                feature.setGeometry(geometry)
                names = result.names
                feature.setAttributes([polygon.before, names[polygon.before], polygon.after, names[polygon.after],
                                       f"{names[polygon.before]} → {names[polygon.after]}", polygon.area,
                                       polygon.area / HECTARE, polygon.confidence, polygon.pixels])
                output.add(feature)
                kept += 1
            output.close()
            staged.commit()
        except BaseException:
            staged.abort()
            raise
        feedback.pushInfo(f"{kept} change polygon(s)")
        if output.added_to_existing:
            feedback.pushInfo(f"The polygons were added to an existing GeoPackage as the layer in "
                              f"{output.destination}; its other layers were left as they were.")
        elif style.path is not None:
            try:
                write_vector_style(style.path, fields, change_vector_renderer(result.legend))
            except OSError as error:
                feedback.reportError(f"The style {style.path.name} was not written ({error}); the polygons are "
                                     "styled when Processing loads them.", fatalError=False)
        elif style.reason:
            feedback.reportError(style.reason, fatalError=False)
        attach(_ChangePostProcessor(result, self.output_description(self.OUTPUT),
                                    self.background_index(parameters, context)), context, output.destination)
        return {self.OUTPUT: output.destination}
