"""segearth:change and segearth:change_vector in a real QGIS with a real backend; outputs read back with GDAL/OGR."""

from __future__ import annotations

import time

import numpy as np
import pytest
from osgeo import gdal, ogr
from qgis.core import (
    QgsApplication,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsRasterLayer,
    QgsVectorLayer,
)

from segearth_qgis.client.backend_manager import shared_manager
from segearth_qgis.core.change import FIRST_TRANSITION, NODATA_CHANGE, UNCERTAIN
from tests.plugin.helpers import CLASS_NAMES as NAMES
from tests.plugin.helpers import (
    CLASSES,
    PAIR_SIZE,
    PASTED,
    UTM,
    read_band,
    smooth_image,
    write_geotiff,
    write_pasted_pair,
)

SIZE, REGION = PAIR_SIZE, PASTED


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    before, after, _ = write_pasted_pair(tmp_path_factory.mktemp("pair"))
    return before, after


def run(algorithm, **parameters):
    import processing

    return processing.run(f"segearth:{algorithm}", parameters)


def run_directly(algorithm: str, parameters: dict, feedback=None) -> dict:
    instance = QgsApplication.processingRegistry().createAlgorithmById(f"segearth:{algorithm}")
    return instance.run(parameters, QgsProcessingContext(), feedback or QgsProcessingFeedback(),
                        catchExceptions=False)[0]


@pytest.fixture(scope="module")
def change(provider, pair, tmp_path_factory):
    folder = tmp_path_factory.mktemp("change")
    result = run("change", BEFORE=str(pair[0]), AFTER=str(pair[1]), CLASSES=CLASSES, THRESHOLD=0.0,
                 OUTPUT=str(folder / "change.tif"), OUTPUT_BEFORE=str(folder / "before.tif"),
                 OUTPUT_AFTER=str(folder / "after.tif"), OUTPUT_MATRIX=str(folder / "matrix.gpkg"),
                 OUTPUT_HTML=str(folder / "report.html"))
    return folder, result


def test_the_provider_lists_both_change_algorithms_with_help(provider):
    ids = {a.id() for a in provider.algorithms()}
    assert {"segearth:change", "segearth:change_vector"} <= ids
    for name in ("change", "change_vector"):
        algorithm = QgsApplication.processingRegistry().algorithmById(f"segearth:{name}")
        assert len(algorithm.shortHelpString()) > 500 and "<" not in algorithm.shortHelpString()


def test_change_writes_every_output_styled(change):
    folder, result = change
    assert sorted(p.name for p in folder.iterdir()) == [
        "after.qml", "after.tif", "after.tif.aux.xml", "before.qml", "before.tif", "before.tif.aux.xml", "change.qml",
        "change.tif", "change.tif.aux.xml", "matrix.gpkg", "report.html"]
    dataset = gdal.Open(result["OUTPUT"])
    band = dataset.GetRasterBand(1)
    assert band.DataType == gdal.GDT_UInt16 and band.GetNoDataValue() == NODATA_CHANGE
    assert dataset.GetGeoTransform() == pytest.approx(UTM)
    codes = band.ReadAsArray()
    present = sorted(int(c) for c in np.unique(codes) if c >= FIRST_TRANSITION)
    assert present and result["CHANGED_AREA"] > 0
    layer = QgsRasterLayer(result["OUTPUT"], "change")  # opens with the .qml beside it
    labels = {entry.value: entry.label for entry in layer.renderer().classes()}
    assert labels[0] == "no change" and labels[UNCERTAIN] == "uncertain"
    for code in present:
        before, after = divmod(code - FIRST_TRANSITION, len(NAMES))
        assert labels[code] == f"{NAMES[before]} → {NAMES[after]}"
    no_change = next(e for e in layer.renderer().classes() if e.value == 0)
    assert no_change.color.alpha() == 0
    assert band.GetCategoryNames()[present[0]] == labels[present[0]]
    before = QgsRasterLayer(result["OUTPUT_BEFORE"], "before")
    assert [c.label for c in before.renderer().classes()] == NAMES
    first = min(present, key=lambda code: -(codes == code).sum())  # the largest transition leads the summary
    assert result["SUMMARY"].split(" m² ")[1].startswith(labels[first])


