"""Showing a result: a paletted renderer whose legend reads like the class list."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsFillSymbol,
    QgsLayerTreeGroup,
    QgsMapLayer,
    QgsPalettedRasterRenderer,
    QgsProject,
    QgsRasterLayer,
    QgsRendererCategory,
)
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtXml import QDomDocument

from ..job.staging import write_whole
from ..qgis_compat import renderer_band

GROUP_NAME = "SegEarth-OV"
#: Opacity of a class raster shown over its image (0-1): the image stays visible beneath the classes.
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
    style_result_layer(layer, names, colours)
    add_to_results_group(layer, project)
    return layer


def add_to_results_group(layer: QgsMapLayer, project: QgsProject) -> None:
    """Add ``layer`` on top of the project's "SegEarth-OV" group (created on first use)."""
    root = project.layerTreeRoot()
    group = root.findGroup(GROUP_NAME)
    if not isinstance(group, QgsLayerTreeGroup):
        group = root.insertGroup(0, GROUP_NAME)
    project.addMapLayer(layer, False)
    group.insertLayer(0, layer)
    # A group made empty is shown collapsed by the Layers panel (a tree view does not expand an item without
    # children) while the node says expanded, so setExpanded(True) alone would change nothing there: the
    # round trip makes every view expand it.
    group.setExpanded(False)
    group.setExpanded(True)


def class_style_text(geotiff: Path, names: Sequence[str], colours: Sequence[tuple[int, int, int, int]]) -> str:
    """The class style of ``geotiff`` as QML text (the job writes it beside the result as its default style).

    Raises:
        OSError: QGIS cannot open the GeoTIFF or export the style.
    """
    layer = QgsRasterLayer(str(geotiff), "style", "gdal")
    if not layer.isValid():
        raise OSError(f"QGIS cannot open {geotiff.name} to style it")
    style_result_layer(layer, names, colours)
    return layer_style_text(layer)


def layer_style_text(layer: QgsMapLayer) -> str:
    """``layer``'s whole style as the text of a ``.qml`` file (what QGIS's *Save Style* writes).

    Raises:
        OSError: QGIS could not export it.
    """
    document = QDomDocument("qgis")
    message = layer.exportNamedStyle(document)
    if message:
        raise OSError(f"QGIS could not export the style: {message}")
    return document.toString(2)


def write_class_style(geotiff: Path, qml: Path, names: Sequence[str],
                      colours: Sequence[tuple[int, int, int, int]]) -> None:
    """Write the class style of ``geotiff`` to ``qml`` as a job writes its files (whole, checked, or not at all).

    Raises:
        OSError: QGIS cannot make the style. OutputError: it could not be written (a full disk...).
    """
    write_whole(qml, class_style_text(geotiff, names, colours).encode("utf-8"))


def class_vector_renderer(names: Sequence[str], colours: Sequence[tuple[int, int, int, int]],
                          field: str = "class_name") -> QgsCategorizedSymbolRenderer:
    """A categorized renderer on ``field`` with one category (and colour) per class."""
    categories = []
    for name, colour in zip(names, colours):
        symbol = QgsFillSymbol.createSimple({"color": ",".join(map(str, colour)), "outline_style": "no"})
        categories.append(QgsRendererCategory(name, symbol, name))
    return QgsCategorizedSymbolRenderer(field, categories)


def style_result_layer(layer: QgsRasterLayer, names: Sequence[str], colours: Sequence[tuple[int, int, int, int]],
                       opacity: float = RESULT_OPACITY) -> None:
    """How a class raster is shown: :func:`apply_class_style` and ``opacity`` (0-1).

    Values outside the classes (nodata, 255) get no palette entry and stay transparent.
    """
    apply_class_style(layer, names, colours)
    layer.setOpacity(opacity)


def has_default_palette(layer: QgsRasterLayer) -> bool:
    """Whether ``layer`` shows the palette QGIS makes from band 1's colour table (nobody styled it).

    That is the renderer of a paletted GeoTIFF loaded without a style: one
    entry per colour-table entry (256 for a byte raster), with the file's
    colours (alpha lost: GeoTIFF colour tables have none) and labels.
    """
    renderer = layer.renderer()
    provider = layer.dataProvider()
    if not isinstance(renderer, QgsPalettedRasterRenderer) or provider is None or renderer_band(renderer) != 1:
        return False
    expected = QgsPalettedRasterRenderer.colorTableToClassData(provider.colorTable(1))
    current = renderer.classes()
    return len(current) == len(expected) > 0 and all(
        a.value == b.value and a.color == b.color and a.label == b.label for a, b in zip(current, expected))
