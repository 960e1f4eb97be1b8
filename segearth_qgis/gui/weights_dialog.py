"""Weights…: point the backend at weight files copied by hand, and check that it finds them."""

from __future__ import annotations

import os
import subprocess
from typing import Any, Optional

from qgis.core import QgsApplication, QgsTask
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import settings
from ..client.backend_client import BackendSettings
from ..client.local_backend import backend_environment

INTRO = (
    "SegEarth-OV needs the CLIP weights of the model chosen in the panel (Backend ▸ Model; the default, CLIP "
    "ViT-B/16 of OpenAI, is about 600 MB) and, for that model, the authors' SimFeatUp upsampler "
    "(xclip_jbu_one_million_aid.ckpt). With internet the backend downloads them on first use. Without, download "
    "them on another machine and choose them here; leave a field empty to use the backend's default (its cache "
    "or $SEGEARTH_CLIP_WEIGHTS / $SEGEARTH_UPSAMPLER_WEIGHTS). Check loads the files' keys against the model.")


def check_command(backend: BackendSettings) -> list[str]:
    """The ``segearth-backend check-weights`` command for these settings (empty when no Python is set)."""
    if not backend.python:
        return []
    return [backend.python, "-m", "segearth_backend", "check-weights", *backend.serve_args()]


def run_check(command: list[str], timeout: float = 300.0) -> tuple[bool, str]:
    """(all present, what the backend said); never raises."""
    if not command:
        return False, "No Python is set for the backend (Backend ▸ Python, or set up the backend first)."
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL, env=backend_environment(os.environ))
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, f"Could not run {command[0]}: {error}"
    text = (result.stdout + result.stderr).strip()
    return result.returncode == 0, text or f"check-weights exited with code {result.returncode}"


class WeightsDialog(QDialog):
    """Two file choosers saved in the settings and a Check button that asks the backend's own code."""

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("SegEarth-OV weights")
        self.clip_widget = QgsFileWidget()
        self.clip_widget.setFilter("PyTorch / safetensors (*.bin *.pt *.pth *.safetensors);;All files (*)")
        self.clip_widget.setToolTip("open_clip_pytorch_model.bin of timm/vit_base_patch16_clip_224.openai, or any "
                                    "checkpoint of the configured CLIP model")
        self.upsampler_widget = QgsFileWidget()
        self.upsampler_widget.setFilter("Checkpoints (*.ckpt *.pt *.pth);;All files (*)")
        self.upsampler_widget.setToolTip("xclip_jbu_one_million_aid.ckpt from the SegEarth-OV repository; 'none' "
                                         "for bilinear upsampling (lower quality)")
        self.result_view = QPlainTextEdit()
        self.result_view.setReadOnly(True)
        self.result_view.setPlaceholderText("Check: asks the backend which files it would still need.")
        self.check_button = QPushButton("Check")
        self.check_button.clicked.connect(self.check)
        intro = QLabel(INTRO)
        intro.setWordWrap(True)
        form = QFormLayout()
        form.addRow("CLIP weights", self.clip_widget)
        form.addRow("SimFeatUp", self.upsampler_widget)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.addButton(self.check_button, QDialogButtonBox.ButtonRole.ActionRole)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addWidget(self.result_view)
        layout.addWidget(buttons)
        self.resize(560, 360)
        self.clip_widget.setFilePath(settings.CLIP_WEIGHTS.load())
        self.upsampler_widget.setFilePath(settings.UPSAMPLER_WEIGHTS.load())
        self.task: Optional[QgsTask] = None
        self.last_check: Optional[tuple[bool, str]] = None

    def chosen(self) -> BackendSettings:
        """The backend settings with this dialog's files (not saved yet)."""
        from dataclasses import replace

        return replace(settings.backend_settings(), clip_weights=self.clip_widget.filePath().strip() or None,
                       upsampler_weights=self.upsampler_widget.filePath().strip() or None)

    def check(self) -> None:
        """Run ``check-weights`` in the background; the answer appears in the dialog."""
        command = check_command(self.chosen())
        self.check_button.setEnabled(False)
        self.result_view.setPlainText("Checking…")

        def work(_task: QgsTask) -> tuple[bool, str]:
            return run_check(command)

        def done(exception: Optional[BaseException], result: Any = None) -> None:
            self.check_button.setEnabled(True)
            ok, text = result if result is not None else (False, f"The check failed: {exception}")
            self.last_check = (ok, text)
            self.result_view.setPlainText(("✔ " if ok else "✘ ") + text)

        self.task = QgsTask.fromFunction("SegEarth-OV weights check", work, on_finished=done)
        QgsApplication.taskManager().addTask(self.task)

    def accept(self) -> None:
        settings.CLIP_WEIGHTS.save(self.clip_widget.filePath().strip())
        settings.UPSAMPLER_WEIGHTS.save(self.upsampler_widget.filePath().strip())
        super().accept()
