"""The Processing algorithms in a real QGIS with a real backend; outputs read back with GDAL/OGR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr
from qgis.core import (
    QgsApplication,
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingException,
    QgsRasterLayer,
    QgsVectorLayer,
)

from segearth_qgis.client.backend_manager import shared_manager
from tests.plugin.helpers import CLASS_NAMES as NAMES
from tests.plugin.helpers import CLASSES, UTM, read_band, smooth_image, write_geotiff


def run(algorithm, **parameters):
    import processing

    return processing.run(f"segearth:{algorithm}", parameters)


def test_provider_lists_the_algorithms_with_help(provider):
    ids = sorted(a.id() for a in provider.algorithms())
    assert ids == ["segearth:accuracy", "segearth:change", "segearth:change_vector", "segearth:class_stats",
                   "segearth:segment", "segearth:segment_vector"]
    assert all(len(a.shortHelpString()) > 100 for a in provider.algorithms())


def test_segment(provider, raster, tmp_path, tiny_segmenter):
    result = run("segment", INPUT=str(raster), CLASSES=CLASSES, OUTPUT=str(tmp_path / "seg.tif"),
                 OUTPUT_PROBABILITIES=str(tmp_path / "probs.tif"))
    dataset = gdal.Open(result["OUTPUT"])
    assert dataset.GetGeoTransform() == pytest.approx(UTM) and (dataset.RasterXSize, dataset.RasterYSize) == (300, 260)
    labels = dataset.ReadAsArray()
    assert (labels[:10] == 255).all()
    image = gdal.Open(str(raster)).ReadAsArray().transpose(1, 2, 0)
    expected = tiny_segmenter.predict(np.ascontiguousarray(image), CLASSES.splitlines(), valid=(image != 0).all(-1))
    np.testing.assert_array_equal(labels, expected.labels)
    assert gdal.Open(result["OUTPUT_PROBABILITIES"]).RasterCount == 5
    # The .qml beside the output makes it open styled anywhere.
    assert (tmp_path / "seg.qml").is_file()
    layer = QgsRasterLayer(result["OUTPUT"], "seg")
    assert layer.renderer().type() == "paletted" and [c.label for c in layer.renderer().classes()] == NAMES


def test_segment_extent_in_another_crs_and_resolution(provider, raster, tmp_path):
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject, QgsRectangle

    to_wgs84 = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:32633"),
                                      QgsCoordinateReferenceSystem("EPSG:4326"), QgsProject.instance())
    box = to_wgs84.transformBoundingBox(QgsRectangle(500100, 5599600, 500400, 5599900))
    extent = f"{box.xMinimum()},{box.xMaximum()},{box.yMinimum()},{box.yMaximum()} [EPSG:4326]"
    result = run("segment", INPUT=str(raster), CLASSES=CLASSES, EXTENT=extent, RESOLUTION=4.0,
                 OUTPUT=str(tmp_path / "part.tif"))
    dataset = gdal.Open(result["OUTPUT"])
    x0, px, _, y0, _, py = dataset.GetGeoTransform()
    # The extent comes back into UTM as a (larger) bounding box, clipped to the raster, snapped outwards to the
    # raster's 4 m grid (4 m pixels counted from the raster's own corner).
    back = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:4326"), QgsCoordinateReferenceSystem("EPSG:32633"),
                                  QgsProject.instance()).transformBoundingBox(box)
    clipped = back.intersect(QgsRectangle(500000, 5599480, 500600, 5600000))
    assert (px, py) == (4.0, -4.0)
    assert (x0 - 500000.0) % 4 == 0 and (5600000.0 - y0) % 4 == 0
    assert x0 <= clipped.xMinimum() < x0 + 4 and y0 >= clipped.yMaximum() > y0 - 4
    assert x0 + 4 * dataset.RasterXSize >= clipped.xMaximum() and y0 - 4 * dataset.RasterYSize <= clipped.yMinimum()
    assert 70 <= dataset.RasterXSize <= 80  # about the 300 m asked for


@pytest.mark.parametrize("resolution", [None, 3.0])
def test_overlapping_extents_agree_on_their_overlap(provider, raster, tmp_path, resolution):
    """Windows sit on a grid fixed on the raster (its corner, at the processing resolution) and read the
    context they need beyond the extent: two extents give the same labels where they overlap."""
    step = resolution or 2.0
    outputs = []
    for name, (xmin, xmax, ymin, ymax) in (("a", (500075.0, 500455.0, 5599610.0, 5599930.0)),
                                          ("b", (500161.0, 500593.0, 5599503.0, 5599841.0))):
        parameters = {"RESOLUTION": resolution} if resolution else {}
        result = run("segment", INPUT=str(raster), CLASSES=CLASSES, EXTENT=f"{xmin},{xmax},{ymin},{ymax} [EPSG:32633]",
                     OUTPUT=str(tmp_path / f"{name}.tif"), **parameters)
        dataset = gdal.Open(result["OUTPUT"])
        x0, _, _, y0, _, _ = dataset.GetGeoTransform()
        outputs.append((round((x0 - 500000.0) / step), round((5600000.0 - y0) / step), dataset.ReadAsArray()))
    (ca, ra, a), (cb, rb, b) = outputs
    rows = slice(max(ra, rb), min(ra + a.shape[0], rb + b.shape[0]))
    cols = slice(max(ca, cb), min(ca + a.shape[1], cb + b.shape[1]))
    assert rows.stop - rows.start > 50 and cols.stop - cols.start > 50
    overlap_a = a[rows.start - ra:rows.stop - ra, cols.start - ca:cols.stop - ca]
    overlap_b = b[rows.start - rb:rows.stop - rb, cols.start - cb:cols.stop - cb]
    assert (overlap_a < 5).mean() > 0.9  # mostly valid pixels (the raster's first 10 columns are nodata)
    np.testing.assert_array_equal(overlap_a, overlap_b)


def test_segment_vector_areas_match_pixel_counts(provider, raster, tmp_path):
    seg = run("segment", INPUT=str(raster), CLASSES=CLASSES, OUTPUT=str(tmp_path / "ref.tif"))
    labels = gdal.Open(seg["OUTPUT"]).ReadAsArray()
    result = run("segment_vector", INPUT=str(raster), CLASSES=CLASSES, OUTPUT=str(tmp_path / "polys.gpkg"))
    source = ogr.Open(result["OUTPUT"])
    layer = source.GetLayer(0)
    fields = [layer.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(layer.GetLayerDefn().GetFieldCount())]
    assert fields == ["class_id", "class_name", "area_m2"]
    areas: dict[int, float] = {}
    for feature in layer:
        assert feature["class_name"] == NAMES[feature["class_id"]]
        areas[feature["class_id"]] = areas.get(feature["class_id"], 0.0) + feature["area_m2"]
    counts = np.bincount(labels[labels != 255].ravel(), minlength=5)
    for class_id, area in areas.items():
        assert area == pytest.approx(counts[class_id] * 4.0, rel=1e-3)  # 2 m pixels, ellipsoidal vs planar
    filtered = run("segment_vector", INPUT=str(raster), CLASSES=CLASSES, MIN_AREA=400.0, SIMPLIFY=2.0,
                   OUTPUT=str(tmp_path / "big.gpkg"))
    big_source = ogr.Open(filtered["OUTPUT"])  # the layer lives only as long as its data source
    big = big_source.GetLayer(0)
    assert 0 < big.GetFeatureCount() < layer.GetFeatureCount()
    assert all(f["area_m2"] >= 400.0 for f in big)
    del layer, big, source, big_source  # OGR handles must go before QGIS shuts GDAL down


def test_class_stats_whole_and_per_zone(provider, raster, tmp_path):
    seg = run("segment", INPUT=str(raster), CLASSES=CLASSES, OUTPUT=str(tmp_path / "s.tif"))
    labels = gdal.Open(seg["OUTPUT"]).ReadAsArray()
    counts = np.bincount(labels[labels != 255].ravel(), minlength=5)
    table = QgsVectorLayer(run("class_stats", INPUT=seg["OUTPUT"], OUTPUT=str(tmp_path / "st.gpkg"))["OUTPUT"],
                           "stats")
    rows = {f["class_id"]: f for f in table.getFeatures()}
    del table
    assert sorted(rows) == [0, 1, 2, 3, 4]
    for class_id, row in rows.items():
        assert row["class_name"] == NAMES[class_id] and int(row["pixels"]) == counts[class_id]
        assert float(row["area_m2"]) == pytest.approx(counts[class_id] * 4.0)
        assert float(row["share"]) == pytest.approx(counts[class_id] / counts.sum())

    zones = QgsVectorLayer("Polygon?crs=EPSG:32633", "zones", "memory")
    for x0 in (500000, 500300):
        feature = QgsFeature()
        feature.setGeometry(QgsGeometry.fromPolygonXY([[QgsPointXY(x0, 5600000), QgsPointXY(x0 + 300, 5600000),
                                                        QgsPointXY(x0 + 300, 5599480), QgsPointXY(x0, 5599480),
                                                        QgsPointXY(x0, 5600000)]]))
        zones.dataProvider().addFeatures([feature])
    zoned = run("class_stats", INPUT=seg["OUTPUT"], ZONES=zones, OUTPUT="memory:")["OUTPUT"]
    per_zone = [f for f in zoned.getFeatures()]
    assert {f["zone"] for f in per_zone} == {1, 2}
    left = labels[:, :150]
    for f in per_zone:
        if f["zone"] == 1:
            assert f["pixels"] == int((left == f["class_id"]).sum())
    assert sum(f["pixels"] for f in per_zone) == counts.sum()


def test_class_stats_on_any_colour_table_raster(provider, tmp_path):
    values = np.array([[0, 1, 1], [2, 2, 2]], np.uint8)
    path = write_geotiff(tmp_path / "classes.tif", values[None], 32633, UTM)
    dataset = gdal.Open(str(path), gdal.GA_Update)
    table = gdal.ColorTable()
    for index in range(3):
        table.SetColorEntry(index, (index * 80, 100, 100, 255))
    dataset.GetRasterBand(1).SetRasterColorTable(table)
    dataset = None
    stats = run("class_stats", INPUT=str(path), OUTPUT="memory:")["OUTPUT"]
    rows = {f["class_id"]: (f["class_name"], f["pixels"]) for f in stats.getFeatures()}
    assert rows == {0: ("class 0", 1), 1: ("class 1", 2), 2: ("class 2", 3)}


def test_model_chaining_segment_vectorize_statistics(provider, raster, tmp_path):
    from pathlib import Path

    import processing
    from qgis.core import QgsProcessingModelAlgorithm

    model_path = Path(__file__).resolve().parents[3] / "resources" / "models" / "segearth_chain.model3"
    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(str(model_path))
    result = processing.run(model, {"raster": str(raster), "classes": CLASSES,
                                    "statistics:statistics": str(tmp_path / "chain_stats.csv"),
                                    "vectorize:polygons": str(tmp_path / "chain_polys.gpkg"),
                                    "segment:segmentation": str(tmp_path / "chain_seg.tif")})
    assert gdal.Open(result["segment:segmentation"]).RasterXSize == 300
    polygons = ogr.Open(result["vectorize:polygons"])
    assert polygons.GetLayer(0).GetFeatureCount() > 0
    stats = QgsVectorLayer(result["statistics:statistics"], "chain")
    assert stats.featureCount() > 0 and {f["zone"] for f in stats.getFeatures()} != {None}


@pytest.mark.parametrize("algorithm_id", ["segearth:segment", "segearth:segment_vector", "segearth:change",
                                          "segearth:change_vector"])
def test_no_classes_is_said_as_the_panel_says_it(provider, raster, tmp_path, algorithm_id):
    """Found in the walkthrough: an empty class list gave QGIS's 'Incorrect parameter value for CLASSES'."""
    import processing
    from qgis.core import QgsProcessingContext

    from segearth_qgis.core.classes import check_class_lines

    with pytest.raises(ValueError) as panel:
        check_class_lines([])
    algorithm = QgsApplication.processingRegistry().createAlgorithmById(algorithm_id)
    values = {"INPUT": str(raster), "BEFORE": str(raster), "AFTER": str(raster), "CLASSES": "",
              "OUTPUT": str(tmp_path / "x.tif")}
    assert algorithm.checkParameterValues(values, QgsProcessingContext()) == (False, str(panel.value))
    with pytest.raises(QgsProcessingException, match="Type at least one class") as raised:
        processing.run(algorithm_id, values)
    assert "Incorrect parameter value" not in str(raised.value) and not (tmp_path / "x.tif").exists()


