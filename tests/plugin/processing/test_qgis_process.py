"""`qgis_process run segearth:segment` as a subprocess, with the plugin from this checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from osgeo import gdal

from tests.helpers import ROOT, processes_with, tree_pythonpath, wait_for
from tests.plugin.helpers import smooth_image, write_geotiff

QGIS_PROCESS = shutil.which("qgis_process.bin") or shutil.which("qgis_process")


@pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process is not installed")
def test_qgis_process_runs_segment_and_leaves_no_backend(tmp_path, parity_dir):
    raster = write_geotiff(tmp_path / "in.tif", smooth_image(150, 180), 32633,
                           (500000.0, 2.0, 0.0, 5600000.0, 0.0, -2.0))
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "QT_QPA_PLATFORM": "offscreen",
        "QGIS_PLUGINPATH": str(ROOT), "SEGEARTH_BACKEND_PYTHON": sys.executable, "PYTHONPATH": tree_pythonpath(),
        "SEGEARTH_BACKEND_PYTHONPATH": tree_pythonpath(),
        "SEGEARTH_MODEL": str(parity_dir / "tiny-clip.json"), "SEGEARTH_CLIP_WEIGHTS": str(parity_dir / "tiny-clip.pt"),
        "SEGEARTH_UPSAMPLER_WEIGHTS": str(parity_dir / "tiny-simfeatup.ckpt"), "SEGEARTH_DEVICE": "cpu",
        "SEGEARTH_CACHE_DIR": str(tmp_path / "cache"),
    }
    enable = subprocess.run([QGIS_PROCESS, "plugins", "enable", "segearth_qgis"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert enable.returncode == 0, enable.stdout + enable.stderr
    output = tmp_path / "out.tif"
    run = subprocess.run(
        [QGIS_PROCESS, "--json", "run", "segearth:segment", "--", f"INPUT={raster}",
         "CLASSES=background\nbuilding,roof\nroad\ntree,forest", "THRESHOLD=0.1", f"OUTPUT={output}"],
        env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    answer = json.loads(run.stdout[run.stdout.index("{"):])
    assert answer["results"]["OUTPUT"] == str(output)
    dataset = gdal.Open(str(output))
    dataset.GetMetadata()  # GDAL's GTiff reads the .aux.xml category names only after this
    assert (dataset.RasterXSize, dataset.RasterYSize) == (180, 150)
    assert output.stat().st_mode & 0o644 == 0o644  # readable like any file the user makes
    assert dataset.GetRasterBand(1).GetCategoryNames()[:4] == ["background", "building, roof", "road", "tree, forest"]
    assert output.with_suffix(".qml").is_file()
    # The auto-started backend follows qgis_process out.
    marker = f"SEGEARTH_CACHE_DIR={tmp_path / 'cache'}"
    wait_for(lambda: not processes_with(marker, lambda command: b"segearth_backend" in command), timeout=90,
             interval=0.5, message="a backend process outlived qgis_process")


@pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process is not installed")
def test_qgis_process_reports_bad_parameters(tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "QT_QPA_PLATFORM": "offscreen",
           "QGIS_PLUGINPATH": str(ROOT)}
    subprocess.run([QGIS_PROCESS, "plugins", "enable", "segearth_qgis"], env=env, capture_output=True, timeout=120)
    raster = write_geotiff(tmp_path / "in.tif", smooth_image(40, 40), 32633, (500000.0, 2.0, 0.0, 5600000.0, 0.0, -2.0))
    run = subprocess.run([QGIS_PROCESS, "run", "segearth:segment", "--", f"INPUT={raster}", "CLASSES= ",
                          f"OUTPUT={tmp_path / 'o.tif'}"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "Type at least one class" in run.stdout + run.stderr and "Traceback" not in run.stdout + run.stderr


@pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process is not installed")
def test_qgis_process_refuses_to_overwrite_its_input(tmp_path):
    """The command that once turned a 3-band scene into a class raster, exit code 0."""
    import hashlib

    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "QT_QPA_PLATFORM": "offscreen",
           "QGIS_PLUGINPATH": str(ROOT)}
    subprocess.run([QGIS_PROCESS, "plugins", "enable", "segearth_qgis"], env=env, capture_output=True, timeout=120)
    raster = write_geotiff(tmp_path / "scene.tif", smooth_image(40, 40), 32633,
                           (500000.0, 2.0, 0.0, 5600000.0, 0.0, -2.0))
    before = hashlib.sha256(raster.read_bytes()).hexdigest()
    run = subprocess.run([QGIS_PROCESS, "run", "segearth:segment", "--", f"INPUT={raster}",
                          "CLASSES=road\nwater", f"OUTPUT={raster}"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0 and "would overwrite the input" in run.stdout + run.stderr
    assert hashlib.sha256(raster.read_bytes()).hexdigest() == before


@pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process is not installed")
def test_qgis_process_help_is_plain_text(tmp_path):
    """`qgis_process help` prints the help as it is: HTML tags would show as tags."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "QT_QPA_PLATFORM": "offscreen",
           "QGIS_PLUGINPATH": str(ROOT)}
    subprocess.run([QGIS_PROCESS, "plugins", "enable", "segearth_qgis"], env=env, capture_output=True, timeout=120)
    for algorithm in ("segment", "segment_vector", "class_stats"):
        shown = subprocess.run([QGIS_PROCESS, "help", f"segearth:{algorithm}"], env=env, capture_output=True,
                               text=True, timeout=120)
        assert shown.returncode == 0, shown.stdout[-2000:] + shown.stderr[-2000:]
        assert "Training-free" in shown.stdout or algorithm == "class_stats"
        for tag in ("<p>", "</p>", "<b>", "<i>"):
            assert tag not in shown.stdout, (algorithm, tag)
    segment = subprocess.run([QGIS_PROCESS, "help", "segearth:segment"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert "-1: no background class" in segment.stdout


@pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process is not installed")
def test_qgis_process_without_weights_names_the_files_once_within_seconds(tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "QT_QPA_PLATFORM": "offscreen",
           "QGIS_PLUGINPATH": str(ROOT), "SEGEARTH_BACKEND_PYTHON": sys.executable, "SEGEARTH_OFFLINE": "1",
           "PYTHONPATH": tree_pythonpath(), "SEGEARTH_BACKEND_PYTHONPATH": tree_pythonpath()}
    subprocess.run([QGIS_PROCESS, "plugins", "enable", "segearth_qgis"], env=env, capture_output=True, timeout=120)
    raster = write_geotiff(tmp_path / "in.tif", smooth_image(40, 40), 32633,
                           (500000.0, 2.0, 0.0, 5600000.0, 0.0, -2.0))
    start = time.monotonic()
    run = subprocess.run([QGIS_PROCESS, "run", "segearth:segment", "--", f"INPUT={raster}",
                          f"OUTPUT={tmp_path / 'o.tif'}"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and time.monotonic() - start < 60
    everything = run.stdout + run.stderr
    target = "put it:   " + str(tmp_path / "home" / ".cache" / "segearth-ov" / "simfeatup")
    assert everything.count(target) == 1  # the list of files appears once, not three times
    assert "Traceback" not in everything and not (tmp_path / "o.tif").exists()


@pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process is not installed")
def test_a_killed_qgis_process_leaves_a_temporary_that_the_next_run_removes(tmp_path, parity_dir):
    """Found by the second safety probe: a killed qgis_process left .out.tif.*.part.tif for 6 hours."""
    import signal

    raster = write_geotiff(tmp_path / "in.tif", smooth_image(700, 700), 32633,
                           (500000.0, 2.0, 0.0, 5600000.0, 0.0, -2.0))
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "QT_QPA_PLATFORM": "offscreen",
        "QGIS_PLUGINPATH": str(ROOT), "SEGEARTH_BACKEND_PYTHON": sys.executable, "PYTHONPATH": tree_pythonpath(),
        "SEGEARTH_BACKEND_PYTHONPATH": tree_pythonpath(),
        "SEGEARTH_MODEL": str(parity_dir / "tiny-clip.json"), "SEGEARTH_CLIP_WEIGHTS": str(parity_dir / "tiny-clip.pt"),
        "SEGEARTH_UPSAMPLER_WEIGHTS": str(parity_dir / "tiny-simfeatup.ckpt"), "SEGEARTH_DEVICE": "cpu",
        "SEGEARTH_CACHE_DIR": str(tmp_path / "cache"),
    }
    subprocess.run([QGIS_PROCESS, "plugins", "enable", "segearth_qgis"], env=env, capture_output=True, timeout=120)
    output = tmp_path / "out.tif"
    command = [QGIS_PROCESS, "run", "segearth:segment", "--", f"INPUT={raster}", "CLASSES=road\nwater\ntree",
               f"OUTPUT={output}"]

    def temporaries():
        return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out.tif.") and ".part" in p.name)

    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: temporaries() or first.poll() is not None, timeout=240, interval=0.02,
                 message="the job never staged its output")
        assert first.poll() is None, "the job ended before it could be killed"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    left = temporaries()
    assert left and not output.exists()
    marker = f"SEGEARTH_CACHE_DIR={tmp_path / 'cache'}"
    wait_for(lambda: not processes_with(marker, lambda command: b"segearth_backend" in command), timeout=90,
             interval=0.5, message="a backend process outlived the killed qgis_process")

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert temporaries() == [] and output.is_file()
    assert f"An interrupted run's temporary file {left[0]} was removed" in again.stdout + again.stderr
