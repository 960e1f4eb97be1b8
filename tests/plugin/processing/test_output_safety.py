"""Nothing of the user's is lost by a Processing run: inputs, other GeoPackage layers, side files, a full disk.

Real QGIS, real backend (tiny weights), real GeoPackages and GeoTIFFs read back with OGR/GDAL.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback
from qgis.PyQt.QtCore import Qt

from tests.plugin.helpers import (
    CLASSES,
    fill_filesystem,
    folder_digests,
    geopackage_contents,
    input_with_side_files,
    write_geopackage,
)
from tests.plugin.processing.accuracy_helpers import prescribed_pair

#: The user's own layers, with attributes worth checking after every run.
KEEP = {"keepme": [(7, "seven"), (8, "eight ü")], "roads": [(1, "A1")]}


def run(algorithm, parameters, feedback=None):
    """``segearth:<algorithm>`` with exceptions raised (not turned into a failed result)."""
    instance = QgsApplication.processingRegistry().createAlgorithmById(f"segearth:{algorithm}")
    results, ok = instance.run(parameters, QgsProcessingContext(), feedback or QgsProcessingFeedback(),
                               catchExceptions=False)
    assert ok
    return results


def hidden(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if entry.name.startswith("."))


# ------------------------------------------------------------------ 1. outputs are never inputs, other layers stay

@pytest.mark.parametrize("destination", ["{gpkg}", "{gpkg}|layername=mask",
                                         "ogr:dbname='{gpkg}' table=\"mask\" (geom)"])
def test_segment_vector_never_writes_over_its_mask(provider, raster, tmp_path, destination):
    mask = write_geopackage(tmp_path / "mask.gpkg", {"mask": [(1, "area")]})
    before = folder_digests(tmp_path)
    with pytest.raises(QgsProcessingException, match="would overwrite the input") as caught:
        run("segment_vector", {"INPUT": str(raster), "CLASSES": CLASSES, "MASK": str(mask),
                               "OUTPUT": destination.format(gpkg=mask)})
    assert "mask.gpkg" in str(caught.value) and "layer" in str(caught.value)
    assert folder_digests(tmp_path) == before


def test_segment_vector_adds_a_layer_beside_its_mask_in_the_same_geopackage(provider, raster, tmp_path):
    mask = write_geopackage(tmp_path / "mask.gpkg", {"mask": [(1, "area")]})
    before = geopackage_contents(mask)
    result = run("segment_vector", {"INPUT": str(raster), "CLASSES": CLASSES, "MASK": str(mask),
                                    "OUTPUT": f"ogr:dbname='{mask}' table=\"polygons\" (geom)"})
    after = geopackage_contents(mask)
    assert after["mask"] == before["mask"] and len(after["polygons"]) > 0
    assert result["OUTPUT"] == f"{mask}|layername=polygons"


def test_a_plain_geopackage_destination_adds_its_layer_and_keeps_the_others(provider, raster, tmp_path):
    """Found by the second safety probe: OUTPUT=multi.gpkg deleted the file's other layer ``keepme``."""
    multi = write_geopackage(tmp_path / "multi.gpkg", KEEP)
    before = geopackage_contents(multi)
    feedback = RecordingFeedback()
    result = run("segment_vector", {"INPUT": str(raster), "CLASSES": CLASSES, "OUTPUT": str(multi)}, feedback)
    after = geopackage_contents(multi)
    assert {name: after[name] for name in KEEP} == before and set(after) == {*KEEP, "multi"}
    assert result["OUTPUT"] == f"{multi}|layername=multi"
    first = after["multi"]
    assert first and {row[2] for row in first} <= set(CLASSES.splitlines())  # class_id, class_name, area_m2
    # Again, with the background kept: only its own layer is replaced.
    run("segment_vector", {"INPUT": str(raster), "CLASSES": CLASSES, "DROP_BACKGROUND": False, "OUTPUT": str(multi)})
    again = geopackage_contents(multi)
    assert {name: again[name] for name in KEEP} == before and len(again["multi"]) > len(first)
    assert not (tmp_path / "multi.qml").exists()  # a .qml would style the user's layers too
    assert any("holds other layers" in error for error in feedback.errors)
    assert hidden(tmp_path) == []


class RecordingFeedback(QgsProcessingFeedback):
    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []

    def reportError(self, error, fatalError=False):  # noqa: N802, N803 - QGIS's names
        self.errors.append(error)


def test_a_run_cancelled_while_writing_leaves_the_geopackage_as_it_was(provider, raster, tmp_path):
    multi = write_geopackage(tmp_path / "multi.gpkg", KEEP)
    before, digests = geopackage_contents(multi), folder_digests(tmp_path)
    feedback = QgsProcessingFeedback()
    seen = []

    def cancel_while_writing(value):  # 95-100 %: the polygons are being written
        if value > 95 and not feedback.isCanceled():
            seen.append(value)
            feedback.cancel()

    feedback.progressChanged.connect(cancel_while_writing, Qt.DirectConnection)
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run("segment_vector", {"INPUT": str(raster), "CLASSES": CLASSES, "DROP_BACKGROUND": False,
                               "OUTPUT": str(multi)}, feedback)
    assert seen, "never cancelled while writing"
    assert geopackage_contents(multi) == before and folder_digests(tmp_path) == digests


