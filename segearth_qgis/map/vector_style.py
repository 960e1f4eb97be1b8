"""A ``.qml`` beside a GeoPackage of class polygons, so it opens styled anywhere (never another file's style)."""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from qgis.core import (
    QgsDataSourceUri,
    QgsFeatureRenderer,
    QgsFields,
    QgsProcessingContext,
    QgsProcessingOutputLayerDefinition,
    QgsProviderRegistry,
    QgsVectorLayer,
)
from qgis.PyQt.QtXml import QDomDocument

#: Files that do not claim a ``.qml``: styles, metadata, GDAL and SQLite side files.
_NOT_OWNERS = (".qml", ".qmd", ".aux.xml", "-wal", "-shm", "-journal")


@dataclass(frozen=True)
class VectorStylePlan:
    """Where the style of a polygon output goes: ``path``, or None and (when worth saying) ``reason``."""

    path: Optional[Path] = None
    reason: str = ""


def sink_destination(value: Any, context: QgsProcessingContext) -> str:
    """A feature sink parameter's value as the destination text Processing writes to."""
    if isinstance(value, QgsProcessingOutputLayerDefinition):
        text, _ = value.sink.valueAsString(context.expressionContext(), "")
        return str(text or "")
    return "" if value is None else str(value)


def _geopackage(destination: str) -> tuple[Optional[Path], bool]:
    """The GeoPackage file of ``destination`` (None if it is not one), and whether it names a layer in it."""
    if destination.startswith("ogr:"):
        uri = QgsDataSourceUri(destination[4:])
        path, named = uri.database() or uri.param("dbname"), True
    else:
        parts = QgsProviderRegistry.instance().decodeUri("ogr", destination)
        path, named = parts.get("path") or "", bool(parts.get("layerName"))
    if not path or Path(path).suffix.lower() != ".gpkg":
        return None, False
    return Path(os.path.abspath(Path(path).expanduser())), named


def _style_owners(target: Path) -> list[Path]:
    """Other files QGIS would also take ``target``'s ``.qml`` as the default style of (same name up to the suffix)."""
    folder = target.parent
    if not folder.is_dir():
        return []
    return sorted(entry for entry in folder.iterdir()
                  if entry.stem.lower() == target.stem.lower() and entry.name.lower() != target.name.lower()
                  and not entry.name.startswith(".") and not entry.name.lower().endswith(_NOT_OWNERS))


def planned_vector_style(value: Any, context: QgsProcessingContext) -> VectorStylePlan:
    """Decide, before the output is created, whether a ``.qml`` goes beside ``value`` (a sink parameter's value).

    Only a GeoPackage gets one, and only when the style is certainly its own:
    no other file of that name stem (``polys.tif``) owns it, a ``.qml`` that is
    already there belongs to the GeoPackage being replaced, and the GeoPackage
    holds only our layer (a layer added to an existing GeoPackage gets none: the
    ``.qml`` would style its other layers too).
    """
    gpkg, named_layer = _geopackage(sink_destination(value, context))
    if gpkg is None:
        return VectorStylePlan()
    qml = gpkg.with_suffix(".qml")
    owners = _style_owners(gpkg)
    if owners:
        return VectorStylePlan(reason=f"The style {qml} was not written: that name is the style of {owners[0].name}. "
                                      "The polygons are styled when Processing loads them; save them under another "
                                      "name to get a .qml beside them.")
    if qml.exists() and not gpkg.exists():
        return VectorStylePlan(reason=f"The style {qml} was not written: that file exists and does not belong to "
                                      "an earlier output of this name.")
    if named_layer and gpkg.exists():
        return VectorStylePlan(reason=f"No .qml was written beside {gpkg.name}: it holds other layers, which the "
                                      "style would change too. The polygons are styled when Processing loads them.")
    return VectorStylePlan(qml)


def write_vector_style(qml: Path, fields: QgsFields, renderer: QgsFeatureRenderer) -> None:
    """Write a polygon layer style with ``renderer`` to ``qml``, whole or not at all (a temporary file renamed).

    Raises:
        OSError: the style could not be exported or written.
    """
    layer = QgsVectorLayer("MultiPolygon", "style", "memory")
    layer.dataProvider().addAttributes(list(fields))
    layer.updateFields()
    layer.setRenderer(renderer)
    document = QDomDocument("qgis")
    message = layer.exportNamedStyle(document)
    if message:
        raise OSError(f"QGIS could not export the style: {message}")
    temporary = qml.with_name(f".{qml.name}.{secrets.token_hex(4)}.part")
    try:
        temporary.write_text(document.toString(), encoding="utf-8")
        os.replace(temporary, qml)
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
