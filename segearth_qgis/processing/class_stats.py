"""``segearth:class_stats``: pixels, area and share per class, for the whole raster or per zone."""

from __future__ import annotations

import json
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
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterRasterLayer,
    QgsProcessingUtils,
    QgsRasterLayer,
)

from ..core.request_rules import NODATA_LABEL
from ..job.gdal_errors import collect_errors, opened
from ..qgis_compat import TABLE_SOURCE, VECTOR_POLYGON_SOURCE, WKB_NO_GEOMETRY
from ..qt_compat import field_type
from .area import pixel_area_m2
from .run_outputs import RunOutputs, layer_inputs


def class_names(layer: QgsRasterLayer) -> dict[int, str]:
    """Class names by value: GDAL category names, our metadata, or the layer's palette labels.

    Values without a name (a plain colour-table raster) are reported as "class N".
    """
    names: dict[int, str] = {}
    if layer.providerType() == "gdal":
        with collect_errors() as log:
            dataset = opened(layer.source(), log)
            if dataset is not None:
                dataset.GetMetadata()  # GTiff reads its .aux.xml (category names) only after such a call
                band = dataset.GetRasterBand(1)
                names.update({i: n for i, n in enumerate(band.GetCategoryNames() or []) if n})
                if not names and dataset.GetMetadataItem("SEGEARTH_CLASSES"):
                    names.update(dict(enumerate(json.loads(dataset.GetMetadataItem("SEGEARTH_CLASSES")))))
    renderer = layer.renderer()
    if not names and renderer is not None and renderer.type() == "paletted":
        names.update({int(c.value): c.label for c in renderer.classes() if c.label and c.label != str(int(c.value))})
    return names


