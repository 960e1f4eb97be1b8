"""The segmentation job as a QgsTask: runs off the GUI thread, reports progress, cancels."""

from __future__ import annotations

import traceback
from typing import Callable, Optional

from qgis.core import Qgis, QgsMessageLog, QgsTask

from .backend_client import BackendError
from .backend_manager import BackendManager
from .job import JobCancelledError, JobParams, JobResult, execute
from .job_setup import PreparedJob
from .raster_io import OutputError

LOG_TAG = "SegEarth-OV"


class SegmentTask(QgsTask):
    """Runs :func:`~segearth_qgis.job.execute`; ``on_done(task)`` is called on the GUI thread."""

    def __init__(self, description: str, manager: BackendManager, params: JobParams, job: PreparedJob,
                 on_done: Callable[[SegmentTask], None]) -> None:
        super().__init__(description, QgsTask.CanCancel)
        self.manager, self.params, self.job, self.on_done = manager, params, job, on_done
        self.result: Optional[JobResult] = None
        self.error: Optional[str] = None
        self.was_cancelled = False

    def run(self) -> bool:
        try:
            client = self.manager.client(cancelled=self.isCanceled)
            self.result = execute(self.job, self.params, client, progress=self.setProgress,
                                  cancelled=self.isCanceled)
            return True
        except JobCancelledError:
            self.was_cancelled = True
        except BackendError as error:
            self.was_cancelled = error.code == "cancelled"
            self.error = None if self.was_cancelled else error.message
        except (OutputError, OSError, ValueError) as error:
            self.error = str(error)
        except Exception as error:  # noqa: BLE001 - any failure must reach the user as a message
            self.error = f"Unexpected error: {type(error).__name__}: {error}"
            QgsMessageLog.logMessage(traceback.format_exc(), LOG_TAG, Qgis.Critical)
        finally:
            self.job = None  # nothing of GDAL's or the provider's may outlive the job
        return False

    def finished(self, result: bool) -> None:  # noqa: FBT001 - QgsTask's signature
        if self.isCanceled():
            self.was_cancelled = True
        self.on_done(self)