def test_the_matrix_totals_are_the_dates_class_areas(change):
    folder, result = change
    table = QgsVectorLayer(result["OUTPUT_MATRIX"], "matrix", "ogr")
    assert table.isValid() and table.featureCount() == len(NAMES)
    rows = {f["class_id"]: f for f in table.getFeatures()}
    before, after = read_band(folder / "before.tif"), read_band(folder / "after.tif")
    pixel = result["COMPARED_AREA"] / before.size  # nothing is nodata
    assert pixel == pytest.approx(4.0 / 0.9996 ** 2, rel=1e-3)  # 2 m pixels of UTM 33N, on the ellipsoid
    for k in range(len(NAMES)):
        row = rows[k]
        assert row["class_name"] == NAMES[k]
        assert row["before_m2"] == pytest.approx((before == k).sum() * pixel, rel=1e-9, abs=1e-6)
        assert row["after_m2"] == pytest.approx((after == k).sum() * pixel, rel=1e-9, abs=1e-6)
        assert sum(row[f"to_{j}"] for j in range(len(NAMES))) == pytest.approx(row["before_m2"])
        assert row["net_m2"] == pytest.approx(row["after_m2"] - row["before_m2"])
    assert sum(rows[k]["gained_m2"] for k in rows) == pytest.approx(result["CHANGED_AREA"])
    report = (folder / "report.html").read_text(encoding="utf-8")
    assert "Transition matrix" in report and "Confident changes" in report


def test_change_polygons_into_a_geopackage_keep_its_other_layers(provider, pair, change, tmp_path):
    _, changed = change
    gpkg = tmp_path / "work.gpkg"
    other = ogr.GetDriverByName("GPKG").CreateDataSource(str(gpkg))
    keep = other.CreateLayer("field_survey", None, ogr.wkbPoint)
    keep.CreateFeature(ogr.Feature(keep.GetLayerDefn()))
    keep = other = None
    result = run("change_vector", BEFORE=str(pair[0]), AFTER=str(pair[1]), CLASSES=CLASSES, THRESHOLD=0.0,
                 OUTPUT=f"ogr:dbname='{gpkg}' table=\"changes\" (geom)")
    store = ogr.Open(str(gpkg))
    assert sorted(store.GetLayer(i).GetName() for i in range(store.GetLayerCount())) == ["changes", "field_survey"]
    assert store.GetLayerByName("field_survey").GetFeatureCount() == 1
    polygons = QgsVectorLayer(result["OUTPUT"], "changes", "ogr")
    assert polygons.isValid() and polygons.featureCount() > 0
    features = list(polygons.getFeatures())
    # The polygons' areas add up to the change raster's changed area (the same pixels, the same pixel areas).
    assert sum(f["area_m2"] for f in features) == pytest.approx(changed["CHANGED_AREA"], rel=1e-9)
    for feature in features:
        assert feature["transition"] == f"{feature['from_name']} → {feature['to_name']}"
        assert feature["area_ha"] == pytest.approx(feature["area_m2"] / 10000)
        assert 0 < feature["confidence"] <= 1 and feature["pixels"] >= 1
        # The outline's own (planar) area is its pixels' area, up to the projection's scale.
        assert feature.geometry().area() == pytest.approx(feature["pixels"] * 4.0)
    assert not (tmp_path / "work.qml").exists()  # a style beside it would restyle the other layer too


def test_min_area_and_simplification(provider, pair, change, tmp_path):
    _, changed = change
    result = run("change_vector", BEFORE=str(pair[0]), AFTER=str(pair[1]), CLASSES=CLASSES, THRESHOLD=0.0,
                 MIN_AREA=40.0, SIMPLIFY=2.0, OUTPUT=str(tmp_path / "changes.gpkg"))
    polygons = QgsVectorLayer(result["OUTPUT"], "changes", "ogr")
    features = list(polygons.getFeatures())
    assert features and all(f["area_m2"] >= 40.0 for f in features)
    assert sum(f["area_m2"] for f in features) < changed["CHANGED_AREA"]
    for feature in features:  # simplified outlines stay close to their pixels' area
        assert feature.geometry().area() == pytest.approx(feature["pixels"] * 4.0, rel=0.35)
    assert (tmp_path / "changes.qml").is_file()  # a new GeoPackage of ours: its style beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["changes.gpkg", "changes.qml"]


