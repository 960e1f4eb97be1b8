"""Runs the dock's jobs: one task at a time, progress in words, one clear outcome, results on the map."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Callable, Optional

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsRasterLayer
from qgis.PyQt.QtCore import QObject, pyqtSignal

from .. import settings
from ..client.backend_manager import BackendManager
from ..core.classes import class_name
from ..core.report import largest_shares, shares_summary, shares_warning
from ..core.speed import SpeedRecord, device_key, format_duration, records_from_json, records_to_json
from ..job.aoi import AoiKind
from ..job.change_request import ChangePlan
from ..job.engine import JobResult
from ..job.request import JobPlan
from ..map.change_style import add_change_layer
from ..map.styling import add_result_layer
from .task import LOG_TAG, ChangeTask, JobTask, SegmentTask

AOI_WORDS = {AoiKind.LAYER: "whole layer", AoiKind.MAP_VIEW: "map view", AoiKind.RECTANGLE: "rectangle",
             AoiKind.SELECTED_FEATURES: "polygons"}

Report = Callable[[str, Any], None]


def result_name(layer_name: str, classes: tuple[str, ...], preset: Optional[str], aoi: AoiKind,
                when: Optional[datetime] = None) -> str:
    """A layer name that tells runs apart: ``<layer> — <preset or first classes> — <area>, <time>``."""
    if preset:
        what = preset
    else:
        names = [class_name(line).split(",")[0] for line in classes]
        what = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
    stamp = (when or datetime.now()).strftime("%H:%M:%S")
    return f"{layer_name} — {what} — {AOI_WORDS.get(aoi, aoi.value)}, {stamp}"


def shares_text(result: JobResult) -> str:
    """Each class's share of the valid pixels, largest first ("water 60%, road 40%"); '' when none is valid."""
    return shares_summary(result.class_pixels, result.names)


def outcome_text(result: JobResult, start_seconds: float, threshold: float,
                 background_index: Optional[int]) -> tuple[str, Any]:
    """The one message a finished job leaves: size, time (start-up included), class shares, or the warning
    of :func:`~segearth_qgis.core.report.shares_warning` (the one Processing gives too)."""
    total = result.seconds + start_seconds
    timing = f"{result.pixels / 1e6:.2f} MP in {format_duration(total)}"
    if start_seconds > 0.5:
        timing += f" (of which {format_duration(start_seconds)} starting the backend)"
    warning = shares_warning(result.class_pixels, result.names, background_index, threshold)
    if warning is not None:
        shares = largest_shares(result.class_pixels, result.names)
        if not shares:
            return f"Segmented {timing}. {warning}", Qgis.MessageLevel.Warning
        return f"Segmented {timing}: the whole area is '{shares[0][0]}'. {warning}", Qgis.MessageLevel.Warning
    message = f"Segmented {timing}: {shares_text(result)}"
    if result.probabilities_path is not None:
        message += f". Probabilities: {result.probabilities_path.name}"
    return message, Qgis.MessageLevel.Success


