"""`make bench-large`'s tool on a small raster with the tiny weights: it runs qgis_process and measures both sides."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from osgeo import gdal

from tests.helpers import ROOT
from tests.plugin.helpers import smooth_image, write_geotiff

pytestmark = pytest.mark.skipif(shutil.which("qgis_process.bin") is None and shutil.which("qgis_process") is None,
                                reason="qgis_process is not installed")


@pytest.fixture
def sample(tmp_path):
    """An RGB raster the large one is made from (the Köln sample is outside the repository)."""
    return write_geotiff(tmp_path / "sample.tif", smooth_image(200, 200, seed=3), 32632,
                         (500000.0, 0.5, 0.0, 5650000.0, 0.0, -0.5))


def test_large_bench_measures_a_qgis_process_run(tmp_path, sample):
    out = tmp_path / "large.json"
    command = [sys.executable, str(ROOT / "tools" / "large_bench.py"), "--model", "tiny", "--megapixels", "0.1",
               "--precisions", "float32", "--sample", str(sample), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["size"] == "320x320" and report["model"] == "tiny" and report["cpu"]
    (run,) = report["runs"]
    assert run["precision"] == "float32" and run["blocks"].startswith("1 block(s)")
    assert run["mp_per_minute"] > 0 and run["seconds"] > 0
    # Peaks from wait4: QGIS's process and the backend's each hold at least their own Python and libraries.
    assert 0.05 < run["qgis_process_peak_gb"] < 8 and 0.1 < run["backend_peak_gb"] < 8
    assert "float32" in done.stdout and "MP/min" in done.stdout


def test_the_large_raster_is_the_sample_mirrored_tile_by_tile(tmp_path, sample):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import large_bench
    finally:
        sys.path.remove(str(ROOT / "tools"))
    path = tmp_path / "mosaic.tif"
    rows, cols = large_bench.make_raster(path, 1.5, sample)
    assert (rows, cols) == (1232, 1232)
    image = gdal.Open(str(path)).ReadAsArray()
    tile = large_bench.sample_tile(sample).transpose(2, 0, 1)
    assert (image[:, :1000, :1000] == tile).all()
    assert (image[:, :1000, 1000:] == tile[:, :, ::-1][:, :, :232]).all()  # mirrored left-right
    assert (image[:, 1000:, :1000] == tile[:, ::-1][:, :232]).all()  # mirrored top-bottom
