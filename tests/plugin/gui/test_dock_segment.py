"""End to end through the dock's own code path: real QGIS, real backend process, GeoTIFFs read back with GDAL."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsTask,
    QgsVectorLayer,
)

from segearth_qgis import settings
from segearth_qgis.core.classes import class_colours
from segearth_qgis.gui.dock import SegEarthDock
from tests.plugin.helpers import CLASS_NAMES as CLASS_LIST
from tests.plugin.helpers import (
    CLASSES,
    UTM,
    folder_digests,
    input_with_side_files,
    read_band,
    smooth_image,
    wait_until,
    write_geotiff,
)


@pytest.fixture(scope="module")
def dock(qgis_iface, backend_environment, tmp_path_factory):
    settings.save("block_size", 1024)
    settings.save("output_folder", str(tmp_path_factory.mktemp("results")))  # unnamed results, never in $HOME
    panel = SegEarthDock(qgis_iface)
    panel.confirm = lambda question: False  # never overwrite, never accept huge jobs silently
    yield panel
    panel.shutdown()


def load(path, name="input"):
    layer = QgsRasterLayer(str(path), name)
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    return layer


def prepare(dock, layer, output=None, classes=CLASSES, aoi="layer", threshold=0.0, background=0):
    """Fill the panel as a user would."""
    dock.raster_box.set_layer(layer)
    dock.classes_box.edit.setPlainText(classes)
    dock.classes_box.set_background(background)
    dock.options_box.threshold_spin.setValue(threshold)
    dock.options_box.lambda_spin.setValue(-0.3)
    dock.options_box.probabilities_check.setChecked(False)
    dock.options_box.output_widget.setFilePath(str(output) if output else "")
    dock.area_box.kind_combo.setCurrentIndex(dock.area_box.kind_combo.findData(aoi))


def run(dock, layer, output=None, classes=CLASSES, aoi="layer", timeout=240, **options):
    """Fill the panel, click Segment, wait for the job to end."""
    prepare(dock, layer, output, classes, aoi, **options)
    task = dock.segment()
    if task is not None:
        wait_until(lambda: dock.task is None, timeout)
    else:
        bar = dock.iface.messageBar()
        print("segment() refused:", bar.get_messages(Qgis.Warning), bar.get_messages(Qgis.Critical))
    return task


def rgb_of_uint8_layer(path, nodata=None):
    """The layer's pixels as the engine should see them, read straight with GDAL (no plugin code)."""
    bands = gdal.Open(str(path)).ReadAsArray()
    valid = np.ones(bands.shape[1:], bool) if nodata is None else (bands != nodata).all(axis=0)
    rgb = np.ascontiguousarray(bands.transpose(1, 2, 0))
    rgb[~valid] = 0
    return rgb, valid


def check_output(path, layer, crs_authid, geotransform, size):
    dataset = gdal.Open(str(path))
    assert dataset.RasterXSize == size[1] and dataset.RasterYSize == size[0]
    assert dataset.GetGeoTransform() == pytest.approx(geotransform)
    reference = QgsCoordinateReferenceSystem.fromWkt(dataset.GetProjection())
    assert reference.authid() == crs_authid
    band = dataset.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Byte and band.GetNoDataValue() == 255
    assert band.GetCategoryNames()[:5] == CLASS_LIST
    colours = class_colours(CLASSES.splitlines())
    # TIFF palettes hold RGB only; transparency of the background lives in the layer style.
    assert band.GetColorTable().GetColorEntry(1)[:3] == colours[1][:3]
    return band.ReadAsArray()


def result_layer(name_prefix):
    group = QgsProject.instance().layerTreeRoot().findGroup("SegEarth-OV")
    assert group is not None
    layers = [node.layer() for node in group.findLayers() if node.layer().name().startswith(name_prefix)]
    assert layers
    return layers[0]


def check_renderer(layer):
    renderer = layer.renderer()
    assert renderer.type() == "paletted"
    assert [c.label for c in renderer.classes()] == CLASS_LIST
    assert renderer.classes()[0].color.alpha() == 0 and renderer.classes()[1].color.alpha() == 255


