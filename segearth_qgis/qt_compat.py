"""Qt names that moved between Qt 5 (QGIS 3) and Qt 6 (QGIS 4), resolved once.

Everything else the plugin uses has the same home in both and is written in
its fully scoped form (``Qt.DockWidgetArea.RightDockWidgetArea``), which PyQt5
and PyQt6 both accept.
"""

from __future__ import annotations

try:  # Qt 6: QAction and QShortcut live in QtGui
    from qgis.PyQt.QtGui import QAction, QKeySequence, QShortcut
except ImportError:  # Qt 5: in QtWidgets
    from qgis.PyQt.QtGui import QKeySequence
    from qgis.PyQt.QtWidgets import QAction, QShortcut

__all__ = ["QAction", "QKeySequence", "QShortcut"]


def field_type(name: str) -> object:
    """The type of a ``QgsField``: ``QMetaType.Type`` where QGIS takes it (3.38 and QGIS 4, where ``QVariant`` types
    are gone), ``QVariant.Type`` before.

    Args:
        name: ``"Int"``, ``"LongLong"``, ``"Double"`` or ``"String"``.
    """
    from qgis.core import Qgis

    if Qgis.QGIS_VERSION_INT >= 33800:
        from qgis.PyQt.QtCore import QMetaType

        return getattr(QMetaType.Type, "QString" if name == "String" else name)
    from qgis.PyQt import QtCore

    return getattr(QtCore.QVariant, name)  # QGIS < 3.38 runs on Qt 5, where QVariant has these
