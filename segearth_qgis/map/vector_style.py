"""A ``.qml`` beside a GeoPackage of class polygons, so it opens styled anywhere (never another file's style)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from qgis.core import QgsFeatureRenderer, QgsFields, QgsVectorLayer

from ..errors import OutputError
from ..job.outputs import STYLE_SUFFIX, stem_owners
from ..job.vector_outputs import VectorTarget, geopackage_layers
from .styling import layer_style_text


@dataclass(frozen=True)
class VectorStylePlan:
    """Where the style of a polygon output goes: ``path``, or None and (when worth saying) ``reason``."""

    path: Optional[Path] = None
    reason: str = ""


def planned_vector_style(target: Optional[VectorTarget]) -> VectorStylePlan:
    """Decide, before the output is written, whether a ``.qml`` goes beside ``target``.

    Only a GeoPackage gets one, and only when the style is certainly its own:
    no other file of that name stem (``polys.tif``) owns it, a ``.qml`` that is
    already there belongs to the GeoPackage being replaced, and the GeoPackage
    holds no other layer (a layer added to an existing GeoPackage gets none: the
    ``.qml`` would style its other layers too).
    """
    if target is None or not target.geopackage:
        return VectorStylePlan()
    gpkg = target.path
    qml = gpkg.with_suffix(STYLE_SUFFIX)
    owners = stem_owners(gpkg)
    if owners:
        return VectorStylePlan(reason=f"The style {qml} was not written: that name is the style of {owners[0].name}. "
                                      "The polygons are styled when Processing loads them; save them under another "
                                      "name to get a .qml beside them.")
    if qml.exists() and not gpkg.exists():
        return VectorStylePlan(reason=f"The style {qml} was not written: that file exists and does not belong to "
                                      "an earlier output of this name.")
    try:
        others = [name for name in geopackage_layers(gpkg) if name.lower() != str(target.layer).lower()] \
            if gpkg.exists() else []
    except OutputError as error:
        return VectorStylePlan(reason=str(error))
    if others:
        return VectorStylePlan(reason=f"No .qml was written beside {gpkg.name}: it holds other layers ({others[0]}"
                                      f"{' ...' if len(others) > 1 else ''}), which the style would change too. The "
                                      "polygons are styled when Processing loads them.")
    return VectorStylePlan(qml)


def vector_style_text(fields: QgsFields, renderer: QgsFeatureRenderer) -> str:
    """The ``.qml`` text of a polygon layer with ``fields`` drawn by ``renderer``.

    Raises:
        OSError: QGIS could not export the style.
    """
    layer = QgsVectorLayer("MultiPolygon", "style", "memory")
    layer.dataProvider().addAttributes(list(fields))
    layer.updateFields()
    layer.setRenderer(renderer)
    return layer_style_text(layer)
