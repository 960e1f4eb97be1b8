"""Backend fixtures: the tiny random checkpoints loaded through the real loading code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.backend.helpers import TEST_TOKEN, launch_server
from tests.backend.service_helpers import SERVER_KINDS, server_args


@pytest.fixture(scope="session")
def parity_classes(parity_dir: Path) -> list[str]:
    return (parity_dir / "classes.txt").read_text().splitlines()


@pytest.fixture(scope="session")
def parity_cases(parity_dir: Path) -> list[dict]:
    return json.loads((parity_dir / "cases.json").read_text())


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session", params=SERVER_KINDS)
def backend_server(request, tiny_paths, tmp_path_factory):
    """A real backend process on loopback with the tiny weights and a token: plain, and ``serve --ray``."""
    tmp_dir = tmp_path_factory.mktemp("server")
    process, url, log_path = launch_server(
        ["--model", tiny_paths["model"], "--clip-weights", tiny_paths["clip_weights"],
         "--upsampler-weights", tiny_paths["upsampler_weights"], "--device", "cpu",
         "--cache-dir", str(tmp_dir / "cache"), "--max-request-mb", "8", *server_args(request.param)],
        tmp_dir, env_extra={"SEGEARTH_BACKEND_TOKEN": TEST_TOKEN})
    yield {"url": url, "token": TEST_TOKEN, "log": log_path, "process": process}
    process.terminate()
    process.wait(20)
