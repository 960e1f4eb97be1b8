"""Segment / Cancel, update while typing, the progress bar and one line saying where the job is."""

from __future__ import annotations

from typing import Optional

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from ... import settings
from ...qt_compat import QKeySequence, QShortcut

SEGMENT_SHORTCUT = "Ctrl+Return"


class RunBox(QWidget):
    """The buttons and the progress; the dock connects ``segment_button``, ``cancel_button``, ``live_check``
    and ``keep_button``."""

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.segment_button = QPushButton("Segment")
        self.segment_button.setDefault(True)
        self.segment_button.setToolTip(f"Segment the area into the classes ({SEGMENT_SHORTCUT})")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.setToolTip("Stop the job (within about a second); nothing is written")
        self.live_check = QCheckBox("Update while typing")
        self.live_check.setToolTip(
            "After a result, re-segment the same area a second after the classes, background, threshold or lambda "
            "stop changing. The image work is reused, so an update takes a fraction of the first run. Each update "
            "replaces the previous result layer (and deletes the files the update wrote) unless you keep it.")
        self.keep_button = QPushButton("Keep result")
        self.keep_button.setEnabled(False)
        self.keep_button.setToolTip("Keep the current result layer: the next update adds a new layer beside it")
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
        live = QHBoxLayout()
        live.addWidget(self.live_check, 1)
        live.addWidget(self.keep_button)
        layout.addLayout(buttons)
        layout.addLayout(live)
        layout.addWidget(self.progress)
        layout.addWidget(self.progress_label)
        self.shortcut = QShortcut(QKeySequence(SEGMENT_SHORTCUT), self)

    def restore(self) -> None:
        self.live_check.setChecked(settings.LIVE_UPDATE.load())

    def save(self) -> None:
        settings.LIVE_UPDATE.save(self.live_check.isChecked())

    def set_change_mode(self, change: bool) -> None:
        """The main button segments, or (a layer to compare with is chosen) detects change."""
        self.segment_button.setText("Detect change" if change else "Segment")
        self.segment_button.setToolTip(
            f"Detect change between the two layers in the classes ({SEGMENT_SHORTCUT})" if change
            else f"Segment the area into the classes ({SEGMENT_SHORTCUT})")

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
