"""``segearth:segment`` and ``segearth:segment_vector``: the dock's job, as Processing algorithms."""

from __future__ import annotations

from typing import Any, Optional

from qgis.core import (
    QgsFeature,
    QgsFeatureRequest,
    QgsField,
    QgsFields,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsRasterLayer,
    QgsVectorLayer,
)

from .. import settings
from ..client.backend_manager import shared_manager
from ..core.classes import PRESETS, check_class_lines, class_lines
from ..core.grid import Rect
from ..core.report import shares_message, shares_warning
from ..core.request_rules import BIAS_LAMBDA_RANGE, DEFAULT_BIAS_LAMBDA, MAX_CLASSES, NODATA_LABEL
from ..errors import ClassesError
from ..job.aoi import AoiKind, AreaOfInterest
from ..job.engine import JobResult, execute
from ..job.request import JobInputs, plan_job
from ..job.vector_outputs import DataInput
from ..map.styling import class_style_text, class_vector_renderer
from ..map.vector_style import planned_vector_style, vector_style_text
from ..qgis_compat import DOUBLE_NUMBER, INTEGER_NUMBER, VECTOR_POLYGON_SOURCE, WKB_MULTIPOLYGON
from ..qt_compat import field_type
from .area import area_m2, area_measure
from .child_feedback import ChildFeedback, raise_if_cancelled
from .job_feedback import job_errors, report_run
from .post_processing import ResultPostProcessor, attach
from .run_outputs import RunOutputs, layer_inputs
from .sar_parameters import HELP as SAR_HELP
from .sar_parameters import add_sar_parameters, sar_settings

#: The BACKGROUND value that means "no background class".
NO_BACKGROUND = -1

