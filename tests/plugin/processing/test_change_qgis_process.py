"""`qgis_process run segearth:change` on a 1000 x 1000 pair in 9 blocks of 512 pixels (the blocks 1024 pixels make
of 2000 x 2000): one request at a time, three at once against a plain backend, and two at once against
``serve --ray --replicas 2`` write the same change raster and matrix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from osgeo import ogr

from tests.backend.service_helpers import HAS_RAY, RAY_ARGS, TOKEN, ServerProcess, tiny_server_args
from tests.helpers import ROOT, tree_pythonpath
from tests.plugin.helpers import qgis_process_home, read_band, smooth_image, write_geotiff

QGIS_PROCESS = shutil.which("qgis_process.bin") or shutil.which("qgis_process")
GRID = (500000.0, 2.0, 0.0, 5600000.0, 0.0, -2.0)
CLASSES = "background\nbuilding,roof\nroad\ntree,forest\nwater"
#: Pixels per block side in the runs' QGIS profile (9 blocks of the 1000 x 1000 pair).
BLOCK_SIZE = 512

pytestmark = pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process is not installed")


def environment(home: Path, parity_dir: Path, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(qgis_process_home(home, BLOCK_SIZE)),
            "QT_QPA_PLATFORM": "offscreen", "QGIS_PLUGINPATH": str(ROOT), "SEGEARTH_BACKEND_PYTHON": sys.executable,
            "PYTHONPATH": tree_pythonpath(),
            "SEGEARTH_BACKEND_PYTHONPATH": tree_pythonpath(), "SEGEARTH_MODEL": str(parity_dir / "tiny-clip.json"),
            "SEGEARTH_CLIP_WEIGHTS": str(parity_dir / "tiny-clip.pt"),
            "SEGEARTH_UPSAMPLER_WEIGHTS": str(parity_dir / "tiny-simfeatup.ckpt"), "SEGEARTH_DEVICE": "cpu",
            "SEGEARTH_CACHE_DIR": str(home / "cache"), **extra}


def change(before: Path, after: Path, folder: Path, env: dict[str, str], timeout: float = 1800) -> str:
    """segearth:change through qgis_process into ``folder``; returns its log."""
    subprocess.run([QGIS_PROCESS, "plugins", "enable", "segearth_qgis"], env=env, capture_output=True, timeout=120)
    run = subprocess.run([QGIS_PROCESS, "--json", "run", "segearth:change", "--", f"BEFORE={before}",
                          f"AFTER={after}", f"CLASSES={CLASSES}", "THRESHOLD=0.1", f"OUTPUT={folder / 'change.tif'}",
                          f"OUTPUT_MATRIX={folder / 'matrix.gpkg'}", f"OUTPUT_HTML={folder / 'report.html'}"],
                         env=env, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(run.stdout[run.stdout.index("{"):])["results"]
    assert results["OUTPUT"] == str(folder / "change.tif") and results["CHANGED_AREA"] > 0
    return run.stdout + run.stderr


def matrix(folder: Path) -> list[list[float]]:
    store = ogr.Open(str(folder / "matrix.gpkg"))
    layer = store.GetLayer(0)
    return [[feature.GetField(i) for i in range(feature.GetFieldCount())] for feature in layer]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large-pair")
    image = smooth_image(1000, 1000, seed=8)
    after = image.copy()
    after[:, 150:250, 150:250] = image[:, 750:850, 750:850]
    after[:, 600:675, 450:550] = image[:, 50:125, 850:950]
    return (write_geotiff(folder / "before.tif", image, 32633, GRID),
            write_geotiff(folder / "after.tif", after, 32633, GRID))


@pytest.fixture(scope="module")
def server(parity_dir, tmp_path_factory):
    """One plain backend for both runs (the second finds the first's windows in its re-query cache)."""
    folder = tmp_path_factory.mktemp("plain-server")
    process = ServerProcess(tiny_server_args(parity_dir, folder / "cache"), folder / "server",
                            env_extra={"SEGEARTH_BACKEND_TOKEN": TOKEN})
    yield process
    process.stop()


@pytest.fixture(scope="module")
def one_at_a_time(pair, server, parity_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("one")
    log = change(*pair, folder, environment(folder / "home", parity_dir, SEGEARTH_BACKEND_URL=server.url,
                                            SEGEARTH_BACKEND_TOKEN=TOKEN, SEGEARTH_CONCURRENCY="1"))
    assert "9 block(s) of two dates" in log and "at once" not in log
    return read_band(folder / "change.tif"), matrix(folder)


def test_three_requests_in_flight_write_the_same_change(pair, server, one_at_a_time, parity_dir, tmp_path):
    log = change(*pair, tmp_path, environment(tmp_path / "home", parity_dir, SEGEARTH_BACKEND_URL=server.url,
                                              SEGEARTH_BACKEND_TOKEN=TOKEN, SEGEARTH_CONCURRENCY="3"))
    assert "up to 3 requests at once" in log
    codes, table = one_at_a_time
    np.testing.assert_array_equal(read_band(tmp_path / "change.tif"), codes)
    assert matrix(tmp_path) == table


@pytest.mark.skipif(not HAS_RAY, reason="Ray Serve is not installed (pip install 'segearth-backend[ray]')")
def test_serve_ray_with_two_requests_in_flight_writes_the_same_change(pair, one_at_a_time, parity_dir, tmp_path):
    ray_server = ServerProcess([*tiny_server_args(parity_dir, tmp_path / "cache"), *RAY_ARGS], tmp_path / "server",
                               env_extra={"SEGEARTH_BACKEND_TOKEN": TOKEN})
    try:
        log = change(*pair, tmp_path, environment(tmp_path / "home", parity_dir, SEGEARTH_BACKEND_URL=ray_server.url,
                                                  SEGEARTH_BACKEND_TOKEN=TOKEN, SEGEARTH_CONCURRENCY="2"))
    finally:
        ray_server.stop()
    assert "up to 2 requests at once" in log
    codes, table = one_at_a_time
    np.testing.assert_array_equal(read_band(tmp_path / "change.tif"), codes)
    assert matrix(tmp_path) == table


def test_qgis_process_refuses_rasters_that_do_not_overlap_within_seconds(pair, parity_dir, tmp_path):
    far = write_geotiff(tmp_path / "far.tif", smooth_image(40, 40), 32633, (700000.0, 2.0, 0.0, 5000000.0, 0.0, -2.0))
    env = environment(tmp_path / "home", parity_dir)
    subprocess.run([QGIS_PROCESS, "plugins", "enable", "segearth_qgis"], env=env, capture_output=True, timeout=120)
    start = time.monotonic()
    run = subprocess.run([QGIS_PROCESS, "run", "segearth:change", "--", f"BEFORE={pair[0]}", f"AFTER={far}",
                          f"CLASSES={CLASSES}", f"OUTPUT={tmp_path / 'change.tif'}"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode != 0 and "does not overlap the before raster" in run.stdout + run.stderr
    assert time.monotonic() - start < 60 and not (tmp_path / "change.tif").exists()
