"""Output planning and the all-or-nothing move into place (segearth_qgis.job.outputs, no QGIS needed)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from segearth_qgis.errors import OutputError
from segearth_qgis.job.outputs import aux_path, normalise_output, plan_outputs, style_path
from segearth_qgis.job.staging import StagedFiles, prepare_targets


def test_suffix_is_added_and_paths_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalise_output("result") == tmp_path / "result.tif"
    assert normalise_output("a.TIFF") == tmp_path / "a.TIFF"
    assert normalise_output("x.png") == tmp_path / "x.png.tif"
    with pytest.raises(OutputError, match="No output file"):
        normalise_output("  ")


def test_an_input_is_never_an_output(tmp_path):
    scene = tmp_path / "scene.tif"
    scene.write_bytes(b"imagery")
    with pytest.raises(OutputError, match="would overwrite the input"):
        plan_outputs(str(scene), inputs=[str(scene)], overwrite=True)
    with pytest.raises(OutputError, match="would overwrite the input"):
        plan_outputs(str(tmp_path / "x.tif"), str(scene), inputs=[str(scene)], overwrite=True)
    link = tmp_path / "link.tif"
    link.symlink_to(scene)
    with pytest.raises(OutputError, match="would overwrite the input"):
        plan_outputs(str(link), inputs=[str(scene)], overwrite=True)
    hard = tmp_path / "hard.tif"
    os.link(scene, hard)
    with pytest.raises(OutputError, match="would overwrite the input"):
        plan_outputs(str(hard), inputs=[str(scene)], overwrite=True)
    relative = Path(os.path.relpath(scene))
    with pytest.raises(OutputError, match="would overwrite the input"):
        plan_outputs(str(tmp_path / "sub" / ".." / "scene.tif"), inputs=[str(relative)], overwrite=True)
    assert scene.read_bytes() == b"imagery"


def test_an_output_whose_side_file_is_an_input_is_refused(tmp_path):
    style = tmp_path / "scene.qml"
    style.write_text("<qgis/>")
    with pytest.raises(OutputError, match="would overwrite the input"):
        plan_outputs(str(tmp_path / "scene.tif"), inputs=[str(style)], overwrite=True)


def test_two_outputs_of_one_run_are_never_the_same_file(tmp_path):
    with pytest.raises(OutputError, match="different file names"):
        plan_outputs(str(tmp_path / "a.tif"), str(tmp_path / "a.tif"))
    with pytest.raises(OutputError, match="different file names"):
        plan_outputs(str(tmp_path / "a"), str(tmp_path / "a.tif"))


def test_existing_target_needs_overwrite(tmp_path):
    target = tmp_path / "out.tif"
    target.write_bytes(b"old")
    with pytest.raises(OutputError, match="already exists"):
        plan_outputs(str(target))
    assert plan_outputs(str(target), overwrite=True).labels == target
    folder = tmp_path / "folder.tif"
    folder.mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        plan_outputs(str(folder), overwrite=True)


def test_missing_folder(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        plan_outputs(str(tmp_path / "nope" / "out.tif"))


def test_read_only_folder(small_filesystem):
    locked = small_filesystem(64, read_only=True)
    with pytest.raises(OutputError, match=f"The folder {locked} is not writable"):
        plan_outputs(str(locked / "out.tif"))


def test_another_files_style_is_never_written(tmp_path):
    (tmp_path / "scene3.tif").write_bytes(b"imagery")
    style = tmp_path / "scene3.qml"
    style.write_text("<qgis>the user's style</qgis>")
    plan = plan_outputs(str(tmp_path / "scene3.tiff"))
    assert plan.style is None and "scene3.tif" in plan.warnings[0]
    fresh = plan_outputs(str(tmp_path / "other.tif"))
    assert fresh.style == tmp_path / "other.qml" and not fresh.warnings
    orphan = tmp_path / "lonely.qml"
    orphan.write_text("<qgis/>")
    assert plan_outputs(str(tmp_path / "lonely.tif")).style is None


def test_our_own_earlier_result_gets_its_style_replaced(tmp_path):
    (tmp_path / "result.tif").write_bytes(b"earlier result")
    (tmp_path / "result.qml").write_text("<qgis/>")
    plan = plan_outputs(str(tmp_path / "result.tif"), overwrite=True)
    assert plan.style == tmp_path / "result.qml" and not plan.warnings


def stage(files: StagedFiles, target: Path, content: bytes) -> Path:
    temporary = files.stage(target)
    temporary.write_bytes(content)
    return temporary


def test_commit_moves_everything_with_normal_permissions(tmp_path):
    files = StagedFiles()
    first = stage(files, tmp_path / "a.tif", b"A")
    assert first.name.startswith(".a.tif.") and first.parent == tmp_path
    stage(files, tmp_path / "b.tif", b"B")
    mask = os.umask(0)
    os.umask(mask)
    assert files.commit() == [tmp_path / "a.tif", tmp_path / "b.tif"]
    assert (tmp_path / "a.tif").read_bytes() == b"A" and (tmp_path / "b.tif").read_bytes() == b"B"
    assert stat.S_IMODE((tmp_path / "a.tif").stat().st_mode) == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif"]


def test_a_file_created_meanwhile_is_not_replaced_and_nothing_moves(tmp_path):
    files = StagedFiles(overwrite=False)
    stage(files, tmp_path / "a.tif", b"A")
    stage(files, tmp_path / "b.tif", b"B")
    (tmp_path / "b.tif").write_bytes(b"someone else's")
    with pytest.raises(OutputError, match="appeared while the job ran"):
        files.commit()
    assert (tmp_path / "b.tif").read_bytes() == b"someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tif"]


def test_a_failed_move_restores_what_was_replaced(tmp_path):
    (tmp_path / "a.tif").write_bytes(b"old A")
    (tmp_path / "b.tif").write_bytes(b"old B")
    files = StagedFiles(overwrite=True)
    stage(files, tmp_path / "a.tif", b"new A")
    missing = tmp_path / ".vanished.part.tif"  # a staged file that is gone when the moves happen
    files.attach(missing, tmp_path / "b.tif")
    with pytest.raises(OutputError):
        files.commit()
    assert (tmp_path / "a.tif").read_bytes() == b"old A" and (tmp_path / "b.tif").read_bytes() == b"old B"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif"]


def test_adopted_files_move_with_the_adopters_or_not_at_all(tmp_path):
    """A run's table (its own StagedFiles, a staged folder) joins the job's rasters in one commit."""
    (tmp_path / "b.tif").write_bytes(b"old B")
    table = StagedFiles(overwrite=True)
    folder = table.stage_folder(tmp_path / "t.gpkg")
    (folder / "t.gpkg").write_bytes(b"table")
    table.attach_folder(folder, tmp_path, new_only=True)
    job = StagedFiles(overwrite=True)
    stage(job, tmp_path / "a.tif", b"A")
    missing = tmp_path / ".vanished.part.tif"  # the job's second move fails
    job.attach(missing, tmp_path / "b.tif")
    job.adopt(table)
    assert table.items == [] and table.folders == [] and table.locks == {}
    with pytest.raises(OutputError):
        job.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tif"]  # no table without the rasters, no folder left
    assert (tmp_path / "b.tif").read_bytes() == b"old B"
    table, job = StagedFiles(overwrite=True), StagedFiles(overwrite=True)
    folder = table.stage_folder(tmp_path / "t.gpkg")
    (folder / "t.gpkg").write_bytes(b"table")
    table.attach_folder(folder, tmp_path, new_only=True)
    stage(job, tmp_path / "a.tif", b"A")
    job.adopt(table)
    assert sorted(job.commit()) == [tmp_path / "a.tif", tmp_path / "t.gpkg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif", "t.gpkg"]


def test_overwrite_replaces_and_removes_a_stale_side_file(tmp_path):
    (tmp_path / "a.tif").write_bytes(b"old")
    aux_path(tmp_path / "a.tif").write_text("<PAMDataset/>")
    files = StagedFiles(overwrite=True)
    stage(files, tmp_path / "a.tif", b"new")
    files.replace_stale(aux_path(tmp_path / "a.tif"))
    files.commit()
    assert (tmp_path / "a.tif").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif"]


def test_abort_leaves_nothing(tmp_path):
    files = StagedFiles()
    temporary = stage(files, tmp_path / "a.tif", b"A")
    aux_path(temporary).write_text("<PAMDataset/>")
    files.abort()
    assert list(tmp_path.iterdir()) == []


def test_style_path_is_the_qgis_default_style_name(tmp_path):
    assert style_path(tmp_path / "x.tiff") == tmp_path / "x.qml"


def test_overwriting_removes_the_old_results_side_files(tmp_path):
    """Found in review: an old result's overviews (.ovr) survived an overwrite and showed the old classes."""
    target = tmp_path / "out.tif"
    target.write_bytes(b"old result")
    for side in ("out.tif.ovr", "out.tif.aux.xml", "out.tif.msk", "out.tfw"):
        (tmp_path / side).write_text("old")
    (tmp_path / "other.tif.ovr").write_text("not ours")
    plan = plan_outputs(str(target), overwrite=True)
    assert {p.name for p in plan.stale} == {"out.tif.ovr", "out.tif.aux.xml", "out.tif.msk", "out.tfw"}
    files = StagedFiles(overwrite=True)
    stage(files, target, b"new result")
    for side in plan.stale:
        files.replace_stale(side)
    files.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.tif.ovr", "out.tif"]
    assert target.read_bytes() == b"new result"


