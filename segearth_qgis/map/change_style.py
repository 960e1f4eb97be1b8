"""Showing a change result: a paletted raster renderer and a categorized polygon renderer whose legend names
each transition present ("tree, forest → building"), unchanged pixels transparent, uncertain ones grey."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsFillSymbol,
    QgsPalettedRasterRenderer,
    QgsProject,
    QgsRasterLayer,
    QgsRendererCategory,
)
from qgis.PyQt.QtGui import QColor

from ..core.change import FIRST_TRANSITION
from ..core.change_legend import LegendEntry
from .styling import add_to_results_group, layer_style_text

#: Opacity of a change raster over its images: the changes are sparse and should stand out.
CHANGE_OPACITY = 0.85


def change_renderer(layer: QgsRasterLayer, legend: Sequence[LegendEntry]) -> QgsPalettedRasterRenderer:
    """One palette entry per legend entry (its code, colour and label)."""
    classes = [QgsPalettedRasterRenderer.Class(entry.code, QColor(*entry.colour), entry.label) for entry in legend]
    return QgsPalettedRasterRenderer(layer.dataProvider(), 1, classes)


def style_change_layer(layer: QgsRasterLayer, legend: Sequence[LegendEntry], opacity: float = CHANGE_OPACITY) -> None:
    """How a change raster is shown: :func:`change_renderer` and ``opacity`` (nodata has no entry: transparent)."""
    layer.setRenderer(change_renderer(layer, legend))
    layer.setOpacity(opacity)
    layer.triggerRepaint()


def add_change_layer(path: str, name: str, legend: Sequence[LegendEntry],
                     project: Optional[QgsProject] = None) -> QgsRasterLayer:
    """Load the change raster ``path`` styled (:func:`style_change_layer`) into the "SegEarth-OV" group."""
    layer = QgsRasterLayer(path, name, "gdal")
    if not layer.isValid():
        raise OSError(f"QGIS cannot open the change raster {path}")
    style_change_layer(layer, legend)
    add_to_results_group(layer, project or QgsProject.instance())
    return layer


def change_style_text(geotiff: Path, legend: Sequence[LegendEntry]) -> str:
    """The ``.qml`` text of the change style of ``geotiff`` (the job writes it beside the result as its default
    style).

    Raises:
        OSError: QGIS cannot open the GeoTIFF or export the style.
    """
    layer = QgsRasterLayer(str(geotiff), "style", "gdal")
    if not layer.isValid():
        raise OSError(f"QGIS cannot open {geotiff.name} to style it")
    style_change_layer(layer, legend)
    return layer_style_text(layer)


def change_vector_renderer(legend: Sequence[LegendEntry], field: str = "transition") -> QgsCategorizedSymbolRenderer:
    """A categorized renderer on ``field`` (the transition's name) with the raster's colours, transitions only."""
    categories = []
    for entry in legend:
        if entry.code < FIRST_TRANSITION:
            continue
        symbol = QgsFillSymbol.createSimple({"color": ",".join(map(str, entry.colour)), "outline_color": "35,35,35",
                                             "outline_width": "0.2"})
        categories.append(QgsRendererCategory(entry.label, symbol, entry.label))
    return QgsCategorizedSymbolRenderer(field, categories)