def test_an_input_geopackage_is_never_written(provider, pair, tmp_path):
    from qgis.core import QgsFeature, QgsGeometry, QgsRectangle, QgsVectorFileWriter

    mask = QgsVectorLayer("Polygon?crs=EPSG:32633", "mask", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(500000, 5599400, 500300, 5600000)))
    mask.dataProvider().addFeatures([feature])
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName, options.layerName = "GPKG", "mask"
    QgsVectorFileWriter.writeAsVectorFormatV3(mask, str(tmp_path / "inputs.gpkg"), QgsProcessingContext()
                                              .transformContext(), options)
    before = (tmp_path / "inputs.gpkg").read_bytes()
    start = time.monotonic()
    for name, value in (("OUTPUT_MATRIX", f"ogr:dbname='{tmp_path / 'inputs.gpkg'}' table=\"mask\""),
                        ("OUTPUT_HTML", str(pair[1]))):
        with pytest.raises(QgsProcessingException, match="would overwrite the input"):
            run_directly("change", {"BEFORE": str(pair[0]), "AFTER": str(pair[1]), "CLASSES": CLASSES,
                                    "MASK": f"{tmp_path / 'inputs.gpkg'}|layername=mask",
                                    "OUTPUT": str(tmp_path / "change.tif"), name: value})
    with pytest.raises(QgsProcessingException, match="would overwrite the input"):
        run_directly("change_vector", {"BEFORE": str(pair[0]), "AFTER": str(pair[1]), "CLASSES": CLASSES,
                                       "MASK": f"{tmp_path / 'inputs.gpkg'}|layername=mask",
                                       "OUTPUT": f"ogr:dbname='{tmp_path / 'inputs.gpkg'}' table=\"mask\" (geom)"})
    assert (tmp_path / "inputs.gpkg").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs.gpkg"]
    assert time.monotonic() - start < 10  # refused before any work


@pytest.mark.parametrize("parameters, fragment", [
    ({"CLASSES": "  \n"}, "Type at least one class"),
    ({"BACKGROUND": 9}, "only 5 classes"),
    ({"AFTER_BANDS": [1, 2]}, "one band or three"),
    ({"OUTPUT": "/no/such/folder/change.tif"}, "does not exist"),
    ({"EXTENT": "0,10,0,10 [EPSG:32633]"}, "does not overlap"),
])
def test_bad_parameters_are_processing_errors(provider, pair, tmp_path, parameters, fragment):
    values = {"BEFORE": str(pair[0]), "AFTER": str(pair[1]), "CLASSES": CLASSES, "OUTPUT": str(tmp_path / "c.tif"),
              **parameters}
    with pytest.raises(QgsProcessingException, match=fragment):
        run_directly("change", values)
    assert list(tmp_path.iterdir()) == []