def test_projected_uint8_with_nodata(dock, tmp_path, tiny_segmenter, messages):
    image = smooth_image(300, 260)
    image[:, :20, :30] = 0
    layer = load(write_geotiff(tmp_path / "utm.tif", image, 32633, UTM, nodata=0), "utm8")
    output = tmp_path / "out.tif"
    task = run(dock, layer, output)
    assert task.result is not None, task.error
    labels = check_output(output, layer, "EPSG:32633", UTM, (300, 260))
    rgb, valid = rgb_of_uint8_layer(tmp_path / "utm.tif", nodata=0)
    expected = tiny_segmenter.predict(rgb, CLASSES.splitlines(), valid=valid).labels
    assert (labels[:20, :30] == 255).all()
    np.testing.assert_array_equal(labels, expected)
    check_renderer(result_layer("utm8"))
    assert any("Segmented" in m for m in messages.get_messages(Qgis.Success))


@pytest.mark.parametrize("threshold, background", [(0.35, 2), (0.5, 4)])
def test_threshold_and_background_reach_the_engine(dock, tmp_path, tiny_segmenter, threshold, background):
    image = smooth_image(180, 150, seed=9)
    layer = load(write_geotiff(tmp_path / "thr.tif", image, 32633, UTM), "thr")
    task = run(dock, layer, tmp_path / "thr_out.tif", threshold=threshold, background=background)
    assert task.result is not None, task.error
    labels = read_band(tmp_path / "thr_out.tif")
    rgb = np.ascontiguousarray(image.transpose(1, 2, 0))
    expected = tiny_segmenter.predict(rgb, CLASSES.splitlines(), prob_threshold=threshold,
                                      background_index=background)
    np.testing.assert_array_equal(labels, expected.labels)
    plain = tiny_segmenter.predict(rgb, CLASSES.splitlines())
    assert (expected.labels != plain.labels).any()  # the threshold changed something: this test can fail


def test_geographic_uint16_single_band(dock, tmp_path, tiny_segmenter):
    rng = np.random.default_rng(5)
    image = (smooth_image(200, 240, bands=1).astype(np.uint16) * 40 + rng.integers(0, 30, (1, 200, 240))).astype(
        np.uint16)
    geotransform = (13.0, 0.00002, 0.0, 52.5, 0.0, -0.00002)
    layer = load(write_geotiff(tmp_path / "geo.tif", image, 4326, geotransform), "geo16")
    dock.raster_box.set_layer(layer)
    assert dock.area_box.resolution_label.text() == "m (converted)"
    expected_metres = 0.00002 * 111320 * np.cos(np.radians(52.498))
    assert dock.area_box.resolution_spin.value() == pytest.approx(expected_metres, rel=1e-3)
    task = run(dock, layer, tmp_path / "geo_out.tif")
    assert task.result is not None, task.error
    labels = check_output(tmp_path / "geo_out.tif", layer, "EPSG:4326", geotransform, (200, 240))
    # QGIS's own contrast enhancement of the layer is the stretch (computed here in numpy).
    enhancement = layer.renderer().contrastEnhancement()
    low, high = enhancement.minimumValue(), enhancement.maximumValue()
    grey = np.clip(np.rint((image[0].astype(np.float64) - low) * 255.0 / (high - low)), 0, 255).astype(np.uint8)
    rgb = np.ascontiguousarray(np.stack([grey] * 3, axis=-1))
    np.testing.assert_array_equal(labels, tiny_segmenter.predict(rgb, CLASSES.splitlines()).labels)


def test_rgba_alpha_becomes_nodata(dock, tmp_path):
    image = np.concatenate([smooth_image(150, 150), np.full((1, 150, 150), 255, np.uint8)])
    image[3, 100:, :] = 0
    layer = load(write_geotiff(tmp_path / "rgba.tif", image, 32633, UTM, alpha_band=4), "rgba")
    task = run(dock, layer, tmp_path / "rgba_out.tif")
    assert task.result is not None, task.error
    labels = gdal.Open(str(tmp_path / "rgba_out.tif")).ReadAsArray()
    assert (labels[100:] == 255).all() and (labels[:100] < 5).all()


