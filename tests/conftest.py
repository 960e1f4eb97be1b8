"""Shared fixtures: the parity data shipped with the tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import DATA, PARITY, tree_pythonpath

# Never reach for the network from tests: downloads fail fast with the offline message.
os.environ.setdefault("SEGEARTH_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Child processes (backends, qgis_process, tools) import this tree too, not an installed copy.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (tree_pythonpath(), os.environ.get("PYTHONPATH")) if p)
# The plugin starts its backends without QGIS's PYTHONPATH; this tree's backend is named explicitly.
os.environ["SEGEARTH_BACKEND_PYTHONPATH"] = tree_pythonpath()


@pytest.fixture(autouse=True, scope="session")
def kept_logs_folder(tmp_path_factory: pytest.TempPathFactory):
    """The logs of local backends that failed go to a folder of this session, never the user's data folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGEARTH_LOG_DIR", str(tmp_path_factory.mktemp("kept-logs")))
        yield


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return PARITY


@pytest.fixture(scope="session")
def tiny_paths(parity_dir: Path) -> dict[str, str]:
    return {
        "model": str(parity_dir / "tiny-clip.json"),
        "clip_weights": str(parity_dir / "tiny-clip.pt"),
        "upsampler_weights": str(parity_dir / "tiny-simfeatup.ckpt"),
    }


@pytest.fixture(scope="session")
def tiny_segmenter(tiny_paths: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    """The engine in this process (the reference the service and plugin results are compared with)."""
    from segearth_backend import load_segmenter

    return load_segmenter(device="cpu", cache_dir=tmp_path_factory.mktemp("cache"), **tiny_paths)


@pytest.fixture(scope="session")
def sar_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of tests/data/sar_sample.tif: QGIS and GDAL write statistics beside the rasters they read."""
    import shutil

    return Path(shutil.copy2(DATA / "sar_sample.tif", tmp_path_factory.mktemp("sar") / "sar_sample.tif"))
