"""Plugin fixtures: isolated panel settings and a local backend on the tiny weights."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers import tree_pythonpath

#: What the auto-started backend needs to load the tiny test weights (see ``tiny_backend``).
BACKEND_VARIABLES = ("SEGEARTH_BACKEND_PYTHON", "SEGEARTH_MODEL", "SEGEARTH_CLIP_WEIGHTS",
                     "SEGEARTH_UPSAMPLER_WEIGHTS", "SEGEARTH_DEVICE", "SEGEARTH_CACHE_DIR", "SEGEARTH_BACKEND_URL",
                     "SEGEARTH_BACKEND_TOKEN")


@pytest.fixture(autouse=True, scope="session")
def isolated_panel_settings(qgis_app):
    """The panel's QgsSettings start empty (the profile is a temporary one, see tests/qgis_profile.py)."""
    from qgis.core import QgsSettings

    from segearth_qgis.settings import PREFIX

    QgsSettings().remove(PREFIX.rstrip("/"))
    yield
    QgsSettings().remove(PREFIX.rstrip("/"))
    import gc

    gc.collect()  # free Qt/GDAL wrappers while QGIS still runs (it exits after this fixture)


@pytest.fixture(autouse=True, scope="session")
def gdal_exceptions_as_in_qgis(qgis_app):
    """GDAL's Python exceptions as the users' QGIS has them: QGIS 3.38+ switches them on for the whole process
    at its Python start-up, which the tests' QgsApplication does not run."""
    from osgeo import gdal
    from qgis.core import Qgis

    if Qgis.QGIS_VERSION_INT >= 33800:
        gdal.UseExceptions()
    yield


@pytest.fixture(scope="module")
def backend_environment(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """For one test module: the dock and Processing auto-start a backend with the tiny weights.

    The variables are set for this module only and restored afterwards, so no
    other test sees them whatever the order.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name in BACKEND_VARIABLES:
            patch.delenv(name, raising=False)
        patch.setenv("SEGEARTH_BACKEND_PYTHON", sys.executable)
        patch.setenv("SEGEARTH_MODEL", str(parity_dir / "tiny-clip.json"))
        patch.setenv("SEGEARTH_CLIP_WEIGHTS", str(parity_dir / "tiny-clip.pt"))
        patch.setenv("SEGEARTH_UPSAMPLER_WEIGHTS", str(parity_dir / "tiny-simfeatup.ckpt"))
        patch.setenv("SEGEARTH_DEVICE", "cpu")
        patch.setenv("SEGEARTH_CACHE_DIR", str(tmp_path_factory.mktemp("backend-cache")))
        patch.setenv("SEGEARTH_BACKEND_PYTHONPATH", tree_pythonpath())  # this tree's backend, not an installed one
        yield
        from segearth_qgis.client.backend_manager import shared_manager

        shared_manager().stop()  # a backend started with these settings must not serve the next module


@pytest.fixture(scope="module")
def tiny_backend_args(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """`segearth_backend serve` arguments for the tiny test weights on the CPU."""
    return ["--model", str(parity_dir / "tiny-clip.json"), "--clip-weights", str(parity_dir / "tiny-clip.pt"),
            "--upsampler-weights", str(parity_dir / "tiny-simfeatup.ckpt"), "--device", "cpu",
            "--cache-dir", str(tmp_path_factory.mktemp("cache"))]


@pytest.fixture(scope="module")
def local_backend(tiny_backend_args: list[str]):
    """A backend process started by the plugin's own client code (this tree's backend)."""
    from segearth_qgis.client.local_backend import start_local_backend

    backend = start_local_backend(sys.executable, tiny_backend_args, timeout=120)
    yield backend
    backend.stop()


@pytest.fixture(scope="session")
def change_backend(parity_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One backend for the change tests of every module (test_change_engine, test_change_source): its start is paid
    once, and the re-query cache it keeps between them changes no answer (it equals a fresh engine's)."""
    from segearth_qgis.client.local_backend import start_local_backend

    args = ["--model", str(parity_dir / "tiny-clip.json"), "--clip-weights", str(parity_dir / "tiny-clip.pt"),
            "--upsampler-weights", str(parity_dir / "tiny-simfeatup.ckpt"), "--device", "cpu",
            "--cache-dir", str(tmp_path_factory.mktemp("change-cache"))]
    backend = start_local_backend(sys.executable, args, timeout=120)
    yield backend
    backend.stop()


@pytest.fixture(autouse=True, scope="session")
def trace_task_threads() -> Iterator[None]:
    """Under `make coverage`, code run by QgsTask (on QThreads, which coverage does not see) is measured too."""
    import threading

    hook = threading.gettrace()  # coverage's per-thread installer, when coverage measures this process
    if hook is None:
        yield
        return
    from qgis.core.additions.qgstaskwrapper import QgsTaskWrapper

    from segearth_qgis.gui.task import SegmentTask

    originals = {cls: cls.run for cls in (SegmentTask, QgsTaskWrapper)}

    def traced(run):
        def run_traced(self):
            sys.settrace(hook)
            return run(self)
        return run_traced

    for cls, run in originals.items():
        cls.run = traced(run)
    yield
    for cls, run in originals.items():
        cls.run = run


@pytest.fixture
def small_filesystem(tmp_path: Path):
    """``make(size_kb, read_only=False) -> folder``: a real tmpfs of that size (needs root; skipped otherwise)."""
    import subprocess

    mounted: list[Path] = []

    def make(size_kb: int, read_only: bool = False) -> Path:
        folder = tmp_path / f"fs{len(mounted)}"
        folder.mkdir()
        options = f"size={size_kb}k" + (",ro" if read_only else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                                text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small file system here ({result.stderr.strip() or 'not root'})")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