def test_a_side_file_without_its_raster_does_not_stop_a_new_result(tmp_path):
    """Found in review: a lone out.tif.aux.xml made the job fail at the very end ("appeared while the job ran")."""
    (tmp_path / "out.tif.aux.xml").write_text("<PAMDataset/>")
    plan = plan_outputs(str(tmp_path / "out.tif"))
    files = StagedFiles(overwrite=False)
    temporary = stage(files, tmp_path / "out.tif", b"new")
    aux_path(temporary).write_text("<PAMDataset>new</PAMDataset>")
    files.attach(aux_path(temporary), aux_path(tmp_path / "out.tif"))
    for side in plan.stale:
        files.replace_stale(side)
    files.commit()
    assert (tmp_path / "out.tif.aux.xml").read_text() == "<PAMDataset>new</PAMDataset>"


def test_during_an_overwrite_the_users_file_keeps_its_name(tmp_path, monkeypatch):
    """The backup is a second name of the old file: a crash between the steps leaves out.tif in place."""
    import segearth_qgis.job.staging as staging

    target = tmp_path / "out.tif"
    target.write_bytes(b"precious")
    seen = []
    real_replace = os.replace

    def crash_on_first_placement(source, destination):
        if Path(destination) == target:
            seen.append(sorted(p.name for p in tmp_path.iterdir()))
            raise KeyboardInterrupt("the process dies here")
        return real_replace(source, destination)

    files = StagedFiles(overwrite=True)
    stage(files, target, b"new")
    monkeypatch.setattr(staging.os, "replace", crash_on_first_placement)
    with pytest.raises(KeyboardInterrupt):
        files.commit()
    monkeypatch.undo()
    assert "out.tif" in seen[0] and target.read_bytes() == b"precious"