#: Help texts are plain text, paragraphs separated by blank lines: the dialog shows each as a paragraph and
#: ``qgis_process help`` prints them as they are (HTML tags would show there).
HELP_COMMON = (
    "Training-free open-vocabulary segmentation (SegEarth-OV, CVPR 2025): CLIP ViT-B/16 with the SegEarth "
    "last-layer attention, global-bias subtraction, SimFeatUp upsampling and sliding windows, run by the "
    "SegEarth-OV backend (started automatically, or the one at SEGEARTH_BACKEND_URL).\n\n"
    "Classes: one per line; synonyms on a line are separated by commas (tree, forest). The default is the "
    f"{PRESETS[0].name} class list, with its threshold {PRESETS[0].threshold:g}.\n\n"
    "Bands: one (repeated) or three (R, G, B); default: the layer's renderer bands. Extent and mask limit the "
    f"area (pixels outside the mask polygons become nodata, {NODATA_LABEL}). Resolution: map units per pixel (default: "
    "native).\n\n"
    "Pixels whose top probability is below the probability threshold get the background class (a line number "
    "counted from 0; -1: no background class, then every pixel keeps its best class and the threshold is not "
    f"used). Global-bias lambda weighs the global-bias subtraction ({DEFAULT_BIAS_LAMBDA:g} in the paper, 0 disables "
    "it).\n\n"
    "The log lists the share of each class; a result that is all one class comes with a warning saying what "
    "to change.\n\n" + SAR_HELP
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
            defaultValue="\n".join(PRESETS[0].classes),
            optional=True))  # "optional" to QGIS only: checkParameterValues refuses no classes with our words
        self.addParameter(QgsProcessingParameterBand(self.BANDS, "Bands (one, or R, G, B)", None, self.INPUT,
                                                     optional=True, allowMultiple=True))
        self.add_area_and_decision_parameters("map units per pixel")
        add_sar_parameters(self)

    def add_area_and_decision_parameters(self, resolution_units: str) -> None:
        """EXTENT, MASK, RESOLUTION (in ``resolution_units``), THRESHOLD, BACKGROUND and BIAS_LAMBDA, as every
        algorithm that segments has them."""
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Area of interest (extent)", optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.MASK, "Area of interest (polygons; outside becomes nodata)", [VECTOR_POLYGON_SOURCE],
            optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.RESOLUTION, f"Processing resolution ({resolution_units}; empty: native)",
            DOUBLE_NUMBER, optional=True, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.THRESHOLD, "Probability threshold", DOUBLE_NUMBER, PRESETS[0].threshold,
            minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.BACKGROUND, "Background class (line number from 0; -1: none)", INTEGER_NUMBER,
            PRESETS[0].background_index, minValue=NO_BACKGROUND, maxValue=MAX_CLASSES - 1))
        self.addParameter(QgsProcessingParameterNumber(
            self.BIAS_LAMBDA, "Global-bias lambda", DOUBLE_NUMBER, DEFAULT_BIAS_LAMBDA,
            minValue=BIAS_LAMBDA_RANGE[0], maxValue=BIAS_LAMBDA_RANGE[1]))

    def checkParameterValues(self, parameters: dict[str, Any],  # noqa: N802 - QGIS's name
                             context: QgsProcessingContext) -> tuple[bool, str]:
        """The class list is checked as the dock checks it (QGIS would only say "Incorrect parameter value")."""
        try:
            check_class_lines(class_lines(self.parameterAsString(parameters, self.CLASSES, context) or ""))
        except ClassesError as error:
            return False, str(error)
        return super().checkParameterValues(parameters, context)

    def output_description(self, name: str) -> str:
        """The description of output parameter ``name``: the name Processing gives its layer by default."""
        definition = self.parameterDefinition(name)
        return definition.description() if definition is not None else name

    def data_inputs(self, parameters: dict[str, Any], context: QgsProcessingContext) -> list[DataInput]:
        """What the run reads (the raster's files, the mask's layer): no output may be one of them."""
        inputs = layer_inputs(self.parameterAsRasterLayer(parameters, self.INPUT, context))
        if parameters.get(self.MASK):
            inputs += layer_inputs(self.parameterAsVectorLayer(parameters, self.MASK, context))
        return inputs

    def background_index(self, parameters: dict[str, Any], context: QgsProcessingContext) -> Optional[int]:
        """The BACKGROUND parameter: a class line (from 0), or None for -1 (no background class)."""
        index = self.parameterAsInt(parameters, self.BACKGROUND, context)
        return None if index == NO_BACKGROUND else index

    def area(self, parameters: dict[str, Any], context: QgsProcessingContext, layer: QgsRasterLayer
             ) -> tuple[AreaOfInterest, Optional[Rect], Optional[float], tuple[str, ...]]:
        """The EXTENT, MASK and RESOLUTION parameters for ``layer``: the area of interest, the extent in the
        layer's CRS (or None), the resolution (None: native) and the mask layer's file (never to be written)."""
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
        return aoi, clip, resolution, other_inputs

    def segment(self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback,
                output: str, probabilities: Optional[str] = None, progress_scale: float = 1.0) -> JobResult:
        """Run the shared job engine for these parameters; every failure is a QgsProcessingException."""
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException("INPUT is not a raster layer QGIS can open.")
        aoi, clip, resolution, other_inputs = self.area(parameters, context, layer)
        bands = tuple(self.parameterAsInts(parameters, self.BANDS, context))
        try:
            sar = sar_settings(self, parameters, context, layer, next((b for b in bands if b > 0), 1))
        except ValueError as error:
            raise QgsProcessingException(str(error)) from None
        inputs = JobInputs(
            layer, self.parameterAsString(parameters, self.CLASSES, context), bands, aoi, resolution, clip,
            threshold=self.parameterAsDouble(parameters, self.THRESHOLD, context),
            background_index=self.background_index(parameters, context),
            bias_lambda=self.parameterAsDouble(parameters, self.BIAS_LAMBDA, context),
            output=output, probabilities=probabilities or False, overwrite=True,
            block_size=settings.load("block_size"), other_inputs=other_inputs, sar=sar)
        with job_errors(feedback):
            planned = plan_job(inputs)
            job = planned.source
            feedback.pushInfo(f"Segmenting {job.grid.width} x {job.grid.height} px of '{layer.name()}' "
                              f"into {len(planned.params.classes)} classes")
            client = shared_manager().client(cancelled=feedback.isCanceled)
            result = execute(job, planned.params, client, progress=lambda p: feedback.setProgress(p * progress_scale),
                             cancelled=feedback.isCanceled, make_style=class_style_text, log=feedback.pushWarning)
        report_run(feedback, result)
        feedback.pushInfo(shares_message(result.class_pixels, result.names))
        one_class = shares_warning(result.class_pixels, result.names, planned.params.background_index,
                                   planned.params.threshold)
        if one_class:
            feedback.reportError(one_class, fatalError=False)
        return result


