"""Helpers of the service hardening tests: raw HTTP with headers, server processes, the pre-streaming engine."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segearth_backend.device import autocast
from segearth_backend.model.image_tower import image_features
from segearth_backend.pipeline.classes import NODATA_LABEL, parse_classes
from segearth_backend.pipeline.decision import decide
from segearth_backend.pipeline.features import normalise
from segearth_backend.pipeline.pixel_logits import reduced_coordinates
from segearth_backend.windows import window_grid
from tests.backend.helpers import CLASSES, call, error_of, segment_body
from tests.helpers import processes_with, subprocess_env, wait_for

__all__ = ["CLASSES", "call", "error_of", "segment_body", "wait_for"]  # from tests/backend/helpers.py, tests/helpers.py

TOKEN = "hostile-test-token-7d1e"

HAS_RAY = importlib.util.find_spec("ray") is not None
#: ``serve --ray`` as the tests run it: two replicas on a small local Ray instance. Each replica gets
#: as many torch threads as an engine in this process (and a plain backend) has: the float sums of
#: torch's CPU kernels depend on the thread count, so that is what makes the answers bit-identical
#: (one replica's CPUs may exceed the machine's: Ray's CPUs are a reservation, not cores).
RAY_THREADS = torch.get_num_threads()
RAY_ARGS = ["--ray", "--replicas", "2", "--cpus-per-replica", str(RAY_THREADS), "--ray-cpus", str(2 * RAY_THREADS),
            "--ray-object-store-mb", "300"]
#: The servers the protocol tests run against: parametrise a server fixture with these, pass
#: ``server_args(request.param)`` to it.
SERVER_KINDS = [
    pytest.param("plain", id="plain"),
    pytest.param("ray", id="ray", marks=pytest.mark.skipif(
        not HAS_RAY, reason="Ray Serve is not installed (pip install 'segearth-backend[ray]')")),
]


# ------------------------------------------------------------------ the previous engine, as a reference

@torch.inference_mode()
def reference_predict(segmenter: Any, image: np.ndarray, classes: list[str], prob_threshold: float = 0.0,
                      background_index: int = 0, bias_lambda: float = -0.3,
                      valid: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """The straightforward algorithm the streaming engine replaced: ``Q x H x W`` logits, then :func:`decide`.

    Returns (labels ``H x W`` uint8, probabilities ``K x H x W`` float32).
    """
    class_set = parse_classes(classes)
    queries = segmenter.text.embed(class_set.queries).float()
    height, width = image.shape[:2]
    tensor = normalise(image, valid, segmenter.device)
    windows = window_grid(height, width, 224, 112, segmenter.patch, segmenter.min_window)
    total = torch.zeros(queries.shape[0], height, width)
    count = torch.zeros(1, height, width)
    for start in range(0, len(windows), segmenter.batch_size):
        batch = windows[start:start + segmenter.batch_size]
        crops = torch.cat([F.pad(tensor[:, :, w.y0:w.y1, w.x0:w.x1],
                                 (w.pad.left, w.pad.right, w.pad.top, w.pad.bottom)) for w in batch])
        with autocast(segmenter.device, segmenter.dtype):
            cls, patches = image_features(segmenter.visual, crops)
        cls, patches = cls.float(), patches.float()
        bias = bias_lambda * F.normalize(cls, dim=-1) @ queries.T
        if segmenter.upsampler is None:
            low = torch.einsum("bdhw,qd->bqhw", F.normalize(patches, dim=1), queries) + bias[:, :, None, None]
            logits = F.interpolate(low, size=crops.shape[-2:], mode="bilinear", align_corners=False)
        else:
            parts = []
            for index in range(crops.shape[0]):
                part = slice(index, index + 1)
                coords, offset, directions = reduced_coordinates(segmenter.upsampler, patches[part], queries)
                kernels = segmenter.upsampler.step_kernels(crops[part], *patches.shape[-2:])
                upsampled = segmenter.upsampler.spatial(coords, kernels).float() + offset[:, :, None, None]
                norm = upsampled.norm(dim=1, keepdim=True).clamp(min=1e-12)
                dots = torch.einsum("brhw,brq->bqhw", upsampled, directions)
                parts.append(dots / norm + bias[part, :, None, None])
            logits = torch.cat(parts)
        for w, window_logits in zip(batch, logits):
            total[:, w.y0:w.y1, w.x0:w.x1] += window_logits[:, w.pad.top:w.pad.top + w.height,
                                                             w.pad.left:w.pad.left + w.width]
            count[:, w.y0:w.y1, w.x0:w.x1] += 1
    probs, labels = decide(total / count, class_set, prob_threshold, background_index)
    if valid is not None:
        invalid = ~torch.from_numpy(valid)
        labels[invalid] = NODATA_LABEL
        probs[:, invalid] = 0.0
    return labels.to(torch.uint8).numpy(), probs.float().numpy()


# ------------------------------------------------------------------ HTTP

def raw_request(url: str, head: str, body: bytes = b"", timeout: float = 30) -> bytes:
    """Send a hand-written request (``head`` without the final blank line) and read the whole answer."""
    host, port = url.split("//")[1].rsplit(":", 1)
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as conn:
        conn.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
        chunks = []
        while True:
            try:
                chunk = conn.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                break
    return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, rest = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(rest) >= int(value.strip())
    return False


def health(url: str, token: Optional[str] = None) -> dict[str, Any]:
    status, body, _ = call(url, "/health", token=token, timeout=10)
    if status != 200:
        raise AssertionError(f"/health answered {status}: {body[:300]!r}")
    return dict(json.loads(body))


# ------------------------------------------------------------------ servers

def server_args(kind: str) -> list[str]:
    """The extra ``serve`` arguments of a server kind (see :data:`SERVER_KINDS`)."""
    return list(RAY_ARGS) if kind == "ray" else []


def ray_replica_pids(marker: str) -> list[int]:
    """The Ray Serve replica processes whose environment holds ``marker`` (Linux /proc)."""
    return processes_with(marker, lambda command: command.startswith(b"ray::ServeReplica"))


def cpu_ticks(pid: int) -> int:
    """A process's CPU time so far (clock ticks, Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def busy_replica(pids: list[int]) -> int:
    """The replica that is computing: the one whose CPU time grows most over half a second."""
    before = {pid: cpu_ticks(pid) for pid in pids}
    time.sleep(0.5)
    return max(pids, key=lambda pid: cpu_ticks(pid) - before[pid])