def test_rectangle_drawn_in_another_crs(dock, tmp_path):
    layer = load(write_geotiff(tmp_path / "big.tif", smooth_image(400, 400), 32633, UTM), "big")
    # The canvas is in WGS 84: draw the rectangle there.
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    from qgis.core import QgsCoordinateTransform

    to_wgs84 = QgsCoordinateTransform(layer.crs(), wgs84, QgsProject.instance())
    drawn = to_wgs84.transformBoundingBox(QgsRectangle(500100.0, 5599300.0, 500400.0, 5599700.0))
    dock.raster_box.set_layer(layer)
    dock.set_drawn_rectangle(drawn, wgs84)
    task = run(dock, layer, tmp_path / "rect_out.tif", aoi="rectangle")
    assert task.result is not None, task.error
    dataset = gdal.Open(str(tmp_path / "rect_out.tif"))
    x0, px, _, y0, _, py = dataset.GetGeoTransform()
    back = QgsCoordinateTransform(wgs84, layer.crs(), QgsProject.instance()).transformBoundingBox(drawn)
    # The grid covers the drawn rectangle, snapped outwards to whole 2 m source pixels.
    assert x0 <= back.xMinimum() < x0 + 2 and y0 >= back.yMaximum() > y0 - 2
    assert x0 + dataset.RasterXSize * px >= back.xMaximum() and (x0 - 500000.0) % 2 == 0
    assert dataset.RasterXSize < 400 and dataset.RasterYSize < 400


def test_selected_polygon_aoi_masks_outside(dock, tmp_path):
    layer = load(write_geotiff(tmp_path / "poly.tif", smooth_image(300, 300), 32633, UTM), "poly")
    polygons = QgsVectorLayer("Polygon?crs=EPSG:32633", "aoi", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromPolygonXY([[QgsPointXY(500100, 5599900), QgsPointXY(500500, 5599900),
                                                    QgsPointXY(500100, 5599500), QgsPointXY(500100, 5599900)]]))
    polygons.dataProvider().addFeatures([feature])
    QgsProject.instance().addMapLayer(polygons)
    polygons.selectAll()
    dock.area_box.polygon_combo.setLayer(polygons)
    task = run(dock, layer, tmp_path / "poly_out.tif", aoi="selected_features")
    assert task.result is not None, task.error
    dataset = gdal.Open(str(tmp_path / "poly_out.tif"))
    labels = dataset.ReadAsArray()
    assert dataset.GetGeoTransform()[0] == 500100.0 and labels.shape == (200, 200)
    assert labels[5, 5] < 5 and labels[190, 190] == 255  # inside the triangle / outside it
    assert 0.3 < (labels < 5).mean() < 0.7


def test_multi_block_equals_single_block(dock, tmp_path):
    layer = load(write_geotiff(tmp_path / "multi.tif", smooth_image(520, 470), 32633, UTM), "multi")
    assert run(dock, layer, tmp_path / "single.tif").result is not None
    settings.save("block_size", 336)
    try:
        task = run(dock, layer, tmp_path / "blocks.tif")
    finally:
        settings.save("block_size", 1024)
    assert task.result.blocks >= 4
    np.testing.assert_array_equal(gdal.Open(str(tmp_path / "blocks.tif")).ReadAsArray(),
                                  gdal.Open(str(tmp_path / "single.tif")).ReadAsArray())


def test_overlapping_rectangles_agree_with_each_other_and_the_whole_layer(dock, tmp_path):
    """Windows sit on a grid fixed on the raster and read their context beyond the rectangle: a pixel's label
    is the same whatever rectangle contains it (here: the one a run over the whole layer gives)."""
    layer = load(write_geotiff(tmp_path / "anchor.tif", smooth_image(420, 450, seed=7), 32633, UTM), "anchor")
    assert run(dock, layer, tmp_path / "whole.tif").result is not None
    whole = gdal.Open(str(tmp_path / "whole.tif")).ReadAsArray()
    pieces = []
    for name, (col0, row0, col1, row1) in (("a", (37, 45, 301, 330)), ("b", (150, 120, 420, 390))):
        dock.raster_box.set_layer(layer)
        dock.set_drawn_rectangle(QgsRectangle(500000.0 + 2 * col0 + 0.5, 5600000.0 - 2 * row1 + 0.5,
                                              500000.0 + 2 * col1 - 0.5, 5600000.0 - 2 * row0 - 0.5), layer.crs())
        task = run(dock, layer, tmp_path / f"{name}.tif", aoi="rectangle")
        assert task.result is not None, task.error
        dataset = gdal.Open(str(tmp_path / f"{name}.tif"))
        assert dataset.GetGeoTransform()[:4:3] == (500000.0 + 2 * col0, 5600000.0 - 2 * row0)
        labels = dataset.ReadAsArray()
        assert labels.shape == (row1 - row0, col1 - col0)
        np.testing.assert_array_equal(labels, whole[row0:row1, col0:col1])
        pieces.append(labels)
    np.testing.assert_array_equal(pieces[0][120 - 45:, 150 - 37:], pieces[1][:330 - 120, :301 - 150])


