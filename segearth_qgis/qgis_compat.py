"""QGIS names that moved between QGIS 3.22 and QGIS 4, resolved once: the running QGIS's own form.

From 3.30 on QGIS moved its enums into ``Qgis`` (``Qgis.WkbType``,
``Qgis.ProcessingSourceType``...) and from 3.34 on deprecated a few methods
for new ones (``inputBand()``). QGIS 4 keeps the old names only as
compatibility aliases, which may go during 4.x. Each name here is the new
form where the running QGIS has it (found by its presence, not by a version
number) and the 3.22 form before; ``tests/plugin/test_qgis4_api.py`` checks
that the plugin writes no moved or deprecated name anywhere else.

Enums that were already in their final place in 3.22 are written in full,
scoped form where they are used (``Qgis.MessageLevel.Warning``,
``QgsTask.Flag.CanCancel``, ``Qgis.DataType.Byte``).
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    Qgis,
    QgsMapLayerProxyModel,
    QgsProcessing,
    QgsProcessingParameterNumber,
    QgsRaster,
    QgsTask,
    QgsUnitTypes,
    QgsWkbTypes,
)

if hasattr(Qgis, "WkbType"):  # 3.30
    WKB_MULTIPOLYGON: Any = Qgis.WkbType.MultiPolygon
    WKB_NO_GEOMETRY: Any = Qgis.WkbType.NoGeometry
    POLYGON_GEOMETRY: Any = Qgis.GeometryType.Polygon
    SQUARE_METERS: Any = Qgis.AreaUnit.SquareMeters
    METERS: Any = Qgis.DistanceUnit.Meters
else:
    WKB_MULTIPOLYGON = QgsWkbTypes.Type.MultiPolygon
    WKB_NO_GEOMETRY = QgsWkbTypes.Type.NoGeometry
    POLYGON_GEOMETRY = QgsWkbTypes.GeometryType.PolygonGeometry
    SQUARE_METERS = QgsUnitTypes.AreaUnit.AreaSquareMeters
    METERS = QgsUnitTypes.DistanceUnit.DistanceMeters

if hasattr(Qgis, "RasterColorInterpretation"):  # 3.30
    ALPHA_BAND: Any = Qgis.RasterColorInterpretation.AlphaBand
else:
    ALPHA_BAND = QgsRaster.ColorInterpretation.AlphaBand

if hasattr(Qgis, "LayerFilter"):  # 3.34
    POLYGON_LAYERS: Any = Qgis.LayerFilter.PolygonLayer
    RASTER_LAYERS: Any = Qgis.LayerFilter.RasterLayer
else:
    POLYGON_LAYERS = QgsMapLayerProxyModel.Filter.PolygonLayer
    RASTER_LAYERS = QgsMapLayerProxyModel.Filter.RasterLayer

if hasattr(Qgis, "ProcessingSourceType"):  # 3.36
    VECTOR_POLYGON_SOURCE: Any = Qgis.ProcessingSourceType.VectorPolygon
    TABLE_SOURCE: Any = Qgis.ProcessingSourceType.Vector
    DOUBLE_NUMBER: Any = Qgis.ProcessingNumberParameterType.Double
    INTEGER_NUMBER: Any = Qgis.ProcessingNumberParameterType.Integer
else:
    VECTOR_POLYGON_SOURCE = QgsProcessing.SourceType.TypeVectorPolygon
    TABLE_SOURCE = QgsProcessing.SourceType.TypeVector
    DOUBLE_NUMBER = QgsProcessingParameterNumber.Type.Double
    INTEGER_NUMBER = QgsProcessingParameterNumber.Type.Integer


def renderer_band(renderer: Any) -> int:
    """The band a single-band raster renderer (grey, paletted) draws.

    ``inputBand()`` from 3.38 on (``grayBand()`` and ``band()`` are deprecated there); before it, those two.
    """
    if hasattr(renderer, "inputBand"):
        return int(renderer.inputBand())
    return int(renderer.grayBand() if renderer.type() == "singlebandgray" else renderer.band())


#: The flags of a task whose outcome the plugin reports itself: QGIS then adds no "Task complete" notice of its
#: own on top of the plugin's message (``Silent``: QGIS 3.26 on; 3.22 has no way to ask for that).
_SILENT = getattr(QgsTask.Flag, "Silent", None)
OWN_MESSAGE_TASK: Any = QgsTask.Flag.CanCancel if _SILENT is None else QgsTask.Flag.CanCancel | _SILENT