@pytest.mark.parametrize("parameters, fragment", [
    ({"CLASSES": "  \n"}, "Type at least one class"),
    ({"EXTENT": "0,10,0,10 [EPSG:32633]"}, "does not overlap"),
    ({"BANDS": [1, 2]}, "one band or three"),
    ({"BACKGROUND": 9}, "only 5 classes"),
    ({"OUTPUT": "/no/such/folder/out.tif"}, "does not exist"),
])
def test_bad_parameters_are_processing_errors(provider, raster, tmp_path, parameters, fragment):
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    algorithm = QgsApplication.processingRegistry().createAlgorithmById("segearth:segment")
    values = {"INPUT": str(raster), "CLASSES": CLASSES, "OUTPUT": str(tmp_path / "x.tif"), **parameters}
    context, feedback = QgsProcessingContext(), QgsProcessingFeedback()
    with pytest.raises(QgsProcessingException, match=fragment):
        algorithm.run(values, context, feedback, catchExceptions=False)


def test_threshold_and_background_parameters_reach_the_engine(provider, raster, tmp_path, tiny_segmenter):
    result = run("segment", INPUT=str(raster), CLASSES=CLASSES, THRESHOLD=0.4, BACKGROUND=2,
                 OUTPUT=str(tmp_path / "thr.tif"))
    labels = read_band(Path(result["OUTPUT"]))
    image = np.ascontiguousarray(gdal.Open(str(raster)).ReadAsArray().transpose(1, 2, 0))
    valid = (image != 0).all(-1)
    expected = tiny_segmenter.predict(image, CLASSES.splitlines(), prob_threshold=0.4, background_index=2,
                                      valid=valid).labels
    np.testing.assert_array_equal(labels, expected)
    assert (expected != tiny_segmenter.predict(image, CLASSES.splitlines(), valid=valid).labels).any()


