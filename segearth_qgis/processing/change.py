"""``segearth:change`` and ``segearth:change_vector``: open-vocabulary change between two dates, as Processing
algorithms (the engine is :mod:`segearth_qgis.job.change_engine`; what they share, :mod:`.change_base`)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

from qgis.core import (
    QgsFeature,
    QgsField,
    QgsFields,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingUtils,
)

from ..core.change import HECTARE
from ..core.change_report import class_rows
from ..job.change_engine import ChangeResult
from ..job.change_request import ChangePlan
from ..job.staging import StagedFiles
from ..map.change_style import change_vector_renderer
from ..map.vector_style import planned_vector_style, vector_style_text
from ..qgis_compat import DOUBLE_NUMBER, TABLE_SOURCE, VECTOR_POLYGON_SOURCE, WKB_MULTIPOLYGON, WKB_NO_GEOMETRY
from ..qt_compat import field_type
from .change_base import HELP_CHANGE, ChangePostProcessor, _ChangeBase
from .change_polygons import change_polygons
from .post_processing import ResultPostProcessor, attach
from .run_outputs import RunOutputs


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
                                                            TABLE_SOURCE, optional=True,
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
        with RunOutputs(self, parameters, context) as outputs:
            outputs.check(self.data_inputs(parameters, context), [self.OUTPUT_MATRIX], [self.OUTPUT_HTML])
            planned = self.plan(parameters, context, output, before_out, after_out, report)
            destinations: dict[str, str] = {}

            def write_matrix(result: ChangeResult, staged: StagedFiles) -> None:
                """The table, staged last and committed with the rasters (all of them, or none)."""
                if parameters.get(self.OUTPUT_MATRIX):
                    fields = _matrix_fields(result.names)
                    outputs.sink(self.OUTPUT_MATRIX, fields, WKB_NO_GEOMETRY)
                    for row in class_rows(result.tally, result.names):
                        feature = QgsFeature(fields)
                        feature.setAttributes([row.class_id, row.class_name, *row.to_areas, row.before, row.after,
                                               row.net, row.gained, row.lost, row.uncertain])
                        outputs.add(self.OUTPUT_MATRIX, feature)
                destinations.update(outputs.stage_commit())
                staged.adopt(outputs.staged)

            result = self.run_change(planned, feedback, before_commit=write_matrix)
            outputs.committed(destinations)
        background = self.background_index(parameters, context)
        attach(ChangePostProcessor(result, self.output_description(self.OUTPUT), background), context, output)
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
                self.OUTPUT_MATRIX: destinations.get(self.OUTPUT_MATRIX),
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
            self.MIN_AREA, "Minimum polygon area (m²)", DOUBLE_NUMBER, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.SIMPLIFY, "Simplification tolerance (map units; 0: none)", DOUBLE_NUMBER,
            0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, "Change polygons",
                                                            VECTOR_POLYGON_SOURCE))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        work = Path(tempfile.mkdtemp(prefix="segearth_change_", dir=QgsProcessingUtils.tempFolder()))
        try:
            return self._run(parameters, context, feedback, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _run(self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback,
             work: Path) -> dict[str, Any]:
        with RunOutputs(self, parameters, context) as outputs:
            outputs.check(self.data_inputs(parameters, context), [self.OUTPUT])  # before the long work
            planned = self.plan(parameters, context, str(work / "change.tif"), confidence=str(work / "confidence.tif"))
            # Progress: the two dates 0-80 %, polygons 80-100 %.
            result = self.run_change(planned, feedback, progress_scale=0.8, styles=False)
            if result.confidence_path is None:
                raise QgsProcessingException("The confidence raster was not written.")
            style = planned_vector_style(outputs.target(self.OUTPUT))
            fields = QgsFields()
            for name, kind in (("from_id", "Int"), ("from_name", "String"), ("to_id", "Int"), ("to_name", "String"),
                               ("transition", "String"), ("area_m2", "Double"), ("area_ha", "Double"),
                               ("confidence", "Double"), ("pixels", "LongLong")):
                fields.append(QgsField(name, field_type(kind)))
            # Staged: a cancel or a failure from here on still leaves the destination as it was.
            outputs.sink(self.OUTPUT, fields, WKB_MULTIPOLYGON, planned.source.crs)
            kept = self._write_polygons(parameters, context, feedback, outputs, planned, result, fields, work)
            if style.path is not None:
                try:
                    text = vector_style_text(fields, change_vector_renderer(result.legend))
                except OSError as error:
                    feedback.reportError(f"The style {style.path.name} was not written ({error}); the polygons are "
                                         "styled when Processing loads them.", fatalError=False)
                else:
                    outputs.write_file(style.path, text.encode("utf-8"))
            elif style.reason:
                feedback.reportError(style.reason, fatalError=False)
            destination = outputs.commit()[self.OUTPUT]
        feedback.pushInfo(f"{kept} change polygon(s) in {destination}")
        attach(ChangePostProcessor(result, self.output_description(self.OUTPUT),
                                   self.background_index(parameters, context)), context, destination)
        return {self.OUTPUT: destination}

    def _write_polygons(self, parameters: dict[str, Any], context: QgsProcessingContext,
                        feedback: QgsProcessingFeedback, outputs: RunOutputs, planned: ChangePlan,
                        result: ChangeResult, fields: QgsFields, work: Path) -> int:
        """The change patches as polygons into the sink, those under the minimum area left out; returns how many."""
        assert result.confidence_path is not None  # checked by the caller
        minimum = self.parameterAsDouble(parameters, self.MIN_AREA, context)
        tolerance = self.parameterAsDouble(parameters, self.SIMPLIFY, context)
        names, kept, source = result.names, 0, planned.source
        for polygon in change_polygons(result.change_path, result.confidence_path, source.grid, source.crs_wkt,
                                       source.row_areas, len(names), work, feedback.isCanceled,
                                       lambda fraction: feedback.setProgress(80 + 20 * fraction)):
            if polygon.area < minimum:
                continue
            geometry = polygon.geometry.simplify(tolerance) if tolerance > 0 else polygon.geometry
            geometry.convertToMultiType()
            feature = QgsFeature(fields)
            feature.setGeometry(geometry)
            feature.setAttributes([polygon.before, names[polygon.before], polygon.after, names[polygon.after],
                                   f"{names[polygon.before]} → {names[polygon.after]}", polygon.area,
                                   polygon.area / HECTARE, polygon.confidence, polygon.pixels])
            outputs.add(self.OUTPUT, feature)
            kept += 1
        if feedback.isCanceled():
            raise QgsProcessingException("Cancelled: no output was written.")
        return kept
