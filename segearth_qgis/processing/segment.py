"""``segearth:segment`` and ``segearth:segment_vector``: the dock's job, as Processing algorithms."""

from __future__ import annotations

from typing import Any, Optional

from qgis.core import (
    QgsDistanceArea,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingParameterBand,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsUnitTypes,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QVariant

from .. import settings
from ..aoi import AoiKind, AreaOfInterest
from ..backend_manager import shared_manager
from ..core.classes import PRESETS
from ..errors import BackendError, JobCancelledError, OutputError
from ..job import JobResult, execute
from ..job_request import JobInputs, plan_job
from ..styling import class_vector_renderer, write_class_style

HELP_COMMON = (
    "<p>Training-free open-vocabulary segmentation (SegEarth-OV, CVPR 2025): CLIP ViT-B/16 with the SegEarth "
    "last-layer attention, global-bias subtraction, SimFeatUp upsampling and sliding windows, run by the "
    "SegEarth-OV backend (started automatically, or the one at SEGEARTH_BACKEND_URL).</p>"
    "<p><b>Classes</b>: one per line; synonyms on a line are separated by commas (<i>tree, forest</i>). "
    "<b>Bands</b>: one (repeated) or three (R, G, B); default: the layer's renderer bands. "
    "<b>Extent</b> and <b>Mask</b> limit the area (pixels outside the mask polygons become nodata, 255). "
    "<b>Resolution</b>: map units per pixel (default: native). Pixels whose top probability is below the "
    "<b>threshold</b> get the <b>background</b> class; <b>bias lambda</b> weighs the global-bias "
    "subtraction (-0.3 in the paper, 0 disables it).</p>"
)


class _SegmentBase(QgsProcessingAlgorithm):
    INPUT, CLASSES, BANDS, EXTENT, MASK = "INPUT", "CLASSES", "BANDS", "EXTENT", "MASK"
    RESOLUTION, THRESHOLD, BACKGROUND, BIAS_LAMBDA = "RESOLUTION", "THRESHOLD", "BACKGROUND", "BIAS_LAMBDA"

    def group(self) -> str:
        return ""

    def groupId(self) -> str:  # noqa: N802
        return ""

    def add_common_parameters(self) -> None:
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Raster layer"))
        self.addParameter(QgsProcessingParameterString(
            self.CLASSES, "Classes (one per line, synonyms separated by commas)", multiLine=True,
            defaultValue="\n".join(PRESETS[0].classes)))
        self.addParameter(QgsProcessingParameterBand(self.BANDS, "Bands (one, or R, G, B)", None, self.INPUT,
                                                     optional=True, allowMultiple=True))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Area of interest (extent)", optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.MASK, "Area of interest (polygons; outside becomes nodata)", [QgsProcessing.TypeVectorPolygon],
            optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.RESOLUTION, "Processing resolution (map units per pixel; empty: native)",
            QgsProcessingParameterNumber.Double, optional=True, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.THRESHOLD, "Probability threshold", QgsProcessingParameterNumber.Double, 0.0, minValue=0.0,
            maxValue=1.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.BACKGROUND, "Background class index", QgsProcessingParameterNumber.Integer, 0, minValue=0,
            maxValue=253))
        self.addParameter(QgsProcessingParameterNumber(
            self.BIAS_LAMBDA, "Global-bias lambda", QgsProcessingParameterNumber.Double, -0.3, minValue=-10.0,
            maxValue=10.0))

    def segment(self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback,
                output: str, probabilities: Optional[str] = None, progress_scale: float = 1.0) -> JobResult:
        """Run the shared job engine for these parameters; every failure is a QgsProcessingException."""
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException("INPUT is not a raster layer QGIS can open.")
        clip = None
        if parameters.get(self.EXTENT):
            rect = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
            clip = (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())
        aoi = AreaOfInterest(AoiKind.LAYER)
        other_inputs: tuple[str, ...] = ()
        if parameters.get(self.MASK):
            source = self.parameterAsSource(parameters, self.MASK, context)
            geometries = [f.geometry() for f in source.getFeatures() if f.hasGeometry()] if source else []
            if not geometries:
                raise QgsProcessingException("MASK has no polygons.")
            aoi = AreaOfInterest(AoiKind.SELECTED_FEATURES, crs=source.sourceCrs(), geometries=geometries)
            mask_layer = self.parameterAsVectorLayer(parameters, self.MASK, context)
            if mask_layer is not None:
                other_inputs = (mask_layer.source().split("|")[0],)
        resolution = None
        if parameters.get(self.RESOLUTION) not in (None, ""):
            resolution = self.parameterAsDouble(parameters, self.RESOLUTION, context) or None
        inputs = JobInputs(
            layer, self.parameterAsString(parameters, self.CLASSES, context),
            tuple(self.parameterAsInts(parameters, self.BANDS, context)), aoi, resolution, clip,
            threshold=self.parameterAsDouble(parameters, self.THRESHOLD, context),
            background_index=self.parameterAsInt(parameters, self.BACKGROUND, context),
            bias_lambda=self.parameterAsDouble(parameters, self.BIAS_LAMBDA, context),
            output=output, probabilities=probabilities or False, overwrite=True,
            block_size=settings.load("block_size"), other_inputs=other_inputs)
        try:
            planned = plan_job(inputs)
            job = planned.job
            feedback.pushInfo(f"Segmenting {job.grid.width} x {job.grid.height} px of '{layer.name()}' "
                              f"into {len(planned.params.classes)} classes")
            client = shared_manager().client(cancelled=feedback.isCanceled)
            result = execute(job, planned.params, client, progress=lambda p: feedback.setProgress(p * progress_scale),
                             cancelled=feedback.isCanceled, write_style=write_class_style)
        except JobCancelledError:
            raise QgsProcessingException("Cancelled: no output was written.") from None
        except BackendError as error:
            if error.code == "cancelled" or feedback.isCanceled():
                raise QgsProcessingException("Cancelled: no output was written.") from None
            raise QgsProcessingException(shared_manager().explain(error)) from None
        except (ValueError, OutputError, OSError) as error:
            raise QgsProcessingException(str(error)) from None
        for warning in result.warnings:
            feedback.reportError(warning, fatalError=False)
        feedback.pushInfo(f"{result.blocks} block(s) in {result.seconds:.1f} s")
        return result


