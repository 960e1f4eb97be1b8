"""The job engine against ``serve --ray --replicas 2``: two blocks at once, and a replica killed mid-job."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import uuid

import numpy as np
import pytest

from segearth_qgis.client.local_backend import start_local_backend
from segearth_qgis.client.retry import RetryPolicy
from segearth_qgis.job.inflight import choose_concurrency
from tests.backend.service_helpers import HAS_RAY, RAY_ARGS, busy_replica, ray_replica_pids, tiny_server_args
from tests.helpers import subprocess_env
from tests.plugin.helpers import UTM, CountingClient, read_band, run_scene_job, smooth_image, write_geotiff

pytestmark = pytest.mark.skipif(not HAS_RAY, reason="Ray Serve is not installed (pip install 'segearth-backend[ray]')")


@pytest.fixture(scope="module")
def ray_backend(parity_dir, tmp_path_factory):
    """``serve --ray --replicas 2``, started by the plugin's own code (as QGIS would, with SEGEARTH_BACKEND_ARGS)."""
    marker = f"segearth-ray-test-{uuid.uuid4().hex}"
    env = subprocess_env(SEGEARTH_BACKEND_ARGS=shlex.join(RAY_ARGS), SEGEARTH_TEST_MARKER=marker)
    backend = start_local_backend(sys.executable, tiny_server_args(parity_dir, tmp_path_factory.mktemp("cache")),
                                  env=env, timeout=300)
    backend.marker = marker
    yield backend
    backend.stop()
    assert backend.process.returncode in (0, -signal.SIGTERM)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """1000 x 900 px: 4 blocks of about 560 x 560 at block size 672."""
    folder = tmp_path_factory.mktemp("scene")
    return write_geotiff(folder / "scene.tif", smooth_image(1000, 900, seed=44), 32633, UTM)


def test_a_replica_killed_mid_job_does_not_fail_it(ray_backend, local_backend, scene, tmp_path):
    client = ray_backend.client()
    concurrency = choose_concurrency(client, {})
    assert concurrency == 2  # the backend's replicas
    killed: list[int] = []
    lock = threading.Lock()

    def kill_one_replica(value: float) -> None:
        """Once both replicas work (window progress), kill one of them by its pid."""
        with lock:
            if killed or value <= 0:
                return
            victim = busy_replica(ray_replica_pids(ray_backend.marker))
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    lines: list[str] = []
    counting = CountingClient(client)
    result = run_scene_job(counting, scene, tmp_path / "ray.tif", block_size=672, concurrency=concurrency,
                           progress=kill_one_replica, log=lines.append, retry=RetryPolicy())
    assert killed and counting.most_in_flight == 2
    assert any("503 replica_lost" in line for line in lines), lines
    assert result.retried == tuple(lines)
    reference = run_scene_job(CountingClient(local_backend.client()), scene, tmp_path / "plain.tif", block_size=672)
    assert reference.retried == ()
    np.testing.assert_array_equal(read_band(tmp_path / "ray.tif"), read_band(tmp_path / "plain.tif"))
