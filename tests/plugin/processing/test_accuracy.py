"""`segearth:accuracy` through processing.run: prescribed confusion matrices, other grids, polygons, errors."""

from __future__ import annotations

import numpy as np
import pytest
from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsField,
    QgsGeometry,
    QgsPointXY,
    QgsProcessingException,
    QgsProject,
    QgsVectorLayer,
)

from segearth_qgis.qt_compat import field_type
from tests.plugin.helpers import UTM, write_geotiff
from tests.plugin.processing.accuracy_helpers import (
    KAPPA,
    MATRIX,
    OVERALL_ACCURACY,
    PREDICTION_NAMES,
    prescribed_pair,
    set_class_names,
)


@pytest.fixture(scope="module")
def provider(qgis_processing):
    from segearth_qgis.processing.provider import SegEarthProvider

    provider = SegEarthProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    yield provider
    QgsApplication.processingRegistry().removeProvider(provider)


def run(**parameters):
    import processing

    return processing.run("segearth:accuracy", {"OUTPUT_MATRIX": "memory:", "OUTPUT_METRICS": "memory:",
                                                **parameters})


def _matrix(table) -> np.ndarray:
    rows = sorted(table.getFeatures(), key=lambda f: f["reference_id"])
    width = len([n for n in table.fields().names() if n.startswith("pred_")])
    return np.array([[f[f"pred_{i}"] for i in range(width)] for f in rows])


def test_prescribed_matrix_by_class_names(provider, tmp_path):
    classified, reference = prescribed_pair(tmp_path)
    html = tmp_path / "report.html"
    result = run(INPUT=str(classified), REFERENCE_RASTER=str(reference), MAPPING="Clutter=ignore",
                 OUTPUT_HTML=str(html))
    np.testing.assert_array_equal(_matrix(result["OUTPUT_MATRIX"]), MATRIX)
    assert result["OVERALL_ACCURACY"] == pytest.approx(OVERALL_ACCURACY)
    assert result["KAPPA"] == pytest.approx(KAPPA) and result["PIXELS"] == 80
    metrics = {f["class_name"]: f for f in result["OUTPUT_METRICS"].getFeatures()}
    assert list(metrics) == PREDICTION_NAMES
    road = metrics["road"]  # reference 15 pixels, classified 18, correct 12
    assert (road["reference_pixels"], road["classified_pixels"], road["correct_pixels"]) == (15, 18, 12)
    assert road["iou"] == pytest.approx(12 / 21) and road["precision"] == pytest.approx(12 / 18)
    assert road["recall"] == pytest.approx(12 / 15) and road["f1"] == pytest.approx(24 / 33)
    page = html.read_text()
    assert "Confusion matrix" in page and "<td class=diagonal>20</td>" in page
    assert "Pixels left out by the mapping" in page
    assert result["MEAN_IOU"] == pytest.approx(np.mean([20 / 27, 15 / 23, 12 / 21, 18 / 24]))


def test_csv_tables_read_back_as_numbers(provider, tmp_path):
    """Found in the walkthrough: the CSVs quoted every count ("559"), so GDAL read every column as text."""
    from osgeo import ogr

    classified, reference = prescribed_pair(tmp_path)
    matrix_csv, metrics_csv = tmp_path / "matrix.csv", tmp_path / "metrics.csv"
    run(INPUT=str(classified), REFERENCE_RASTER=str(reference), MAPPING="Clutter=ignore",
        OUTPUT_MATRIX=str(matrix_csv), OUTPUT_METRICS=str(metrics_csv))
    assert matrix_csv.read_text().splitlines()[1] == "0,background,20,2,1,0,23"  # no quotes around numbers
    assert '"building, roof"' in matrix_csv.read_text()  # quotes only where a value needs them
    types = {}
    for path in (matrix_csv, metrics_csv):
        dataset = ogr.Open(str(path))
        definition = dataset.GetLayer(0).GetLayerDefn()
        types.update({definition.GetFieldDefn(i).GetName(): definition.GetFieldDefn(i).GetTypeName()
                      for i in range(definition.GetFieldCount())})
        dataset = None
    assert types["reference_id"] == "Integer" and types["pred_0"] == "Integer64" and types["total"] == "Integer64"
    assert types["iou"] == "Real" and types["reference"] == "String" and types["class_name"] == "String"
    table = QgsVectorLayer(str(matrix_csv), "matrix", "ogr")
    np.testing.assert_array_equal(_matrix(table), MATRIX)  # read back by QGIS as numbers too
    assert sorted(p.name for p in tmp_path.glob("m*.csv*")) == ["matrix.csv", "matrix.csvt", "metrics.csv",
                                                               "metrics.csvt"]


