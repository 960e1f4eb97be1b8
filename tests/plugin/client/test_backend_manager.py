"""The backend line's verdict on a local backend that cannot start: set it up, or read its log."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from segearth_qgis.client.backend_client import BackendSettings
from segearth_qgis.client.backend_manager import FAILED, NOT_SET_UP, BackendManager, BackendStatus
from segearth_qgis.errors import BackendError

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
