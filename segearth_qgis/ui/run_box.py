"""Segment / Cancel, the progress bar and one line saying where the job is."""

from __future__ import annotations

from typing import Optional

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QSizePolicy, QVBoxLayout, QWidget

from ..qt_compat import QKeySequence, QShortcut

SEGMENT_SHORTCUT = "Ctrl+Return"


class RunBox(QWidget):
    """The buttons and the progress; the dock connects ``segment_button`` and ``cancel_button``."""

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.segment_button = QPushButton("Segment")
        self.segment_button.setDefault(True)
        self.segment_button.setToolTip(f"Segment the area into the classes ({SEGMENT_SHORTCUT})")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop the job (within about a second); nothing is written")
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setTextVisible(True)
        self.progress_label = QLabel(" ")
        self.progress_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.progress_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        buttons = QHBoxLayout()
        buttons.addWidget(self.segment_button, 1)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.progress_label)
        self.shortcut = QShortcut(QKeySequence(SEGMENT_SHORTCUT), self)

    def set_running(self, running: bool) -> None:
        self.segment_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def show_progress(self, percent: float, text: str) -> None:
        self.progress.setValue(int(percent))
        self.set_text(text)

    def set_text(self, text: str) -> None:
        """One line, elided to the panel's width (the full text in the tooltip): the layout never jumps."""
        metrics = self.progress_label.fontMetrics()
        width = max(self.progress_label.width(), 200)
        self.progress_label.setText(metrics.elidedText(text, Qt.TextElideMode.ElideRight, width) if text else " ")
        self.progress_label.setToolTip(text)
