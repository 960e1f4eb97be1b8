"""``segearth:accuracy``: a class raster against a reference raster or polygons; matrix, measures, HTML report."""

from __future__ import annotations

import math
from typing import Any, Optional

from qgis.core import (
    QgsFeature,
    QgsField,
    QgsFields,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsRasterLayer,
)

from ..core.accuracy import AccuracyReport, assess, class_lookup, matrix_from_pairs, parse_mapping
from ..core.accuracy_html import html_report
from ..errors import AccuracyError
from ..qgis_compat import TABLE_SOURCE, VECTOR_POLYGON_SOURCE, WKB_NO_GEOMETRY
from ..qt_compat import field_type
from .class_stats import class_names
from .reference_grid import count_pairs, open_class_grid, rasterize_reference, warp_reference
from .run_outputs import RunOutputs, layer_inputs


def _value(number: float) -> Optional[float]:
    return None if math.isnan(number) else float(number)


class AccuracyAlgorithm(QgsProcessingAlgorithm):
    INPUT, REFERENCE_RASTER, REFERENCE_VECTOR, REFERENCE_FIELD = (
        "INPUT", "REFERENCE_RASTER", "REFERENCE_VECTOR", "REFERENCE_FIELD")
    MAPPING, OUTPUT_MATRIX, OUTPUT_METRICS, OUTPUT_HTML = "MAPPING", "OUTPUT_MATRIX", "OUTPUT_METRICS", "OUTPUT_HTML"
    OVERALL_ACCURACY, KAPPA, MEAN_IOU, PIXELS = "OVERALL_ACCURACY", "KAPPA", "MEAN_IOU", "PIXELS"

    def name(self) -> str:
        return "accuracy"

    def displayName(self) -> str:  # noqa: N802
        return "Accuracy assessment"

    def shortHelpString(self) -> str:  # noqa: N802
        return ("Compares a class raster (SegEarth-OV's, or any single-band class raster) with a reference: a "
                "reference raster (resampled onto the class raster's grid by nearest neighbour; its nodata "
                "is left out) or reference polygons with a class field (burnt in at every pixel "
                "whose centre they cover; pixels outside them are left out).\n\n"
                "Reference classes are matched to the classification's classes by name (the class raster's "
                "category names or SEGEARTH_CLASSES, any synonym; the reference raster's category names or the "
                "field's text values), or by equal code when the reference has no names. The class mapping "
                "overrides that, one reference=classification line per class, codes or names "
                "(3=building, low vegetation=tree); reference=ignore leaves a class out.\n\n"
                "Outputs: the confusion matrix (one row per class: reference class; columns pred_0, pred_1, ... "
                "the pixels classified as each class), per-class IoU, precision (user's accuracy), recall "
                "(producer's accuracy) and F1, an HTML report, and the overall accuracy, Cohen's kappa and mean "
                "IoU as numbers. Pixels where the classification is nodata are not counted.")

    def createInstance(self) -> AccuracyAlgorithm:  # noqa: N802
        return AccuracyAlgorithm()

    def initAlgorithm(self, config: Optional[dict[str, Any]] = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Classification raster"))
        self.addParameter(QgsProcessingParameterRasterLayer(self.REFERENCE_RASTER, "Reference raster",
                                                            optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.REFERENCE_VECTOR, "Reference polygons", [VECTOR_POLYGON_SOURCE], optional=True))
        self.addParameter(QgsProcessingParameterField(
            self.REFERENCE_FIELD, "Class field of the reference polygons (codes or names)",
            parentLayerParameterName=self.REFERENCE_VECTOR, optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.MAPPING, "Class mapping (reference=classification per line; codes or names)", multiLine=True,
            optional=True))
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT_MATRIX, "Confusion matrix",
                                                            TABLE_SOURCE))
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT_METRICS, "Per-class accuracy",
                                                            TABLE_SOURCE))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_HTML, "Accuracy report",
                                                                "HTML files (*.html)", optional=True))
        for name, label in ((self.OVERALL_ACCURACY, "Overall accuracy"), (self.KAPPA, "Cohen's kappa"),
                            (self.MEAN_IOU, "Mean IoU"), (self.PIXELS, "Pixels compared")):
            self.addOutput(QgsProcessingOutputNumber(name, label))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException("INPUT is not a raster layer QGIS can open.")
        has_raster = bool(parameters.get(self.REFERENCE_RASTER))
        has_vector = bool(parameters.get(self.REFERENCE_VECTOR))
        if has_raster == has_vector:
            raise QgsProcessingException("Give exactly one reference: REFERENCE_RASTER, or REFERENCE_VECTOR with "
                                         "REFERENCE_FIELD.")
        with RunOutputs(self, parameters, context) as outputs:
            reference_layer = self.parameterAsRasterLayer(parameters, self.REFERENCE_RASTER, context) if has_raster \
                else self.parameterAsVectorLayer(parameters, self.REFERENCE_VECTOR, context)
            outputs.check([*layer_inputs(layer), *layer_inputs(reference_layer)],
                          [self.OUTPUT_MATRIX, self.OUTPUT_METRICS], [self.OUTPUT_HTML])
            results = self._assess(layer, parameters, context, feedback, outputs)
            results.update(outputs.commit())
            return results

    def _assess(self, layer: QgsRasterLayer, parameters: dict[str, Any], context: QgsProcessingContext,
                feedback: QgsProcessingFeedback, outputs: RunOutputs) -> dict[str, Any]:
        """Compare, and stage the tables and the report in ``outputs``; the results without the tables."""
        try:
            grid = open_class_grid(layer.source())
            target = QgsProcessingUtils.generateTempFilename("reference_on_grid.tif")
            if parameters.get(self.REFERENCE_RASTER):
                reference_layer = self.parameterAsRasterLayer(parameters, self.REFERENCE_RASTER, context)
                if reference_layer is None:
                    raise QgsProcessingException("REFERENCE_RASTER is not a raster layer QGIS can open.")
                warp_reference(reference_layer.source(), grid, target)
                reference_names: dict[int, Optional[str]] = dict(class_names(reference_layer))
                described = f"raster {reference_layer.source()}"
            else:
                reference_names, described = self._rasterize(parameters, context, grid, target)
            feedback.pushInfo(f"Comparing {grid.width} x {grid.height} pixels with the reference")
            pairs, skipped = count_pairs(grid, target, feedback.isCanceled,
                                         lambda fraction: feedback.setProgress(100 * fraction))
            report, ignored = self._report(layer, pairs, reference_names,
                                           self.parameterAsString(parameters, self.MAPPING, context))
        except AccuracyError as error:
            raise QgsProcessingException(str(error)) from None
        feedback.pushInfo(f"{report.total} pixels compared ({skipped} without reference or classification, "
                          f"{ignored} left out by the mapping): overall accuracy {report.overall_accuracy:.4f}, "
                          f"kappa {report.kappa:.4f}, mean IoU {report.mean_iou:.4f}")
        self._write_matrix(outputs, report)
        self._write_metrics(outputs, report)
        results: dict[str, Any] = {
            self.OVERALL_ACCURACY: report.overall_accuracy, self.KAPPA: _value(report.kappa),
            self.MEAN_IOU: _value(report.mean_iou), self.PIXELS: report.total,
        }
        html_path = outputs.file_target(self.OUTPUT_HTML)
        if html_path is not None:
            details = [("Classification", layer.source()), ("Reference", described),
                       ("Pixels without reference or classification", f"{skipped:,}")]
            outputs.write_file(html_path, html_report(report, "Accuracy assessment", details, ignored).encode("utf-8"))
            results[self.OUTPUT_HTML] = str(html_path)
        return results

    def _rasterize(self, parameters: dict[str, Any], context: QgsProcessingContext, grid: Any,
                   target: str) -> tuple[dict[int, Optional[str]], str]:
        source = self.parameterAsSource(parameters, self.REFERENCE_VECTOR, context)
        if source is None:
            raise QgsProcessingException("REFERENCE_VECTOR is not a vector layer QGIS can open.")
        field = self.parameterAsString(parameters, self.REFERENCE_FIELD, context)
        if not field or source.fields().lookupField(field) < 0:
            raise QgsProcessingException("REFERENCE_FIELD must name the reference polygons' class field "
                                         f"(one of: {', '.join(source.fields().names())}).")
        features = ((f.geometry(), f[field]) for f in source.getFeatures())
        classes = rasterize_reference(features, source.sourceCrs(), grid, target, context.transformContext())
        return classes, f"polygons {source.sourceName()}, field {field}"

    @staticmethod
    def _report(layer: QgsRasterLayer, pairs: dict[tuple[int, int], int], reference_names: dict[int, Optional[str]],
                mapping_text: str) -> tuple[AccuracyReport, int]:
        prediction = class_names(layer)
        values = [value for _, value in pairs]
        num_classes = max([max(prediction) + 1 if prediction else 0] + [value + 1 for value in values])
        if num_classes == 0:
            raise AccuracyError("No pixel was compared: the reference and the classification do not overlap "
                                "(check the extents and the reference's nodata).")
        reference = {code: reference_names.get(code) for code, _ in pairs}
        lookup = class_lookup(reference, prediction, num_classes, parse_mapping(mapping_text))
        matrix, ignored = matrix_from_pairs(pairs, lookup, num_classes)
        names = [prediction.get(index, f"class {index}") for index in range(num_classes)]
        return assess(matrix, names), ignored

    def _write_matrix(self, outputs: RunOutputs, report: AccuracyReport) -> None:
        fields = QgsFields()
        fields.append(QgsField("reference_id", field_type("Int")))
        fields.append(QgsField("reference", field_type("String")))
        for index in range(len(report.names)):
            fields.append(QgsField(f"pred_{index}", field_type("LongLong")))
        fields.append(QgsField("total", field_type("LongLong")))
        outputs.sink(self.OUTPUT_MATRIX, fields, WKB_NO_GEOMETRY)
        for index, name in enumerate(report.names):
            row = [int(value) for value in report.matrix[index]]
            feature = QgsFeature(fields)
            feature.setAttributes([index, name, *row, sum(row)])
            outputs.add(self.OUTPUT_MATRIX, feature)

    def _write_metrics(self, outputs: RunOutputs, report: AccuracyReport) -> None:
        fields = QgsFields()
        for name, kind in (("class_id", field_type("Int")), ("class_name", field_type("String")),
                           ("reference_pixels", field_type("LongLong")),
                           ("classified_pixels", field_type("LongLong")),
                           ("correct_pixels", field_type("LongLong")), ("iou", field_type("Double")),
                           ("precision", field_type("Double")), ("recall", field_type("Double")),
                           ("f1", field_type("Double"))):
            fields.append(QgsField(name, kind))
        outputs.sink(self.OUTPUT_METRICS, fields, WKB_NO_GEOMETRY)
        for index, name in enumerate(report.names):
            feature = QgsFeature(fields)
            feature.setAttributes([
                index, name, int(report.matrix[index].sum()), int(report.matrix[:, index].sum()),
                int(report.matrix[index, index]), _value(report.iou[index]), _value(report.precision[index]),
                _value(report.recall[index]), _value(report.f1[index])])
            outputs.add(self.OUTPUT_METRICS, feature)
