"""The SegEarth-OV dock panel: lays out the small widgets of ``widgets/`` and turns them into a job.

The parts bind their own settings; the dock builds one :class:`JobInputs`
from them, hands it to :func:`plan_job` (every check lives there) and the
:class:`JobRunner` runs it; with a "Compare with…" layer it detects change instead
(:mod:`.change_controls`). The panel scrolls, so it fits any screen.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Optional

from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsRasterLayer,
    QgsRectangle,
    QgsTask,
)
from qgis.gui import QgisInterface
from qgis.PyQt import sip
from qgis.PyQt.QtCore import Qt, QTimer, pyqtSignal
from qgis.PyQt.QtWidgets import QDockWidget, QFrame, QMessageBox, QScrollArea, QVBoxLayout, QWidget

from .. import settings
from ..client.backend_manager import READY, REMOTE, shared_manager
from ..core.grid import estimate
from ..core.speed import cpu_load, device_key, estimate_range, format_duration, format_estimate, records_from_json
from ..errors import LayerError, OutputError
from ..job.aoi import AoiKind
from ..job.outputs import normalise_output
from ..job.request import JobInputs, JobPlan, plan_job, probabilities_beside, refuse_inputs_as_outputs
from ..job.source_plan import SourcePlan, plan_grid, plan_source
from .backend_controls import BackendControls
from .change_controls import ChangeControls, change_summary_text
from .live_update import LIVE_DELAY_MS, LastResult, LiveResults, identities, result_files
from .message_bar import report
from .runner import JobRunner, shares_text
from .setup_dialog import SetupDialog
from .task import JobTask, SegmentTask
from .user_presets import UserPreset
from .widgets.area_box import AreaBox
from .widgets.backend_box import BackendBox
from .widgets.classes_box import ClassesBox
from .widgets.options_box import OptionsBox
from .widgets.raster_box import RasterBox
from .widgets.run_box import RunBox

STATUS_INTERVAL_MS = 1000

ESTIMATE_DELAY_MS = 250


class SegEarthDock(ChangeControls, BackendControls, QDockWidget):
    """The panel. ``segment()`` starts a job; ``job_done`` fires when it ends (the task passed along)."""

    job_done = pyqtSignal(object)

    def __init__(self, iface: QgisInterface, parent: Optional[QWidget] = None) -> None:
        super().__init__("SegEarth-OV", parent)
        self.setObjectName("SegEarthOVDock")
        self.iface = iface
        self.backend = shared_manager()
        self.confirm: Callable[[str], bool] = self._ask
        self._helpers: list[QgsTask] = []
        self.setup_dialog: Optional[SetupDialog] = None
        self.live = LiveResults()
        self._live_pending = False
        self._running: Optional[tuple[JobInputs, bool]] = None  # the running job's inputs, and whether it is live
        self._asking = False  # a question (overwrite? huge job? weights?) is open: updates wait for it
        self._closing = False
        self.classes_box = ClassesBox(lambda: (self.options_box.threshold_spin.value(),
                                               self.options_box.lambda_spin.value()))
        self.raster_box = RasterBox()
        self.area_box = AreaBox(iface)
        self.options_box = OptionsBox()
        self.run_box = RunBox()
        self.backend_box = BackendBox()
        self._layout()
        self.runner = JobRunner(self.backend, self.report)
        self._connect()
        self._restore()
        self.layer_changed()
        self.status_timer = QTimer(self)
        self.status_timer.timeout.connect(self.show_backend_status)
        self.status_timer.start(STATUS_INTERVAL_MS)
        self.show_backend_status()

    # ------------------------------------------------------------ layout
    def _layout(self) -> None:
        body = QWidget()
        column = QVBoxLayout(body)
        for part in (self.classes_box, self.raster_box, self.area_box, self.options_box, self.run_box,
                     self.backend_box):
            column.addWidget(part)
        column.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(body)
        # As wide as the parts need (no horizontal scrolling), however narrow QGIS makes the dock at first.
        scroll.setMinimumWidth(body.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width() + 4)
        self.setWidget(scroll)

    def _connect(self) -> None:
        self.estimate_timer = QTimer(self)
        self.estimate_timer.setSingleShot(True)
        self.estimate_timer.setInterval(ESTIMATE_DELAY_MS)
        self.estimate_timer.timeout.connect(self.update_estimate)
        self.raster_box.changed.connect(self.layer_changed)
        self.area_box.changed.connect(self.estimate_timer.start)
        self.iface.mapCanvas().extentsChanged.connect(self._map_moved)
        self.classes_box.preset_applied.connect(self._preset_applied)
        self.classes_box.preset_left.connect(self.options_box.leave_preset)
        self.run_box.segment_button.clicked.connect(self.segment)
        self.run_box.cancel_button.clicked.connect(self.cancel)
        self.run_box.shortcut.activated.connect(self._shortcut)
        self.live_timer = QTimer(self)
        self.live_timer.setSingleShot(True)
        self.live_timer.setInterval(LIVE_DELAY_MS)
        self.live_timer.timeout.connect(self.update_live)
        self.classes_box.changed.connect(self._query_edited)
        self.classes_box.background.currentIndexChanged.connect(self._query_edited)
        self.options_box.threshold_spin.valueChanged.connect(self._query_edited)
        self.options_box.lambda_spin.valueChanged.connect(self._query_edited)
        self.run_box.live_check.toggled.connect(self._query_edited)
        self.run_box.keep_button.clicked.connect(self.keep_result)
        self.runner.progress.connect(self.run_box.show_progress)
        self.runner.finished.connect(self._finished)
        box = self.backend_box
        box.start_button.clicked.connect(lambda: self._backend_action("start"))
        box.stop_button.clicked.connect(lambda: self._backend_action("stop"))
        box.restart_button.clicked.connect(lambda: self._backend_action("restart"))
        box.weights_button.clicked.connect(self.open_weights)
        box.setup_button.clicked.connect(self.open_setup)
        box.details_button.clicked.connect(self.show_backend_details)

    def _restore(self) -> None:
        self.classes_box.restore()
        self.options_box.restore()
        self.run_box.restore()
        self.backend_box.restore()

    def save_state(self) -> None:
        self.classes_box.save()
        self.options_box.save()
        self.run_box.save()
        self.backend_box.save()

    # ---------------------------------------------------- layer and area
    def current_layer(self) -> Optional[QgsRasterLayer]:
        return self.raster_box.layer()

    def layer_changed(self) -> None:
        self.area_box.set_layer(self.current_layer())
        self.run_box.set_change_mode(self.comparing())
        self.estimate_timer.start()

    def set_drawn_rectangle(self, rectangle: QgsRectangle, crs: QgsCoordinateReferenceSystem) -> None:
        self.area_box.set_drawn_rectangle(rectangle, crs)

    def _map_moved(self) -> None:
        if self.area_box.kind() == AoiKind.MAP_VIEW:
            self.estimate_timer.start()

    def _preset_applied(self, preset: UserPreset) -> None:
        self.options_box.apply_preset(preset)

    # ----------------------------------------------------------- planning
    def job_inputs(self, overwrite: bool = False) -> JobInputs:
        """What the panel asks for, as one :class:`JobInputs` (raises AoiError when no area is usable)."""
        layer = self.current_layer()
        options = self.options_box
        mask = self.area_box.mask_layer_source()
        return JobInputs(
            layer, self.classes_box.text(), self.raster_box.bands(), self.area_box.aoi(),
            self.area_box.resolution_in_map_units(layer) if layer is not None else None,
            threshold=options.threshold_spin.value(), background_index=self.classes_box.background_index(),
            bias_lambda=options.lambda_spin.value(), output=options.output_widget.filePath().strip(),
            output_folder=settings.output_folder(), probabilities=options.probabilities_check.isChecked(),
            overwrite=overwrite, block_size=settings.BLOCK_SIZE.load(),
            other_inputs=(mask,) if mask else (), sar=self.raster_box.sar_settings())

    def plan(self) -> SourcePlan:
        """Validate the layer, bands, area and resolution (no outputs); raises ValueError with a message."""
        layer = self.current_layer()
        if layer is None:
            raise LayerError("Choose a raster layer to segment.")
        resolution = self.area_box.resolution_in_map_units(layer)
        return plan_source(layer, self.raster_box.bands(), self.area_box.aoi(), resolution,
                           sar=self.raster_box.sar_settings())

    def update_estimate(self) -> None:
        """Pixels, blocks and time for the current choice (follows the map, the selection, the resolution)."""
        label = self.area_box.estimate_label
        try:
            layer = self.current_layer()
            if layer is None:
                raise LayerError("Choose a raster layer to segment.")
            grid, _ = plan_grid(layer, self.area_box.aoi(), self.area_box.resolution_in_map_units(layer))
        except ValueError as error:
            label.setText(str(error))
            return
        numbers = estimate(grid, settings.BLOCK_SIZE.load(), None)
        megapixels = numbers["pixels"] / 1e6
        status = self.backend.status()
        health = status.health or self.backend.last_health
        key = device_key(health)
        record = records_from_json(settings.load_json(settings.SPEED_HISTORY)).get(key)
        running = status.state in (READY, REMOTE)
        dates = 2 if self.comparing() else 1  # Detect change segments both dates
        low, high = estimate_range(megapixels * dates, key, record, running, cpu_load())
        text = (f"{grid.width} x {grid.height} px ({megapixels:.2f} MP{' x 2 dates' if dates == 2 else ''}), "
                f"{int(numbers['blocks'])} block(s), {format_estimate(low, high)}")
        if not running:
            text += " (with the backend's start)"
        if record is None:
            text += f" — a first guess for {key.split('/')[0].upper()}; it learns from each run"
        label.setText(text)

    # ---------------------------------------------------------------- run
    @property
    def task(self) -> Optional[SegmentTask]:
        return self.runner.task

    def segment(self) -> Optional[JobTask]:
        """Start a job (Segment, or Detect change with "Compare with…") from the panel's state; problems go to
        the message bar. Returns the task."""
        if self.runner.running():
            self.report("A segmentation is already running.", Qgis.MessageLevel.Warning)
            return None
        if self.comparing():  # "Compare with…" is set: Detect change
            return self.detect_change()
        self.live_timer.stop()  # this run uses the panel as it is now
        self.save_state()
        self._asking = True  # while a question is open, an update must not start a job under it
        ready: Optional[tuple[JobPlan, JobInputs]] = None
        try:
            output = self.options_box.output_widget.filePath().strip()
            overwrite = False
            if output:
                targets = [normalise_output(output)]
                if self.options_box.probabilities_check.isChecked():
                    targets.append(normalise_output(probabilities_beside(output)))
                existing = [str(path) for path in targets if path.exists()]
                if existing:  # what no answer can change is refused before the question
                    refuse_inputs_as_outputs(self.job_inputs(overwrite=True))
                    overwrite = self.confirm(f"{' and '.join(existing)} exist{'s' if len(existing) == 1 else ''}. "
                                             "Overwrite?")
            inputs = self.job_inputs(overwrite)
            planned = plan_job(inputs)
            megapixels = planned.source.grid.width * planned.source.grid.height / 1e6
            if megapixels <= settings.LARGE_JOB_MEGAPIXELS.load() or self.confirm(
                    f"The area is {megapixels:.0f} megapixels at this resolution. Segment it anyway?"):
                ready = planned, inputs
        except (ValueError, OutputError) as error:
            self.report(str(error), Qgis.MessageLevel.Warning)
            self.run_box.set_text(f"Not started: {error}")
        finally:
            self._asking = False
        if ready is None:  # refused: an update that waited for the question runs now
            self._resume_update()
            return None
        return self._start(*ready)  # an update that waited runs after this job

    def _start(self, planned: JobPlan, inputs: JobInputs, live: bool = False) -> SegmentTask:
        self.live_timer.stop()
        self.run_box.set_running(True)
        self.backend_box.set_job_running(True)
        self._running = (inputs, live)
        preset = self.classes_box.preset.name if self.classes_box.preset is not None else None
        return self.runner.start(planned, inputs.aoi.kind, preset, quiet=live)

    # ---------------------------------------------------- update while typing
    def _query_edited(self, *_args: Any) -> None:
        """The classes, background, threshold or lambda changed: re-segment the last area once they settle."""
        if self.run_box.live_check.isChecked() and self.live.can_update():
            self.live_timer.start()

    def update_live(self) -> Optional[SegmentTask]:
        """Re-segment the last result's area with the panel's classes and options (the backend reuses the image
        work). Waits for a running job; a class list that is not usable yet (half typed) is shown, not run."""
        last = self.live.last
        if last is None or not self.run_box.live_check.isChecked():
            return None
        if self.runner.running() or self._asking:
            self._live_pending = True
            return None
        if last.inputs.layer is None or sip.isdeleted(last.inputs.layer):
            self.run_box.set_text("Not updated: the layer of the last result was removed; press Segment.")
            return None
        options = self.options_box
        inputs = dataclasses.replace(
            last.inputs, classes=self.classes_box.text(), background_index=self.classes_box.background_index(),
            threshold=options.threshold_spin.value(), bias_lambda=options.lambda_spin.value(), output="",
            output_folder=settings.output_folder(), probabilities=options.probabilities_check.isChecked(),
            overwrite=False)
        try:
            planned = plan_job(inputs)
        except (ValueError, OutputError) as error:
            self.run_box.set_text(f"Not updated: {error}")
            return None
        self.save_state()
        return self._start(planned, inputs, live=True)

    def _resume_update(self) -> None:
        """An update that waited (for a job or a question) runs now, a moment later."""
        if self._live_pending and not self._closing and not self.runner.running():
            self._live_pending = False
            self.live_timer.start()

    def keep_result(self) -> None:
        """Pin the current result: the next update adds its own layer."""
        self.live.pin()
        self.run_box.keep_button.setEnabled(False)
        self.run_box.set_text("Result kept: the next update adds a new layer.")

    def _shortcut(self) -> None:
        if not self.runner.running():
            self.segment()

    def cancel(self) -> None:
        self.runner.cancel()

    def _finished(self, task: SegmentTask) -> None:
        if self._closing:
            return
        self.run_box.set_running(False)
        self.backend_box.set_job_running(False)
        running, self._running = self._running, None
        if task.result is not None:
            seconds = format_duration(task.result.seconds + task.start_seconds)
            text = f"done in {seconds}{change_summary_text(task)}"
            if running is not None and self.runner.result_layer_ids:
                inputs, live = running
                owned = identities(result_files(task.result)) if live else {}
                replaced = self.live.replace_with(LastResult(inputs, list(self.runner.result_layer_ids), owned), live)
                self.run_box.keep_button.setEnabled(True)
                if live:
                    shares = shares_text(task.result)
                    text = f"updated in {seconds}" + (f", {replaced}" if replaced else "") + \
                        (f" — {shares}" if shares else "")
            self.run_box.show_progress(100, text)
        else:
            self.run_box.show_progress(0, "cancelled" if task.was_cancelled else "failed — see the message above")
        self.show_backend_status()
        self.estimate_timer.start()
        if task.result is not None:
            self._resume_update()
        else:  # after a cancel or a failure, the next edit starts updates again (not the one that waited)
            self._live_pending = False
        self.job_done.emit(task)

    # ------------------------------------------------------------- helpers
    def report(self, text: str, level: Any) -> None:
        """Message bar and log panel, never a traceback dialog (see :func:`.message_bar.report`)."""
        report(self.iface, text, level)

    def _ask(self, question: str) -> bool:
        return QMessageBox.question(self, "SegEarth-OV", question) == QMessageBox.StandardButton.Yes

    def shutdown(self) -> None:
        """Cancel a running job, stop the local backend, give the map back (plugin unload)."""
        self._closing = True  # a job ending now re-arms nothing
        self.status_timer.stop()
        self.estimate_timer.stop()
        self.live_timer.stop()
        self.save_state()
        task = self.runner.task
        if task is not None:
            task.cancel()
            task.waitForFinished(30000)
            if self.runner.task is not None:  # still running: its end must not reach a dock that is gone
                with contextlib.suppress(TypeError, RuntimeError):
                    self.runner.finished.disconnect(self._finished)
        self.backend.closing = True  # a backend still starting gives up at once
        if self.setup_dialog is not None and not sip.isdeleted(self.setup_dialog) and self.setup_dialog.task:
            self.setup_dialog.cancel()
            self.setup_dialog.task.waitForFinished(30000)
        for helper in self._helpers:
            if not sip.isdeleted(helper):
                helper.cancel()
                helper.waitForFinished(30000)
        self._helpers = []
        with contextlib.suppress(TypeError, RuntimeError):  # already disconnected
            self.iface.mapCanvas().extentsChanged.disconnect(self._map_moved)
        self.area_box.cleanup()
        self.backend.stop()
        self.backend.closing = False
        self._closing = False

