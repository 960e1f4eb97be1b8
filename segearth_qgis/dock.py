"""The SegEarth-OV dock panel: classes, layer, area, resolution, options, run, backend status."""

from __future__ import annotations

import math
from typing import Callable, Optional

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsMapLayerProxyModel,
    QgsMessageLog,
    QgsRasterLayer,
    QgsRectangle,
    QgsTask,
    QgsUnitTypes,
    QgsVectorLayer,
)
from qgis.gui import (
    QgisInterface,
    QgsDoubleSpinBox,
    QgsFileWidget,
    QgsMapLayerComboBox,
    QgsMapToolExtent,
    QgsRasterBandComboBox,
    QgsSpinBox,
)
from qgis.PyQt import sip
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import (
    QAction,
    QCheckBox,
    QComboBox,
    QDockWidget,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QMenu,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from . import settings
from .aoi import AoiKind, AreaOfInterest, selected_polygons
from .backend_manager import shared_manager, status_line
from .core.classes import PRESETS
from .core.grid import estimate
from .errors import AoiError, BackendError, LayerError, OutputError
from .job_request import JobInputs, plan_job
from .job_setup import PreparedJob, plan_grid, prepare
from .layer_input import default_bands, native_grid
from .outputs import normalise_output
from .styling import add_result_layer
from .task import LOG_TAG, SegmentTask

METRES_PER_DEGREE = 111_320.0


class SegEarthDock(QDockWidget):
    """The panel. ``segment()`` starts a job; ``job_done`` fires when it ends (task passed along)."""

    job_done = pyqtSignal(object)

    def __init__(self, iface: QgisInterface, parent: Optional[QWidget] = None) -> None:
        super().__init__("SegEarth-OV", parent)
        self.setObjectName("SegEarthOVDock")
        self.iface = iface
        self.task: Optional[SegmentTask] = None
        self.drawn: Optional[AreaOfInterest] = None
        self.map_tool: Optional[QgsMapToolExtent] = None
        self.previous_tool = None
        self.backend = shared_manager()
        self.confirm: Callable[[str], bool] = self._ask
        self._helpers: list[QgsTask] = []
        self._build()
        self._restore()
        self.layer_changed(self.layer_combo.currentLayer())

    # ------------------------------------------------------------------ UI
    def _build(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)

        classes_box = QGroupBox("Classes (one per line, synonyms separated by commas)")
        classes_layout = QVBoxLayout(classes_box)
        self.classes_edit = QPlainTextEdit()
        self.classes_edit.setPlaceholderText("background\nbuilding, roof\nroad\ntree, forest\nwater")
        self.presets_button = QToolButton()
        self.presets_button.setText("Presets")
        self.presets_button.setPopupMode(QToolButton.InstantPopup)
        self.presets_menu = QMenu(self.presets_button)
        self.presets_menu.aboutToShow.connect(self._fill_presets)
        self.presets_button.setMenu(self.presets_menu)
        self.background_check = QCheckBox("First line is the background class")
        row = QHBoxLayout()
        row.addWidget(self.background_check)
        row.addStretch()
        row.addWidget(self.presets_button)
        classes_layout.addWidget(self.classes_edit)
        classes_layout.addLayout(row)
        layout.addWidget(classes_box)

        form = QFormLayout()
        self.layer_combo = QgsMapLayerComboBox()
        self.layer_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self.layer_combo.layerChanged.connect(self.layer_changed)
        form.addRow("Raster layer", self.layer_combo)
        bands = QHBoxLayout()
        self.band_combos = [QgsRasterBandComboBox() for _ in range(3)]
        for label, combo in zip("RGB", self.band_combos):
            bands.addWidget(QLabel(label))
            bands.addWidget(combo)
        form.addRow("Bands", bands)

        self.aoi_combo = QComboBox()
        for text, kind in (("Whole layer", AoiKind.LAYER), ("Current map view", AoiKind.MAP_VIEW),
                           ("Drawn rectangle", AoiKind.RECTANGLE), ("Selected features", AoiKind.SELECTED_FEATURES)):
            self.aoi_combo.addItem(text, kind.value)
        self.draw_button = QPushButton("Draw")
        self.draw_button.clicked.connect(self.start_drawing)
        aoi_row = QHBoxLayout()
        aoi_row.addWidget(self.aoi_combo, 1)
        aoi_row.addWidget(self.draw_button)
        form.addRow("Area of interest", aoi_row)
        self.polygon_combo = QgsMapLayerComboBox()
        self.polygon_combo.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        form.addRow("Polygon layer", self.polygon_combo)

        self.resolution_spin = QgsDoubleSpinBox()
        self.resolution_spin.setDecimals(6)
        self.resolution_spin.setRange(1e-6, 1e6)
        self.resolution_label = QLabel()
        resolution_row = QHBoxLayout()
        resolution_row.addWidget(self.resolution_spin, 1)
        resolution_row.addWidget(self.resolution_label)
        form.addRow("Resolution", resolution_row)
        self.estimate_label = QLabel()
        self.estimate_label.setWordWrap(True)
        form.addRow("", self.estimate_label)
        layout.addLayout(form)

        advanced = QGroupBox("Advanced")
        advanced_form = QFormLayout(advanced)
        self.threshold_spin = QgsDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.background_spin = QgsSpinBox()
        self.background_spin.setRange(0, 253)
        self.lambda_spin = QgsDoubleSpinBox()
        self.lambda_spin.setRange(-10.0, 10.0)
        self.lambda_spin.setSingleStep(0.1)
        self.probabilities_check = QCheckBox("Also write class probabilities")
        self.output_widget = QgsFileWidget()
        self.output_widget.setStorageMode(QgsFileWidget.SaveFile)
        self.output_widget.setFilter("GeoTIFF (*.tif *.tiff)")
        self.output_widget.lineEdit().setPlaceholderText("[temporary file]")
        advanced_form.addRow("Probability threshold", self.threshold_spin)
        advanced_form.addRow("Background index", self.background_spin)
        advanced_form.addRow("CLS-bias lambda", self.lambda_spin)
        advanced_form.addRow(self.probabilities_check)
        advanced_form.addRow("Output", self.output_widget)
        layout.addWidget(advanced)

        buttons = QHBoxLayout()
        self.segment_button = QPushButton("Segment")
        self.segment_button.clicked.connect(self.segment)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.segment_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        layout.addWidget(self.progress)

        backend_box = QGroupBox("Backend")
        backend_layout = QVBoxLayout(backend_box)
        self.status_label = QLabel(status_line({"status": "stopped"}, False))
        self.status_label.setWordWrap(True)
        backend_buttons = QHBoxLayout()
        self.start_button = QPushButton("Start")
        self.stop_button = QPushButton("Stop")
        self.restart_button = QPushButton("Restart")
        self.start_button.clicked.connect(lambda: self._backend_action("start"))
        self.stop_button.clicked.connect(lambda: self._backend_action("stop"))
        self.restart_button.clicked.connect(lambda: self._backend_action("restart"))
        for button in (self.start_button, self.stop_button, self.restart_button):
            backend_buttons.addWidget(button)
        backend_form = QFormLayout()
        self.url_edit = QLineEdit()
        self.url_edit.setPlaceholderText("empty: start a local backend (or $SEGEARTH_BACKEND_URL)")
        self.token_edit = QLineEdit()
        self.token_edit.setEchoMode(QLineEdit.Password)
        self.token_edit.setPlaceholderText("for a remote backend (or $SEGEARTH_BACKEND_TOKEN)")
        self.python_edit = QLineEdit()
        self.python_edit.setPlaceholderText("python with segearth-backend (or $SEGEARTH_BACKEND_PYTHON)")
        backend_form.addRow("URL", self.url_edit)
        backend_form.addRow("Token", self.token_edit)
        backend_form.addRow("Python", self.python_edit)
        for edit, key in ((self.url_edit, "backend_url"), (self.token_edit, "backend_token"),
                          (self.python_edit, "backend_python")):
            edit.editingFinished.connect(lambda e=edit, k=key: settings.save(k, e.text().strip()))
        backend_layout.addLayout(backend_form)
        backend_layout.addWidget(self.status_label)
        backend_layout.addLayout(backend_buttons)
        layout.addWidget(backend_box)
        layout.addStretch()
        self.setWidget(body)

        for signal in (self.resolution_spin.valueChanged, self.aoi_combo.currentIndexChanged):
            signal.connect(self.update_estimate)

    def _fill_presets(self) -> None:
        self.presets_menu.clear()
        for preset in PRESETS:
            action = self.presets_menu.addAction(preset.name)
            action.triggered.connect(lambda _=False, p=preset: self.apply_preset(
                "\n".join(p.classes), p.threshold, p.background_index))
        user = settings.user_presets()
        if user:
            self.presets_menu.addSeparator()
            for name, text in sorted(user.items()):
                action = self.presets_menu.addAction(name)
                action.triggered.connect(lambda _=False, t=text: self.classes_edit.setPlainText(t))
        self.presets_menu.addSeparator()
        save_action = QAction("Save current classes as preset…", self.presets_menu)
        save_action.triggered.connect(self._save_preset)
        self.presets_menu.addAction(save_action)

    def apply_preset(self, classes: str, threshold: float, background_index: int) -> None:
        self.classes_edit.setPlainText(classes)
        self.threshold_spin.setValue(threshold)
        self.background_spin.setValue(background_index)
        self.background_check.setChecked(background_index == 0)

    def _save_preset(self) -> None:
        name, ok = QInputDialog.getText(self, "Save preset", "Preset name:")
        if ok and name.strip():
            settings.save_user_preset(name.strip(), self.classes_edit.toPlainText())

    # ------------------------------------------------------------- state
    def _restore(self) -> None:
        self.classes_edit.setPlainText(settings.load("classes"))
        self.background_check.setChecked(settings.load("background_first"))
        self.threshold_spin.setValue(settings.load("threshold"))
        self.background_spin.setValue(settings.load("background_index"))
        self.lambda_spin.setValue(settings.load("bias_lambda"))
        self.probabilities_check.setChecked(settings.load("probabilities"))
        self.url_edit.setText(settings.load("backend_url"))
        self.token_edit.setText(settings.load("backend_token"))
        self.python_edit.setText(settings.load("backend_python"))

    def save_state(self) -> None:
        settings.save("classes", self.classes_edit.toPlainText())
        settings.save("background_first", self.background_check.isChecked())
        settings.save("threshold", self.threshold_spin.value())
        settings.save("background_index", self.background_spin.value())
        settings.save("bias_lambda", self.lambda_spin.value())
        settings.save("probabilities", self.probabilities_check.isChecked())
        settings.save("backend_url", self.url_edit.text().strip())
        settings.save("backend_token", self.token_edit.text().strip())
        settings.save("backend_python", self.python_edit.text().strip())

    # ------------------------------------------------------------ layer
    def current_layer(self) -> Optional[QgsRasterLayer]:
        layer = self.layer_combo.currentLayer()
        return layer if isinstance(layer, QgsRasterLayer) and layer.isValid() else None

    def layer_changed(self, layer: object) -> None:
        raster = layer if isinstance(layer, QgsRasterLayer) else None
        for combo, band in zip(self.band_combos, default_bands(raster) if raster else (1, 1, 1)):
            combo.setLayer(raster)
            combo.setBand(band)
        if raster is not None:
            grid = native_grid(raster)
            geographic = raster.crs().isGeographic()
            native = grid.pixel_width * (self._metres_per_unit(raster) if geographic else 1.0)
            self.resolution_spin.setClearValue(native)
            self.resolution_spin.setValue(native)
            self.resolution_label.setText("m (converted)" if geographic else _unit_label(raster.crs()))
        self.update_estimate()

    def _metres_per_unit(self, layer: QgsRasterLayer) -> float:
        """Metres per degree of longitude at the layer's centre latitude."""
        latitude = layer.extent().center().y()
        return METRES_PER_DEGREE * max(math.cos(math.radians(latitude)), 1e-6)

    def resolution_in_map_units(self, layer: QgsRasterLayer) -> float:
        value = self.resolution_spin.value()
        return value / self._metres_per_unit(layer) if layer.crs().isGeographic() else value

    # -------------------------------------------------------------- AOI
    def aoi(self) -> AreaOfInterest:
        kind = AoiKind(self.aoi_combo.currentData())
        if kind == AoiKind.MAP_VIEW:
            canvas = self.iface.mapCanvas()
            return AreaOfInterest(kind, QgsRectangle(canvas.extent()), canvas.mapSettings().destinationCrs())
        if kind == AoiKind.RECTANGLE:
            if self.drawn is None:
                raise AoiError("No rectangle is drawn: click 'Draw' and drag a rectangle on the map.")
            return self.drawn
        if kind == AoiKind.SELECTED_FEATURES:
            layer = self.polygon_combo.currentLayer()
            return selected_polygons(layer if isinstance(layer, QgsVectorLayer) else None)
        return AreaOfInterest(AoiKind.LAYER)

    def set_drawn_rectangle(self, rectangle: QgsRectangle, crs: QgsCoordinateReferenceSystem) -> None:
        """Use ``rectangle`` (in ``crs``) as the AOI; called by the map tool."""
        self.drawn = AreaOfInterest(AoiKind.RECTANGLE, QgsRectangle(rectangle), QgsCoordinateReferenceSystem(crs))
        self.aoi_combo.setCurrentIndex(self.aoi_combo.findData(AoiKind.RECTANGLE.value))
        self.update_estimate()

    def start_drawing(self) -> None:
        canvas = self.iface.mapCanvas()
        if self.map_tool is None:
            self.map_tool = QgsMapToolExtent(canvas)
            self.map_tool.extentChanged.connect(self._extent_drawn)
        self.previous_tool = canvas.mapTool()
        canvas.setMapTool(self.map_tool)

    def _extent_drawn(self, rectangle: QgsRectangle) -> None:
        canvas = self.iface.mapCanvas()
        if not rectangle.isEmpty():
            self.set_drawn_rectangle(rectangle, canvas.mapSettings().destinationCrs())
        self.stop_drawing()

    def stop_drawing(self) -> None:
        canvas = self.iface.mapCanvas()
        if self.map_tool is not None and canvas.mapTool() is self.map_tool:
            self.map_tool.clearRubberBand()
            canvas.unsetMapTool(self.map_tool)
            if self.previous_tool is not None:
                canvas.setMapTool(self.previous_tool)
        self.previous_tool = None

    # --------------------------------------------------------- planning
    def plan(self) -> PreparedJob:
        """Validate the panel's layer, bands, area and resolution; raises ValueError with a message."""
        layer = self.current_layer()
        if layer is None:
            raise LayerError("Choose a raster layer to segment.")
        bands = [combo.currentBand() for combo in self.band_combos]
        return prepare(layer, bands, self.aoi(), self.resolution_in_map_units(layer))

    def update_estimate(self) -> None:
        try:
            layer = self.current_layer()
            if layer is None:
                raise LayerError("Choose a raster layer to segment.")
            grid, _ = plan_grid(layer, self.aoi(), self.resolution_in_map_units(layer))
        except ValueError as error:
            self.estimate_label.setText(str(error))
            return
        speed = self.backend.last_health.get("seconds_per_megapixel")
        numbers = estimate(grid, settings.load("block_size"), speed)
        text = f"{grid.width} x {grid.height} px ({numbers['pixels'] / 1e6:.1f} MP), {int(numbers['blocks'])} block(s)"
        if not math.isnan(numbers["seconds"]):
            text += f", about {numbers['seconds']:.0f} s"
        self.estimate_label.setText(text)

    # --------------------------------------------------------------- run
    def segment(self) -> Optional[SegmentTask]:
        """Start a job from the panel's state; errors go to the message bar. Returns the task."""
        if self.task is not None:
            self.report("A segmentation is already running.", Qgis.Warning)
            return None
        self.save_state()
        try:
            layer = self.current_layer()
            if layer is None:
                raise LayerError("Choose a raster layer to segment.")
            output = self.output_widget.filePath().strip()
            overwrite = False
            if output and normalise_output(output).exists():
                overwrite = self.confirm(f"{normalise_output(output)} exists. Overwrite it?")
            inputs = JobInputs(
                layer, self.classes_edit.toPlainText(), tuple(c.currentBand() for c in self.band_combos), self.aoi(),
                self.resolution_in_map_units(layer), threshold=self.threshold_spin.value(),
                background_index=self.background_spin.value() if self.background_check.isChecked() else None,
                bias_lambda=self.lambda_spin.value(), output=output, output_folder=settings.output_folder(),
                probabilities=self.probabilities_check.isChecked(), overwrite=overwrite,
                block_size=settings.load("block_size"))
            planned = plan_job(inputs)
            job = planned.job
            megapixels = job.grid.width * job.grid.height / 1e6
            if megapixels > settings.load("large_job_megapixels") and not self.confirm(
                    f"The area is {megapixels:.0f} megapixels at this resolution. Segment it anyway?"):
                return None
        except (ValueError, OutputError) as error:
            self.report(str(error), Qgis.Warning)
            return None

        self.task = SegmentTask(f"SegEarth-OV: {job.layer_name}", self.backend, planned, self._finished)
        self.task.progressChanged.connect(lambda value: self.progress.setValue(int(value)))
        self.layer_name = job.layer_name
        self.segment_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _finished(self, task: SegmentTask) -> None:
        self.task = None
        self.segment_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if task.result is not None:
            result = task.result
            try:
                add_result_layer(str(result.output_path), f"{self.layer_name} — SegEarth-OV", result.names,
                                 result.colours)
            except OSError as error:
                self.report(str(error), Qgis.Critical)
            else:
                self.progress.setValue(100)
                self.report(f"Segmented {result.pixels / 1e6:.2f} MP in {result.seconds:.1f} s: "
                            f"{result.output_path}", Qgis.Success)
        elif task.was_cancelled:
            self.progress.setValue(0)
            self.report("Segmentation cancelled; no output was kept.", Qgis.Info)
        else:
            self.progress.setValue(0)
            self.report(f"Segmentation failed: {task.error}", Qgis.Critical)
        self.refresh_status()
        self.job_done.emit(task)

    # ----------------------------------------------------------- backend
    def refresh_status(self) -> None:
        """Ask the backend for its health on a worker thread; update the status line."""
        def work(_task: QgsTask) -> str:
            try:
                return status_line(self.backend.health(), self.backend.is_remote())
            except BackendError as error:
                return status_line({}, self.backend.is_remote(), error.message)

        self._run_helper(QgsTask.fromFunction("SegEarth-OV backend status", work, on_finished=self._status_ready))

    def _status_ready(self, exception: Optional[Exception], text: Optional[str] = None) -> None:
        if text:
            self.status_label.setText(text)
            self.update_estimate()

    def _backend_action(self, action: str) -> None:
        def work(_task: QgsTask) -> str:
            try:
                if action == "stop":
                    self.backend.stop()
                else:
                    (self.backend.restart if action == "restart" else self.backend.client)()
                return status_line(self.backend.health(), self.backend.is_remote())
            except BackendError as error:
                return status_line({}, self.backend.is_remote(), error.message)

        self.status_label.setText(f"Backend: {action}ing…")
        self._run_helper(QgsTask.fromFunction(f"SegEarth-OV backend {action}", work, on_finished=self._status_ready))

    def _run_helper(self, task: QgsTask) -> None:
        """Run a small background task, keeping it referenced until it ends (and waited for on unload)."""
        self._helpers = [t for t in self._helpers if not sip.isdeleted(t) and t.status() not in
                         (QgsTask.Complete, QgsTask.Terminated)]
        self._helpers.append(task)
        QgsApplication.taskManager().addTask(task)

    # ----------------------------------------------------------- helpers
    def report(self, text: str, level: int) -> None:
        """Message bar and log panel, never a traceback dialog."""
        QgsMessageLog.logMessage(text, LOG_TAG, level)
        self.iface.messageBar().pushMessage("SegEarth-OV", text, level=level, duration=10)

    def _ask(self, question: str) -> bool:
        return QMessageBox.question(self, "SegEarth-OV", question) == QMessageBox.Yes

    def shutdown(self) -> None:
        """Cancel a running job, stop the local backend, release the map tool (plugin unload)."""
        self.save_state()
        if self.task is not None:
            self.task.cancel()
            self.task.waitForFinished(30000)
        for helper in self._helpers:
            if not sip.isdeleted(helper):
                helper.waitForFinished(30000)
        self._helpers = []
        self.stop_drawing()
        self.backend.stop()


def _unit_label(crs: QgsCoordinateReferenceSystem) -> str:
    return QgsUnitTypes.toAbbreviatedString(crs.mapUnits()) or "map units"