def test_unmatched_reference_class_names_what_to_map(provider, tmp_path):
    classified, reference = prescribed_pair(tmp_path)
    with pytest.raises(QgsProcessingException, match=r"5 \(Clutter\) match no class.*'reference=ignore'"):
        run(INPUT=str(classified), REFERENCE_RASTER=str(reference))
    with pytest.raises(QgsProcessingException, match="exactly one reference"):
        run(INPUT=str(classified))


def test_coarser_reference_with_plain_codes(provider, tmp_path):
    rng = np.random.default_rng(2)
    classes = rng.integers(0, 3, (10, 10)).astype(np.uint8)
    classified = write_geotiff(tmp_path / "c.tif", classes[None], 32633, UTM)
    coarse = rng.integers(0, 3, (5, 5)).astype(np.uint8)
    reference = write_geotiff(tmp_path / "r.tif", coarse[None], 32633, (UTM[0], 4.0, 0.0, UTM[3], 0.0, -4.0))
    result = run(INPUT=str(classified), REFERENCE_RASTER=str(reference), MAPPING="2=0\n0=2")
    fine = np.kron(coarse, np.ones((2, 2), np.uint8))  # nearest neighbour onto the 2 m grid
    swapped = np.array([2, 1, 0])[fine]
    expected = np.zeros((3, 3), int)
    np.add.at(expected, (swapped.ravel(), classes.ravel()), 1)
    np.testing.assert_array_equal(_matrix(result["OUTPUT_MATRIX"]), expected)
    assert [f["reference"] for f in result["OUTPUT_MATRIX"].getFeatures()] == ["class 0", "class 1", "class 2"]


def test_polygons_in_another_crs_with_text_classes(provider, tmp_path):
    classes = np.zeros((10, 10), np.uint8)
    classes[:, 3:] = 1
    classes[6:, :] = 2
    classified = write_geotiff(tmp_path / "c.tif", classes[None], 32633, UTM, nodata=255)
    set_class_names(classified, PREDICTION_NAMES)
    to_wgs84 = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:32633"),
                                      QgsCoordinateReferenceSystem("EPSG:4326"), QgsProject.instance())
    layer = QgsVectorLayer("Polygon?crs=EPSG:4326", "reference", "memory")
    layer.dataProvider().addAttributes([QgsField("landcover", field_type("String"))])
    layer.updateFields()
    x0, y0 = UTM[0], UTM[3]

    def box(col0, row0, col1, row1, value):  # pixel edges on the 2 m grid
        corners = [(x0 + 2 * col0, y0 - 2 * row0), (x0 + 2 * col1, y0 - 2 * row0), (x0 + 2 * col1, y0 - 2 * row1),
                   (x0 + 2 * col0, y0 - 2 * row1)]
        ring = [to_wgs84.transform(QgsPointXY(x, y)) for x, y in corners]
        feature = QgsFeature(layer.fields())
        feature.setGeometry(QgsGeometry.fromPolygonXY([ring + ring[:1]]))
        feature.setAttributes([value])
        layer.dataProvider().addFeatures([feature])

    box(0, 0, 5, 10, "Building")  # cols 0-4: classified 0 (cols 0-2, rows 0-5), 1 (cols 3-4), 2 (rows 6-9)
    box(5, 0, 10, 5, "road")      # cols 5-9, rows 0-4: classified 1
    result = run(INPUT=str(classified), REFERENCE_VECTOR=layer, REFERENCE_FIELD="landcover")
    expected = np.zeros((4, 4), int)
    expected[1] = [18, 12, 20, 0]  # Building: 3x6 background, 2x6 building, 5x4 road
    expected[2] = [0, 25, 0, 0]    # road reference, classified building
    np.testing.assert_array_equal(_matrix(result["OUTPUT_MATRIX"]), expected)
    assert result["PIXELS"] == 75 and result["OVERALL_ACCURACY"] == pytest.approx(12 / 75)