def test_a_run_that_fills_the_disk_leaves_the_geopackage_as_it_was(provider, raster, small_filesystem):
    folder = small_filesystem(1024)
    multi = write_geopackage(folder / "multi.gpkg", KEEP)
    before = geopackage_contents(multi)
    fill_filesystem(folder, 16 * 1024)
    digests = folder_digests(folder)
    with pytest.raises(QgsProcessingException, match=f"The disk holding {folder} is full"):
        run("segment_vector", {"INPUT": str(raster), "CLASSES": CLASSES, "DROP_BACKGROUND": False,
                               "OUTPUT": str(multi)})
    assert folder_digests(folder) == digests and geopackage_contents(multi) == before


def test_tables_never_replace_an_input_and_two_tables_never_share_a_layer(provider, tmp_path):
    classified, reference = prescribed_pair(tmp_path)
    zones = write_geopackage(tmp_path / "zones.gpkg", {"zones": [(1, "Road"), (2, "Building")]},
                             square=(500000.0, 5600000.0, 10.0))
    before = folder_digests(tmp_path)
    refused = [
        ("class_stats", {"INPUT": str(classified), "ZONES": str(zones), "OUTPUT": str(zones)},
         "would overwrite the input"),
        ("accuracy", {"INPUT": str(classified), "REFERENCE_VECTOR": str(zones), "REFERENCE_FIELD": "label",
                      "OUTPUT_MATRIX": f"ogr:dbname='{zones}' table=\"zones\" (geom)", "OUTPUT_METRICS": "memory:"},
         "would overwrite the input"),
        ("accuracy", {"INPUT": str(classified), "REFERENCE_RASTER": str(reference), "OUTPUT_MATRIX": "memory:",
                      "OUTPUT_METRICS": "memory:", "OUTPUT_HTML": str(classified)}, "would overwrite the input"),
        ("accuracy", {"INPUT": str(classified), "REFERENCE_RASTER": str(reference), "OUTPUT_MATRIX": "memory:",
                      "OUTPUT_METRICS": "memory:", "OUTPUT_HTML": str(reference)}, "would overwrite the input"),
        ("accuracy", {"INPUT": str(classified), "REFERENCE_RASTER": str(reference),
                      "OUTPUT_MATRIX": str(tmp_path / "report.gpkg"), "OUTPUT_METRICS": str(tmp_path / "report.gpkg")},
         "different"),
    ]
    for algorithm, parameters, fragment in refused:
        with pytest.raises(QgsProcessingException, match=fragment):
            run(algorithm, parameters)
        assert folder_digests(tmp_path) == before, (algorithm, parameters)


def test_tables_go_into_an_existing_geopackage_as_their_own_layers(provider, tmp_path):
    classified, reference = prescribed_pair(tmp_path)
    multi = write_geopackage(tmp_path / "multi.gpkg", KEEP)
    before = geopackage_contents(multi)
    stats = run("class_stats", {"INPUT": str(classified), "OUTPUT": str(multi)})
    accuracy = run("accuracy", {"INPUT": str(classified), "REFERENCE_RASTER": str(reference),
                                "MAPPING": "Clutter=ignore",
                                "OUTPUT_MATRIX": f"ogr:dbname='{multi}' table=\"matrix\"",
                                "OUTPUT_METRICS": f"ogr:dbname='{multi}' table=\"metrics\"",
                                "OUTPUT_HTML": str(tmp_path / "report.html")})
    after = geopackage_contents(multi)
    assert {name: after[name] for name in KEEP} == before
    assert stats["OUTPUT"] == f"{multi}|layername=multi" and len(after["multi"]) == 4
    assert accuracy["OUTPUT_MATRIX"] == f"{multi}|layername=matrix" and len(after["matrix"]) == 4
    assert len(after["metrics"]) == 4 and "Overall accuracy" in (tmp_path / "report.html").read_text()
    assert hidden(tmp_path) == []


# ------------------------------------------------------------------ 2. an input's side files are never "stale"

def test_writing_beside_the_input_twice_leaves_its_side_files_alone(provider, tmp_path):
    """Found by the second safety probe: the second run to ``oem.tiff`` removed ``oem.tfw`` (oem.tif's)."""
    scene = input_with_side_files(tmp_path)
    before = folder_digests(tmp_path)
    output = tmp_path / "oem.tiff"
    for _ in range(2):
        run("segment", {"INPUT": str(scene), "CLASSES": CLASSES, "OUTPUT": str(output)})
        assert output.is_file() and (tmp_path / "oem.tiff.aux.xml").is_file()
        after = folder_digests(tmp_path)
        assert {name: after.get(name) for name in before} == before
        assert set(after) - set(before) == {"oem.tiff", "oem.tiff.aux.xml"}


# ------------------------------------------------------------------ 3. a full disk never gets an empty file

@pytest.mark.parametrize("algorithm", ["class_stats", "accuracy"])
def test_a_nearly_full_disk_fails_the_table_run_and_leaves_the_folder_as_it_was(provider, tmp_path, small_filesystem,
                                                                                 algorithm):
    classified, reference = prescribed_pair(tmp_path)
    folder = small_filesystem(256)
    fill_filesystem(folder, 0 if algorithm == "class_stats" else 8 * 1024)  # its one table fits in 8 KB
    digests = folder_digests(folder)
    if algorithm == "class_stats":
        parameters = {"INPUT": str(classified), "OUTPUT": str(folder / "stats.csv")}
    else:
        parameters = {"INPUT": str(classified), "REFERENCE_RASTER": str(reference), "MAPPING": "Clutter=ignore",
                      "OUTPUT_MATRIX": str(folder / "matrix.csv"), "OUTPUT_METRICS": str(folder / "metrics.csv"),
                      "OUTPUT_HTML": str(folder / "report.html")}
    with pytest.raises(QgsProcessingException, match=f"The disk holding {folder} is full"):
        run(algorithm, parameters)
    assert folder_digests(folder) == digests
