"""The local backend's lifetime: the panel's verdict on one that cannot start (set it up, or read its log),
a request that outlives a stopped one, and a headless run that leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from segearth_qgis.client.backend_client import BackendSettings
from segearth_qgis.client.backend_manager import FAILED, NOT_SET_UP, BackendManager, BackendStatus, describe_health
from segearth_qgis.client.retry import DEFAULT_RETRY, with_retries
from segearth_qgis.errors import BackendError
from tests.helpers import ROOT, processes_with, tree_pythonpath, wait_for
from tests.plugin.helpers import smooth_image, write_geotiff

QGIS_PROCESS = shutil.which("qgis_process.bin") or shutil.which("qgis_process")

#: A real Python without the backend installed (Debian's, which QGIS uses).
SYSTEM_PYTHON = "/usr/bin/python3"


def status_after_a_failed_start(python: str, monkeypatch: pytest.MonkeyPatch, extra_args: str = "") -> BackendStatus:
    monkeypatch.delenv("SEGEARTH_BACKEND_PYTHONPATH", raising=False)
    monkeypatch.setenv("SEGEARTH_BACKEND_ARGS", extra_args)
    manager = BackendManager(lambda: BackendSettings(python=python, timeout=120))
    with pytest.raises(BackendError):
        manager.client()
    return manager.status()


@pytest.mark.skipif(not Path(SYSTEM_PYTHON).is_file(), reason=f"no {SYSTEM_PYTHON} here")
def test_a_python_without_the_backend_is_offered_the_set_up(monkeypatch):
    status = status_after_a_failed_start(SYSTEM_PYTHON, monkeypatch)
    assert status.state == NOT_SET_UP and "Set up backend" in status.summary
    assert "No module named segearth_backend" in status.details


def test_a_backend_that_crashes_at_start_shows_its_log_not_the_set_up(monkeypatch):
    """Its log path always holds "segearth": that alone once made every crash read "click Set up backend…"."""
    status = status_after_a_failed_start(sys.executable, monkeypatch, "--no-such-option")
    assert status.state == FAILED and status.summary.startswith("could not start")
    assert "error: unrecogni" in status.details and "--no-such-option" in status.details  # argparse, in the log


def test_an_environment_whose_base_python_is_gone_is_offered_the_set_up(tmp_path, monkeypatch):
    """Windows: a venv's python.exe is a launcher; when the QGIS whose Python it was made from is uninstalled,
    it prints "No Python at ..." and exits (this stand-in does what that launcher does)."""
    launcher = tmp_path / "python"
    gone = r"C:\Program Files\QGIS 3.34.0\apps\Python312\python.exe"
    launcher.write_text(f"#!/bin/sh\necho 'No Python at \"{gone}\"' >&2\nexit 103\n")
    launcher.chmod(0o755)
    status = status_after_a_failed_start(str(launcher), monkeypatch)
    assert status.state == NOT_SET_UP and "No Python at" in status.details


def test_a_request_to_a_stopped_local_backend_is_sent_again_to_a_fresh_one(backend_environment):
    """SIGTERM to the local backend while it works (a restart, a shutdown): the request once failed with
    "the backend refused the request (500)"; now the client says the backend was stopped and sends it again
    to a backend started afresh."""
    manager = BackendManager(lambda: BackendSettings(python=sys.executable, timeout=600))
    try:
        client = manager.client()
        first = manager.local
        assert first is not None
        image = np.random.default_rng(8).integers(0, 256, size=(1000, 1000, 3), dtype=np.uint8)  # 81 windows
        working, retried, answers = threading.Event(), [], []

        def send() -> None:
            answers.append(with_retries(
                lambda: client.segment(image, ["road", "roof"], progress=lambda done, total: working.set()),
                "Block 1 of 1", DEFAULT_RETRY, lambda: False, retried.append))

        thread = threading.Thread(target=send)
        thread.start()
        assert working.wait(300), "the first backend never reported progress"
        first.process.send_signal(signal.SIGTERM)
        thread.join(900)
        assert answers and answers[0].labels.shape == (1000, 1000)
        assert retried and "The backend was stopped" in retried[0], retried
        assert first.process.poll() is not None
        assert manager.local is not None and manager.local is not first and manager.local.running()
    finally:
        manager.stop()


@pytest.mark.skipif(QGIS_PROCESS is None, reason="qgis_process is not installed")
def test_a_headless_run_leaves_nothing_in_the_temporary_folder(tmp_path, parity_dir):
    """qgis_process runs no Python exit handlers: its backend's working folder once stayed behind after
    every run. The plugin now stops the backend when the application quits."""
    temporary, home = tmp_path / "tmp", tmp_path / "home"
    temporary.mkdir()
    raster = write_geotiff(tmp_path / "in.tif", smooth_image(60, 70), 32633, (500000.0, 2.0, 0.0, 5600000.0, 0.0, -2.0))
    env = {
        "PATH": os.environ["PATH"], "HOME": str(home), "TMPDIR": str(temporary), "QT_QPA_PLATFORM": "offscreen",
        "QGIS_PLUGINPATH": str(ROOT), "SEGEARTH_BACKEND_PYTHON": sys.executable, "PYTHONPATH": tree_pythonpath(),
        "SEGEARTH_BACKEND_PYTHONPATH": tree_pythonpath(), "SEGEARTH_MODEL": str(parity_dir / "tiny-clip.json"),
        "SEGEARTH_CLIP_WEIGHTS": str(parity_dir / "tiny-clip.pt"), "SEGEARTH_UPSAMPLER_WEIGHTS": "none",
        "SEGEARTH_DEVICE": "cpu", "SEGEARTH_CACHE_DIR": str(tmp_path / "cache"),
    }
    subprocess.run([QGIS_PROCESS, "plugins", "enable", "segearth_qgis"], env=env, capture_output=True, timeout=120)
    run = subprocess.run([QGIS_PROCESS, "run", "segearth:segment", "--", f"INPUT={raster}", "CLASSES=road\nroof",
                          f"OUTPUT={tmp_path / 'out.tif'}"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    marker = f"SEGEARTH_CACHE_DIR={tmp_path / 'cache'}"
    wait_for(lambda: not processes_with(marker, lambda command: b"segearth_backend" in command), timeout=90,
             interval=0.5, message="a backend process outlived qgis_process")
    assert not list(temporary.glob("segearth-backend-*"))
    logs = home / ".local" / "share" / "segearth-ov" / "logs"
    assert not logs.exists() or not list(logs.iterdir())  # it worked: no log kept


def test_the_status_line_says_when_the_backend_ran_float32_instead_of_bfloat16():
    health = {"device": {"type": "cpu", "name": "cpu"}, "model": "ViT-B-16", "upsampler": "bilinear",
              "precision": "float32", "precision_note": "bfloat16 was asked for, but this CPU (X) has neither ..."}
    assert describe_health(health).endswith("float32: this CPU has no fast bfloat16")
    assert describe_health({**health, "precision_note": "", "precision": "bfloat16"}).endswith("bfloat16")
    assert "float32" not in describe_health({**health, "precision_note": ""})