def test_a_backup_left_by_a_crash_is_put_back(tmp_path):
    from segearth_qgis.job.leftovers import recover_leftovers

    (tmp_path / ".out.tif.1a2b3c4d.old").write_bytes(b"the user's result")
    (tmp_path / ".out.tif.5e6f7a8b.part.tif").write_bytes(b"half written")
    done = recover_leftovers(tmp_path / "out.tif", now=10**12)
    assert (tmp_path / "out.tif").read_bytes() == b"the user's result" and len(done) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]


def test_no_empty_placeholder_is_left_when_a_move_fails(tmp_path, monkeypatch):
    """Without hard links (FAT, SMB) the name is claimed first; if the move then fails it is released."""
    import segearth_qgis.job.staging as staging

    monkeypatch.setattr(staging.os, "link", lambda *a: (_ for _ in ()).throw(OSError(95, "no links")))
    real_replace = os.replace
    monkeypatch.setattr(staging.os, "replace", lambda s, d: (_ for _ in ()).throw(OSError(5, "I/O error", str(d)))
                        if Path(d).name == "out.tif" else real_replace(s, d))
    files = StagedFiles()
    stage(files, tmp_path / "out.tif", b"new")
    with pytest.raises(OutputError, match="Nothing was written"):
        files.commit()
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ side files that belong to someone else