def _polygon_layer(crs, rings):
    layer = QgsVectorLayer(f"Polygon?crs={crs}", "mask", "memory")
    for ring in rings:
        feature = QgsFeature()
        feature.setGeometry(QgsGeometry.fromPolygonXY([[QgsPointXY(x, y) for x, y in ring]]))
        layer.dataProvider().addFeatures([feature])
    return layer


def test_mask_polygons_limit_the_area_and_become_nodata(provider, raster, tmp_path):
    # A square of 200 x 200 m in the raster's top-left quarter, and a triangle elsewhere.
    mask = _polygon_layer("EPSG:32633", [
        [(500040, 5599960), (500240, 5599960), (500240, 5599760), (500040, 5599760), (500040, 5599960)],
        [(500300, 5599700), (500400, 5599700), (500300, 5599600), (500300, 5599700)]])
    result = run("segment", INPUT=str(raster), CLASSES=CLASSES, MASK=mask, OUTPUT=str(tmp_path / "masked.tif"))
    dataset = gdal.Open(result["OUTPUT"])
    x0, _, _, y0, _, _ = dataset.GetGeoTransform()
    labels = dataset.ReadAsArray()
    assert (x0, y0) == (500040.0, 5599960.0) and labels.shape == (180, 180)  # the polygons' bounding box
    source = gdal.Open(str(raster)).ReadAsArray()[:, 20:200, 20:200]  # the same cells of the input
    inside = np.zeros((180, 180), bool)
    inside[:100, :100] = True  # the square
    rows, cols = np.mgrid[0:180, 0:180]
    inside |= (rows >= 130) & (cols >= 130) & (rows - 130 + cols - 130 < 50)  # the triangle (cell centres)
    expected_nodata = ~inside | (source == 0).any(axis=0)
    np.testing.assert_array_equal(labels == 255, expected_nodata)


