"""Our class GeoTIFFs look the same however they are opened.

QGIS shows a paletted GeoTIFF loaded without its ``.qml`` (Processing's
"open output file", ``processing.runAndLoadResults``, a copy without its
style) as 256 palette entries with an opaque black background: GeoTIFF colour
tables keep no alpha. :func:`read_class_raster` recognises our class rasters
by their GDAL metadata, and :class:`ResultStyleHook` styles them whenever
they are added to a project, unless someone already styled them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from osgeo import gdal
from qgis.core import Qgis, QgsMapLayer, QgsProject, QgsProviderRegistry, QgsRasterLayer

from ..core.classes import RGBA, class_colours
from ..job.gdal_errors import collect_errors, opened
from ..job.raster_io import SOFTWARE
from .styling import has_default_palette, style_result_layer


@dataclass(frozen=True)
class ClassRaster:
    """The classes of one of our class rasters: label value ``i`` is ``names[i]``, drawn in ``colours[i]``."""

    names: tuple[str, ...]
    colours: tuple[RGBA, ...]


def _json_list(text: Optional[str]) -> list[Any]:
    if not text:
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def _names(metadata: dict[str, str], categories: Optional[Sequence[str]]) -> tuple[str, ...]:
    names = _json_list(metadata.get("SEGEARTH_CLASSES"))
    if names and all(isinstance(name, str) and name for name in names):
        return tuple(names)
    found = list(categories or [])
    while found and not found[-1]:
        found.pop()
    return tuple(name or f"class {index}" for index, name in enumerate(found))


def _is_rgba(value: object) -> bool:
    return (isinstance(value, list) and len(value) == 4
            and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value))


def _colours(metadata: dict[str, str], table: Optional[gdal.ColorTable], count: int,
             names: Sequence[str]) -> tuple[RGBA, ...]:
    stored = _json_list(metadata.get("SEGEARTH_COLOURS"))
    if len(stored) == count and all(_is_rgba(c) for c in stored):
        return tuple((c[0], c[1], c[2], c[3]) for c in stored)
    if table is None or table.GetCount() < count:
        return tuple(class_colours(list(names), None))
    colours: list[RGBA] = []
    for index in range(count):
        r, g, b, a = table.GetColorEntry(index)
        # Our palette gives black only to the background, which is transparent (the alpha was lost).
        colours.append((0, 0, 0, 0) if (r, g, b) == (0, 0, 0) else (r, g, b, a))
    return tuple(colours)


def read_class_raster(path: str) -> Optional[ClassRaster]:
    """The classes of a class raster this plugin wrote, or None for any other raster (or one GDAL cannot open).

    Recognised by the ``SEGEARTH_CLASSES`` or ``SEGEARTH_SOFTWARE`` metadata of a
    single-band byte raster; names from ``SEGEARTH_CLASSES``, else the category
    names; colours (RGBA) from ``SEGEARTH_COLOURS``, else the colour table.
    """
    with collect_errors() as log:
        dataset = opened(path, log)
        if dataset is None:
            return None
        metadata = dataset.GetMetadata() or {}  # GTiff reads its .aux.xml (category names) only after this
        ours = "SEGEARTH_CLASSES" in metadata or metadata.get("SEGEARTH_SOFTWARE") == SOFTWARE
        if not ours or dataset.RasterCount != 1:
            return None
        band = dataset.GetRasterBand(1)
        if band.DataType != gdal.GDT_Byte:
            return None
        names = _names(metadata, band.GetCategoryNames())
        if not names:
            return None
        return ClassRaster(names, _colours(metadata, band.GetColorTable(), len(names), names))


def layer_class_raster(layer: QgsMapLayer) -> Optional[ClassRaster]:
    """:func:`read_class_raster` for a layer: a single-band byte raster read by GDAL, else None."""
    if not isinstance(layer, QgsRasterLayer) or layer.providerType() != "gdal" or not layer.isValid():
        return None
    provider = layer.dataProvider()
    if provider is None or layer.bandCount() != 1 or provider.dataType(1) != Qgis.DataType.Byte:
        return None
    path = QgsProviderRegistry.instance().decodeUri("gdal", layer.source()).get("path") or layer.source()
    return read_class_raster(str(path))


def style_if_unstyled_result(layer: QgsMapLayer) -> bool:
    """Give one of our class rasters its class style if it still shows QGIS's default palette.

    A layer someone styled (its ``.qml``, a project, the user) is left as it is.
    Returns whether the layer was styled.
    """
    if not isinstance(layer, QgsRasterLayer) or not has_default_palette(layer):
        return False
    classes = layer_class_raster(layer)
    if classes is None:
        return False
    style_result_layer(layer, classes.names, classes.colours)
    return True


class ResultStyleHook:
    """Styles our class rasters as they are added to a project: drag and drop, Add Raster Layer, Processing."""

    def __init__(self, project: Optional[QgsProject] = None) -> None:
        self.project = project or QgsProject.instance()
        self.connected = False

    def connect(self) -> None:
        if not self.connected:
            self.project.layersAdded.connect(self.layers_added)
            self.connected = True

    def disconnect(self) -> None:
        if self.connected:
            self.project.layersAdded.disconnect(self.layers_added)
            self.connected = False

    def layers_added(self, layers: Sequence[QgsMapLayer]) -> None:
        for layer in layers:
            style_if_unstyled_result(layer)