def test_side_files_another_file_of_the_stem_may_claim_are_never_stale(tmp_path):
    """Found by the second safety probe: writing scene.tiff a second time removed scene.tif's world file."""
    scene = tmp_path / "scene.tif"
    scene.write_bytes(b"imagery")
    theirs = ["scene.tfw", "scene.tifw", "scene.wld", "scene.prj", "scene.qml", "scene.tif.aux.xml", "scene.tif.ovr",
              "scene.tif.msk", "scene.jpg", "scene.jgw", "scene.jpg.aux.xml"]
    ours = ["scene.tiff.aux.xml", "scene.tiff.ovr", "scene.tiff.msk", "scene.tiff.xml"]
    for name in theirs + ours:
        (tmp_path / name).write_text(name)
    output = tmp_path / "scene.tiff"
    output.write_bytes(b"an earlier result")
    plan = plan_outputs(str(output), inputs=[str(scene), str(tmp_path / "scene.tif.aux.xml")], overwrite=True)
    assert sorted(p.name for p in plan.stale) == sorted(ours)
    assert plan.style is None  # scene.qml is scene.tif's
    # Without the input in the list, its files still have an owner (scene.tif, scene.jpg): still not stale.
    assert sorted(p.name for p in plan_outputs(str(output), overwrite=True).stale) == sorted(ours)


def test_a_world_file_is_an_outputs_only_while_nothing_else_has_its_stem(tmp_path):
    output = tmp_path / "out.tiff"
    output.write_bytes(b"an earlier result")
    for name in ("out.tfw", "out.tiffw", "out.wld", "out.tifw"):
        (tmp_path / name).write_text("world")
    # out.tifw is read for out.tif, never for out.tiff.
    assert sorted(p.name for p in plan_outputs(str(output), overwrite=True).stale) == ["out.tfw", "out.tiffw",
                                                                                         "out.wld"]
    (tmp_path / "out.png").write_bytes(b"another raster of this stem")
    assert plan_outputs(str(output), overwrite=True).stale == ()


def test_a_commit_never_replaces_or_removes_an_input(tmp_path):
    scene = tmp_path / "scene.tif"
    scene.write_bytes(b"imagery")
    world = tmp_path / "scene.tfw"
    world.write_text("world")
    link = tmp_path / "link.tif"
    link.symlink_to(scene)
    files = StagedFiles(overwrite=True, protected=[scene, world])
    stage(files, link, b"labels")
    with pytest.raises(OutputError, match="would overwrite the input"):
        files.commit()
    files = StagedFiles(overwrite=True, protected=[scene, world])
    stage(files, tmp_path / "scene.tiff", b"labels")
    files.replace_stale(world)
    with pytest.raises(OutputError, match="never removed"):
        files.commit()
    assert scene.read_bytes() == b"imagery" and world.read_text() == "world"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.tif", "scene.tfw", "scene.tif"]


# ------------------------------------------------------------------ every file whole on the disk, or none

def test_an_empty_staged_file_is_never_committed(tmp_path):
    """A file whose data never reached the disk (a full disk swallowed by the writer) is not a result."""
    (tmp_path / "out.qml").write_text("<qgis>the earlier result's style</qgis>")
    files = StagedFiles(overwrite=True)
    stage(files, tmp_path / "out.tif", b"labels")
    files.stage(tmp_path / "out.qml", ".qml")  # left empty
    with pytest.raises(OutputError, match=f"The disk holding {tmp_path} is full or failing: .*out.qml.* came out "
                                          "empty"):
        files.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.qml"]
    assert (tmp_path / "out.qml").read_text() == "<qgis>the earlier result's style</qgis>"


def test_data_that_does_not_fit_is_an_error_and_leaves_nothing(small_filesystem):
    from segearth_qgis.job.staging import write_whole
    from tests.plugin.helpers import fill_filesystem, folder_digests

    folder = small_filesystem(128)
    (folder / "style.qml").write_text("<qgis>kept</qgis>")
    fill_filesystem(folder, 8 * 1024)
    before = folder_digests(folder)
    files = StagedFiles(overwrite=True)
    with pytest.raises(OutputError, match=f"The disk holding {folder} is full"):
        files.write(folder / "report.html", b"<p>report</p>" * 2000, ".html")
    files.abort()
    with pytest.raises(OutputError, match=f"The disk holding {folder} is full"):
        write_whole(folder / "style.qml", b"<qgis/>" * 4000)
    assert folder_digests(folder) == before


# ------------------------------------------------------------------ what a killed job leaves