def interrupt_a_running_job(dock, tmp_path, name, interrupt):
    """Start a many-block job and call ``interrupt()`` on the job's own thread right after its first block.

    The slot runs synchronously inside the task's ``setProgress`` (a direct
    connection), so the job cannot finish before the interruption, however
    fast the backend is.
    """
    from qgis.PyQt.QtCore import Qt

    layer = load(write_geotiff(tmp_path / f"{name}.tif", smooth_image(900, 900), 32633, UTM), name)
    settings.save("block_size", 336)
    fired = []

    def once(progress):
        if progress > 0 and not fired:
            fired.append(progress)
            interrupt()

    try:
        prepare(dock, layer, tmp_path / f"{name}_out.tif")
        task = dock.segment()
        task.progressChanged.connect(once, Qt.DirectConnection)
        wait_until(lambda: dock.task is None)
    finally:
        settings.save("block_size", 1024)
    assert fired and fired[0] < 100, "the job ended before its first block was reported"
    return layer, task


def test_cancel_mid_job_keeps_nothing(dock, tmp_path, messages):
    _, task = interrupt_a_running_job(dock, tmp_path, "cancel", dock.cancel)
    assert task.was_cancelled and task.result is None
    assert sorted(os.listdir(tmp_path)) == ["cancel.tif"]
    assert any("cancelled" in m for m in messages.get_messages(Qgis.Info))


def test_backend_killed_mid_job_then_restart(dock, tmp_path, messages):
    layer, task = interrupt_a_running_job(dock, tmp_path, "kill",
                                          lambda: os.kill(dock.backend.local.process.pid, signal.SIGKILL))
    assert task.result is None and "local backend process stopped while working" in task.error
    assert "killed by signal 9" in task.error
    assert f"The full log is {os.environ['SEGEARTH_LOG_DIR']}" in task.error  # kept where failed backends' logs go
    assert [m for m in messages.get_messages(Qgis.Critical) if "Segmentation failed" in m] == \
        messages.get_messages(Qgis.Critical)[-1:]  # one message for the outcome, ours
    # ...and QGIS adds no "Task complete" notice on top of it (QGIS 3.26 on: 3.22 has no way to ask for that)
    assert not hasattr(QgsTask.Flag, "Silent") or task.flags() & QgsTask.Flag.Silent
    assert not (tmp_path / "kill_out.tif").exists()
    dock._backend_action("restart")
    wait_until(lambda: "ready" in dock.backend_box.status_label.text())
    assert run(dock, layer, tmp_path / "after.tif", aoi="layer").result is not None


def test_existing_output_is_never_overwritten(dock, tmp_path, messages):
    layer = load(write_geotiff(tmp_path / "keep.tif", smooth_image(60, 60), 32633, UTM), "keep")
    existing = tmp_path / "mine.tif"
    existing.write_bytes(b"precious")
    assert run(dock, layer, existing) is None
    assert existing.read_bytes() == b"precious"
    assert any("already exists" in m for m in messages.get_messages(Qgis.Warning))


def test_output_equal_to_the_layer_file_is_refused(dock, tmp_path, messages):
    path = write_geotiff(tmp_path / "own.tif", smooth_image(60, 60), 32633, UTM)
    before = path.read_bytes()
    layer = load(path, "own")
    asked = []
    dock.confirm = lambda question: asked.append(question) or True  # a user who would say "overwrite"
    try:
        assert run(dock, layer, path) is None
    finally:
        dock.confirm = lambda question: False
    assert path.read_bytes() == before
    assert asked == []  # refused at once: no "Overwrite?" that cannot be acted on
    assert any("would overwrite the input" in m for m in messages.get_messages(Qgis.Warning))
    status = dock.run_box.progress_label.toolTip()
    assert status.startswith("Not started: ") and "would overwrite the input" in status


