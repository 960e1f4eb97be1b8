"""Vector outputs (segearth_qgis.job.vector_outputs): inputs by file and layer, and a layer written into an existing
GeoPackage all at once — through a full disk and a killed process, on real GeoPackages read back with OGR."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from segearth_qgis.errors import OutputError
from segearth_qgis.job.staging import StagedFiles
from segearth_qgis.job.vector_outputs import DataInput, LayersIntoGeoPackage, VectorTarget, check_destinations
from tests.plugin.helpers import fill_filesystem, folder_digests, geopackage_contents, write_geopackage

KEEP = {"keepme": [(7, "seven"), (8, "eight ü")], "roads": [(1, "A1")]}


def test_an_output_is_never_an_input_by_file_or_by_layer(tmp_path):
    gpkg, shp = tmp_path / "data.gpkg", tmp_path / "zones.shp"
    inputs = [DataInput(gpkg, "mask"), DataInput(shp), DataInput(tmp_path / "zones.dbf")]
    with pytest.raises(OutputError, match="OUTPUT: the output the layer 'MASK' of .*data.gpkg would overwrite the "
                                          "input the layer 'mask'.*another layer name or another file"):
        check_destinations({"OUTPUT": VectorTarget(gpkg, "MASK")}, {}, inputs)  # SQLite ignores the case
    check_destinations({"OUTPUT": VectorTarget(gpkg, "polygons")}, {}, inputs)  # another layer of that file
    for vectors, files in (({"OUTPUT": VectorTarget(tmp_path / "." / "zones.shp")}, {}),
                           ({}, {"OUTPUT_HTML": tmp_path / "zones.dbf"})):
        with pytest.raises(OutputError, match="would overwrite the input"):
            check_destinations(vectors, files, inputs)
    with pytest.raises(OutputError, match="would overwrite the input"):  # a raster in a GeoPackage: the whole file
        check_destinations({"OUTPUT": VectorTarget(gpkg, "polygons")}, {}, [DataInput(gpkg)])
    with pytest.raises(OutputError, match="A and B would both be written to the layer 'x'"):
        check_destinations({"A": VectorTarget(gpkg, "x"), "B": VectorTarget(gpkg, "X")}, {}, [])
    check_destinations({"A": VectorTarget(gpkg, "x"), "B": VectorTarget(gpkg, "y")}, {}, [])


def test_a_layer_replaces_its_namesake_only_and_keeps_everything_else(tmp_path):
    multi = write_geopackage(tmp_path / "multi.gpkg", {**KEEP, "Seg": [(1, "old")]})
    before = geopackage_contents(multi)
    source = write_geopackage(tmp_path / "new.gpkg", {"whatever": [(2, "new"), (3, "newer")]})
    step = LayersIntoGeoPackage(multi)
    step.add("seg", source)
    files = StagedFiles(overwrite=True)
    files.add_step(step)
    files.commit()
    after = geopackage_contents(multi)
    assert {name: after[name] for name in KEEP} == {name: before[name] for name in KEEP}
    assert [row[1:3] for row in after["seg"]] == [(2, "new"), (3, "newer")] and "Seg" not in after


def test_a_layer_that_does_not_fit_leaves_the_geopackage_as_it_was(tmp_path, small_filesystem):
    folder = small_filesystem(1024)
    multi = write_geopackage(folder / "multi.gpkg", KEEP)
    before = geopackage_contents(multi)
    source = write_geopackage(tmp_path / "big.gpkg", {"seg": [(index, "x" * 400) for index in range(4000)]})
    fill_filesystem(folder, 64 * 1024)
    digests = folder_digests(folder)
    step = LayersIntoGeoPackage(multi)
    step.add("seg", source)
    files = StagedFiles(overwrite=True)
    files.add_step(step)
    with pytest.raises(OutputError, match=f"The disk holding {folder} is full"):
        files.commit()
    assert folder_digests(folder) == digests and geopackage_contents(multi) == before


KILLED_WRITER = """
import sys
from pathlib import Path
from segearth_qgis.job.vector_outputs import LayersIntoGeoPackage

step = LayersIntoGeoPackage(Path(sys.argv[1]))
step.add("keepme", Path(sys.argv[2]))  # replaces the user's layer, inside the transaction
step.add("seg", Path(sys.argv[2]))
step.prepare()
print("prepared", flush=True)
sys.stdin.read()  # killed before the commit
"""


def test_a_process_killed_before_the_commit_leaves_the_geopackage_as_it_was(tmp_path):
    multi = write_geopackage(tmp_path / "multi.gpkg", KEEP)
    before = geopackage_contents(multi)
    source = write_geopackage(tmp_path / "new.gpkg", {"seg": [(index, "new") for index in range(500)]})
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(multi), str(source)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "prepared"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
    assert geopackage_contents(multi) == before  # the transaction never happened, for every reader
    step = LayersIntoGeoPackage(multi)  # and the next run writes its layer (SQLite's journal is dealt with)
    step.add("seg", source)
    files = StagedFiles(overwrite=True)
    files.add_step(step)
    files.commit()
    after = geopackage_contents(multi)
    assert {name: after[name] for name in KEEP} == before and len(after["seg"]) == 500
    assert sorted(path.name for path in tmp_path.iterdir()) == ["multi.gpkg", "new.gpkg"]


def test_an_existing_file_that_is_not_a_geopackage_is_left_alone(tmp_path):
    from segearth_qgis.job.vector_outputs import geopackage_layers

    notes = tmp_path / "notes.gpkg"
    notes.write_text("not a GeoPackage")
    with pytest.raises(OutputError, match="exists but is not a GeoPackage.*left as it is"):
        geopackage_layers(notes)
    assert notes.read_text() == "not a GeoPackage"
    assert Path(notes).exists()
