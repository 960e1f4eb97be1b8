"""The QGIS plugin object: a toolbar button and Raster-menu entry that show the dock."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QToolBar

from .client.backend_manager import stop_shared
from .gui.dock import SegEarthDock
from .qt_compat import QAction

if TYPE_CHECKING:
    from .map.result_style import ResultStyleHook

MENU = "SegEarth-OV"
ICON = Path(__file__).with_name("icon.svg")


class SegEarthPlugin:
    def __init__(self, iface: Any) -> None:
        self.iface = iface
        self.action: Optional[QAction] = None
        self.toolbar: Optional[QToolBar] = None
        self.dock: Optional[SegEarthDock] = None
        self.provider: Optional[Any] = None
        self.style_hook: Optional[ResultStyleHook] = None
        self.quit_hooked = False

    def initProcessing(self) -> None:  # noqa: N802 - QGIS's name (also called by qgis_process)
        self._stop_backend_on_quit()
        if self.style_hook is None:
            from .map.result_style import ResultStyleHook

            self.style_hook = ResultStyleHook()
            self.style_hook.connect()
        if self.provider is None:
            from qgis.core import QgsApplication

            from .processing.provider import SegEarthProvider

            self.provider = SegEarthProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 - QGIS's name
        self.initProcessing()
        self.dock = SegEarthDock(self.iface, self.iface.mainWindow())
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.dock.hide()
        self.action = QAction(QIcon(str(ICON)), "SegEarth-OV segmentation", self.iface.mainWindow())
        self.action.setObjectName("SegEarthOVAction")
        self.action.setCheckable(True)
        self.action.setToolTip("Open-vocabulary segmentation of the raster: type classes, click Segment")
        self.action.toggled.connect(self.dock.setVisible)
        self.dock.visibilityChanged.connect(self.action.setChecked)
        self.toolbar = self.iface.addToolBar(MENU)
        self.toolbar.setObjectName("SegEarthOVToolbar")
        self.toolbar.addAction(self.action)
        self.iface.addPluginToRasterMenu(MENU, self.action)
        # Listed in Settings ▸ Keyboard Shortcuts, where a key can be given to it.
        self.iface.registerMainWindowAction(self.action, "")

    def _stop_backend_on_quit(self) -> None:
        """Stop the local backend (and remove its working folder) when QGIS or qgis_process quits: neither
        runs Python's exit handlers, and a headless run must leave nothing behind."""
        from qgis.core import QgsApplication

        application = QgsApplication.instance()
        if application is not None and not self.quit_hooked:
            application.aboutToQuit.connect(stop_shared)
            self.quit_hooked = True

    def unload(self) -> None:
        if self.quit_hooked:
            from qgis.core import QgsApplication

            application = QgsApplication.instance()
            if application is not None:
                with contextlib.suppress(TypeError, RuntimeError):  # already disconnected
                    application.aboutToQuit.disconnect(stop_shared)
            self.quit_hooked = False
        if self.style_hook is not None:
            self.style_hook.disconnect()
            self.style_hook = None
        if self.provider is not None:
            from qgis.core import QgsApplication

            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        if self.dock is not None:
            self.dock.shutdown()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.action is not None:
            self.iface.unregisterMainWindowAction(self.action)
            self.iface.removePluginRasterMenu(MENU, self.action)
            if self.toolbar is not None:
                self.toolbar.removeAction(self.action)
            self.action.deleteLater()
            self.action = None
        if self.toolbar is not None:
            self.toolbar.deleteLater()
            self.toolbar = None
