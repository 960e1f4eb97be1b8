"""The backend: its state in one line (starting, loading the model, ready, failed), controls and settings."""

from __future__ import annotations

from typing import Optional

from qgis.gui import QgsCollapsibleGroupBox
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ... import settings
from ...client.backend_manager import FAILED, NOT_SET_UP, BackendStatus
from .model_combo import ModelCombo

TITLE = "Backend"


class BackendBox(QgsCollapsibleGroupBox):
    """Collapsed by default; its title carries the state, so it shows even when collapsed."""

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(TITLE, parent)
        self.setObjectName("SegEarthOVBackend")
        self.status_label = QLabel()
        # Wrapped, never elided: the instruction is at the end ("...: click Set up backend…").
        self.status_label.setWordWrap(True)
        self.status_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details_button = QPushButton("Details…")
        self.details_button.setToolTip("The whole message and the backend's log")
        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.restart_button = QPushButton("Restart")
        self.weights_button = QPushButton("Weights…")
        self.setup_button = QPushButton("Set up backend…")
        self.setup_button.setToolTip("Create the backend's own Python environment (PyTorch, the model code) in "
                                     "the QGIS profile, or update it to this plugin's version")
        self.start_button.setToolTip("Start the local backend now (it also starts with the first job)")
        self.stop_button.setToolTip("Stop the local backend and free its memory")
        self.restart_button.setToolTip("Stop and start the local backend (after changing its settings)")
        self.weights_button.setToolTip("Where the model weights are: files you downloaded yourself, and a check")
        self.url_edit = QLineEdit()
        self.url_edit.setPlaceholderText("empty: start a local backend")
        self.url_edit.setToolTip("A backend already running, e.g. a shared GPU server: http://host:8765 "
                                 "(or $SEGEARTH_BACKEND_URL). Empty: the plugin starts its own.")
        self.token_edit = QLineEdit()
        self.token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.token_edit.setPlaceholderText("for a remote backend")
        self.token_edit.setToolTip("The remote backend's token (or $SEGEARTH_BACKEND_TOKEN)")
        self.model_combo = ModelCombo()
        self.python_edit = QLineEdit()
        self.python_edit.setPlaceholderText("python with segearth-backend installed")
        self.python_edit.setToolTip("The Python interpreter of the environment where the backend is installed "
                                    "(or $SEGEARTH_BACKEND_PYTHON)")
        status_row = QHBoxLayout()
        status_row.addWidget(self.status_label, 1)
        status_row.addWidget(self.details_button)
        buttons = QHBoxLayout()
        for button in (self.start_button, self.stop_button, self.restart_button, self.weights_button):
            buttons.addWidget(button)
        setup_row = QHBoxLayout()
        setup_row.addWidget(self.setup_button)
        setup_row.addStretch(1)
        form = QFormLayout()
        form.addRow("Model", self.model_combo)
        form.addRow("URL", self.url_edit)
        form.addRow("Token", self.token_edit)
        form.addRow("Python", self.python_edit)
        layout = QVBoxLayout(self)
        layout.addLayout(status_row)
        layout.addLayout(buttons)
        layout.addLayout(setup_row)
        layout.addLayout(form)
        self.setCollapsed(True)
        self.status: Optional[BackendStatus] = None
        for edit, setting in ((self.url_edit, settings.BACKEND_URL), (self.python_edit, settings.BACKEND_PYTHON)):
            edit.editingFinished.connect(lambda e=edit, s=setting: s.save(e.text().strip()))
        self.token_edit.editingFinished.connect(lambda: settings.save_backend_token(self.token_edit.text().strip()))

    def show_status(self, status: BackendStatus) -> None:
        """The state in the title (visible collapsed) and the label; the details in the tooltip."""
        self.status = status
        where = "remote" if self.url_edit.text().strip() else "local"
        self.setTitle(f"{TITLE} ({where}): {status.state}")
        text = status.summary
        self.status_label.setText(text)
        tooltip = status.details or text
        if status.log_path is not None:
            tooltip += f"\nLog: {status.log_path}"
        self.status_label.setToolTip(tooltip)
        self.details_button.setEnabled(bool(status.details) or status.log_path is not None)
        if status.state in (FAILED, NOT_SET_UP) and self.isCollapsed():
            self.setCollapsed(False)  # a failure or a missing backend is shown, not hidden in a collapsed box
        needs_setup = status.state == NOT_SET_UP or "Set up backend" in status.summary
        self.setup_button.setDefault(needs_setup)
        self.weights_button.setDefault(status.summary.startswith("weights missing"))
        self.setup_button.setText("Update backend…" if "update it" in status.summary else "Set up backend…")

    def set_job_running(self, running: bool) -> None:
        """While a job runs, nothing here may stop or replace its backend."""
        for button in (self.stop_button, self.restart_button, self.setup_button, self.weights_button):
            button.setEnabled(not running)
            button.setToolTip(button.toolTip().split(" (not while a job runs)")[0]
                              + (" (not while a job runs)" if running else ""))

    def restore(self) -> None:
        self.url_edit.setText(settings.BACKEND_URL.load())
        self.token_edit.setText(settings.backend_token() if settings.BACKEND_URL.load() else "")
        self.python_edit.setText(settings.BACKEND_PYTHON.load())
        self.model_combo.restore()

    def save(self) -> None:
        settings.BACKEND_URL.save(self.url_edit.text().strip())
        token = self.token_edit.text().strip()
        if token and token != settings.backend_token():
            settings.save_backend_token(token)
        elif not token and settings.token_is_saved():
            settings.save_backend_token("")  # an emptied field forgets the token, whatever the URL
        settings.BACKEND_PYTHON.save(self.python_edit.text().strip())
