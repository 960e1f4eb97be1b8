"""The panel's messages: QGIS's message bar and log panel, never a traceback dialog."""

from __future__ import annotations

from typing import Any

from qgis.core import Qgis, QgsMessageLog
from qgis.gui import QgisInterface

from ..core.messages import bar_parts
from .task import LOG_TAG


def report(iface: QgisInterface, text: str, level: Any) -> None:
    """Show ``text`` in the message bar (critical ones stay) and the log panel.

    A long message (a list of missing files, a log tail, a line longer than the bar shows) shows its start
    in the bar and the whole text behind the bar's "Show more" button (see
    :func:`~segearth_qgis.core.messages.bar_parts`).
    """
    QgsMessageLog.logMessage(text, LOG_TAG, level)
    duration = 0 if level == Qgis.MessageLevel.Critical else 12
    short, whole = bar_parts(text)
    if whole is not None:
        iface.messageBar().pushMessage("SegEarth-OV", short, whole, level=level, duration=duration)
    else:
        iface.messageBar().pushMessage("SegEarth-OV", short, level=level, duration=duration)