def test_mask_that_misses_the_extent_is_an_error(provider, raster, tmp_path):
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    mask = _polygon_layer("EPSG:32633", [[(0, 0), (10, 0), (10, 10), (0, 0)]])
    algorithm = QgsApplication.processingRegistry().createAlgorithmById("segearth:segment")
    with pytest.raises(QgsProcessingException, match="does not overlap"):
        algorithm.run({"INPUT": str(raster), "CLASSES": CLASSES, "MASK": mask, "OUTPUT": str(tmp_path / "x.tif")},
                      QgsProcessingContext(), QgsProcessingFeedback(), catchExceptions=False)
    assert not (tmp_path / "x.tif").exists()


def test_cancel_during_the_job_keeps_nothing(provider, tmp_path):
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback
    from qgis.PyQt.QtCore import Qt

    from segearth_qgis import settings

    big = write_geotiff(tmp_path / "big.tif", smooth_image(800, 800, seed=2), 32633, UTM)
    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda value: value > 0 and feedback.cancel(), Qt.DirectConnection)
    algorithm = QgsApplication.processingRegistry().createAlgorithmById("segearth:segment")
    settings.save("block_size", 336)
    try:
        with pytest.raises(QgsProcessingException, match="Cancelled"):
            algorithm.run({"INPUT": str(big), "CLASSES": CLASSES, "OUTPUT": str(tmp_path / "out.tif")},
                          QgsProcessingContext(), feedback, catchExceptions=False)
    finally:
        settings.save("block_size", 1024)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif"]


