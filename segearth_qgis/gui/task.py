"""The dock's jobs as QgsTasks (a segmentation, a change between two dates): off the GUI thread, with progress
and cancel."""

from __future__ import annotations

import contextlib
import traceback
from typing import Any, Callable, Optional

from qgis.core import Qgis, QgsMessageLog, QgsTask

from ..client.backend_manager import BackendManager
from ..core.blocks import plan_grid_blocks
from ..errors import BackendError, JobCancelledError, OutputError
from ..job.change_engine import ChangeResult, execute_change
from ..job.change_request import ChangePlan
from ..job.engine import JobResult, execute
from ..job.request import JobPlan
from ..map.change_style import change_style_text
from ..map.styling import class_style_text
from ..qgis_compat import OWN_MESSAGE_TASK

LOG_TAG = "SegEarth-OV"


def log_warning(message: str) -> None:
    """A line in QGIS's log panel (SegEarth-OV tab); safe from the task's threads."""
    QgsMessageLog.logMessage(message, LOG_TAG, Qgis.MessageLevel.Warning)


class JobTask(QgsTask):
    """A dock job off the GUI thread (:meth:`work`); ``on_done(task)`` is called on the GUI thread.

    Exactly one outcome is set when it ends: ``result`` (success), ``error``
    (a message for the user) or ``was_cancelled``. The task reports success to
    QGIS's task manager whenever the plugin itself reports the outcome, so QGIS
    does not add a "Task failed" notice of its own that would contradict it.
    """

    def __init__(self, description: str, manager: BackendManager, planned: Any,
                 on_done: Callable[[Any], None]) -> None:
        super().__init__(description, OWN_MESSAGE_TASK)
        self.manager, self.planned, self.on_done = manager, planned, on_done
        self.result: Any = None
        self.error: Optional[str] = None
        self.error_code: Optional[str] = None
        self.was_cancelled = False
        self.blocks = len(plan_grid_blocks(planned.source.grid, planned.params.block_size))
        #: Seconds spent starting a local backend for this job (0 when one was running).
        self.start_seconds = 0.0
        #: The backend's /health after the job (device and model, for the speed history).
        self.health: dict[str, Any] = {}

    def work(self, client: Any) -> Any:
        """The job itself (on the task's thread); returns its result."""
        raise NotImplementedError

    def run(self) -> bool:
        try:
            client = self.manager.client(cancelled=self.isCanceled)
            self.start_seconds = self.manager.last_start_seconds
            self.result = self.work(client)
            with contextlib.suppress(BackendError):
                self.health = self.manager.health()
        except JobCancelledError:
            self.was_cancelled = True
        except BackendError as error:
            self.was_cancelled = error.code == "cancelled" or self.isCanceled()
            if not self.was_cancelled:
                self.error, self.error_code = self.manager.explain(error), error.code
        except (OutputError, OSError, ValueError) as error:
            self.error = str(error)
        except Exception as error:  # noqa: BLE001 - any failure must reach the user as a message
            self.error = f"Unexpected error: {type(error).__name__}: {error}"
            QgsMessageLog.logMessage(traceback.format_exc(), LOG_TAG, Qgis.MessageLevel.Critical)
            return False
        finally:
            self.planned = None  # nothing of GDAL's may outlive the job
        return True

    def finished(self, result: bool) -> None:  # noqa: FBT001 - QgsTask's signature
        if self.result is None and self.error is None:
            self.was_cancelled = True
        self.on_done(self)


class SegmentTask(JobTask):
    """Runs :func:`~segearth_qgis.job.engine.execute` on a :class:`~segearth_qgis.job.request.JobPlan`."""

    result: Optional[JobResult]

    def work(self, client: Any) -> JobResult:
        planned: JobPlan = self.planned
        return execute(planned.source, planned.params, client, progress=self.setProgress, cancelled=self.isCanceled,
                       make_style=class_style_text, log=log_warning)


class ChangeTask(JobTask):
    """Runs :func:`~segearth_qgis.job.change_engine.execute_change` on a
    :class:`~segearth_qgis.job.change_request.ChangePlan` (the dock's "Compare with…")."""

    result: Optional[ChangeResult]

    def work(self, client: Any) -> ChangeResult:
        planned: ChangePlan = self.planned
        return execute_change(planned.source, planned.params, client, progress=self.setProgress,
                              cancelled=self.isCanceled, make_style=class_style_text,
                              make_change_style=change_style_text, log=log_warning)