class ClassStatsAlgorithm(QgsProcessingAlgorithm):
    INPUT, ZONES, ZONE_FIELD, OUTPUT = "INPUT", "ZONES", "ZONE_FIELD", "OUTPUT"

    def name(self) -> str:
        return "class_stats"

    def displayName(self) -> str:  # noqa: N802
        return "Class statistics"

    def shortHelpString(self) -> str:  # noqa: N802
        # Plain text, paragraphs separated by blank lines (qgis_process help prints HTML tags as they are).
        return ("Pixel count, area (m²) and share of each class of a segmentation raster (SegEarth-OV's, or "
                "any single-band class raster with a colour table or palette), for the whole raster or, with "
                "zones, per polygon (native:zonalhistogram).\n\n"
                "Zone attribute: the zones' field whose value goes into the zone column (default: the feature "
                "id). Without zones the zone column is empty.\n\n"
                f"Nodata ({NODATA_LABEL}) is not counted; shares are of the counted pixels. Area is pixels times "
                "the pixel area at the raster's centre: ellipsoidal on the project's ellipsoid when it has one "
                "(and for geographic CRSs), else planar, as segment_vector measures its polygons.")

    def createInstance(self) -> ClassStatsAlgorithm:  # noqa: N802
        return ClassStatsAlgorithm()

    def initAlgorithm(self, config: Optional[dict[str, Any]] = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Segmentation raster"))
        self.addParameter(QgsProcessingParameterFeatureSource(self.ZONES, "Zones (polygons)",
                                                              [VECTOR_POLYGON_SOURCE], optional=True))
        self.addParameter(QgsProcessingParameterField(self.ZONE_FIELD, "Zone attribute (empty: feature id)",
                                                      parentLayerParameterName=self.ZONES, optional=True))
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, "Class statistics", TABLE_SOURCE))

    def processAlgorithm(self, parameters: dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> dict[str, Any]:
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException("INPUT is not a raster layer QGIS can open.")
        if layer.bandCount() != 1:
            raise QgsProcessingException(f"INPUT has {layer.bandCount()} bands; a class raster has one.")
        zones_layer = self.parameterAsVectorLayer(parameters, self.ZONES, context) if parameters.get(self.ZONES) \
            else None
        with RunOutputs(self, parameters, context) as outputs:
            outputs.check([*layer_inputs(layer), *layer_inputs(zones_layer)], [self.OUTPUT])
            names = class_names(layer)
            area = pixel_area_m2(layer.crs(), layer.extent(), layer.width(), layer.height(), context)
            zone_field = self.parameterAsString(parameters, self.ZONE_FIELD, context) if parameters.get(self.ZONES) \
                else ""
            fields = QgsFields()
            fields.append(self.zone_output_field(parameters, context, zone_field))
            for name, kind in (("class_id", field_type("Int")), ("class_name", field_type("String")),
                               ("pixels", field_type("LongLong")),
                               ("area_m2", field_type("Double")), ("share", field_type("Double"))):
                fields.append(QgsField(name, kind))
            rows = self.count(layer, parameters, zone_field, context, feedback)
            outputs.sink(self.OUTPUT, fields, WKB_NO_GEOMETRY)
            for zone, counts in rows:
                total = sum(counts.values())
                for class_id in sorted(set(counts) | set(names)):
                    if feedback.isCanceled():
                        raise QgsProcessingException("Cancelled: no output was written.")
                    pixels = counts.get(class_id, 0)
                    feature = QgsFeature(fields)
                    feature.setAttributes([zone, class_id, names.get(class_id, f"class {class_id}"), pixels,
                                           pixels * area, pixels / total if total else 0.0])
                    outputs.add(self.OUTPUT, feature)
            return {self.OUTPUT: outputs.commit()[self.OUTPUT]}

    def count(self, layer: QgsRasterLayer, parameters: dict[str, Any], zone_field: str, context: QgsProcessingContext,
              feedback: QgsProcessingFeedback) -> list[tuple[Any, dict[int, int]]]:
        """Pixels per class value (nodata left out): one row for the whole raster, or one per zone."""
        import processing

        rows: list[tuple[Any, dict[int, int]]] = []
        if parameters.get(self.ZONES):
            histogram = processing.run("native:zonalhistogram", {
                "INPUT_RASTER": layer, "RASTER_BAND": 1, "INPUT_VECTOR": parameters[self.ZONES],
                "COLUMN_PREFIX": "HISTO_", "OUTPUT": "TEMPORARY_OUTPUT"},
                context=context, feedback=feedback, is_child_algorithm=True)["OUTPUT"]
            zones = QgsProcessingUtils.mapLayerFromString(histogram, context)
            columns = [f.name() for f in zones.fields() if f.name().startswith("HISTO_") and f.name()[6:].isdigit()]
            for feature in zones.getFeatures():
                counts = {int(c[6:]): int(feature[c] or 0) for c in columns}
                zone = feature[zone_field] if zone_field else int(feature.id())
                rows.append((zone, {k: v for k, v in counts.items() if k != NODATA_LABEL and v}))
        else:
            report = processing.run("native:rasterlayeruniquevaluesreport", {
                "INPUT": layer, "BAND": 1, "OUTPUT_TABLE": "TEMPORARY_OUTPUT"},
                context=context, feedback=feedback, is_child_algorithm=True)["OUTPUT_TABLE"]
            table = QgsProcessingUtils.mapLayerFromString(report, context)
            counts = {int(f["value"]): int(f["count"]) for f in table.getFeatures()
                      if f["value"] is not None and not math.isnan(float(f["value"]))}
            rows.append((None, {k: v for k, v in counts.items() if k != NODATA_LABEL}))
        return rows

    def zone_output_field(self, parameters: dict[str, Any], context: QgsProcessingContext, name: str) -> QgsField:
        """The ``zone`` column: a copy of the zones' field ``name`` (its type), or the feature id."""
        if name:
            source = self.parameterAsSource(parameters, self.ZONES, context)
            index = source.fields().lookupField(name) if source is not None else -1
            if index < 0:
                raise QgsProcessingException(f"The zones have no field '{name}': choose one of their fields, or "
                                             "leave the zone attribute empty for the feature id.")
            field = source.fields().at(index)  # its type, not its constraints (a zone has one row per class)
            return QgsField("zone", field.type(), field.typeName(), field.length(), field.precision(), "",
                            field.subType())
        return QgsField("zone", field_type("LongLong"))
