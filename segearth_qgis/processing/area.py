"""The one area measure of the Processing algorithms (``class_stats`` and ``segment_vector`` alike).

QGIS's rule: with the project's (or ``qgis_process``'s) ellipsoid, areas are ellipsoidal on it; without
one, a geographic CRS is measured on its own ellipsoid (WGS 84 when it names none) and a projected CRS
in the plane of its map units.
"""

from __future__ import annotations

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsDistanceArea,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingContext,
    QgsRectangle,
    QgsUnitTypes,
)

from ..qgis_compat import METERS, SQUARE_METERS

#: The ellipsoid of a geographic CRS that names none.
FALLBACK_ELLIPSOID = "EPSG:7030"


def area_measure(crs: QgsCoordinateReferenceSystem, context: QgsProcessingContext) -> QgsDistanceArea:
    """A measure for geometries in ``crs``, ellipsoidal or planar by the rule above."""
    measure = QgsDistanceArea()
    measure.setSourceCrs(crs, context.transformContext())
    ellipsoid = context.ellipsoid() if context.ellipsoid() not in ("", "NONE") else ""
    if ellipsoid:
        measure.setEllipsoid(ellipsoid)
    elif crs.isGeographic():
        measure.setEllipsoid(crs.ellipsoidAcronym() or FALLBACK_ELLIPSOID)
    return measure


def area_m2(measure: QgsDistanceArea, geometry: QgsGeometry) -> float:
    """The area of ``geometry`` in square metres."""
    return measure.convertAreaMeasurement(measure.measureArea(geometry), SQUARE_METERS)


def pixel_area_m2(crs: QgsCoordinateReferenceSystem, extent: QgsRectangle, columns: int, rows: int,
                  context: QgsProcessingContext) -> float:
    """The area of one pixel of a ``columns x rows`` raster over ``extent`` in m² (ellipsoidal: the pixel at
    the centre; planar: width times height)."""
    width, height = extent.width() / columns, extent.height() / rows
    measure = area_measure(crs, context)
    if not measure.willUseEllipsoid():
        factor = QgsUnitTypes.fromUnitToUnitFactor(crs.mapUnits(), METERS)
        return width * height * factor * factor
    x, y = extent.center().x(), extent.center().y()
    ring = [QgsPointXY(x, y), QgsPointXY(x + width, y), QgsPointXY(x + width, y + height), QgsPointXY(x, y + height)]
    return area_m2(measure, QgsGeometry.fromPolygonXY([ring]))
