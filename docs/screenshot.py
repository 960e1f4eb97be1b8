"""Screenshot of the dock and a styled result on the sample raster (run: `make screenshot`).

Builds a QGIS main window from QGIS's own widgets (map canvas, layer tree,
message bar) with the SegEarth-OV dock, starts a real backend, segments the
sample raster through the dock and saves ``docs/screenshot.png``. Without
pretrained weights it uses the tiny random test weights: the classes are then
not meaningful, the workflow and styling are.

``SEGEARTH_COMPARE=<later raster>``: the dock's "Compare with…" instead — the
change between the sample (before) and that raster (after), styled, with its
summary line. ``SEGEARTH_SAMPLE`` and ``SEGEARTH_SCREENSHOT`` choose the
sample and the picture's path.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qgis.core import QgsApplication, QgsLayerTreeModel, QgsProject, QgsRasterLayer  # noqa: E402
from qgis.gui import QgsLayerTreeMapCanvasBridge, QgsLayerTreeView, QgsMapCanvas, QgsMessageBar  # noqa: E402
from qgis.PyQt.QtCore import QCoreApplication, QSettings, Qt  # noqa: E402
from qgis.PyQt.QtWidgets import QMainWindow, QSplitter, QVBoxLayout, QWidget  # noqa: E402


class Iface:
    """The part of QgisInterface the dock uses."""

    def __init__(self, window: QMainWindow, canvas: QgsMapCanvas, bar: QgsMessageBar) -> None:
        self.window, self.canvas, self.bar = window, canvas, bar

    def mapCanvas(self) -> QgsMapCanvas:  # noqa: N802
        return self.canvas

    def messageBar(self) -> QgsMessageBar:  # noqa: N802
        return self.bar

    def mainWindow(self) -> QMainWindow:  # noqa: N802
        return self.window


def main() -> int:
    sample = Path(os.environ.get("SEGEARTH_SAMPLE", ROOT.parent / "shared" / "data" / "oem_koeln_50.tif"))
    out = Path(os.environ.get("SEGEARTH_SCREENSHOT", ROOT / "docs" / "screenshot.png"))
    parity = ROOT / "tests" / "data" / "parity"
    os.environ.setdefault("SEGEARTH_BACKEND_PYTHON", sys.executable)
    if "SEGEARTH_CLIP_WEIGHTS" not in os.environ:  # no real weights here: the tiny test ones
        os.environ.update(SEGEARTH_MODEL=str(parity / "tiny-clip.json"),
                          SEGEARTH_CLIP_WEIGHTS=str(parity / "tiny-clip.pt"),
                          SEGEARTH_UPSAMPLER_WEIGHTS=str(parity / "tiny-simfeatup.ckpt"), SEGEARTH_DEVICE="cpu")

    work = Path(tempfile.mkdtemp(prefix="segearth-screenshot-"))  # a throwaway QGIS profile and results folder
    # QGIS's names, and every QSettings in the throwaway folder: nothing is written to ~/.config.
    QCoreApplication.setOrganizationName("QGIS")
    QCoreApplication.setOrganizationDomain("qgis.org")
    QCoreApplication.setApplicationName("QGIS3")
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(work / "settings"))
    app = QgsApplication([], True, str(work / "profile"))
    app.initQgis()
    from segearth_qgis.gui.dock import SegEarthDock

    window = QMainWindow()
    window.resize(1366, 768)  # the smallest screen the panel is made for
    canvas = QgsMapCanvas()
    bar = QgsMessageBar()
    tree = QgsLayerTreeView()
    model = QgsLayerTreeModel(QgsProject.instance().layerTreeRoot(), window)  # parented: must outlive setModel
    model.setFlag(QgsLayerTreeModel.Flag.ShowLegendAsTree)
    tree.setModel(model)
    bridge = QgsLayerTreeMapCanvasBridge(QgsProject.instance().layerTreeRoot(), canvas)
    central = QWidget()
    column = QVBoxLayout(central)
    column.addWidget(bar, 0)
    splitter = QSplitter()
    splitter.addWidget(tree)
    splitter.addWidget(canvas)
    splitter.setSizes([300, 700])
    column.addWidget(splitter, 1)
    window.setCentralWidget(central)
    window.setWindowTitle("QGIS — SegEarth-OV")

    layer = QgsRasterLayer(str(sample), "oem_koeln_50")
    QgsProject.instance().addMapLayer(layer)
    canvas.setDestinationCrs(layer.crs())
    canvas.setExtent(layer.extent())
    dock = SegEarthDock(Iface(window, canvas, bar), window)
    window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
    window.show()
    dock.raster_box.set_layer(layer)
    if os.environ.get("SEGEARTH_COMPARE"):  # "Compare with…": Detect change
        later = QgsRasterLayer(os.environ["SEGEARTH_COMPARE"], "after")
        QgsProject.instance().addMapLayer(later)
        dock.raster_box.set_compare_layer(later)
    dock.classes_box.fill_presets()
    next(a for a in dock.classes_box.presets_menu.actions() if a.text() == "OpenEarthMap").trigger()
    dock.options_box.output_widget.setFilePath("")
    dock.options_box.folder_widget.setFilePath(str(work / "results"))
    task = dock.segment()
    deadline = time.monotonic() + 600
    while dock.task is not None and time.monotonic() < deadline:
        QCoreApplication.processEvents()
        time.sleep(0.02)
    if task is None or task.result is None:
        print(f"the job failed: {task.error if task else 'refused'}", file=sys.stderr)
        dock.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        return 1
    dock.refresh_status()
    for _ in range(200):
        QCoreApplication.processEvents()
        time.sleep(0.01)
    tree.expandAll()
    if os.environ.get("SEGEARTH_COMPARE"):  # the change over the before image, the line under the bar in view
        root = QgsProject.instance().layerTreeRoot()
        root.findLayer(later.id()).setItemVisibilityChecked(False)
        canvas.setExtent(layer.extent())
        dock.widget().ensureWidgetVisible(dock.run_box.progress_label)
    canvas.refreshAllLayers()
    canvas.waitWhileRendering()
    for _ in range(50):
        QCoreApplication.processEvents()
        time.sleep(0.01)
    out.parent.mkdir(parents=True, exist_ok=True)
    window.grab().save(str(out))
    print(f"saved {out}")
    dock.shutdown()
    del bridge
    shutil.rmtree(work, ignore_errors=True)
    sys.stdout.flush()
    os._exit(0)  # skip Qt's teardown order at exit: the picture is saved, the backend stopped


if __name__ == "__main__":
    raise SystemExit(main())