def test_rasters_far_apart_and_an_empty_date_are_clear_errors(provider, pair, tmp_path):
    far = write_geotiff(tmp_path / "far.tif", smooth_image(40, 40), 32633, (700000.0, 2.0, 0.0, 5000000.0, 0.0, -2.0))
    with pytest.raises(QgsProcessingException, match="does not overlap the before raster"):
        run_directly("change", {"BEFORE": str(pair[0]), "AFTER": str(far), "CLASSES": CLASSES,
                                "OUTPUT": str(tmp_path / "c.tif")})
    empty = write_geotiff(tmp_path / "empty.tif", np.zeros((3, SIZE, SIZE), np.uint8), 32633, UTM, nodata=0)
    with pytest.raises(QgsProcessingException, match="after raster has no data over the area"):
        run_directly("change", {"BEFORE": str(pair[0]), "AFTER": str(empty), "CLASSES": CLASSES,
                                "OUTPUT": str(tmp_path / "c.tif")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.tif", "far.tif"]


def test_cancel_during_the_job_keeps_nothing(provider, pair, tmp_path):
    from qgis.PyQt.QtCore import Qt

    feedback = QgsProcessingFeedback()
    feedback.progressChanged.connect(lambda value: value > 0 and feedback.cancel(), Qt.DirectConnection)
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run_directly("change", {"BEFORE": str(pair[0]), "AFTER": str(pair[1]), "CLASSES": "water\nroad\ngrass",
                                "OUTPUT": str(tmp_path / "c.tif"), "OUTPUT_HTML": str(tmp_path / "r.html")}, feedback)
    assert list(tmp_path.iterdir()) == []


def test_run_and_load_results_styles_the_change_layer(provider, pair, tmp_path, loaded_layers):
    import processing

    result = processing.runAndLoadResults("segearth:change", {
        "BEFORE": str(pair[0]), "AFTER": str(pair[1]), "CLASSES": CLASSES, "THRESHOLD": 0.0,
        "OUTPUT": "TEMPORARY_OUTPUT", "OUTPUT_MATRIX": "TEMPORARY_OUTPUT"})
    loaded = [layer for layer in loaded_layers()
              if isinstance(layer, QgsRasterLayer) and layer.source() == result["OUTPUT"]]
    assert len(loaded) == 1
    labels = [c.label for c in loaded[0].renderer().classes()]
    assert labels[:2] == ["no change", "uncertain"] and all("→" in label for label in labels[2:])
    assert loaded[0].name().startswith("Change")


def test_an_unreachable_backend_is_a_processing_error_and_writes_nothing(provider, pair, tmp_path, monkeypatch):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("SEGEARTH_BACKEND_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(QgsProcessingException, match="Cannot reach the SegEarth-OV backend"):
        run_directly("change", {"BEFORE": str(pair[0]), "AFTER": str(pair[1]), "CLASSES": CLASSES,
                                "OUTPUT": str(tmp_path / "c.tif"), "OUTPUT_HTML": str(tmp_path / "r.html")})
    assert list(tmp_path.iterdir()) == []


def test_a_model_chains_change_and_class_statistics(provider, pair, tmp_path):
    """The graphical modeler's way: a model whose change step feeds segearth:class_stats with the after date."""
    import processing
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterRasterLayer,
    )

    model = QgsProcessingModelAlgorithm("change chain", "tests")
    for name in ("before", "after"):
        model.addModelParameter(QgsProcessingParameterRasterLayer(name, name), QgsProcessingModelParameter(name))
    change = QgsProcessingModelChildAlgorithm("segearth:change")
    change.setChildId("change")
    change.addParameterSources("BEFORE", [QgsProcessingModelChildParameterSource.fromModelParameter("before")])
    change.addParameterSources("AFTER", [QgsProcessingModelChildParameterSource.fromModelParameter("after")])
    change.addParameterSources("CLASSES", [QgsProcessingModelChildParameterSource.fromStaticValue(CLASSES)])
    change.addParameterSources("THRESHOLD", [QgsProcessingModelChildParameterSource.fromStaticValue(0.0)])
    for name in ("OUTPUT", "OUTPUT_AFTER"):
        output = QgsProcessingModelOutput(name.lower())
        output.setChildOutputName(name)
        change.setModelOutputs({**change.modelOutputs(), name.lower(): output})
    model.addChildAlgorithm(change)
    stats = QgsProcessingModelChildAlgorithm("segearth:class_stats")
    stats.setChildId("stats")
    stats.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromChildOutput("change",
                                                                                               "OUTPUT_AFTER")])
    table = QgsProcessingModelOutput("statistics")
    table.setChildOutputName("OUTPUT")
    stats.setModelOutputs({"statistics": table})
    model.addChildAlgorithm(stats)
    result = processing.run(model, {"before": str(pair[0]), "after": str(pair[1]),
                                    "change:output": str(tmp_path / "change.tif"),
                                    "change:output_after": str(tmp_path / "after.tif"),
                                    "stats:statistics": str(tmp_path / "stats.csv")})
    assert read_band(tmp_path / "change.tif").shape == (SIZE, SIZE)
    statistics = QgsVectorLayer(result["stats:statistics"], "stats")
    counted = {f["class_name"]: int(f["pixels"]) for f in statistics.getFeatures()}  # CSV: text
    after = read_band(tmp_path / "after.tif")
    assert counted == {NAMES[k]: int((after == k).sum()) for k in range(len(NAMES))}


def test_each_date_has_its_own_band_mapping(provider, pair, change, tmp_path):
    """The after date's sensor stores blue, green, red, near-infrared: AFTER_BANDS maps them back to R, G, B."""
    image = gdal.Open(str(pair[0])).ReadAsArray()
    other_sensor = np.stack([image[2], image[1], image[0], image[1] // 2 + 7])
    after = write_geotiff(tmp_path / "bgrn.tif", other_sensor, 32633, UTM)
    result = run("change", BEFORE=str(pair[0]), AFTER=str(after), AFTER_BANDS=[3, 2, 1], CLASSES=CLASSES,
                 THRESHOLD=0.0, CONFIDENCE=0.0, MARGIN=0.0, OUTPUT=str(tmp_path / "c.tif"))
    assert (read_band(tmp_path / "c.tif") == 0).all() and result["CHANGED_AREA"] == 0
    assert result["SUMMARY"] == "No change found."


def test_the_log_says_when_the_cache_cannot_keep_both_dates(provider, change):
    from segearth_qgis.processing.change_base import cache_hint

    client = shared_manager().client()
    assert cache_hint(client, 1) == ""  # the last run's two images are in the cache
    hint = cache_hint(client, 10**6)
    assert "of this job's 2000000 images" in hint and "SEGEARTH_FEATURE_CACHE_MB" in hint
