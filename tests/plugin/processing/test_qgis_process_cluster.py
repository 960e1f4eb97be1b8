"""`qgis_process run segearth:segment` on a 1000 x 1000 raster in 9 blocks of 512 pixels (the blocks 1024 pixels
make of 2000 x 2000): one block at a time against the plain local backend,
three at once against it, and two at once against ``serve --ray --replicas 2`` all write the same GeoTIFF."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.backend.service_helpers import HAS_RAY, RAY_ARGS, TOKEN, ServerProcess, tiny_server_args
from tests.helpers import ROOT, tree_pythonpath
from tests.plugin.helpers import qgis_process_home, read_band, smooth_image, write_geotiff

QGIS_PROCESS = shutil.which("qgis_process.bin") or shutil.which("qgis_process")
#: Pixels per block side in the runs' QGIS profile (9 blocks of the 1000 x 1000 raster).
BLOCK_SIZE = 512

pytestmark = pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process is not installed")


@pytest.fixture(scope="module")
def raster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large")
    return write_geotiff(folder / "large.tif", smooth_image(1000, 1000, seed=8), 32633,
                         (500000.0, 2.0, 0.0, 5600000.0, 0.0, -2.0))


def segment(raster: Path, output: Path, home: Path, parity_dir: Path, **env_extra: str) -> str:
    """Run segearth:segment through qgis_process with the tiny weights; returns its output."""
    env = {"PATH": os.environ["PATH"], "HOME": str(qgis_process_home(home, BLOCK_SIZE)), "QT_QPA_PLATFORM": "offscreen",
           "QGIS_PLUGINPATH": str(ROOT), "SEGEARTH_BACKEND_PYTHON": sys.executable, "PYTHONPATH": tree_pythonpath(),
           "SEGEARTH_MODEL": str(parity_dir / "tiny-clip.json"),
           "SEGEARTH_CLIP_WEIGHTS": str(parity_dir / "tiny-clip.pt"),
           "SEGEARTH_UPSAMPLER_WEIGHTS": str(parity_dir / "tiny-simfeatup.ckpt"), "SEGEARTH_DEVICE": "cpu",
           "SEGEARTH_CACHE_DIR": str(home / "cache"), **env_extra}
    subprocess.run([QGIS_PROCESS, "plugins", "enable", "segearth_qgis"], env=env, capture_output=True, timeout=120)
    run = subprocess.run([QGIS_PROCESS, "--json", "run", "segearth:segment", "--", f"INPUT={raster}",
                          "CLASSES=background\nbuilding,roof\nroad\ntree,forest\nwater", "THRESHOLD=0.1",
                          f"OUTPUT={output}"], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert json.loads(run.stdout[run.stdout.index("{"):])["results"]["OUTPUT"] == str(output)
    return run.stdout + run.stderr


@pytest.fixture(scope="module")
def plain_result(raster, tmp_path_factory, parity_dir):
    """The reference: the plain local backend qgis_process starts itself, one block at a time."""
    folder = tmp_path_factory.mktemp("plain")
    log = segment(raster, folder / "plain.tif", folder / "home", parity_dir)
    assert "9 block(s)" in log and "at once" not in log
    return read_band(folder / "plain.tif")


def test_the_plain_backend_with_three_blocks_in_flight(raster, plain_result, tmp_path, parity_dir):
    log = segment(raster, tmp_path / "three.tif", tmp_path / "home", parity_dir, SEGEARTH_CONCURRENCY="3")
    assert "up to 3 at once" in log
    np.testing.assert_array_equal(read_band(tmp_path / "three.tif"), plain_result)


@pytest.mark.skipif(not HAS_RAY, reason="Ray Serve is not installed (pip install 'segearth-backend[ray]')")
def test_serve_ray_with_two_blocks_in_flight(raster, plain_result, tmp_path, parity_dir):
    server = ServerProcess([*tiny_server_args(parity_dir, tmp_path / "cache"), *RAY_ARGS], tmp_path / "server",
                           env_extra={"SEGEARTH_BACKEND_TOKEN": TOKEN})
    try:
        log = segment(raster, tmp_path / "ray.tif", tmp_path / "home", parity_dir, SEGEARTH_BACKEND_URL=server.url,
                      SEGEARTH_BACKEND_TOKEN=TOKEN, SEGEARTH_CONCURRENCY="2")
    finally:
        server.stop()
    assert "up to 2 at once" in log
    np.testing.assert_array_equal(read_band(tmp_path / "ray.tif"), plain_result)
