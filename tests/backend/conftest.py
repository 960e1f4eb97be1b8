"""Backend fixtures: the tiny random checkpoints loaded through the real loading code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def parity_classes(parity_dir: Path) -> list[str]:
    return (parity_dir / "classes.txt").read_text().splitlines()


@pytest.fixture(scope="session")
def parity_cases(parity_dir: Path) -> list[dict]:
    return json.loads((parity_dir / "cases.json").read_text())


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


TEST_TOKEN = "test-token-5b0c1f"


def launch_server(args, tmp_dir, env_extra=None, timeout=120.0):
    """Start `python -m segearth_backend serve` and wait for its ready file; returns (process, url, log path)."""
    import os
    import subprocess
    import sys
    import time

    ready, log_path = tmp_dir / "ready.json", tmp_dir / "server.log"
    env = dict(os.environ, **(env_extra or {}))
    with open(log_path, "wb") as log_stream:
        process = subprocess.Popen([sys.executable, "-m", "segearth_backend", "serve", "--port", "0",
                                    "--ready-file", str(ready), *args], stdout=subprocess.PIPE, stderr=log_stream,
                                   env=env)
    deadline = time.monotonic() + timeout
    while not ready.is_file():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"server did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    return process, json.loads(ready.read_text())["url"], log_path


@pytest.fixture(scope="session")
def backend_server(tiny_paths, tmp_path_factory):
    """A real backend process on loopback with the tiny weights and a token."""
    tmp_dir = tmp_path_factory.mktemp("server")
    process, url, log_path = launch_server(
        ["--model", tiny_paths["model"], "--clip-weights", tiny_paths["clip_weights"],
         "--upsampler-weights", tiny_paths["upsampler_weights"], "--device", "cpu",
         "--cache-dir", str(tmp_dir / "cache"), "--max-request-mb", "8"],
        tmp_dir, env_extra={"SEGEARTH_BACKEND_TOKEN": TEST_TOKEN})
    yield {"url": url, "token": TEST_TOKEN, "log": log_path, "process": process}
    process.terminate()
    process.wait(20)