def test_writing_beside_the_input_twice_leaves_its_side_files_alone(dock, tmp_path):
    """Found by the second safety probe: the second run to ``oem.tiff`` removed ``oem.tfw`` (oem.tif's)."""
    layer = load(input_with_side_files(tmp_path), "oem")
    before = folder_digests(tmp_path)
    output = tmp_path / "oem.tiff"
    dock.confirm = lambda question: True  # the second run replaces the first one's result
    try:
        for _ in range(2):
            task = run(dock, layer, output)
            assert task is not None and task.result is not None, task and task.error
            after = folder_digests(tmp_path)
            assert {name: after.get(name) for name in before} == before
            assert set(after) - set(before) == {"oem.tiff", "oem.tiff.aux.xml"}
    finally:
        dock.confirm = lambda question: False


@pytest.mark.parametrize("case, fragment", [
    ("missing folder", "does not exist"),
    ("aoi outside", "does not overlap"),
    ("no classes", "at least one class"),
    ("duplicate classes", "unique"),
])
def test_bad_inputs_are_messages_not_tracebacks(dock, tmp_path, messages, case, fragment):
    layer = load(write_geotiff(tmp_path / "bad.tif", smooth_image(60, 60), 32633, UTM), "bad")
    output, classes, aoi = tmp_path / "out.tif", CLASSES, "layer"
    if case == "missing folder":
        output = tmp_path / "nope" / "out.tif"
    if case == "aoi outside":
        dock.set_drawn_rectangle(QgsRectangle(0, 0, 10, 10), layer.crs())
        aoi = "rectangle"
    if case == "no classes":
        classes = "\n  \n"
    if case == "duplicate classes":
        classes = "road\nRoad"
    task = run(dock, layer, output, classes=classes, aoi=aoi)
    text = " ".join(messages.get_messages(Qgis.Warning) + messages.get_messages(Qgis.Critical))
    assert fragment in text
    assert task is None or task.result is None
    assert not output.exists()


def test_probabilities_output_and_metadata(dock, tmp_path):
    layer = load(write_geotiff(tmp_path / "probs.tif", smooth_image(120, 140), 32633, UTM), "probs")
    prepare(dock, layer, tmp_path / "labels.tif")
    dock.options_box.probabilities_check.setChecked(True)
    task = dock.segment()
    wait_until(lambda: dock.task is None)
    dock.options_box.probabilities_check.setChecked(False)
    assert task.result.probabilities_path == tmp_path / "labels_probabilities.tif"
    probs = gdal.Open(str(tmp_path / "labels_probabilities.tif"))
    assert probs.RasterCount == 5 and probs.GetGeoTransform() == pytest.approx(UTM)
    assert [probs.GetRasterBand(i + 1).GetDescription() for i in range(5)] == CLASS_LIST
    values = probs.ReadAsArray()
    labels = gdal.Open(str(tmp_path / "labels.tif")).ReadAsArray()
    # Probabilities travel as float16: the label's probability is the top one up to that rounding.
    top = np.take_along_axis(values, labels[None].astype(np.int64), axis=0)[0]
    assert (top >= values.max(axis=0) - 1e-3).all()
    np.testing.assert_allclose(values.sum(axis=0) <= 1.001, True)
    metadata = gdal.Open(str(tmp_path / "labels.tif")).GetMetadataItem("SEGEARTH_CLASSES")
    assert json.loads(metadata) == CLASS_LIST


def test_large_jobs_ask_first_and_estimate_uses_measured_speed(dock, tmp_path):
    layer = load(write_geotiff(tmp_path / "large.tif", smooth_image(200, 200), 32633, UTM), "large")
    settings.save("large_job_megapixels", 0.01)
    asked = []
    try:
        dock.confirm = lambda question: asked.append(question) or False
        assert run(dock, layer, tmp_path / "large_out.tif") is None and "megapixels" in asked[0]
        assert not (tmp_path / "large_out.tif").exists()
        dock.confirm = lambda question: True
        assert run(dock, layer, tmp_path / "large_out.tif").result is not None
    finally:
        settings.save("large_job_megapixels", 50.0)
        dock.confirm = lambda question: False
    wait_until(lambda: "ready" in dock.backend_box.status_label.text())
    assert "CPU" in dock.backend_box.status_label.text() and "SimFeatUp" in dock.backend_box.status_label.text()
    assert dock.backend_box.title() == "Backend (local): ready"  # visible even when the box is collapsed
    dock.update_estimate()
    text = dock.area_box.estimate_label.text()
    assert "200 x 200 px" in text and "estimate " in text and "backend's start" not in text  # it runs