WRITER = """
import sys
from pathlib import Path
from segearth_qgis.job.outputs import aux_path
from segearth_qgis.job.staging import StagedFiles

files = StagedFiles()
target = Path(sys.argv[1])
if sys.argv[2] == "folder":
    temporary = files.stage_folder(target)
    (temporary / target.name).write_bytes(b"half a GeoPackage")
else:
    temporary = files.stage(target)
    temporary.write_bytes(b"half a GeoTIFF")
    aux_path(temporary).write_text("<PAMDataset/>")
print(temporary, flush=True)
sys.stdin.read()  # writing, until killed (or told to end)
"""


def start_writer(target: Path, kind: str = "file"):
    """A real process staging ``target`` with the job's own code; returns it and its temporary path."""
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", WRITER, str(target), kind], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    return process, Path(process.stdout.readline().strip())


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_killed_writers_temporary_goes_at_the_next_run_a_live_writers_never(tmp_path, kind):
    """Found by the second safety probe: a killed qgis_process left out.tif's temporary for 6 hours."""
    import signal

    target = tmp_path / "out.tif"
    dead, dead_file = start_writer(target, kind)
    live, live_file = start_writer(target, kind)
    try:
        os.kill(dead.pid, signal.SIGKILL)
        dead.wait(30)
        users = [tmp_path / ".out.tif.notes.part", tmp_path / ".out.tif.1a2b3c4d.partial", tmp_path / "out.tif.part"]
        for path in users:
            path.write_text("the user's")
        assert dead_file.exists() and live_file.exists()
        plan = plan_outputs(str(target))
        assert dead_file.exists()  # planning only looks; the run clears
        done = prepare_targets(plan)
        assert not dead_file.exists() and not aux_path(dead_file).exists()
        assert any(dead_file.name in message and "removed" in message for message in done)
        assert live_file.exists() and all(path.read_text() == "the user's" for path in users)
        if kind == "file":
            assert aux_path(live_file).exists()  # the running job's side file goes with its temporary
    finally:
        live.stdin.close()
        live.wait(30)
    prepare_targets(plan_outputs(str(target)))  # its writer has ended now
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(path.name for path in users)


def test_a_write_error_on_a_full_disk_is_a_full_disk_whatever_gdal_calls_it(small_filesystem, tmp_path):
    """GDAL 3.10 reports a full disk as "TIFFAppendToStrip: Write error" (no errno): the free space decides."""
    from segearth_qgis.job.outputs import output_error

    folder = small_filesystem(64)
    with pytest.raises(OSError):
        (folder / "filler").write_bytes(b"x" * 128 * 1024)
    gdal_says = OSError("WriteEncodedTile/Strip() failed.; TIFFAppendToStrip: Write error at scanline 0")
    assert "is full" in str(output_error(folder, gdal_says))
    assert "is full" not in str(output_error(tmp_path, gdal_says))  # plenty of room: GDAL's own reason
    assert "Write error" in str(output_error(tmp_path, gdal_says))


def test_planning_changes_nothing_on_disk_and_the_run_does_the_recovery(tmp_path):
    """plan_outputs runs on every update while typing: it only looks; prepare_targets (the run) puts back."""
    from segearth_qgis.job.staging import prepare_targets

    backup = tmp_path / ".out.tif.1a2b3c4d.old"
    backup.write_bytes(b"the user's result")
    part = tmp_path / ".out.tif.5e6f7a8b.part.tif"
    part.write_bytes(b"half written")
    os.utime(part, (1, 1))  # an interrupted run long ago
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(OutputError, match="already exists .*backup an interrupted run left"):
        plan_outputs(str(tmp_path / "out.tif"))
    plan = plan_outputs(str(tmp_path / "out.tif"), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    done = prepare_targets(plan)
    assert (tmp_path / "out.tif").read_bytes() == b"the user's result" and len(done) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]


def test_a_missing_default_folder_is_made_by_the_run_not_by_planning(tmp_path):
    from segearth_qgis.job.request import default_output_path
    from segearth_qgis.job.staging import prepare_targets

    folder = tmp_path / "results" / "today"
    name = default_output_path(str(folder), "scene")
    assert name == str(folder / "scene_segearth.tif") and not folder.exists()  # the first: no number
    with pytest.raises(OutputError, match="does not exist"):
        plan_outputs(name)
    plan = plan_outputs(name, create_folder=True)
    assert plan.create_folder and not folder.exists()
    assert prepare_targets(plan) == [] and folder.is_dir()