def tiny_server_args(parity_dir: Path, cache_dir: Path, upsampler: Optional[str] = None) -> list[str]:
    return ["--model", str(parity_dir / "tiny-clip.json"), "--clip-weights", str(parity_dir / "tiny-clip.pt"),
            "--upsampler-weights", upsampler or str(parity_dir / "tiny-simfeatup.ckpt"), "--device", "cpu",
            "--cache-dir", str(cache_dir)]


class ServerProcess:
    """``python -m segearth_backend serve`` in a subprocess, ready when its ready file appears."""

    def __init__(self, args: list[str], tmp_dir: Path, env_extra: Optional[dict[str, str]] = None,
                 timeout: float = 120.0) -> None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        ready, self.log_path = tmp_dir / "ready.json", tmp_dir / "server.log"
        env = subprocess_env(**(env_extra or {}))
        with open(self.log_path, "wb") as log_stream:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "segearth_backend", "serve", "--port", "0", "--ready-file", str(ready), *args],
                stdout=subprocess.DEVNULL, stderr=log_stream, env=env)
        deadline = time.monotonic() + timeout
        while not ready.is_file():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"server did not start:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        self.url: str = json.loads(ready.read_text())["url"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def peak_rss_mb(self) -> float:
        """The server's peak resident memory so far (Linux ``VmHWM``), in MB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc/<pid>/status")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


class ThreadServer:
    """A Starlette app served by uvicorn on a thread, on a loopback port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        wait_for(lambda: bool(self.server.started), 20, 0.02, "the thread server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)