def test_map_view_aoi(dock, qgis_iface, tmp_path):
    layer = load(write_geotiff(tmp_path / "view.tif", smooth_image(100, 100), 32633, UTM), "view")
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(layer.crs())
    canvas.setExtent(QgsRectangle(500050.0, 5599850.0, 500100.0, 5599900.0))
    dock.raster_box.set_layer(layer)
    dock.area_box.kind_combo.setCurrentIndex(dock.area_box.kind_combo.findData("map_view"))
    job = dock.plan()
    grid, polygons = job.grid, job.polygons
    view = canvas.extent().intersect(layer.extent())
    assert grid.x0 <= view.xMinimum() and grid.x0 + grid.width * 2 >= view.xMaximum()
    assert grid.y0 >= view.yMaximum() and grid.y0 - grid.height * 2 <= view.yMinimum()
    assert grid.width < 100 and grid.height < 100 and polygons == ()


def test_provider_reader_matches_gdal_reader(tmp_path):
    """Any provider's blocks (here the GDAL provider through QgsRasterDataProvider.block) read the same pixels."""
    from segearth_qgis.core.grid import processing_grid
    from segearth_qgis.job.layer_input import ProviderBandReader, native_grid
    from segearth_qgis.job.raster_io import GdalBandReader

    layer = load(write_geotiff(tmp_path / "both.tif", smooth_image(90, 110), 32633, UTM), "both")
    grid = processing_grid(native_grid(layer), (500010.0, 5599850.0, 500150.0, 5599990.0), None)
    provider_reader, gdal_reader = ProviderBandReader(layer), GdalBandReader(layer.source(), native_grid(layer))
    by_provider = provider_reader.read([1, 3], grid, (5, 40), (10, 60))
    by_gdal = gdal_reader.read([1, 3], grid, (5, 40), (10, 60))
    provider_reader.close()
    gdal_reader.close()
    for band in (1, 3):
        assert by_provider[band].shape == (35, 50)
        np.testing.assert_array_equal(by_provider[band], by_gdal[band])


def test_virtual_raster_provider_end_to_end(dock, tmp_path):
    """A non-file provider (QGIS's virtual raster, float32) goes through provider blocks and a stretch."""
    base = write_geotiff(tmp_path / "base.tif", smooth_image(80, 90, bands=1), 32633, UTM)
    extent = "500000,5599840,500180,5600000"
    uri = (f"?crs=EPSG:32633&extent={extent}&width=90&height=80&formula=%22base@1%22%20*%200.01"
           f"&base:uri={base}&base:provider=gdal")
    layer = QgsRasterLayer(uri, "virtual", "virtualraster")
    assert layer.isValid() and layer.providerType() == "virtualraster"
    QgsProject.instance().addMapLayer(layer)
    task = run(dock, layer, tmp_path / "virtual_out.tif")
    assert task.result is not None, task.error
    labels = gdal.Open(str(tmp_path / "virtual_out.tif")).ReadAsArray()
    assert labels.shape == (80, 90) and (labels < 5).all()


def test_results_are_named_translucent_and_report_their_class_shares(dock, tmp_path, messages):
    from segearth_qgis.map.styling import GROUP_NAME

    layer = load(write_geotiff(tmp_path / "named.tif", smooth_image(120, 130), 32633, UTM), "named")
    prepare(dock, layer, tmp_path / "named_out.tif", classes="background\nroad\nwater\ntree, forest")
    dock.options_box.probabilities_check.setChecked(True)
    task = dock.segment()
    wait_until(lambda: dock.task is None)
    dock.options_box.probabilities_check.setChecked(False)
    assert task.result is not None, task.error
    group = QgsProject.instance().layerTreeRoot().findGroup(GROUP_NAME)
    assert group.isExpanded()
    nodes = [n for n in group.findLayers() if n.layer().name().startswith("named — ")]
    result = next(n for n in nodes if not n.layer().name().endswith("probabilities"))
    name = result.layer().name()
    assert "background, road, water +1" in name and "whole layer" in name and name.count(":") == 2  # HH:MM:SS
    assert result.layer().opacity() == pytest.approx(0.6)
    probabilities = next(n for n in nodes if n.layer().name().endswith("probabilities"))
    assert not probabilities.itemVisibilityChecked() and probabilities.layer().bandCount() == 4
    success = " ".join(messages.get_messages(Qgis.Success))
    assert "Segmented 0.02 MP in" in success and "Probabilities: named_out_probabilities.tif" in success
    import re

    shares = re.findall(r"(background|road|water|tree, forest) (\d+)%", success)
    assert shares and 95 <= sum(int(share) for _, share in shares) <= 102  # rounded shares of the valid pixels
    assert (tmp_path / "named_out.qml").is_file()  # the dock writes the style beside its result too


