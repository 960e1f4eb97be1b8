"""What a Processing run leaves the user: styled and named layers, class shares, styles beside files, clean cancels.

Real QGIS, real backend (tiny weights), outputs read back with GDAL/OGR.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr
from qgis.core import (
    QgsApplication,
    QgsFeature,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsPalettedRasterRenderer,
    QgsPointXY,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import Qt

from segearth_qgis.core.classes import PRESETS
from segearth_qgis.map.styling import RESULT_OPACITY
from segearth_qgis.processing import post_processing
from segearth_qgis.qt_compat import field_type
from tests.plugin.helpers import CLASS_NAMES as NAMES
from tests.plugin.helpers import CLASSES, UTM, read_band, write_geotiff


class RecordingFeedback(QgsProcessingFeedback):
    """Keeps what an algorithm tells the user."""

    def __init__(self) -> None:
        super().__init__()
        self.infos: list[str] = []
        self.errors: list[str] = []

    def pushInfo(self, info):  # noqa: N802 - QGIS's name
        self.infos.append(info)

    def reportError(self, error, fatalError=False):  # noqa: N802, N803 - QGIS's names
        self.errors.append(error)


def run_algorithm(algorithm, parameters, feedback=None):
    """Run ``segearth:<algorithm>``, exceptions raised (not turned into a failed result)."""
    instance = QgsApplication.processingRegistry().createAlgorithmById(f"segearth:{algorithm}")
    results, ok = instance.run(parameters, QgsProcessingContext(), feedback or QgsProcessingFeedback(),
                               catchExceptions=False)
    assert ok
    return results


def test_run_and_load_results_shows_the_classes_over_the_image(provider, raster, loaded_layers):
    import processing

    waiting = post_processing.pending_count()
    result = processing.runAndLoadResults("segearth:segment", {"INPUT": str(raster), "CLASSES": CLASSES,
                                                               "OUTPUT": "TEMPORARY_OUTPUT"})
    [layer] = loaded_layers()
    assert isinstance(layer, QgsRasterLayer) and layer.source() == result["OUTPUT"]
    renderer = layer.renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)
    assert [c.label for c in renderer.classes()] == NAMES
    assert renderer.classes()[0].color.alpha() == 0  # the background, not opaque black
    assert all(c.color.alpha() == 255 for c in renderer.classes()[1:])
    assert layer.opacity() == pytest.approx(RESULT_OPACITY)
    # Processing calls an unnamed output "Segmentation": the classes tell runs apart.
    assert layer.name() == "Segmentation — building, road, tree +1"
    assert post_processing.pending_count() == waiting  # the post-processor let go of itself


def test_a_named_output_keeps_its_name(provider, raster, tmp_path, loaded_layers):
    import processing

    processing.runAndLoadResults("segearth:segment", {"INPUT": str(raster), "CLASSES": "water\nroad",
                                                      "BACKGROUND": -1, "OUTPUT": str(tmp_path / "mine.tif")})
    [layer] = loaded_layers()
    assert layer.name() in ("mine", "Segmentation — water, road")  # Processing's file-name setting decides
    assert [c.label for c in layer.renderer().classes()] == ["water", "road"]
    assert all(c.color.alpha() == 255 for c in layer.renderer().classes())  # no background class


def test_post_processors_wait_for_their_layer_only_and_the_registry_is_bounded(qgis_app):
    context, project = QgsProcessingContext(), QgsProject()
    colours = [(0, 0, 0, 0)] + [(9, 9, 9, 255)] * 4
    processors = []
    for number in range(post_processing.MAX_PENDING + 5):
        destination = f"/nowhere/{number}.tif"
        context.addLayerToLoadOnCompletion(destination, QgsProcessingContext.LayerDetails("Segmentation", project,
                                                                                         "OUTPUT"))
        processor = post_processing.ResultPostProcessor(NAMES, colours, "Segmentation", 0)
        assert post_processing.attach(processor, context, destination)
        processors.append(processor)
        assert post_processing.pending_count() <= post_processing.MAX_PENDING
    assert post_processing.pending_count() == post_processing.MAX_PENDING  # the oldest were let go
    assert not post_processing.attach(processors[0], context, "/not/to/be/loaded.tif")
    # Processing calls the post-processor it was given once the layer is loaded; it then lets go of itself.
    layer = QgsRasterLayer(str(Path(__file__)), "Segmentation", "gdal")
    details = context.layerToLoadOnCompletionDetails(f"/nowhere/{len(processors) - 1}.tif")
    details.postProcessor().postProcessLayer(layer, context, QgsProcessingFeedback())
    assert post_processing.pending_count() == post_processing.MAX_PENDING - 1
    assert layer.name() == "Segmentation — building, road, tree +1"
    for processor in processors:
        processor.postProcessLayer(None, context, None)
    assert post_processing.pending_count() == 0


def test_processing_run_without_loading_registers_nothing(provider, raster, tmp_path):
    import processing

    waiting = post_processing.pending_count()
    processing.run("segearth:segment", {"INPUT": str(raster), "CLASSES": CLASSES, "OUTPUT": str(tmp_path / "s.tif")})
    processing.run("segearth:segment_vector", {"INPUT": str(raster), "CLASSES": CLASSES,
                                               "OUTPUT": str(tmp_path / "p.gpkg")})
    assert post_processing.pending_count() == waiting


def test_the_log_gives_the_class_shares_and_the_probabilities_file(provider, raster, tmp_path):
    feedback = RecordingFeedback()
    result = run_algorithm("segment", {"INPUT": str(raster), "CLASSES": CLASSES, "OUTPUT": str(tmp_path / "s.tif"),
                                       "OUTPUT_PROBABILITIES": str(tmp_path / "p.tif")}, feedback)
    labels = read_band(Path(result["OUTPUT"]))
    counts = np.bincount(labels[labels != 255].ravel(), minlength=5)
    [line] = [info for info in feedback.infos if info.startswith("Class shares:")]
    for name, count in zip(NAMES, counts):
        assert f"{name} {100.0 * count / counts.sum():.1f} %" in line
    assert f"nodata: {100.0 * (labels == 255).mean():.1f} %" in line
    assert result["OUTPUT_PROBABILITIES"] == str(tmp_path / "p.tif")
    assert any(str(tmp_path / "p.tif") in info and "probabilities" in info for info in feedback.infos)
    assert not any("Every pixel" in error for error in feedback.errors)


def test_an_all_background_result_warns_to_lower_the_threshold(provider, raster, tmp_path):
    feedback = RecordingFeedback()
    result = run_algorithm("segment", {"INPUT": str(raster), "CLASSES": CLASSES, "THRESHOLD": 1.0,
                                       "OUTPUT": str(tmp_path / "s.tif")}, feedback)
    labels = read_band(Path(result["OUTPUT"]))
    assert set(np.unique(labels)) == {0, 255}
    assert any("Every pixel is 'background'" in error and "Lower the threshold" in error
               for error in feedback.errors)


def test_background_minus_one_means_no_background_class(provider, raster, tmp_path, tiny_segmenter):
    result = run_algorithm("segment", {"INPUT": str(raster), "CLASSES": CLASSES, "THRESHOLD": 0.9,
                                       "BACKGROUND": -1, "OUTPUT": str(tmp_path / "s.tif")})
    image = np.ascontiguousarray(gdal.Open(str(raster)).ReadAsArray().transpose(1, 2, 0))
    expected = tiny_segmenter.predict(image, CLASSES.splitlines(), prob_threshold=0.0, valid=(image != 0).all(-1))
    np.testing.assert_array_equal(read_band(Path(result["OUTPUT"])), expected.labels)  # the threshold is unused
    layer = QgsRasterLayer(result["OUTPUT"], "s")  # (the renderer lives as long as its layer)
    assert all(c.color.alpha() == 255 for c in layer.renderer().classes())  # no class is drawn transparent


def test_defaults_are_the_first_presets_and_help_is_plain_text(provider):
    registry = QgsApplication.processingRegistry()
    segment = registry.algorithmById("segearth:segment")
    assert segment.parameterDefinition("CLASSES").defaultValue().splitlines() == list(PRESETS[0].classes)
    assert segment.parameterDefinition("THRESHOLD").defaultValue() == PRESETS[0].threshold
    assert segment.parameterDefinition("BACKGROUND").defaultValue() == PRESETS[0].background_index
    for algorithm in provider.algorithms():
        text = algorithm.shortHelpString()
        assert "<" not in text and ">" not in text, algorithm.id()
    assert "-1: no background class" in segment.shortHelpString()


def test_segment_vector_drops_the_background_and_writes_a_style_beside_the_geopackage(provider, raster, tmp_path):
    labels = read_band(Path(run_algorithm("segment", {"INPUT": str(raster), "CLASSES": CLASSES,
                                                      "OUTPUT": str(tmp_path / "ref.tif")})["OUTPUT"]))
    assert (labels == 0).any() and ((labels > 0) & (labels < 255)).any()  # background to drop, and other classes
    classes_of = {}
    for drop in (True, False):
        output = tmp_path / f"polys_{drop}.gpkg"
        run_algorithm("segment_vector", {"INPUT": str(raster), "CLASSES": CLASSES, "DROP_BACKGROUND": drop,
                                         "OUTPUT": str(output)})
        source = ogr.Open(str(output))
        classes_of[drop] = {feature["class_id"] for feature in source.GetLayer(0)}
        del source
    assert classes_of[False] == set(np.unique(labels[labels != 255]).tolist())
    assert classes_of[True] == classes_of[False] - {0}
    # The .qml beside the GeoPackage: it opens styled by class anywhere.
    assert (tmp_path / "polys_True.qml").is_file()
    layer = QgsVectorLayer(str(tmp_path / "polys_True.gpkg"), "polys", "ogr")
    renderer = layer.renderer()
    assert renderer.type() == "categorizedSymbol" and renderer.classAttribute() == "class_name"
    assert [c.label() for c in renderer.categories()] == NAMES


def test_no_style_is_written_over_another_files_style(provider, raster, tmp_path):
    (tmp_path / "area.tif").write_bytes(b"")  # area.qml would be this file's style
    feedback = RecordingFeedback()
    run_algorithm("segment_vector", {"INPUT": str(raster), "CLASSES": CLASSES, "OUTPUT": str(tmp_path / "area.gpkg")},
                  feedback)
    assert not (tmp_path / "area.qml").exists()
    assert any("area.qml was not written" in error and "area.tif" in error for error in feedback.errors)


@pytest.mark.parametrize("stage, cancel_at", [("polygonize", lambda value: 80 < value < 85),
                                               ("measure", lambda value: value >= 85)])
def test_cancel_while_making_polygons_is_an_error_and_leaves_no_output(provider, raster, tmp_path, stage, cancel_at):
    # Progress: segmentation up to 80 %, gdal:polygonize 80-85 %, measuring from 85 %.
    feedback = QgsProcessingFeedback()
    seen = []

    def cancel(value):
        if cancel_at(value) and not feedback.isCanceled():
            seen.append(value)
            feedback.cancel()

    feedback.progressChanged.connect(cancel, Qt.DirectConnection)
    algorithm = QgsApplication.processingRegistry().createAlgorithmById("segearth:segment_vector")
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        algorithm.run({"INPUT": str(raster), "CLASSES": CLASSES, "OUTPUT": str(tmp_path / "polys.gpkg")},
                      QgsProcessingContext(), feedback, catchExceptions=False)
    assert len(seen) == 1, f"never cancelled during {stage}"
    assert list(tmp_path.iterdir()) == []


def _zones():
    fields = QgsFields()
    fields.append(QgsField("district", field_type("String")))
    layer = QgsVectorLayer("Polygon?crs=EPSG:32633", "zones", "memory")
    layer.dataProvider().addAttributes(list(fields))
    layer.updateFields()
    for x0, name in ((500000, "west"), (500300, "east")):
        feature = QgsFeature(layer.fields())
        feature.setGeometry(QgsGeometry.fromPolygonXY([[QgsPointXY(x0, 5600000), QgsPointXY(x0 + 300, 5600000),
                                                        QgsPointXY(x0 + 300, 5599480), QgsPointXY(x0, 5599480),
                                                        QgsPointXY(x0, 5600000)]]))
        feature.setAttributes([name])
        layer.dataProvider().addFeatures([feature])
    return layer


def test_class_stats_zone_is_the_chosen_attribute(provider, tmp_path):
    import processing

    values = np.zeros((1, 260, 300), np.uint8)
    values[0, :, 150:] = 1
    values[0, :100, :] = 2
    path = write_geotiff(tmp_path / "classes.tif", values, 32633, UTM)
    zones = _zones()
    by_name = processing.run("segearth:class_stats", {"INPUT": str(path), "ZONES": zones, "ZONE_FIELD": "district",
                                                      "OUTPUT": "memory:"})["OUTPUT"]
    rows = {(f["zone"], f["class_id"]): int(f["pixels"]) for f in by_name.getFeatures()}
    assert by_name.fields().field("zone").type() == field_type("String")
    assert rows == {("west", 0): 160 * 150, ("west", 2): 100 * 150, ("east", 1): 160 * 150, ("east", 2): 100 * 150}
    by_id = processing.run("segearth:class_stats", {"INPUT": str(path), "ZONES": zones, "OUTPUT": "memory:"})["OUTPUT"]
    assert {f["zone"] for f in by_id.getFeatures()} == {1, 2}


def test_a_layer_added_to_an_existing_geopackage_gets_no_style_file(provider, raster, tmp_path):
    other = tmp_path / "project_data.gpkg"
    ogr.GetDriverByName("GPKG").CreateDataSource(str(other)).CreateLayer("roads")
    feedback = RecordingFeedback()
    destination = f"ogr:dbname='{other}' table=\"segearth\" (geom)"
    run_algorithm("segment_vector", {"INPUT": str(raster), "CLASSES": CLASSES, "OUTPUT": destination}, feedback)
    source = ogr.Open(str(other))
    assert sorted(source.GetLayer(i).GetName() for i in range(source.GetLayerCount())) == ["roads", "segearth"]
    assert source.GetLayerByName("segearth").GetFeatureCount() > 0
    del source
    assert not (tmp_path / "project_data.qml").exists()
    assert any("holds other layers" in error for error in feedback.errors)


def test_outputs_are_geotiff_only(provider):
    assert provider.supportedOutputRasterLayerExtensions() == ["tif", "tiff"]
