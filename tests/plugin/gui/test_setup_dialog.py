"""Set up backend… in a real QGIS: the plan, the task running the set-up, cancel, and a second run that finishes."""

from __future__ import annotations

import json
import sys

import pytest
from qgis.PyQt.QtCore import QCoreApplication

from segearth_qgis import settings
from tests.plugin.helpers import wait_until


@pytest.fixture
def dialog(qgis_iface, tmp_path):
    from segearth_qgis.gui.setup_dialog import SetupDialog

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
    assert not dialog.start_button.isEnabled()  # the choices just changed: no start from the old plan
    assert dialog.start() is None and dialog.plan_label.text() == "Working out the plan…"
    wait_until(dialog.start_button.isEnabled, 30)  # the plan for them, once they settle
    text = dialog.plan_label.text()
    assert sys.executable in text and "Device: cpu (as asked)" in text and "PyTorch: CPU" in text
    # One wording: the plan says what the list says ("Later (at the first job)"), not the script's "skip".
    assert "MB to download" in text and "Backend " in text and "Weights: later (at the first job)" in text
    assert dialog.weights_combo.currentText() == "Later (at the first job)"
    # Found in the walkthrough: "PyTorch: CPU, about 260 MB", then PyPI's 5.8 GB CUDA build without a word when
    # the PyTorch index could not be reached. The plan says so before anything happens.
    assert "PyTorch: CPU, about 260 MB to download; if the PyTorch index cannot be reached: PyTorch from PyPI " \
           "instead, about 3300 MB (PyPI's Linux build includes CUDA)" in text
    assert dialog.plan.device == "cpu" and dialog.plan.weights == "skip"
    assert dialog.plan.target == str((tmp_path / "backend").resolve())
    assert dialog.start_button.isEnabled() and not (tmp_path / "backend").exists()


def test_the_plan_is_worked_out_off_the_gui_thread_and_an_outdated_one_is_dropped(dialog, monkeypatch):
    import threading

    from segearth_qgis.client import backend_setup

    wait_until(lambda: dialog.plan is not None and dialog.plan.weights == "skip", 30)  # the fixture's choices
    real_make_plan = backend_setup.make_plan
    release, threads = threading.Event(), []

    def slow_make_plan(arguments):  # a machine where probing the Pythons takes a while
        threads.append(threading.current_thread())
        if arguments.device == "cuda":
            release.wait(30)
        return real_make_plan(arguments)

    monkeypatch.setattr(backend_setup, "make_plan", slow_make_plan)
    dialog.device_combo.setCurrentIndex(dialog.device_combo.findData("cuda"))
    wait_until(lambda: threads, 30)  # the CUDA plan is being worked out: the GUI answers meanwhile
    assert threads[0] is not threading.main_thread() and not dialog.start_button.isEnabled()
    dialog.device_combo.setCurrentIndex(dialog.device_combo.findData("cpu"))  # changed before it arrived
    wait_until(lambda: len(threads) == 2 and dialog.plan is not None, 30)
    release.set()  # now the outdated CUDA plan arrives: it must not replace the CPU one
    wait_until(lambda: not threads[0].is_alive(), 30)
    for _ in range(20):
        QCoreApplication.processEvents()
    assert dialog.plan.device == "cpu" and "Device: cpu (as asked)" in dialog.plan_label.text()
    assert dialog.start_button.isEnabled()


@pytest.mark.setup
def test_cancel_then_a_second_run_finishes(dialog, tmp_path):
    wait_until(dialog.start_button.isEnabled, 30)
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


def test_a_running_local_backend_is_stopped_before_the_set_up_starts(dialog, tiny_backend_args, monkeypatch):
    """pip may replace files a running backend holds open (on Windows the install then fails half-way)."""
    from segearth_qgis.client.backend_manager import shared_manager

    monkeypatch.setenv("SEGEARTH_BACKEND_PYTHON", sys.executable)
    monkeypatch.delenv("SEGEARTH_BACKEND_URL", raising=False)
    monkeypatch.setenv("SEGEARTH_BACKEND_ARGS", " ".join([*tiny_backend_args, "--no-warmup"]))
    manager = shared_manager()
    manager.stop()
    manager.client()
    running = manager.local
    assert running is not None and running.running()
    wait_until(dialog.start_button.isEnabled, 30)
    assert dialog.start() is not None
    wait_until(lambda: "Stopped the local backend first" in dialog.log_view.toPlainText(), 60)  # off the GUI thread
    assert manager.local is None and not running.running()
