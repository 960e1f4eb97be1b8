"""Set up backend… in a real QGIS: the plan, the task running the set-up, cancel, and a second run that finishes."""

from __future__ import annotations

import json
import sys

import pytest

from segearth_qgis import settings
from tests.plugin.helpers import wait_until


@pytest.fixture
def dialog(qgis_iface, tmp_path):
    from segearth_qgis.ui.setup_dialog import SetupDialog

    settings.SETUP_PYTHON.save(sys.executable)
    done = []
    window = SetupDialog(qgis_iface.mainWindow(), on_done=done.append)
    window.target_widget.setFilePath(str(tmp_path / "backend"))
    window.device_combo.setCurrentIndex(window.device_combo.findData("cpu"))
    window.weights_combo.setCurrentIndex(window.weights_combo.findData("skip"))
    window.done_records = done
    yield window
    if window.task is not None:
        window.cancel()
        wait_until(lambda: window.task is None, 120)
    for key in ("setup_python", "backend_python", "backend_url", "clip_weights", "upsampler_weights"):
        settings.ALL[key].reset()


def test_the_plan_is_shown_before_anything_happens(dialog, tmp_path):
    text = dialog.plan_label.text()
    assert sys.executable in text and "Device: cpu" in text and "PyTorch: CPU" in text and "MB to download" in text
    assert "Backend " in text and "Weights: skip" in text
    assert dialog.start_button.isEnabled() and not (tmp_path / "backend").exists()


@pytest.mark.setup
def test_cancel_then_a_second_run_finishes(dialog, tmp_path):
    task = dialog.start()
    assert task is not None and not dialog.start_button.isEnabled() and dialog.cancel_button.isEnabled()
    wait_until(lambda: "[3/6] PyTorch" in dialog.log_view.toPlainText(), 300)
    dialog.cancel()
    wait_until(lambda: dialog.task is None, 120)
    log = dialog.log_view.toPlainText()
    assert "cancelled" in log and "continues where it stopped" in log and not dialog.done_records
    assert (tmp_path / "backend" / "venv").is_dir() and not (tmp_path / "backend" / "segearth-backend.json").exists()

    second = dialog.start()
    assert second is not None
    wait_until(lambda: dialog.task is None, 1800)
    log = dialog.log_view.toPlainText()
    assert "Done: the plugin now uses this environment." in log, log[-3000:]
    assert log.count("[2/6] Virtual environment") == 2 and "already there" in log  # the second run continued
    record = json.loads((tmp_path / "backend" / "segearth-backend.json").read_text())
    assert dialog.done_records == [record] and dialog.progress.value() == 100
    assert settings.BACKEND_PYTHON.load() == record["python"] == str(tmp_path / "backend" / "venv" / "bin" / "python")
