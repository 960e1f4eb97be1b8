"""Set up backend…: the plan, then the set-up (``backend_setup.py``) as a task, its output streaming in.

The dialog runs the very script a user can run by hand, imported here (it is
standard library only) and driven from a :class:`QgsTask`: its commands
(virtual environment, pip) run as child processes, its lines arrive in the log
view, Cancel kills the running command, and a second run continues where the
first stopped. When it ends, the plugin's settings point at the new
environment and the backend is started.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Optional

from qgis.core import QgsApplication, QgsTask
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import QObject, Qt, QTimer, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import settings
from ..client import backend_setup
from ..client.backend_manager import shared_manager
from ..client.backend_setup import Cancellation, Plan, SetupCancelledError, SetupError
from ..qgis_compat import OWN_MESSAGE_TASK

STEP_LINE = re.compile(r"^\[(\d+)/(\d+)\]")


def default_target() -> Path:
    """The environment's folder: inside the QGIS profile, so it goes with it and never with QGIS's Python.

    On Windows the profile is in the roaming AppData (synchronised between machines, and its long path
    brings PyTorch's deepest files near the 260-character limit): there the environment goes to the local
    AppData, as the script's own default does.
    """
    if sys.platform == "win32":
        return backend_setup.default_target()
    return Path(QgsApplication.qgisSettingsDirPath()) / "segearth-ov" / "backend"


class _Lines(QObject):
    """Carries the set-up's output lines from the task's thread to the dialog."""

    line = pyqtSignal(str)


class _Planned(QObject):
    """Carries a worked-out plan from its thread to the dialog: (generation, Plan or None, error or "")."""

    planned = pyqtSignal(int, object, str)


def _work_out_plan(arguments: argparse.Namespace, generation: int, sink: _Planned) -> None:
    """Thread body: :func:`backend_setup.make_plan` (probes Pythons and the GPU, up to a minute on a slow
    machine), never on the GUI thread."""
    try:
        plan, error = backend_setup.make_plan(arguments), ""
    except SetupError as problem:
        plan, error = None, str(problem)
    except Exception as problem:  # noqa: BLE001 - whatever happens, the dialog must say it
        plan, error = None, f"Unexpected error: {type(problem).__name__}: {problem}"
    with contextlib.suppress(RuntimeError):  # the dialog was deleted meanwhile: nobody waits for this plan
        sink.planned.emit(generation, plan, error)


class SetupTask(QgsTask):
    """Runs :func:`backend_setup.set_up` for ``plan``; ``record`` or ``error`` when it ends."""

    def __init__(self, plan: Plan, lines: _Lines) -> None:
        super().__init__("SegEarth-OV backend set-up", OWN_MESSAGE_TASK)
        self.plan, self.lines = plan, lines
        self.cancellation = Cancellation()
        self.record: Optional[dict[str, Any]] = None
        self.error: Optional[str] = None
        self.was_cancelled = False

    def run(self) -> bool:
        manager = shared_manager()
        if manager.local is not None and manager.local.running():
            # pip may replace files the running backend has open (on Windows that fails half-way). Here, not
            # on the GUI thread: stopping waits for the backend to shut down (up to 15 s).
            manager.stop()
            self._echo("Stopped the local backend first (the set-up may replace its files); the next job starts "
                       "it again.")
        try:
            self.record = backend_setup.set_up(self.plan, echo=self._echo, cancel=self.cancellation)
        except SetupCancelledError as error:
            self.was_cancelled, self.error = True, str(error)
        except SetupError as error:
            self.error = str(error)
        except Exception as error:  # noqa: BLE001 - whatever happens, the dialog must say it
            self.error = f"Unexpected error: {type(error).__name__}: {error}"
        return True  # the dialog reports the outcome itself

    def _echo(self, text: str) -> None:
        match = STEP_LINE.match(text)
        if match:
            done, total = int(match.group(1)) - 1, int(match.group(2))
            self.setProgress(100.0 * done / total)
        self.lines.line.emit(text)

    def cancel(self) -> None:
        self.cancellation.cancel()
        super().cancel()


class SetupDialog(QDialog):
    """The plan (Python, folder, device and PyTorch build, download size, weights), then the set-up's log.

    ``finished_setup(record)`` fires when a set-up succeeded (the settings already point at it).
    """

    finished_setup = pyqtSignal(object)

    def __init__(self, parent: Optional[QWidget] = None, on_done: Optional[Callable[[dict[str, Any]], None]] = None
                 ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Set up the SegEarth-OV backend")
        self.on_done = on_done
        self.target_widget = QgsFileWidget()
        self.target_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.target_widget.setFilePath(str(default_target()))
        self.target_widget.setToolTip("Where the backend's own Python environment goes (a few GB with PyTorch)")
        self.device_combo = QComboBox()
        for text, value in (("Automatic", "auto"), ("CPU", "cpu"), ("NVIDIA GPU (CUDA)", "cuda"),
                            ("Apple GPU (MPS)", "mps")):
            self.device_combo.addItem(text, value)
        self.device_combo.setToolTip("Which PyTorch to install: automatic looks for an NVIDIA GPU (nvidia-smi) "
                                     "and Apple Silicon, else the smaller CPU build")
        self.weights_combo = QComboBox()
        for value, words in backend_setup.WEIGHTS_WORDS.items():  # the plan says the same words
            self.weights_combo.addItem(words[0].upper() + words[1:], value)
        self.weights_combo.addItem("From a folder…", "folder")
        self.weights_combo.setToolTip("The model weights (about 600 MB): downloaded now, at the first job, or found "
                                      "in a folder where you copied them")
        self.weights_folder = QgsFileWidget()
        self.weights_folder.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.weights_folder.setToolTip("A folder holding open_clip_pytorch_model.bin and "
                                       "xclip_jbu_one_million_aid.ckpt")
        self.plan_label = QLabel("Working out the plan…")
        self.plan_label.setWordWrap(True)
        self.plan_label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        # Room for the plan's lines from the start: the dialog does not jump when the plan arrives.
        self.plan_label.setMinimumHeight(6 * self.plan_label.fontMetrics().lineSpacing())
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.start_button = QPushButton("Set up")
        self.start_button.setEnabled(False)  # until the plan is shown
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.close_button = QPushButton("Close")
        form = QFormLayout()
        form.addRow("Folder", self.target_widget)
        form.addRow("Device", self.device_combo)
        form.addRow("Weights", self.weights_combo)
        form.addRow("Weights folder", self.weights_folder)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        for button in (self.start_button, self.cancel_button, self.close_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.plan_label)
        layout.addWidget(self.log_view, 1)
        layout.addWidget(self.progress)
        layout.addLayout(buttons)
        self.resize(720, 520)
        self.lines = _Lines()
        self.lines.line.connect(self.log_view.appendPlainText)
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.reject)
        # Working out a plan probes Pythons and the GPU (a second or more): once typing has paused.
        self.plan_timer = QTimer(self)
        self.plan_timer.setSingleShot(True)
        self.plan_timer.setInterval(600)
        self.plan_timer.timeout.connect(self.refresh_plan)
        for signal in (self.device_combo.currentIndexChanged, self.weights_combo.currentIndexChanged,
                       self.target_widget.fileChanged, self.weights_folder.fileChanged):
            signal.connect(self._plan_changed)
        self.task: Optional[SetupTask] = None
        self.plan: Optional[Plan] = None  # the plan for the choices as they are now; None while it is worked out
        self.plan_generation = 0  # which choices the plan being worked out belongs to (a newer one wins)
        self.planned = _Planned(self)
        self.planned.planned.connect(self._show_plan)
        self.record: Optional[dict[str, Any]] = None
        self.refresh_plan()

    def _plan_changed(self, *args: object) -> None:
        self.plan_generation += 1  # a plan still being worked out is for the old choices: it will be dropped
        self.plan = None  # never start from a plan that no longer matches the choices
        self.start_button.setEnabled(False)
        self.weights_folder.setEnabled(self.weights_combo.currentData() == "folder")
        self.plan_label.setText("Working out the plan…")
        self.plan_timer.start()

    def arguments(self) -> argparse.Namespace:
        weights = self.weights_combo.currentData()
        if weights == "folder":
            weights = self.weights_folder.filePath().strip() or "skip"
        return argparse.Namespace(target=self.target_widget.filePath().strip() or str(default_target()),
                                  python=settings.SETUP_PYTHON.load() or None,
                                  device=self.device_combo.currentData(), weights=weights, wheelhouse=None,
                                  index_url=None)

    def refresh_plan(self) -> None:
        """Work out the plan for the choices as they are now, in a thread (it probes Pythons and the GPU: a
        second or two, up to a minute on a loaded machine); :meth:`_show_plan` shows it when it arrives."""
        self.weights_folder.setEnabled(self.weights_combo.currentData() == "folder")
        self.plan_label.setText("Working out the plan…")
        threading.Thread(target=_work_out_plan, args=(self.arguments(), self.plan_generation, self.planned),
                         name="segearth-setup-plan", daemon=True).start()

    def _show_plan(self, generation: int, plan: Optional[Plan], error: str) -> None:
        if generation != self.plan_generation:
            return  # worked out for choices that changed since
        self.plan = plan
        if plan is None:
            self.plan_label.setText(f"Cannot set up: {error}")
            self.start_button.setEnabled(False)
            return
        size = f"about {plan.download_mb} MB to download" if plan.download_mb else "from the wheel folder"
        fallback = backend_setup.fallback_words(plan)
        if fallback:
            size += f"; {fallback}"
        self.plan_label.setText(
            f"Python {plan.python_version}: {plan.base_python}\n"
            f"Device: {plan.device} ({plan.device_reason}); PyTorch: {plan.torch_build}, {size}\n"
            f"Backend {plan.backend_version} from {plan.backend_source}\n"
            f"Weights: {backend_setup.weights_wording(plan.weights)}\n"
            f"Steps: {', '.join(plan.steps)}. Running it again later continues where it stopped.")
        self.start_button.setEnabled(self.task is None)

    def start(self) -> Optional[SetupTask]:
        """Run the set-up from the plan shown (None while that plan is still being worked out, or a set-up runs)."""
        plan = self.plan
        if plan is None or self.task is not None:
            return None
        self.log_view.appendPlainText(f"Setting up the backend in {plan.target}")
        self.task = SetupTask(plan, self.lines)
        self.task.progressChanged.connect(lambda value: self.progress.setValue(int(value)))
        self.task.taskCompleted.connect(self._ended)
        self.task.taskTerminated.connect(self._ended)
        self.start_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def cancel(self) -> None:
        if self.task is not None:
            self.log_view.appendPlainText("Cancelling…")
            self.task.cancel()

    def _ended(self) -> None:
        task = self.task
        self.task = None
        self.cancel_button.setEnabled(False)
        self.start_button.setEnabled(self.plan is not None)
        if task is None:
            return
        if task.record is not None:
            self.record = task.record
            apply_record(task.record)
            self.progress.setValue(100)
            self.log_view.appendPlainText("Done: the plugin now uses this environment.")
            self.finished_setup.emit(task.record)
            if self.on_done is not None:
                self.on_done(task.record)
        elif task.was_cancelled:
            self.log_view.appendPlainText(task.error or "Cancelled.")
        else:
            self.log_view.appendPlainText(f"SET-UP FAILED: {task.error}")


def apply_record(record: dict[str, Any]) -> None:
    """Point the plugin at a finished set-up: its interpreter and any weights it found."""
    settings.BACKEND_PYTHON.save(str(record["python"]))
    settings.BACKEND_URL.save("")
    for key, setting in (("clip_weights", settings.CLIP_WEIGHTS), ("upsampler_weights", settings.UPSAMPLER_WEIGHTS)):
        if record.get(key):
            setting.save(str(record[key]))
