"""``serve --ray`` beyond the shared protocol tests: replicas in /health, a lost replica, start-up and shutdown.

The protocol itself (answers, errors, guards, progress, cancel) is tested against both servers by the
parametrised fixtures of test_service.py, test_service_hostile.py and test_service_limits.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from segearth_backend.serve.protocol import read_bundle
from tests.backend.service_helpers import (
    CLASSES,
    HAS_RAY,
    RAY_ARGS,
    RAY_THREADS,
    TOKEN,
    ServerProcess,
    busy_replica,
    call,
    error_of,
    health,
    ray_replica_pids,
    segment_body,
    tiny_server_args,
)
from tests.helpers import processes_with, subprocess_env, wait_for

needs_ray = pytest.mark.skipif(not HAS_RAY, reason="Ray Serve is not installed (pip install 'segearth-backend[ray]')")


@pytest.fixture(scope="module")
def ray_server(parity_dir, tmp_path_factory):
    """``serve --ray --replicas 2`` with a token; stopped with SIGTERM, after which no process of it may remain."""
    if not HAS_RAY:
        pytest.skip("Ray Serve is not installed (pip install 'segearth-backend[ray]')")
    tmp = tmp_path_factory.mktemp("ray")
    marker = f"segearth-ray-test-{uuid.uuid4().hex}"
    server = ServerProcess([*tiny_server_args(parity_dir, tmp / "cache"), *RAY_ARGS], tmp,
                           env_extra={"SEGEARTH_BACKEND_TOKEN": TOKEN, "SEGEARTH_TEST_MARKER": marker})
    server.marker = marker  # type: ignore[attr-defined]
    yield server
    server.process.terminate()
    assert server.process.wait(60) in (0, -signal.SIGTERM)
    wait_for(lambda: not processes_with(marker), 60, 0.5, "Ray processes outlived the service")
    assert "Traceback" not in server.log()


@needs_ray
def test_health_reports_the_replicas(ray_server):
    document = health(ray_server.url)
    assert document["replicas"] == {"ready": 2, "total": 2} and document["engine"] == "ray"
    assert document["status"] == "ready" and document["model"] == "tiny-clip"
    assert document["device"] == {"type": "cpu", "name": "CPU", "threads": RAY_THREADS}  # --cpus-per-replica
    assert len(ray_replica_pids(ray_server.marker)) == 2


@needs_ray
def test_a_lost_replica_answers_503_then_ray_replaces_it(ray_server, tiny_segmenter):
    image = np.random.default_rng(7).integers(0, 256, size=(900, 900, 3), dtype=np.uint8)
    answers: dict[str, tuple] = {}
    sent = threading.Thread(target=lambda: answers.update(first=call(
        ray_server.url, "/segment", segment_body(image, {"request_id": "doomed"}), TOKEN, timeout=300)))
    sent.start()

    def started() -> bool:
        status, body, _ = call(ray_server.url, "/progress/doomed", token=TOKEN)
        return status == 200 and json.loads(body)["windows_done"] >= 1

    wait_for(started, 120)
    victim = busy_replica(ray_replica_pids(ray_server.marker))
    os.kill(victim, signal.SIGKILL)
    sent.join(120)
    status, body, headers = answers["first"]
    assert status == 503 and error_of(body)[0] == "replica_lost" and headers["retry-after"].isdigit()
    assert "replica was lost" in ray_server.log()
    # Sent again, it is answered (by the other replica or the new one), equal to the engine.
    status, body, _ = call(ray_server.url, "/segment", segment_body(image), TOKEN, timeout=300)
    assert status == 200
    labels = read_bundle(body, {"meta.json", "labels.npy"})["labels.npy"]
    np.testing.assert_array_equal(labels, tiny_segmenter.predict(image, CLASSES).labels)
    # Ray starts a replacement: two replica processes again, the killed one not among them, and /health says
    # so. (Until Serve's next health check the dead replica may still be counted as running: wait for both.)
    def replaced() -> bool:
        pids = ray_replica_pids(ray_server.marker)
        return len(pids) == 2 and victim not in pids \
            and health(ray_server.url)["replicas"] == {"ready": 2, "total": 2}

    wait_for(replaced, 180, 0.5, "Ray did not replace the killed replica")


@needs_ray
def test_a_model_that_fails_to_load_stops_the_service_with_the_reason(parity_dir, tmp_path):
    marker = f"segearth-ray-test-{uuid.uuid4().hex}"
    ready = tmp_path / "ready.json"
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "segearth_backend", "serve", "--port", "0", "--ready-file", str(ready),
         "--model", str(parity_dir / "tiny-clip.json"), "--clip-weights", str(tmp_path / "missing.pt"),
         "--device", "cpu", "--cache-dir", str(tmp_path), *RAY_ARGS],
        capture_output=True, text=True, timeout=300, env=subprocess_env(SEGEARTH_TEST_MARKER=marker))
    assert result.returncode == 2, result.stderr[-2000:]
    assert time.monotonic() - start < 120  # one load per replica, not Ray's retry loop
    error = json.loads(ready.read_text())["error"]
    assert "These weight files are missing" in error and str(tmp_path / "missing.pt") in error
    wait_for(lambda: not processes_with(marker), 60, 0.5, "Ray processes outlived the failed service")


@pytest.mark.parametrize("args, fragment", [
    (["--replicas", "2"], "--replicas is a Ray option: add --ray"),
    (["--ray-address", "auto"], "--ray-address is a Ray option"),
    (["--ray", "--replicas", "2", "--autoscale", "1:2"], "either --replicas N or --autoscale MIN:MAX"),
    (["--ray", "--autoscale", "3:1"], "0 <= MIN <= MAX"),
    (["--ray", "--autoscale", "many"], "for example 1:4"),
    (["--ray", "--replicas", "0"], "at least 1"),
    (["--ray", "--ray-address", "auto", "--ray-cpus", "2"], "size a local Ray instance"),
    (["--ray", "--ray-app", "no/slash"], "--ray-app must be"),
])
def test_bad_ray_options_stop_at_once(tmp_path, args, fragment):
    result = subprocess.run([sys.executable, "-m", "segearth_backend", "serve", "--port", "0", *args],
                            capture_output=True, text=True, timeout=60, env=subprocess_env())
    assert result.returncode == 2 and fragment in result.stderr and "Traceback" not in result.stderr


def test_the_plain_server_never_loads_ray(parity_dir, tmp_path):
    """Users without Ray (or without --ray) start exactly the server they had: Ray is not even imported."""
    server = ServerProcess([*tiny_server_args(parity_dir, tmp_path / "cache", "none"), "--no-warmup"], tmp_path)
    try:
        assert health(server.url)["replicas"] == {"ready": 1, "total": 1}
        maps = Path(f"/proc/{server.process.pid}/maps").read_text()
        assert "torch" in maps and "_raylet" not in maps and "/ray/" not in maps
    finally:
        server.stop()


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports between Ray's worker ports (10002-19999) and the kernel's ephemeral range.

    Not ``bind(0)``: such a port is free only until the next process asks the kernel for any free port, and
    ``ray start`` starts many (a head once failed because its client server's port had been handed out)."""
    chosen: list[int] = []
    for port in random.Random().sample(range(20000, 32000), 400):
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
        chosen.append(port)
        if len(chosen) == count:
            return chosen
    raise RuntimeError("no free ports between 20000 and 32000")