def test_a_result_that_is_all_background_says_why(dock, tmp_path, messages):
    layer = load(write_geotiff(tmp_path / "empty.tif", smooth_image(80, 80), 32633, UTM), "empty")
    logged = []
    log = QgsApplication.messageLog()
    collect = lambda message, tag, level: logged.append(message) if tag == "SegEarth-OV" else None  # noqa: E731
    log.messageReceived.connect(collect)
    try:
        task = run(dock, layer, tmp_path / "empty_out.tif", threshold=1.0, background=0)
    finally:
        log.messageReceived.disconnect(collect)
    assert task.result is not None
    warning = " ".join(messages.shown(Qgis.Warning))  # the bar: the problem
    assert "the whole area is 'background'" in warning
    assert any("the whole area is 'background'" in m and "threshold 1" in m and "lower it" in m
               for m in logged)  # all of it: the log panel, and the bar's Show more
    assert not messages.get_messages(Qgis.Success)


def test_unnamed_results_go_to_the_results_folder(dock, tmp_path):
    folder = tmp_path / "my results"
    settings.OUTPUT_FOLDER.save(str(folder))
    dock.options_box.restore()
    layer = load(write_geotiff(tmp_path / "unnamed.tif", smooth_image(50, 50), 32633, UTM), "unnamed")
    task = run(dock, layer, None)
    assert task.result is not None and task.result.output_path == folder / "unnamed_segearth.tif"
    assert task.result.output_path.is_file()


def test_progress_says_which_block_and_how_long(dock, tmp_path):
    layer = load(write_geotiff(tmp_path / "steps.tif", smooth_image(600, 600), 32633, UTM), "steps")
    seen = []
    dock.runner.progress.connect(lambda value, text: seen.append(text))
    settings.save("block_size", 336)
    try:
        task = run(dock, layer, tmp_path / "steps_out.tif")
    finally:
        settings.save("block_size", 1024)
    assert task.result is not None and task.blocks == 9
    assert any(text.startswith("block 2 of 9 · ") and "elapsed" in text and "left" in text for text in seen), seen
    assert dock.run_box.progress_label.text().startswith("done in")


def test_cancel_stops_the_block_being_computed_within_seconds(dock, tmp_path, messages):
    """One big block: cancel must not wait for it to finish (the client drops the request, the backend stops)."""
    import time

    from qgis.PyQt.QtCore import Qt

    layer = load(write_geotiff(tmp_path / "oneblock.tif", smooth_image(1000, 1000), 32633, UTM), "oneblock")
    prepare(dock, layer, tmp_path / "oneblock_out.tif")
    cancelled_at = []

    def cancel_once(progress):
        if 0 < progress < 50 and not cancelled_at:  # the backend reports windows within the only block
            cancelled_at.append(time.monotonic())
            dock.cancel()

    task = dock.segment()
    task.progressChanged.connect(cancel_once, Qt.DirectConnection)
    wait_until(lambda: dock.task is None)
    assert task.blocks == 1 and cancelled_at, "no progress was reported within the block"
    assert task.was_cancelled and task.result is None
    assert time.monotonic() - cancelled_at[0] < 10  # generous: the point is "not the rest of the block"
    assert not (tmp_path / "oneblock_out.tif").exists()
    assert any("cancelled" in m for m in messages.get_messages(Qgis.Info))


