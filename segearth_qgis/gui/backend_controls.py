"""The dock's backend controls: its status line, start / stop / restart off the GUI thread, Weights…, Set up backend…

A mixin of :class:`~segearth_qgis.gui.dock.SegEarthDock` (the attributes below are the dock's).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from qgis.core import Qgis, QgsApplication, QgsTask
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QMessageBox

from .. import settings
from ..client.backend_manager import BackendManager
from ..errors import BackendError
from .setup_dialog import SetupDialog
from .weights_dialog import WeightsDialog
from .widgets.backend_box import BackendBox


class BackendControls:
    """The backend's part of the dock."""

    backend: BackendManager
    backend_box: BackendBox
    estimate_timer: QTimer
    setup_dialog: Optional[SetupDialog]
    _helpers: list[QgsTask]
    _asking: bool
    #: Asks the user a yes / no question (tests answer it).
    confirm: Callable[[str], bool]

    def report(self, text: str, level: Any) -> None:
        raise NotImplementedError

    def save_state(self) -> None:
        raise NotImplementedError

    def _resume_update(self) -> None:
        raise NotImplementedError

    def show_backend_status(self) -> None:
        self.backend_box.show_status(self.backend.status())

    def refresh_status(self) -> None:
        """Ask the backend for its health on a worker thread; the status line follows."""
        def work(_task: QgsTask) -> None:
            try:
                self.backend.health()
            except BackendError as error:
                self.backend.last_health = {"status": "unreachable", "error": error.message}

        self._run_helper(QgsTask.fromFunction("SegEarth-OV backend status", work, on_finished=self._helper_done))

    def _backend_action(self, action: str) -> None:
        """Start / stop / restart on a worker thread; every outcome ends in a status and, on failure, a message."""
        def work(_task: QgsTask) -> Optional[str]:
            try:
                if action == "stop":
                    self.backend.stop()
                    return None
                (self.backend.restart if action == "restart" else self.backend.client)()
                self.backend.health()
            except BackendError as error:
                return self.backend.explain(error) if error.code != "cancelled" else None
            except Exception as error:  # noqa: BLE001 - the panel must not stay on "starting" whatever happens
                return f"Unexpected error while trying to {action} the backend: {type(error).__name__}: {error}"
            return None

        def done(exception: Optional[BaseException], message: Optional[str] = None) -> None:
            if exception is not None:
                message = f"The backend {action} failed: {exception}"
            if message:
                self.report(message, Qgis.MessageLevel.Critical)
            self._helper_done(None)

        self.save_state()
        self.backend_box.show_status(self.backend.status())
        self._run_helper(QgsTask.fromFunction(f"SegEarth-OV backend {action}", work, on_finished=done))

    def _helper_done(self, exception: Optional[BaseException], *result: Any) -> None:
        self.show_backend_status()
        self.estimate_timer.start()

    def _run_helper(self, task: QgsTask) -> None:
        """Run a small background task, keeping it referenced until it ends (and waited for on unload)."""
        self._helpers = [t for t in self._helpers if not sip.isdeleted(t) and t.status() not in
                         (QgsTask.TaskStatus.Complete, QgsTask.TaskStatus.Terminated)]
        self._helpers.append(task)
        QgsApplication.taskManager().addTask(task)

    def open_weights(self) -> Optional[WeightsDialog]:
        dialog = WeightsDialog(self)
        self._asking = True
        try:
            accepted = dialog.exec()
        finally:
            self._asking = False
        if accepted:
            local = self.backend.local
            stale = local is not None and local.running() and local.args != settings.backend_settings().serve_args()
            if stale and self.confirm("The backend runs with the previous weights. Restart it now with the new ones?"):
                self._backend_action("restart")
        self._resume_update()
        return dialog

    def open_setup(self) -> SetupDialog:
        """The set-up dialog (one at a time); when a set-up succeeds the backend is (re)started with it."""
        if self.setup_dialog is not None and not sip.isdeleted(self.setup_dialog):
            self.setup_dialog.show()
            self.setup_dialog.raise_()
            return self.setup_dialog
        dialog = SetupDialog(self, on_done=self._set_up_done)
        dialog.show()
        self.setup_dialog = dialog
        return dialog

    def _set_up_done(self, record: dict[str, Any]) -> None:
        """A set-up finished: its interpreter is in the settings; show it and start the backend with it. With
        the weights left for later, nothing starts now (a start would fetch them, or fail without them): the
        first job starts it and downloads them."""
        self.backend_box.restore()
        if record.get("weights") == "skip":
            self.show_backend_status()
            self.report("Backend set up; the weights (about 600 MB) will be downloaded at the first job. Without "
                        "internet, choose the files with Weights…", Qgis.MessageLevel.Info)
            return
        self._backend_action("restart")

    def show_backend_details(self) -> None:
        status = self.backend.status()
        text = status.details or status.summary
        if status.log_path is not None:
            text += f"\n\nLog file: {status.log_path}"
        QMessageBox.information(self, "SegEarth-OV backend", text)

