"""Our class GeoTIFFs open styled however they are added to a project (real QGIS, real files, no backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr
from qgis.core import (
    QgsMultiBandColorRenderer,
    QgsPalettedRasterRenderer,
    QgsProcessingContext,
    QgsProcessingUtils,
    QgsProject,
    QgsRasterLayer,
    QgsSingleBandGrayRenderer,
)
from qgis.PyQt.QtGui import QColor

from segearth_qgis.core.classes import class_colours
from segearth_qgis.core.grid import Grid
from segearth_qgis.job.raster_io import LabelWriter
from segearth_qgis.map.result_style import ResultStyleHook, read_class_raster
from segearth_qgis.map.styling import RESULT_OPACITY, has_default_palette, write_class_style
from tests.plugin.helpers import CLASS_NAMES, UTM, smooth_image, write_geotiff


def write_class_raster(path: Path, names=CLASS_NAMES, background=0, colours_metadata=True) -> Path:
    """A class GeoTIFF as the job writes it (LabelWriter), 20 x 30 px of every class and nodata; no .qml."""
    reference = osr.SpatialReference()
    reference.ImportFromEPSG(32633)
    writer = LabelWriter(path, Grid(500000.0, 5600000.0, 2.0, 2.0, 30, 20), reference.ExportToWkt(), names,
                         class_colours(list(names), background))
    labels = np.arange(20 * 30).reshape(20, 30) % (len(names) + 1)
    labels[labels == len(names)] = 255
    writer.write(labels.astype(np.uint8), 0, 0)
    writer.close()
    if not colours_metadata:  # a result written before SEGEARTH_COLOURS existed
        dataset = gdal.Open(str(path), gdal.GA_Update)
        dataset.SetMetadataItem("SEGEARTH_COLOURS", None)
        dataset = None
    return path


@pytest.fixture
def project(qgis_app):
    project = QgsProject()
    hook = ResultStyleHook(project)
    hook.connect()
    yield project
    hook.disconnect()
    project.removeAllMapLayers()


def assert_class_style(layer: QgsRasterLayer, names=CLASS_NAMES, background=0) -> None:
    renderer = layer.renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)
    assert [c.label for c in renderer.classes()] == list(names)
    assert [int(c.value) for c in renderer.classes()] == list(range(len(names)))
    alphas = [c.color.alpha() for c in renderer.classes()]
    assert alphas == [0 if index == background else 255 for index in range(len(names))]
    assert layer.opacity() == pytest.approx(RESULT_OPACITY)


@pytest.mark.parametrize("colours_metadata", [True, False], ids=["colours-metadata", "older-file"])
def test_a_class_raster_added_without_its_style_gets_the_class_style(project, tmp_path, colours_metadata):
    path = write_class_raster(tmp_path / "result.tif", colours_metadata=colours_metadata)
    layer = QgsRasterLayer(str(path), "result")
    # What QGIS shows on its own: 256 entries, the background opaque black.
    assert has_default_palette(layer) and len(layer.renderer().classes()) == 256
    assert layer.renderer().classes()[0].color.getRgb() == (0, 0, 0, 255)
    project.addMapLayer(layer)
    assert_class_style(layer)
    assert layer.renderer().classes()[1].color.getRgb() == class_colours(CLASS_NAMES, 0)[1]


def test_processing_style_loading_skips_the_qml_and_the_hook_makes_up_for_it(project, tmp_path):
    path = write_class_raster(tmp_path / "result.tif")
    write_class_style(path, tmp_path / "result.qml", CLASS_NAMES, class_colours(CLASS_NAMES, 0))
    context = QgsProcessingContext()
    layer = QgsProcessingUtils.mapLayerFromString(str(path), context)  # as "open output file" / runAndLoadResults
    assert has_default_palette(layer)
    layer = context.temporaryLayerStore().takeMapLayer(layer)
    project.addMapLayer(layer)
    assert_class_style(layer)


def test_a_layer_opened_with_its_qml_keeps_it(project, tmp_path):
    path = write_class_raster(tmp_path / "result.tif")
    colours = class_colours(CLASS_NAMES, 0)
    colours[2] = (1, 2, 3, 255)  # as the user saved it
    write_class_style(path, tmp_path / "result.qml", CLASS_NAMES, colours)
    layer = QgsRasterLayer(str(path), "result")
    project.addMapLayer(layer)
    assert not has_default_palette(layer)
    assert layer.renderer().classes()[2].color.getRgb() == (1, 2, 3, 255)
    assert_class_style(layer)  # the .qml is our style, with the same opacity


def test_a_style_saved_in_a_project_is_kept_when_the_project_loads(project, tmp_path):
    path = write_class_raster(tmp_path / "result.tif")
    styled = QgsRasterLayer(str(path), "user-styled")
    project.addMapLayer(styled)
    styled.setRenderer(QgsSingleBandGrayRenderer(styled.dataProvider(), 1))
    styled.setOpacity(0.9)
    palette = QgsRasterLayer(str(path), "user-palette")
    project.addMapLayer(palette)
    palette.setRenderer(QgsPalettedRasterRenderer(palette.dataProvider(), 1, [
        QgsPalettedRasterRenderer.Class(1, QColor(9, 9, 9), "mine")]))
    project_file = tmp_path / "project.qgs"
    assert project.write(str(project_file))
    project.clear()
    assert project.read(str(project_file))
    layers = {layer.name(): layer for layer in project.mapLayers().values()}
    assert isinstance(layers["user-styled"].renderer(), QgsSingleBandGrayRenderer)
    assert layers["user-styled"].opacity() == pytest.approx(0.9)
    assert [c.label for c in layers["user-palette"].renderer().classes()] == ["mine"]
    assert layers["user-palette"].opacity() == pytest.approx(1.0)


def test_other_rasters_are_left_alone(project, tmp_path):
    scene = write_geotiff(tmp_path / "scene.tif", smooth_image(20, 30), 32633, UTM)
    palette = write_geotiff(tmp_path / "landcover.tif", np.zeros((1, 20, 30), np.uint8), 32633, UTM)
    dataset = gdal.Open(str(palette), gdal.GA_Update)
    table = gdal.ColorTable()
    table.SetColorEntry(0, (0, 0, 0, 255))
    dataset.GetRasterBand(1).SetRasterColorTable(table)
    dataset.GetRasterBand(1).SetCategoryNames(["forest"])  # category names alone do not make it ours
    dataset = None
    assert read_class_raster(str(scene)) is None and read_class_raster(str(palette)) is None
    scene_layer, palette_layer = QgsRasterLayer(str(scene), "scene"), QgsRasterLayer(str(palette), "landcover")
    project.addMapLayers([scene_layer, palette_layer])
    assert isinstance(scene_layer.renderer(), QgsMultiBandColorRenderer) and scene_layer.opacity() == 1.0
    assert has_default_palette(palette_layer) and palette_layer.opacity() == 1.0


def test_read_class_raster_without_the_classes_metadata_uses_the_category_names(tmp_path):
    path = write_class_raster(tmp_path / "result.tif")
    dataset = gdal.Open(str(path), gdal.GA_Update)
    dataset.SetMetadataItem("SEGEARTH_CLASSES", None)
    dataset = None
    classes = read_class_raster(str(path))
    assert classes is not None and classes.names == tuple(CLASS_NAMES)
    assert classes.colours == tuple(class_colours(CLASS_NAMES, 0))


def test_the_plugin_connects_the_hook_and_unload_disconnects_it(qgis_iface, tmp_path):
    import segearth_qgis

    plugin = segearth_qgis.classFactory(qgis_iface)
    plugin.initGui()
    project = QgsProject.instance()
    try:
        first = QgsRasterLayer(str(write_class_raster(tmp_path / "first.tif")), "first")
        project.addMapLayer(first)
        assert_class_style(first)
    finally:
        plugin.unload()
    second = QgsRasterLayer(str(write_class_raster(tmp_path / "second.tif")), "second")
    project.addMapLayer(second)
    try:
        assert has_default_palette(second)
    finally:
        project.removeMapLayers([first.id(), second.id()])


def test_the_results_group_is_expanded_in_the_layers_panel(tmp_path):
    """A real Layers panel (QgsLayerTreeView on the project's tree) shows the group open after each result,
    also when the user had collapsed it."""
    from qgis.core import QgsLayerTreeModel
    from qgis.gui import QgsLayerTreeView

    from segearth_qgis.map.styling import GROUP_NAME, add_result_layer

    project = QgsProject.instance()
    model = QgsLayerTreeModel(project.layerTreeRoot())
    view = QgsLayerTreeView()
    view.setModel(model)
    view.show()
    added = []
    try:
        added.append(add_result_layer(str(write_class_raster(tmp_path / "a.tif")), "a", CLASS_NAMES,
                                      class_colours(CLASS_NAMES)))
        group = project.layerTreeRoot().findGroup(GROUP_NAME)
        assert group.isExpanded() and view.isExpanded(view.node2index(group))
        view.collapse(view.node2index(group))
        added.append(add_result_layer(str(write_class_raster(tmp_path / "b.tif")), "b", CLASS_NAMES,
                                      class_colours(CLASS_NAMES)))
        assert group.isExpanded() and view.isExpanded(view.node2index(group))
    finally:
        view.hide()
        for layer in added:
            project.removeMapLayer(layer.id())
        group = project.layerTreeRoot().findGroup(GROUP_NAME)
        if group is not None:
            project.layerTreeRoot().removeChildNode(group)