@needs_ray
def test_joining_a_running_cluster_with_autoscaling(parity_dir, tmp_path):
    """``ray start --head`` (a cluster of one node), then ``serve --ray --ray-address ... --autoscale 1:2``:
    the service deploys onto it, and on SIGTERM removes its application but leaves the cluster running."""
    marker = f"segearth-ray-test-{uuid.uuid4().hex}"
    port, client_port, agent_port = _free_ports(3)
    env = subprocess_env(SEGEARTH_TEST_MARKER=marker)
    with open(tmp_path / "head.log", "wb") as head_log:
        head = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port", str(port),
             "--num-cpus", "2", "--object-store-memory", str(300 * 2**20), "--include-dashboard", "false",
             "--ray-client-server-port", str(client_port), "--dashboard-agent-listen-port", str(agent_port)],
            stdout=subprocess.DEVNULL, stderr=head_log, env=env)
    server = None
    try:
        server = ServerProcess([*tiny_server_args(parity_dir, tmp_path / "cache"), "--ray", "--ray-address",
                                f"127.0.0.1:{port}", "--autoscale", "1:2", "--ray-app", "joined"], tmp_path / "s",
                               env_extra={"SEGEARTH_TEST_MARKER": marker, "RAY_AUTH_MODE": "token"})
        document = health(server.url)
        assert document["replicas"] == {"ready": 1, "total": 1, "min": 1, "max": 2}
        image = np.random.default_rng(3).integers(0, 256, size=(120, 150, 3), dtype=np.uint8)
        assert call(server.url, "/segment", segment_body(image))[0] == 200
        server.process.terminate()
        assert server.process.wait(60) in (0, -signal.SIGTERM)
        wait_for(lambda: not ray_replica_pids(marker), 60, 0.5, "the application's replicas outlived the service")
        assert head.poll() is None  # the cluster is not the service's to stop
    finally:
        if server is not None:
            server.stop()
        head.terminate()
        head.wait(60)
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"  # `ray stop` would remove it
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()
    wait_for(lambda: not processes_with(marker), 60, 0.5, "the cluster's processes outlived `ray start --block`")