def test_unreachable_backend_url_is_a_processing_error(provider, raster, tmp_path, monkeypatch):
    import socket

    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("SEGEARTH_BACKEND_URL", f"http://127.0.0.1:{port}")
    algorithm = QgsApplication.processingRegistry().createAlgorithmById("segearth:segment")
    with pytest.raises(QgsProcessingException, match="Cannot reach the SegEarth-OV backend"):
        algorithm.run({"INPUT": str(raster), "CLASSES": CLASSES, "OUTPUT": str(tmp_path / "out.tif")},
                      QgsProcessingContext(), QgsProcessingFeedback(), catchExceptions=False)
    assert not (tmp_path / "out.tif").exists()


def test_remote_backend_url_with_token(provider, raster, tmp_path, monkeypatch, tiny_paths, tiny_segmenter):
    """A job against a backend given by URL (as a shared GPU server would be), with its token."""
    from tests.backend.helpers import launch_server

    process, url, _ = launch_server(
        ["--model", tiny_paths["model"], "--clip-weights", tiny_paths["clip_weights"],
         "--upsampler-weights", tiny_paths["upsampler_weights"], "--device", "cpu", "--cache-dir",
         str(tmp_path / "cache")], tmp_path, env_extra={"SEGEARTH_BACKEND_TOKEN": "remote-secret"})
    try:
        monkeypatch.setenv("SEGEARTH_BACKEND_URL", url)
        monkeypatch.setenv("SEGEARTH_BACKEND_TOKEN", "remote-secret")
        result = run("segment", INPUT=str(raster), CLASSES=CLASSES, OUTPUT=str(tmp_path / "remote.tif"))
        image = np.ascontiguousarray(gdal.Open(str(raster)).ReadAsArray().transpose(1, 2, 0))
        expected = tiny_segmenter.predict(image, CLASSES.splitlines(), valid=(image != 0).all(-1)).labels
        np.testing.assert_array_equal(read_band(Path(result["OUTPUT"])), expected)
        monkeypatch.setenv("SEGEARTH_BACKEND_TOKEN", "wrong")
        with pytest.raises(QgsProcessingException, match="token is wrong"):
            run("segment", INPUT=str(raster), CLASSES=CLASSES, OUTPUT=str(tmp_path / "remote2.tif"))
    finally:
        process.terminate()
        process.wait(30)


def test_a_dead_local_backend_is_restarted(provider, raster, tmp_path):
    import os
    import signal

    run("segment", INPUT=str(raster), CLASSES=CLASSES, OUTPUT=str(tmp_path / "first.tif"))
    first = shared_manager().local
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait(30)
    result = run("segment", INPUT=str(raster), CLASSES=CLASSES, OUTPUT=str(tmp_path / "second.tif"))
    assert shared_manager().local is not first and shared_manager().local.running()
    np.testing.assert_array_equal(read_band(Path(result["OUTPUT"])), read_band(tmp_path / "first.tif"))


def test_class_stats_on_a_geographic_raster(provider, tmp_path):
    values = np.zeros((1, 40, 50), np.uint8)
    values[0, :, 25:] = 1
    values[0, :10, :] = 2
    geotransform = (13.0, 0.0001, 0.0, 52.5, 0.0, -0.0001)  # about 6.8 m x 11.1 m at 52.5 N
    path = write_geotiff(tmp_path / "geo_classes.tif", values, 4326, geotransform)
    stats = run("class_stats", INPUT=str(path), OUTPUT="memory:")["OUTPUT"]
    rows = {f["class_id"]: f for f in stats.getFeatures()}
    assert {k: int(r["pixels"]) for k, r in rows.items()} == {0: 750, 1: 750, 2: 500}
    from qgis.core import QgsDistanceArea, QgsPointXY

    measure = QgsDistanceArea()
    measure.setEllipsoid("EPSG:7030")
    centre_y = 52.5 - 20 * 0.0001
    width_m = measure.measureLine(QgsPointXY(13.0, centre_y), QgsPointXY(13.0001, centre_y))
    height_m = measure.measureLine(QgsPointXY(13.0, centre_y - 0.00005), QgsPointXY(13.0, centre_y + 0.00005))
    for row in rows.values():
        assert float(row["area_m2"]) == pytest.approx(int(row["pixels"]) * width_m * height_m, rel=2e-3)
        assert float(row["share"]) == pytest.approx(int(row["pixels"]) / 2000)


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_output_equal_to_the_input_is_refused_and_the_input_is_untouched(provider, tmp_path):
    scene = write_geotiff(tmp_path / "scene.tif", smooth_image(60, 70), 32633, UTM)
    before = _digest(scene)
    for output in (str(scene), str(tmp_path / "." / "scene.tif"), str(tmp_path / "scene")):
        with pytest.raises(QgsProcessingException, match="would overwrite the input"):
            run("segment", INPUT=str(scene), CLASSES=CLASSES, OUTPUT=output)
    with pytest.raises(QgsProcessingException, match="would overwrite the input"):
        run("segment", INPUT=str(scene), CLASSES=CLASSES, OUTPUT=str(tmp_path / "labels.tif"),
            OUTPUT_PROBABILITIES=str(scene))
    assert _digest(scene) == before and sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]
    assert gdal.Open(str(scene)).RasterCount == 3


