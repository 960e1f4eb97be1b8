"""Feedback for a child algorithm run inside ours, and the one cancellation message."""

from __future__ import annotations

from qgis.core import QgsProcessingException, QgsProcessingFeedback
from qgis.PyQt.QtCore import Qt

from .job_feedback import CANCELLED


class ChildFeedback(QgsProcessingFeedback):
    """A child algorithm's feedback: cancelled with ``parent``, its errors and progress (scaled) passed on.

    Direct connections only (no queued events that could outlive it).
    """

    def __init__(self, parent: QgsProcessingFeedback, start: float, end: float) -> None:
        super().__init__()
        self.parent_feedback, self.start, self.end = parent, start, end
        parent.canceled.connect(self.cancel, Qt.ConnectionType.DirectConnection)
        self.progressChanged.connect(self.forward_progress, Qt.ConnectionType.DirectConnection)
        if parent.isCanceled():
            self.cancel()

    def forward_progress(self, value: float) -> None:
        self.parent_feedback.setProgress(self.start + (self.end - self.start) * min(max(value, 0.0), 100.0) / 100.0)

    def reportError(self, error: str, fatalError: bool = False) -> None:  # noqa: N802, N803 - QGIS's names
        self.parent_feedback.reportError(error, fatalError)

    def detach(self) -> None:
        self.parent_feedback.canceled.disconnect(self.cancel)
        self.progressChanged.disconnect(self.forward_progress)


def raise_if_cancelled(feedback: QgsProcessingFeedback) -> None:
    """Stop the algorithm, promising no output, once the user has cancelled."""
    if feedback.isCanceled():
        raise QgsProcessingException(CANCELLED)
