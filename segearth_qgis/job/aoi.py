"""The area of interest, in whatever CRS it was drawn, brought into the raster's CRS."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsProject,
    QgsRectangle,
    QgsVectorLayer,
)

from ..core.grid import Rect
from ..errors import AoiError
from ..qgis_compat import POLYGON_GEOMETRY


class AoiKind(str, Enum):
    LAYER = "layer"
    MAP_VIEW = "map_view"
    RECTANGLE = "rectangle"
    SELECTED_FEATURES = "selected_features"


@dataclass
class AreaOfInterest:
    """What the user chose: a rectangle (with its CRS) or polygons, or the whole layer."""

    kind: AoiKind = AoiKind.LAYER
    rectangle: Optional[QgsRectangle] = None
    crs: Optional[QgsCoordinateReferenceSystem] = None
    geometries: list[QgsGeometry] = field(default_factory=list)


@dataclass(frozen=True)
class ResolvedAoi:
    """The AOI in the raster's CRS: a bounding rectangle (None: whole layer) and mask polygons as WKT."""

    rect: Optional[Rect]
    polygons_wkt: tuple[str, ...] = ()


def selected_polygons(layer: Optional[QgsVectorLayer]) -> AreaOfInterest:
    """The selected features of a polygon layer as an AOI."""
    if layer is None or not isinstance(layer, QgsVectorLayer):
        raise AoiError("Choose a polygon layer for the area of interest.")
    if layer.geometryType() != POLYGON_GEOMETRY:
        raise AoiError(f"Layer '{layer.name()}' is not a polygon layer.")
    geometries = [QgsGeometry(f.geometry()) for f in layer.selectedFeatures() if f.hasGeometry()]
    if not geometries:
        raise AoiError(f"No features are selected in '{layer.name()}': select the polygons to segment.")
    return AreaOfInterest(AoiKind.SELECTED_FEATURES, crs=layer.crs(), geometries=geometries)


def resolve(aoi: AreaOfInterest, raster_crs: QgsCoordinateReferenceSystem,
            project: Optional[QgsProject] = None) -> ResolvedAoi:
    """Transform the AOI into ``raster_crs``.

    Raises:
        AoiError: no rectangle drawn, or the transformation fails.
    """
    if aoi.kind == AoiKind.LAYER:
        return ResolvedAoi(None)
    project = project or QgsProject.instance()
    source_crs = aoi.crs if aoi.crs is not None and aoi.crs.isValid() else raster_crs
    transform = QgsCoordinateTransform(source_crs, raster_crs, project)
    try:
        if aoi.kind == AoiKind.SELECTED_FEATURES:
            polygons, boxes = [], []
            for geometry in aoi.geometries:
                moved = QgsGeometry(geometry)
                moved.transform(transform)
                polygons.append(moved.asWkt())
                boxes.append(moved.boundingBox())
            if not boxes:
                raise AoiError("No polygon is selected: select the polygons to segment.")
            return ResolvedAoi((min(b.xMinimum() for b in boxes), min(b.yMinimum() for b in boxes),
                                max(b.xMaximum() for b in boxes), max(b.yMaximum() for b in boxes)), tuple(polygons))
        if aoi.rectangle is None or aoi.rectangle.isEmpty():
            raise AoiError("No rectangle is drawn: click 'Draw' and drag a rectangle on the map.")
        box = transform.transformBoundingBox(aoi.rectangle)
    except Exception as error:  # QgsCsException has no Python base class of its own
        if isinstance(error, AoiError):
            raise
        raise AoiError(f"The area of interest cannot be transformed into the raster's CRS: {error}") from None
    return ResolvedAoi((box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum()))