class SegmentAlgorithm(_SegmentBase):
    OUTPUT, OUTPUT_PROBABILITIES = "OUTPUT", "OUTPUT_PROBABILITIES"

    def name(self) -> str:
        return "segment"

    def displayName(self) -> str:  # noqa: N802
        return "Segment raster (open vocabulary)"

    def shortHelpString(self) -> str:  # noqa: N802
        return HELP_COMMON + (
            "<p><b>Output</b>: a GeoTIFF of class indices (uint8, nodata 255, colour table, class names as "
            "categories and in SEGEARTH_CLASSES metadata) with a .qml style beside it, so it opens styled. "
            "<b>Class probabilities</b>: optional float32 GeoTIFF, one band per class.</p>")

    def createInstance(self) -> SegmentAlgorithm:  # noqa: N802
        return SegmentAlgorithm()

    def initAlgorithm(self, config: Optional[dict[str, Any]] = None) -> None:  # noqa: N802
        self.add_common_parameters()
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Segmentation"))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT_PROBABILITIES, "Class probabilities", optional=True, createByDefault=False))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        probabilities = self.parameterAsOutputLayer(parameters, self.OUTPUT_PROBABILITIES, context) or None
        result = self.segment(parameters, context, feedback, output, probabilities)
        return {self.OUTPUT: str(result.output_path),
                self.OUTPUT_PROBABILITIES: str(result.probabilities_path) if result.probabilities_path else None}


class _CategorizedStyle(QgsProcessingLayerPostProcessorInterface):
    """Styles the vector output by class name when Processing loads it."""

    instances: list[_CategorizedStyle] = []  # Processing keeps no reference of its own

    def __init__(self, names: list[str], colours: list[tuple[int, int, int, int]]) -> None:
        super().__init__()
        self.names, self.colours = names, colours

    def postProcessLayer(self, layer: Any, context: QgsProcessingContext, feedback: QgsProcessingFeedback) -> None:  # noqa: N802
        if isinstance(layer, QgsVectorLayer):
            layer.setRenderer(class_vector_renderer(self.names, self.colours))
            layer.triggerRepaint()