class SegmentAlgorithm(_SegmentBase):
    OUTPUT, OUTPUT_PROBABILITIES = "OUTPUT", "OUTPUT_PROBABILITIES"

    def name(self) -> str:
        return "segment"

    def displayName(self) -> str:  # noqa: N802
        return "Segment raster (open vocabulary)"

    def shortHelpString(self) -> str:  # noqa: N802
        return HELP_COMMON + (
            "\n\nSegmentation: a GeoTIFF of class indices (uint8, nodata 255, colour table, class names as "
            "categories and in the SEGEARTH_CLASSES metadata) with a .qml style beside it, so it opens styled; "
            "loaded into the project, it is named after its classes when it has no name of its own.\n\n"
            "Class probabilities: optional float32 GeoTIFF, one band per class (-1: nodata).")

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
        if result.probabilities_path is not None:
            feedback.pushInfo(f"Class probabilities (one float32 band per class): {result.probabilities_path}")
        attach(ResultPostProcessor(result.names, result.colours, self.output_description(self.OUTPUT),
                                   self.background_index(parameters, context)), context, output)
        return {self.OUTPUT: str(result.output_path),
                self.OUTPUT_PROBABILITIES: str(result.probabilities_path) if result.probabilities_path else None}


class SegmentVectorAlgorithm(_SegmentBase):
    OUTPUT, MIN_AREA, SIMPLIFY, DROP_BACKGROUND = "OUTPUT", "MIN_AREA", "SIMPLIFY", "DROP_BACKGROUND"

    def name(self) -> str:
        return "segment_vector"

    def displayName(self) -> str:  # noqa: N802
        return "Segment and vectorize"

    def shortHelpString(self) -> str:  # noqa: N802
        return HELP_COMMON + (
            "\n\nSegments like Segment raster, then turns regions of one class into polygons (gdal:polygonize) "
            "with class_id, class_name and area_m2 (ellipsoidal on the project's ellipsoid when it has one, and for "
            "geographic CRSs; else planar, as class_stats measures).\n\n"
            "Drop background polygons (on by default) leaves out the background class's polygons (none are "
            "dropped when the background is -1). Polygons smaller than the minimum area (m²) are dropped; the "
            "simplification tolerance (map units) simplifies the outlines.\n\n"
            "The polygons are styled by class name when loaded; a GeoPackage output gets a .qml style beside it, "
            "so it opens styled anywhere.")

    def createInstance(self) -> SegmentVectorAlgorithm:  # noqa: N802
        return SegmentVectorAlgorithm()

    def initAlgorithm(self, config: Optional[dict[str, Any]] = None) -> None:  # noqa: N802
        self.add_common_parameters()
        self.addParameter(QgsProcessingParameterBoolean(self.DROP_BACKGROUND, "Drop background polygons", True))
        self.addParameter(QgsProcessingParameterNumber(
            self.MIN_AREA, "Minimum polygon area (m²)", DOUBLE_NUMBER, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.SIMPLIFY, "Simplification tolerance (map units; 0: none)", DOUBLE_NUMBER,
            0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, "Class polygons",
                                                            VECTOR_POLYGON_SOURCE))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        with RunOutputs(self, parameters, context) as outputs:
            outputs.check(self.data_inputs(parameters, context), [self.OUTPUT])  # before the long work
            raster = QgsProcessingUtils.generateTempFilename("segearth_segmentation.tif")
            # Progress: segmentation 0-80 %, polygons 80-85 %, measuring 85-95 %, writing 95-100 %. (No
            # QgsProcessingMultiStepFeedback: its queued progress events can outlive it.)
            result = self.segment(parameters, context, feedback, raster, progress_scale=0.8)
            polygons = self.polygonize(raster, context, feedback)
            feedback.setProgress(85)
            background = self.background_index(parameters, context)
            drop = background if self.parameterAsBool(parameters, self.DROP_BACKGROUND, context) else None
            kept = self.select(polygons, result.names, drop,
                               self.parameterAsDouble(parameters, self.MIN_AREA, context), context, feedback)
            style = planned_vector_style(outputs.target(self.OUTPUT))
            fields = QgsFields()
            fields.append(QgsField("class_id", field_type("Int")))
            fields.append(QgsField("class_name", field_type("String")))
            fields.append(QgsField("area_m2", field_type("Double")))
            # Staged: a cancel or a failure from here on still leaves the destination as it was.
            outputs.sink(self.OUTPUT, fields, WKB_MULTIPOLYGON, polygons.crs())
            tolerance = self.parameterAsDouble(parameters, self.SIMPLIFY, context)
            request = QgsFeatureRequest().setFilterFids(list(kept))
            for index, feature in enumerate(polygons.getFeatures(request)):
                raise_if_cancelled(feedback)
                class_id, area = kept[feature.id()]
                geometry = feature.geometry()
                if tolerance > 0:
                    geometry = geometry.simplify(tolerance)
                geometry.convertToMultiType()
                out = QgsFeature(fields)
                out.setGeometry(geometry)
                out.setAttributes([class_id, result.names[class_id], area])
                outputs.add(self.OUTPUT, out)
                feedback.setProgress(95 + 5.0 * index / max(len(kept), 1))
            raise_if_cancelled(feedback)
            if style.path is not None:
                try:
                    text = vector_style_text(fields, class_vector_renderer(result.names, result.colours))
                except OSError as error:
                    feedback.reportError(f"The style {style.path.name} was not written ({error}); the polygons are "
                                         "styled when Processing loads them.", fatalError=False)
                else:
                    outputs.write_file(style.path, text.encode("utf-8"))
            elif style.reason:
                feedback.reportError(style.reason, fatalError=False)
            dest = outputs.commit()[self.OUTPUT]
        attach(ResultPostProcessor(result.names, result.colours, self.output_description(self.OUTPUT), background),
               context, dest)
        return {self.OUTPUT: dest}

    def polygonize(self, raster: str, context: QgsProcessingContext, feedback: QgsProcessingFeedback) -> QgsVectorLayer:
        """Regions of one class of ``raster`` as polygons with ``class_id`` (a temporary layer); cancellable."""
        import processing

        child = ChildFeedback(feedback, 80.0, 85.0)
        try:
            output = processing.run("gdal:polygonize", {"INPUT": raster, "BAND": 1, "FIELD": "class_id",
                                                        "EIGHT_CONNECTEDNESS": False, "OUTPUT": "TEMPORARY_OUTPUT"},
                                    context=context, feedback=child, is_child_algorithm=True)["OUTPUT"]
        finally:
            child.detach()
        raise_if_cancelled(feedback)
        layer = QgsProcessingUtils.mapLayerFromString(output, context)
        if not isinstance(layer, QgsVectorLayer) or not layer.isValid():
            raise QgsProcessingException("gdal:polygonize did not produce polygons: see its messages above.")
        return layer

    def select(self, polygons: QgsVectorLayer, names: list[str], drop: Optional[int], minimum: float,
               context: QgsProcessingContext, feedback: QgsProcessingFeedback) -> dict[int, tuple[int, float]]:
        """The polygons to keep: ``{feature id: (class id, area in m²)}``; cancellable.

        Leaves out nodata, the class ``drop`` (None: none) and polygons under ``minimum`` m².
        """
        measure = area_measure(polygons.crs(), context)
        total = max(polygons.featureCount(), 1)
        kept: dict[int, tuple[int, float]] = {}
        for index, feature in enumerate(polygons.getFeatures()):
            raise_if_cancelled(feedback)
            class_id = int(feature["class_id"])
            if class_id >= len(names) or class_id == drop:
                continue
            area = area_m2(measure, feature.geometry())
            if area >= minimum:
                kept[feature.id()] = (class_id, area)
            feedback.setProgress(85 + 10.0 * index / total)
        return kept