class JobRunner(QObject):
    """Owns the running task; emits ``progress(percent, text)`` and ``finished(task)``.

    The dock shows progress and asks for cancel; the runner adds the result
    layers, reports the one outcome, and keeps the measured speed per device
    for the next estimate.
    """

    progress = pyqtSignal(float, str)
    finished = pyqtSignal(object)

    def __init__(self, manager: BackendManager, report: Report) -> None:
        super().__init__()
        self.manager, self.report = manager, report
        self.task: Optional[JobTask] = None
        self.started_at = 0.0
        self.context: dict[str, Any] = {}
        #: The layers the last successful job added (the result, then its probabilities).
        self.result_layer_ids: list[str] = []
        self.quiet = False

    def running(self) -> bool:
        return self.task is not None

    def start(self, planned: JobPlan, aoi: AoiKind, preset: Optional[str] = None,
              quiet: bool = False) -> SegmentTask:
        """Run ``planned`` (one job at a time: raises RuntimeError while one runs). ``quiet`` (updates while
        typing): a successful outcome goes to the log panel and the progress line, not the message bar;
        warnings and failures are reported as always."""
        task = SegmentTask(f"SegEarth-OV: {planned.source.layer_name}", self.manager, planned, self._done)
        self._launch(task, planned.source.layer_name, planned.params, aoi, preset, quiet)
        return task

    def start_change(self, planned: ChangePlan, aoi: AoiKind, preset: Optional[str] = None) -> ChangeTask:
        """Run the change job ``planned`` (the dock's "Compare with…"); as :meth:`start`."""
        name = f"{planned.source.before.layer_name} → {planned.source.after_name}"
        task = ChangeTask(f"SegEarth-OV: {name}", self.manager, planned, self._done)
        self._launch(task, name, planned.params, aoi, preset, False)
        return task

    def _launch(self, task: JobTask, name: str, params: Any, aoi: AoiKind, preset: Optional[str],
                quiet: bool) -> None:
        if self.task is not None:
            raise RuntimeError("a job is already running")
        self.quiet, self.result_layer_ids = quiet, []
        self.context = {"layer": name, "classes": params.classes, "aoi": aoi, "preset": preset,
                        "threshold": params.threshold, "background": params.background_index, "blocks": 0}
        self.task = task
        task.progressChanged.connect(self._progress)
        self.started_at = time.monotonic()
        self.progress.emit(0.0, "Starting…")
        QgsApplication.taskManager().addTask(task)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.progress.emit(float(self.task.progress()), "Cancelling…")

    def _progress(self, value: float) -> None:
        elapsed = time.monotonic() - self.started_at
        blocks = self.task.blocks if self.task is not None else 0
        if value <= 0:
            return
        text = f"{value:.0f} %"
        if blocks:
            done = min(blocks, int(value / 100.0 * blocks + 1e-6))
            text = f"block {min(done + 1, blocks) if value < 100 else blocks} of {blocks}"
        text += f" · {format_duration(elapsed)} elapsed"
        if 0 < value < 100:
            text += f" · about {format_duration(elapsed / value * (100 - value))} left"
        self.progress.emit(value, text)

    def _done(self, task: JobTask) -> None:
        self.task = None
        context = self.context
        what = "Change detection" if isinstance(task, ChangeTask) else "Segmentation"
        if isinstance(task, ChangeTask) and task.result is not None:
            self._show_change(task, context)
        elif isinstance(task, SegmentTask) and task.result is not None:
            self._show(task, context)
        elif task.was_cancelled:
            self._say(f"{what} cancelled; nothing was written.", Qgis.MessageLevel.Info)
        else:
            self.report(f"{what} failed: {task.error}", Qgis.MessageLevel.Critical)
        self.finished.emit(task)

    def _show_change(self, task: ChangeTask, context: dict[str, Any]) -> None:
        """The change raster on the map, styled, and the summary line in the message bar."""
        result = task.result
        if result is None:
            return
        try:
            name = result_name(context["layer"], context["classes"], context["preset"], context["aoi"])
            layer = add_change_layer(str(result.change_path), f"{name} — change", result.legend)
        except OSError as error:
            self.report(str(error), Qgis.MessageLevel.Critical)
            return
        self.result_layer_ids = [layer.id()]
        for warning in result.warnings:
            self.report(warning, Qgis.MessageLevel.Info)
        seconds = format_duration(result.seconds + task.start_seconds)
        self._say(f"Compared {result.pixels / 1e6:.2f} MP of two dates in {seconds}: {result.summary}",
                  Qgis.MessageLevel.Success)

    def _show(self, task: SegmentTask, context: dict[str, Any]) -> None:
        result = task.result
        if result is None:
            return
        try:
            name = result_name(context["layer"], context["classes"], context["preset"], context["aoi"])
            layer = add_result_layer(str(result.output_path), name, result.names, result.colours)
            self.result_layer_ids = [layer.id()]
            if result.probabilities_path is not None:
                probabilities = QgsRasterLayer(str(result.probabilities_path), f"{name} — probabilities")
                if probabilities.isValid():
                    add_result_layer_hidden(probabilities, layer)
                    self.result_layer_ids.append(probabilities.id())
        except OSError as error:
            self.report(str(error), Qgis.MessageLevel.Critical)
            return
        message, level = outcome_text(result, task.start_seconds, context["threshold"], context["background"])
        for warning in result.warnings:  # a restored backup, a style not written: always in the bar
            self.report(warning, Qgis.MessageLevel.Info)
        self._say(message, level)
        self.remember_speed(task)

    def _say(self, message: str, level: Any) -> None:
        """The outcome: in the message bar, or (quiet: a success, a cancel) only in the log panel."""
        if self.quiet and level in (Qgis.MessageLevel.Success, Qgis.MessageLevel.Info):
            QgsMessageLog.logMessage(message, LOG_TAG, level)
        else:
            self.report(message, level)

    def remember_speed(self, task: SegmentTask) -> None:
        """Add this job's seconds per megapixel to the running total of its device and model."""
        result = task.result
        if result is None or not task.health:
            return
        records = records_from_json(settings.load_json(settings.SPEED_HISTORY))
        key = device_key(task.health)
        records[key] = records.get(key, SpeedRecord()).add(result.seconds, result.pixels / 1e6)
        settings.save_json(settings.SPEED_HISTORY, records_to_json(records))


def add_result_layer_hidden(layer: QgsRasterLayer, beside: QgsRasterLayer) -> None:
    """Add ``layer`` just below ``beside`` in the same group, unchecked (probabilities: there when wanted)."""
    from qgis.core import QgsProject

    project = QgsProject.instance()
    project.addMapLayer(layer, False)
    node = project.layerTreeRoot().findLayer(beside.id())
    group = node.parent() if node is not None else project.layerTreeRoot()
    index = group.children().index(node) + 1 if node is not None else 0
    inserted = group.insertLayer(index, layer)
    inserted.setItemVisibilityChecked(False)
