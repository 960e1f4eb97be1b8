"""Backend fixtures: the tiny random checkpoints loaded through the real loading code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segearth_backend import Segmenter, load_segmenter


@pytest.fixture(scope="session")
def tiny_paths(parity_dir: Path) -> dict[str, str]:
    return {
        "model": str(parity_dir / "tiny-clip.json"),
        "clip_weights": str(parity_dir / "tiny-clip.pt"),
        "upsampler_weights": str(parity_dir / "tiny-simfeatup.ckpt"),
    }


@pytest.fixture(scope="session")
def tiny_segmenter(tiny_paths: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Segmenter:
    return load_segmenter(device="cpu", cache_dir=tmp_path_factory.mktemp("cache"), **tiny_paths)


@pytest.fixture(scope="session")
def parity_classes(parity_dir: Path) -> list[str]:
    return (parity_dir / "classes.txt").read_text().splitlines()


@pytest.fixture(scope="session")
def parity_cases(parity_dir: Path) -> list[dict]:
    return json.loads((parity_dir / "cases.json").read_text())


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