def test_the_two_outputs_must_differ(provider, raster, tmp_path):
    with pytest.raises(QgsProcessingException, match="different file names"):
        run("segment", INPUT=str(raster), CLASSES=CLASSES, OUTPUT=str(tmp_path / "same.tif"),
            OUTPUT_PROBABILITIES=str(tmp_path / "same.tif"))
    assert list(tmp_path.iterdir()) == []


def test_another_rasters_style_is_left_alone(provider, tmp_path):
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    scene = write_geotiff(tmp_path / "scene3.tif", smooth_image(60, 70), 32633, UTM)
    style = tmp_path / "scene3.qml"
    style.write_text("<qgis>the user's own style of scene3.tif</qgis>")
    warnings = []

    class Feedback(QgsProcessingFeedback):
        def reportError(self, error, fatalError=False):  # noqa: N802, N803 - QGIS's names
            warnings.append(error)

    algorithm = QgsApplication.processingRegistry().createAlgorithmById("segearth:segment")
    result, ok = algorithm.run({"INPUT": str(scene), "CLASSES": CLASSES, "OUTPUT": str(tmp_path / "scene3.tiff")},
                               QgsProcessingContext(), Feedback(), catchExceptions=False)
    assert ok and Path(result["OUTPUT"]).is_file()
    assert style.read_text() == "<qgis>the user's own style of scene3.tif</qgis>"
    assert any("scene3.qml was not written" in w and "scene3.tif" in w for w in warnings)


def test_class_stats_and_segment_vector_measure_on_the_project_s_ellipsoid(provider, tmp_path):
    """With an ellipsoid (the project's, or qgis_process --ellipsoid) both algorithms measure on it, also in UTM."""
    import processing
    from qgis.core import QgsCoordinateReferenceSystem, QgsDistanceArea, QgsProcessingContext, QgsProject, QgsUnitTypes

    values = np.zeros((1, 40, 50), np.uint8)
    values[0, :, 25:] = 1
    path = write_geotiff(tmp_path / "utm_classes.tif", values, 32633, UTM)
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    context.setEllipsoid("EPSG:7030")
    stats = processing.run("segearth:class_stats", {"INPUT": str(path), "OUTPUT": "memory:"}, context=context)
    rows = {f["class_id"]: f for f in stats["OUTPUT"].getFeatures()}
    measure = QgsDistanceArea()
    measure.setSourceCrs(QgsCoordinateReferenceSystem("EPSG:32633"), context.transformContext())
    measure.setEllipsoid("EPSG:7030")
    x, y = UTM[0] + 25 * 2.0, UTM[3] - 20 * 2.0  # the pixel at the raster's centre
    ring = [QgsPointXY(x, y), QgsPointXY(x + 2, y), QgsPointXY(x + 2, y + 2), QgsPointXY(x, y + 2)]
    pixel = measure.convertAreaMeasurement(measure.measureArea(QgsGeometry.fromPolygonXY([ring])),
                                           QgsUnitTypes.AreaSquareMeters)
    assert abs(pixel / 4.0 - 1.0) > 1e-4  # UTM's scale factor: ellipsoidal is not planar
    for row in rows.values():
        assert float(row["area_m2"]) == pytest.approx(int(row["pixels"]) * pixel, rel=1e-9)
    planar = run("class_stats", INPUT=str(path), OUTPUT="memory:")["OUTPUT"]  # no ellipsoid: planar
    assert all(float(f["area_m2"]) == pytest.approx(int(f["pixels"]) * 4.0) for f in planar.getFeatures())
