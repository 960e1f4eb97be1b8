"""The dock's "Compare with…": with a second (later) layer chosen, Segment becomes Detect change.

A mixin of :class:`~segearth_qgis.gui.dock.SegEarthDock` (the attributes below are the dock's). The panel's
classes, area, resolution, threshold, background, lambda and output go into one
:class:`~segearth_qgis.job.change_request.ChangeInputs`; :func:`~segearth_qgis.job.change_request.plan_change`
checks them (every check lives there, as for Processing) and the runner runs the change job, loads the styled
change raster and says the largest changes ("12.4 ha cropland → building; …"). Cancel and errors work as for
Segment.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from qgis.core import Qgis, QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QTimer

from .. import settings
from ..errors import LayerError, OutputError
from ..job.aoi import AoiKind
from ..job.change_request import ChangeInputs, ChangePlan, plan_change
from ..job.outputs import normalise_output, style_path
from .runner import JobRunner
from .task import ChangeTask
from .widgets.area_box import AreaBox
from .widgets.backend_box import BackendBox
from .widgets.classes_box import ClassesBox
from .widgets.options_box import OptionsBox
from .widgets.raster_box import RasterBox
from .widgets.run_box import RunBox


class ChangeControls:
    """Detect change between the panel's layer (before) and its "Compare with…" layer (after)."""

    classes_box: ClassesBox
    raster_box: RasterBox
    area_box: AreaBox
    options_box: OptionsBox
    run_box: RunBox
    backend_box: BackendBox
    runner: JobRunner
    live_timer: QTimer
    _asking: bool
    _running: Any
    confirm: Callable[[str], bool]

    def report(self, text: str, level: Any) -> None:
        raise NotImplementedError

    def save_state(self) -> None:
        raise NotImplementedError

    def _resume_update(self) -> None:
        raise NotImplementedError

    def comparing(self) -> bool:
        """Whether the panel detects change (a layer to compare with is chosen) rather than segmenting."""
        return self.raster_box.compare_layer() is not None

    def change_inputs(self, overwrite: bool = False) -> ChangeInputs:
        """What the panel asks for, as one :class:`ChangeInputs` (raises AoiError when no area is usable)."""
        layer: Optional[QgsRasterLayer] = self.raster_box.layer()
        if layer is None:
            raise LayerError("Choose the raster layer of the earlier date (Layer) to compare.")
        options = self.options_box
        mask = self.area_box.mask_layer_source()
        project = QgsProject.instance()
        return ChangeInputs(
            layer, self.raster_box.compare_layer(), self.classes_box.text(), self.raster_box.bands(), (),
            self.area_box.aoi(), self.area_box.resolution_in_map_units(layer),
            threshold=options.threshold_spin.value(), background_index=self.classes_box.background_index(),
            bias_lambda=options.lambda_spin.value(), output=options.output_widget.filePath().strip(),
            output_folder=settings.output_folder(), overwrite=overwrite, block_size=settings.BLOCK_SIZE.load(),
            other_inputs=(mask,) if mask else (), transform_context=project.transformContext(),
            ellipsoid=project.ellipsoid())

    def detect_change(self) -> Optional[ChangeTask]:
        """Start a change job from the panel's state; problems go to the message bar. Returns the task."""
        if self.runner.running():
            self.report("A job is already running.", Qgis.MessageLevel.Warning)
            return None
        self.live_timer.stop()
        self.save_state()
        self._asking = True  # while a question is open, an update must not start a job under it
        ready: Optional[tuple[ChangePlan, AoiKind]] = None
        try:
            output = self.options_box.output_widget.filePath().strip()
            overwrite = False
            if output and normalise_output(output).exists():
                overwrite = self.confirm(f"{normalise_output(output)} exists. Overwrite it (and its "
                                         f"{style_path(normalise_output(output)).name})?")
            inputs = self.change_inputs(overwrite)
            planned = plan_change(inputs)
            megapixels = planned.source.grid.width * planned.source.grid.height / 1e6
            if megapixels <= settings.LARGE_JOB_MEGAPIXELS.load() or self.confirm(
                    f"The area is {megapixels:.0f} megapixels of two dates at this resolution. Compare anyway?"):
                ready = planned, inputs.aoi.kind
        except (ValueError, OutputError) as error:
            self.report(str(error), Qgis.MessageLevel.Warning)
        finally:
            self._asking = False
        if ready is None:
            self._resume_update()
            return None
        self.run_box.set_running(True)
        self.backend_box.set_job_running(True)
        self._running = None  # a change result is no segmentation to update while typing
        preset = self.classes_box.preset.name if self.classes_box.preset is not None else None
        return self.runner.start_change(*ready, preset)


def change_summary_text(task: Any) -> str:
    """The summary a finished change job adds to the panel's progress line (" — 12.4 ha cropland → building"),
    or '' for any other job."""
    if isinstance(task, ChangeTask) and task.result is not None:
        return f" — {task.result.summary}"
    return ""