def test_update_while_typing_requeries_the_last_area_and_replaces_its_result(dock, tmp_path, tiny_segmenter,
                                                                            messages):
    project = QgsProject.instance()
    image = smooth_image(150, 170, seed=21)
    layer = load(write_geotiff(tmp_path / "live.tif", image, 32633, UTM), "live")
    finished = []
    dock.job_done.connect(finished.append)
    try:
        dock.run_box.live_check.setChecked(True)
        first = run(dock, layer, tmp_path / "typed.tif")  # the user's own result: its file is never deleted
        assert first.result is not None, first.error
        first_layers = list(dock.live.last.layer_ids)
        messages.clear_messages()

        def edit(classes):
            count = len(finished)
            dock.classes_box.edit.setPlainText(classes)
            assert dock.task is None  # nothing runs at once: the update waits for a quiet second
            wait_until(lambda: len(finished) > count and dock.task is None, 120)
            task = finished[-1]
            assert task.result is not None, task.error
            return task

        second_classes = "background\nroad, street\nwater\nbuilding"
        hits = dock.backend.health()["feature_cache"]["window_hits"]
        second = edit(second_classes)
        assert dock.backend.health()["feature_cache"]["window_hits"] > hits  # a re-query: the image work reused
        assert second.result.names == second_classes.splitlines()
        assert project.mapLayer(first_layers[0]) is None  # replaced on the map...
        assert (tmp_path / "typed.tif").exists()  # ...but the user's file stays
        assert second.result.output_path.parent == Path(settings.output_folder())
        # The same answer as a fresh engine, for the same area and new classes.
        rgb = np.ascontiguousarray(image.transpose(1, 2, 0))
        expected = tiny_segmenter.predict(rgb, second_classes.splitlines()).labels
        np.testing.assert_array_equal(read_band(second.result.output_path), expected)
        assert "updated in" in dock.run_box.progress_label.toolTip()
        assert not messages.get_messages(Qgis.Success)  # updates speak in the panel, not the message bar

        third = edit("background\ntree\nwater")
        assert not second.result.output_path.exists()  # an update's own files go with its layer
        third_layers = list(dock.live.last.layer_ids)
        assert project.mapLayer(third_layers[0]) is not None

        dock.keep_result()
        fourth = edit("background\ntree\nwater\nbare soil")
        assert third.result.output_path.exists()  # kept: the update added a layer beside it
        assert project.mapLayer(third_layers[0]) is not None
        assert project.mapLayer(dock.live.last.layer_ids[0]) is not None and fourth.result.output_path.exists()

        # An edit while a job runs waits for it, then updates once.
        count = len(finished)
        dock.options_box.output_widget.setFilePath("")
        assert dock.segment() is not None
        dock.classes_box.edit.setPlainText("background\nwater")
        assert dock.update_live() is None and dock.task is not None
        wait_until(lambda: len(finished) == count + 2 and dock.task is None, 120)
        assert finished[-1].result is not None and finished[-1].result.names == ["background", "water"]

        # A question open in Segment (overwrite?) holds an update back: never two jobs at once.
        count, under_question = len(finished), []

        def answer(question):
            under_question.append(dock.update_live())  # the update's timer firing under the dialog
            return True

        dock.confirm = answer
        dock.options_box.output_widget.setFilePath(str(tmp_path / "typed.tif"))  # exists: Segment asks
        assert dock.segment() is not None and under_question == [None]
        wait_until(lambda: len(finished) == count + 2 and dock.task is None, 120)  # then the update, once
        assert finished[-2].result.output_path == tmp_path / "typed.tif" and finished[-1].result is not None

        # Half typed: shown, not run.
        count = len(finished)
        dock.classes_box.edit.setPlainText("")
        wait_until(lambda: "Not updated" in dock.run_box.progress_label.toolTip(), 10)
        assert len(finished) == count and dock.task is None

        # The raster removed from the project: said, not run.
        project.removeMapLayer(layer.id())
        dock.classes_box.edit.setPlainText("background\nwater")
        wait_until(lambda: "layer of the last result was removed" in dock.run_box.progress_label.toolTip(), 10)
        assert len(finished) == count and dock.task is None
    finally:
        dock.job_done.disconnect(finished.append)
        dock.confirm = lambda question: False
        dock.run_box.live_check.setChecked(False)
        dock.save_state()  # the next tests (and runs) start with updates off
        dock.live.last = None
