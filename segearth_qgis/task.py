"""The segmentation job as a QgsTask: runs off the GUI thread, reports progress, cancels."""

from __future__ import annotations

import traceback
from typing import Callable, Optional

from qgis.core import Qgis, QgsMessageLog, QgsTask

from .backend_client import BackendError
from .backend_manager import BackendManager
from .core.grid import Grid
from .job import JobCancelledError, JobParams, JobResult, run_job
from .raster_io import OutputError, PixelSource

LOG_TAG = "SegEarth-OV"


class SegmentTask(QgsTask):
    """Runs :func:`~segearth_qgis.job.run_job`; ``on_done(task)`` is called on the GUI thread."""

    def __init__(self, description: str, manager: BackendManager, params: JobParams, grid: Grid, crs_wkt: str,
                 source_factory: Callable[[], PixelSource], on_done: Callable[[SegmentTask], None]) -> None:
        super().__init__(description, QgsTask.CanCancel)
        self.manager, self.params, self.grid, self.crs_wkt = manager, params, grid, crs_wkt
        self.source_factory, self.on_done = source_factory, on_done
        self.result: Optional[JobResult] = None
        self.error: Optional[str] = None
        self.was_cancelled = False

    def run(self) -> bool:
        source = None
        try:
            client = self.manager.client(cancelled=self.isCanceled)
            source = self.source_factory()
            self.result = run_job(self.params, self.grid, self.crs_wkt, source, client,
                                  progress=self.setProgress, cancelled=self.isCanceled)
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
            if source is not None:
                source.close()
            self.source_factory = None  # nothing of GDAL's may outlive the job
        return False

    def finished(self, result: bool) -> None:  # noqa: FBT001 - QgsTask's signature
        if self.isCanceled():
            self.was_cancelled = True
        self.on_done(self)
