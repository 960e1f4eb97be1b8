"""Showing a result: a paletted renderer whose legend reads like the class list."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsFillSymbol,
    QgsLayerTreeGroup,
    QgsPalettedRasterRenderer,
    QgsProject,
    QgsRasterLayer,
    QgsRendererCategory,
)
from qgis.PyQt.QtGui import QColor

GROUP_NAME = "SegEarth-OV"
#: Results are drawn over the imagery they describe: the imagery stays readable beneath.
RESULT_OPACITY = 0.6


def apply_class_style(layer: QgsRasterLayer, names: Sequence[str],
                      colours: Sequence[tuple[int, int, int, int]]) -> None:
    """One palette entry per class: its name as label, its colour (alpha 0 = transparent)."""
    classes = [QgsPalettedRasterRenderer.Class(index, QColor(*colour), name)
               for index, (name, colour) in enumerate(zip(names, colours))]
    renderer = QgsPalettedRasterRenderer(layer.dataProvider(), 1, classes)
    layer.setRenderer(renderer)
    layer.triggerRepaint()


def add_result_layer(path: str, name: str, names: Sequence[str], colours: Sequence[tuple[int, int, int, int]],
                     project: Optional[QgsProject] = None) -> QgsRasterLayer:
    """Load ``path`` styled, into the project's "SegEarth-OV" group (created on first use)."""
    project = project or QgsProject.instance()
    layer = QgsRasterLayer(path, name, "gdal")
    if not layer.isValid():
        raise OSError(f"QGIS cannot open the result {path}")
    apply_class_style(layer, names, colours)
    layer.renderer().setOpacity(RESULT_OPACITY)
    root = project.layerTreeRoot()
    group = root.findGroup(GROUP_NAME)
    if not isinstance(group, QgsLayerTreeGroup):
        group = root.insertGroup(0, GROUP_NAME)
    project.addMapLayer(layer, False)
    group.insertLayer(0, layer)
    group.setExpanded(True)
    return layer


def write_class_style(geotiff: Path, qml: Path, names: Sequence[str],
                      colours: Sequence[tuple[int, int, int, int]]) -> None:
    """Write the class style of ``geotiff`` to ``qml`` (the job moves it beside the result as its default style).

    Raises:
        OSError: QGIS cannot open the GeoTIFF or write the style.
    """
    layer = QgsRasterLayer(str(geotiff), "style", "gdal")
    if not layer.isValid():
        raise OSError(f"QGIS cannot open {geotiff.name} to style it")
    apply_class_style(layer, names, colours)
    message, ok = layer.saveNamedStyle(str(qml))
    if not ok:
        raise OSError(f"could not write the style {qml.name}: {message}")


def class_vector_renderer(names: Sequence[str], colours: Sequence[tuple[int, int, int, int]],
                          field: str = "class_name") -> QgsCategorizedSymbolRenderer:
    """A categorized renderer on ``field`` with one category (and colour) per class."""
    categories = []
    for name, colour in zip(names, colours):
        symbol = QgsFillSymbol.createSimple({"color": ",".join(map(str, colour)), "outline_style": "no"})
        categories.append(QgsRendererCategory(name, symbol, name))
    return QgsCategorizedSymbolRenderer(field, categories)
