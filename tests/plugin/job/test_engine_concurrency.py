"""Several blocks in flight, and retries, with a real backend process (and a real flaky proxy in front of it)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from segearth_qgis.client.backend_client import BackendClient, BackendError
from segearth_qgis.client.retry import RetryPolicy
from segearth_qgis.errors import InputError
from segearth_qgis.job.engine import JobCancelledError
from segearth_qgis.job.inflight import choose_concurrency
from tests.plugin.helpers import UTM, CountingClient, FlakyProxy, read_band, run_scene_job, smooth_image, write_geotiff


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """800 x 700 px: 6 blocks at block size 448."""
    folder = tmp_path_factory.mktemp("scene")
    return write_geotiff(folder / "scene.tif", smooth_image(800, 700, seed=33), 32633, UTM)


def run(client, scene, output, **options):
    return run_scene_job(client, scene, output, block_size=448, **options)


@pytest.fixture(scope="module")
def one_at_a_time(local_backend, scene, tmp_path_factory):
    """The reference: the same job with one block in flight (labels, probabilities)."""
    output = tmp_path_factory.mktemp("reference") / "labels.tif"
    probabilities = output.with_name("probabilities.tif")
    result = run(CountingClient(local_backend.client()), scene, output, probabilities=str(probabilities))
    assert result.blocks == 6 and result.concurrency == 1
    return read_band(output), [read_band(probabilities, band) for band in range(1, 6)]


def test_three_blocks_in_flight_give_the_one_at_a_time_result(local_backend, scene, one_at_a_time, tmp_path,
                                                               monkeypatch):
    from segearth_qgis.job.raster_io import PixelSource

    client = CountingClient(local_backend.client())
    waiting_at_reads: list[int] = []
    real_read = PixelSource.read

    def read(self, rows, cols):  # the real read, noting how many blocks wait for answers meanwhile
        waiting_at_reads.append(client.in_flight)
        return real_read(self, rows, cols)

    monkeypatch.setattr(PixelSource, "read", read)
    seen: list[float] = []
    output = tmp_path / "labels.tif"
    probabilities = tmp_path / "probabilities.tif"
    result = run(client, scene, output, probabilities=str(probabilities), concurrency=3,
                           progress=seen.append)
    labels, probs = one_at_a_time
    np.testing.assert_array_equal(read_band(output), labels)
    for band, expected in enumerate(probs, start=1):
        np.testing.assert_array_equal(read_band(probabilities, band), expected)
    assert result.concurrency == 3 and client.most_in_flight == 3 and client.segmented == 6
    # Bounded memory: a block is read only while at most two wait for answers (three in flight, one read).
    assert len(waiting_at_reads) == 6 and max(waiting_at_reads) <= 2
    assert seen == sorted(seen) and seen[-1] == pytest.approx(100.0)


def test_cancel_stops_every_block_in_flight_promptly(local_backend, scene, tmp_path):
    flag = threading.Event()
    cancelled_at = []

    def progress(value):
        if value > 0 and not flag.is_set():
            cancelled_at.append(time.monotonic())
            flag.set()

    client = CountingClient(local_backend.client())
    with pytest.raises(JobCancelledError):
        run(client, scene, tmp_path / "out.tif", concurrency=3, progress=progress, cancelled=flag.is_set)
    assert time.monotonic() - cancelled_at[0] < 5  # every block in flight was dropped, not waited for
    assert client.segmented <= 3 and list(tmp_path.iterdir()) == []
    backend = local_backend.client()
    deadline = time.monotonic() + 10
    while backend.health()["queued"] and time.monotonic() < deadline:  # the backend stops their work too
        time.sleep(0.1)
    assert backend.health()["queued"] == 0


def test_passing_failures_are_sent_again_and_logged(local_backend, scene, one_at_a_time, tmp_path):
    proxy = FlakyProxy(local_backend.url, [("status", 503, "replica_lost", 1), "drop"])
    lines: list[str] = []
    try:
        client = BackendClient(proxy.url, local_backend.token)
        start = time.monotonic()
        result = run(client, scene, tmp_path / "labels.tif", concurrency=2, log=lines.append,
                               retry=RetryPolicy(first_delay=0.05))
    finally:
        proxy.close()
    np.testing.assert_array_equal(read_band(tmp_path / "labels.tif"), one_at_a_time[0])
    assert len(lines) == 2 and len(result.retried) == 2 and proxy.segments == 8
    assert any("503 replica_lost" in line and "again in 1.0 s" in line for line in lines)  # Retry-After honoured
    assert any("unreachable" in line or "truncated" in line for line in lines)
    assert all(line.startswith("Block ") and "(retry 1 of 3)" in line for line in lines)
    assert time.monotonic() - start >= 1.0


def test_a_refusal_is_not_sent_again(local_backend, scene, tmp_path):
    proxy = FlakyProxy(local_backend.url, [("status", 422, "bad_parameter", None)])
    lines: list[str] = []
    try:
        with pytest.raises(BackendError) as caught:
            run(BackendClient(proxy.url, local_backend.token), scene, tmp_path / "labels.tif", log=lines.append)
    finally:
        proxy.close()
    assert caught.value.status == 422 and proxy.segments == 1 and lines == []
    assert list(tmp_path.iterdir()) == []


def test_three_retries_then_the_job_fails(local_backend, scene, tmp_path):
    proxy = FlakyProxy(local_backend.url, [("status", 503, "busy_elsewhere", None)] * 10)
    lines: list[str] = []
    try:
        with pytest.raises(BackendError) as caught:
            run(BackendClient(proxy.url, local_backend.token), scene, tmp_path / "labels.tif",
                          log=lines.append)
    finally:
        proxy.close()
    assert caught.value.status == 503 and proxy.segments == 4  # the first attempt and three retries
    assert [line.split("(")[-1] for line in lines[:3]] == ["retry 1 of 3).", "retry 2 of 3).", "retry 3 of 3)."]
    assert "giving up after 3 retries" in lines[-1]


def test_concurrency_comes_from_the_environment_or_the_backend(local_backend):
    client = local_backend.client()
    assert choose_concurrency(client, {}) == 1  # a plain backend: one replica
    assert choose_concurrency(client, {"SEGEARTH_CONCURRENCY": "3"}) == 3
    for bad in ("0", "x", "100", "-2"):
        with pytest.raises(InputError, match="SEGEARTH_CONCURRENCY must be a whole number"):
            choose_concurrency(client, {"SEGEARTH_CONCURRENCY": bad})