class SegmentVectorAlgorithm(_SegmentBase):
    OUTPUT, MIN_AREA, SIMPLIFY = "OUTPUT", "MIN_AREA", "SIMPLIFY"

    def name(self) -> str:
        return "segment_vector"

    def displayName(self) -> str:  # noqa: N802
        return "Segment and vectorize"

    def shortHelpString(self) -> str:  # noqa: N802
        return HELP_COMMON + (
            "<p>Segments like <i>Segment raster</i>, then turns regions of one class into polygons "
            "(gdal:polygonize) with <b>class_id</b>, <b>class_name</b> and <b>area_m2</b> (ellipsoidal area "
            "for geographic CRSs). Polygons smaller than <b>minimum area</b> (m²) are dropped; "
            "<b>simplification tolerance</b> (map units) simplifies the outlines. Styled by class name.</p>")

    def createInstance(self) -> SegmentVectorAlgorithm:  # noqa: N802
        return SegmentVectorAlgorithm()

    def initAlgorithm(self, config: Optional[dict[str, Any]] = None) -> None:  # noqa: N802
        self.add_common_parameters()
        self.addParameter(QgsProcessingParameterNumber(
            self.MIN_AREA, "Minimum polygon area (m²)", QgsProcessingParameterNumber.Double, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.SIMPLIFY, "Simplification tolerance (map units; 0: none)", QgsProcessingParameterNumber.Double,
            0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, "Class polygons",
                                                            QgsProcessing.TypeVectorPolygon))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        import processing

        raster = QgsProcessingUtils.generateTempFilename("segearth_segmentation.tif")
        # Progress: segmentation 0-80 %, polygons 80-100 %. (No QgsProcessingMultiStepFeedback: its queued
        # progress events can outlive it.)
        result = self.segment(parameters, context, feedback, raster, progress_scale=0.8)
        polygons = processing.run("gdal:polygonize", {"INPUT": raster, "BAND": 1, "FIELD": "class_id",
                                                      "EIGHT_CONNECTEDNESS": False, "OUTPUT": "TEMPORARY_OUTPUT"},
                                  context=context, feedback=None, is_child_algorithm=True)["OUTPUT"]
        if feedback.isCanceled():
            raise QgsProcessingException("Cancelled.")
        feedback.setProgress(85)
        layer = QgsProcessingUtils.mapLayerFromString(polygons, context)
        fields = QgsFields()
        fields.append(QgsField("class_id", QVariant.Int))
        fields.append(QgsField("class_name", QVariant.String))
        fields.append(QgsField("area_m2", QVariant.Double))
        sink, dest = self.parameterAsSink(parameters, self.OUTPUT, context, fields, QgsWkbTypes.MultiPolygon,
                                          layer.crs())
        if sink is None:
            raise QgsProcessingException("The output layer could not be created: check the output path.")
        measure = QgsDistanceArea()
        measure.setSourceCrs(layer.crs(), context.transformContext())
        ellipsoid = context.ellipsoid() if context.ellipsoid() not in ("", "NONE") else layer.crs().ellipsoidAcronym()
        measure.setEllipsoid(ellipsoid or "EPSG:7030")
        minimum = self.parameterAsDouble(parameters, self.MIN_AREA, context)
        tolerance = self.parameterAsDouble(parameters, self.SIMPLIFY, context)
        total = max(layer.featureCount(), 1)
        for index, feature in enumerate(layer.getFeatures()):
            if feedback.isCanceled():
                break
            class_id = int(feature["class_id"])
            geometry = feature.geometry()
            area = measure.convertAreaMeasurement(measure.measureArea(geometry), QgsUnitTypes.AreaSquareMeters)
            if class_id >= len(result.names) or area < minimum:
                continue
            if tolerance > 0:
                geometry = geometry.simplify(tolerance)
            geometry.convertToMultiType()
            out = QgsFeature(fields)
            out.setGeometry(geometry)
            out.setAttributes([class_id, result.names[class_id], area])
            sink.addFeature(out, QgsFeatureSink.FastInsert)
            feedback.setProgress(85 + 15.0 * index / total)
        if context.willLoadLayerOnCompletion(dest):
            styler = _CategorizedStyle(result.names, result.colours)
            _CategorizedStyle.instances.append(styler)
            context.layerToLoadOnCompletionDetails(dest).setPostProcessor(styler)
        return {self.OUTPUT: dest}
