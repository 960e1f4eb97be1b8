"""The Processing algorithms in a real QGIS with a real backend; outputs read back with GDAL/OGR."""

from __future__ import annotations

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

from segearth_qgis.backend_manager import shared_manager
from tests.plugin.conftest import CLASS_NAMES as NAMES
from tests.plugin.conftest import CLASSES, UTM, smooth_image, write_geotiff


@pytest.fixture(scope="module")
def provider(qgis_processing, backend_environment):
    from segearth_qgis.processing.provider import SegEarthProvider

    provider = SegEarthProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    yield provider
    QgsApplication.processingRegistry().removeProvider(provider)
    shared_manager().stop()


@pytest.fixture(scope="module")
def raster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    image = smooth_image(260, 300, seed=4)
    image[:, :10, :] = 0
    return write_geotiff(folder / "scene.tif", image, 32633, UTM, nodata=0)


def run(algorithm, **parameters):
    import processing

    return processing.run(f"segearth:{algorithm}", parameters)


def test_provider_lists_the_algorithms_with_help(provider):
    ids = sorted(a.id() for a in provider.algorithms())
    assert ids == ["segearth:accuracy", "segearth:class_stats", "segearth:segment", "segearth:segment_vector"]
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
    assert px == 4.0 and py == -4.0 and 0 < dataset.RasterXSize < 150 and 0 < dataset.RasterYSize < 130
    assert x0 >= 500000.0 and y0 <= 5600000.0


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


@pytest.mark.parametrize("parameters, fragment", [
    ({"CLASSES": "  \n"}, "CLASSES is empty"),
    ({"EXTENT": "0,10,0,10 [EPSG:32633]"}, "does not overlap"),
    ({"BANDS": [1, 2]}, "one band or three"),
    ({"BACKGROUND": 9}, "past the last class"),
    ({"OUTPUT": "/no/such/folder/out.tif"}, "does not exist"),
])
def test_bad_parameters_are_processing_errors(provider, raster, tmp_path, parameters, fragment):
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    algorithm = QgsApplication.processingRegistry().createAlgorithmById("segearth:segment")
    values = {"INPUT": str(raster), "CLASSES": CLASSES, "OUTPUT": str(tmp_path / "x.tif"), **parameters}
    context, feedback = QgsProcessingContext(), QgsProcessingFeedback()
    with pytest.raises(QgsProcessingException, match=fragment):
        algorithm.run(values, context, feedback, catchExceptions=False)
