"""Which backend the plugin uses, the lifetime of a local one, and its state in one line (no Qt, thread-safe)."""

from __future__ import annotations

import atexit
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import BackendError, BackendStartError
from ..version import plugin_version, same_release
from .backend_client import STOPPED_BACKEND_WAIT, BackendClient, BackendSettings
from .local_backend import LocalBackend, start_local_backend

#: The states a backend can be in, as the panel shows them.
STOPPED, STARTING, LOADING, READY, FAILED, REMOTE = "stopped", "starting", "loading model", "ready", "failed", "remote"
NOT_SET_UP = "not set up"


@dataclass(frozen=True)
class BackendStatus:
    """What the panel shows: the state, one short line, and the details behind it.

    Attributes:
        state: one of STOPPED, STARTING, LOADING, READY, FAILED, REMOTE.
        summary: a short line ("ready — CPU — SimFeatUp").
        details: the full story for a tooltip or a dialog (error, log tail).
        log_path: the local backend's log file, when there is one.
        health: the last /health document.
    """

    state: str
    summary: str
    details: str = ""
    log_path: Optional[Path] = None
    health: Optional[dict[str, Any]] = None


def describe_health(health: dict[str, Any]) -> str:
    """Device, model and upsampler from a /health document, for one line."""
    device = health.get("device") or {}
    kind = str(device.get("type", "?")).upper()
    name = str(device.get("name", ""))
    label = kind if name.upper() in ("", kind) else f"{kind} {name}"
    if device.get("type") == "cuda" and "memory_free_mb" in device:
        label += f", {device['memory_free_mb'] / 1024:.1f} GB free"
    parts = [label, str(health.get("upsampler", "?"))]
    if health.get("model"):
        parts.insert(1, str(health["model"]))
    if health.get("precision_note"):
        parts.append("float32: this CPU has no fast bfloat16")
    elif health.get("precision") not in (None, "float32"):
        parts.append(str(health["precision"]))
    return " — ".join(parts)


class BackendManager:
    """Hands out clients: for a configured URL, or for a local backend started on demand.

    ``settings()`` is read at every call, so changes in the panel apply to the
    next start (a local backend started with other weights is restarted).
    Methods that start or ask a backend block and belong on worker threads;
    :meth:`status` never blocks.
    """

    def __init__(self, settings: Callable[[], BackendSettings]) -> None:
        self.settings = settings
        self._local: Optional[LocalBackend] = None
        self._starting: Optional[LocalBackend] = None
        self._start_error: Optional[BackendError] = None
        self._lock = threading.Lock()
        self.last_health: dict[str, Any] = {}
        self.last_start_seconds = 0.0
        #: Set while the plugin unloads: a start in progress gives up at once.
        self.closing = False

    @property
    def local(self) -> Optional[LocalBackend]:
        return self._local

    def is_remote(self) -> bool:
        return bool(self.settings().url)

    def client(self, cancelled: Optional[Callable[[], bool]] = None) -> BackendClient:
        """A client for a ready backend, starting the local one if needed.

        A client of the local backend follows it: when the backend answers that it stopped (SIGTERM, a
        restart), the next request goes to the backend running then, started afresh if none runs
        (:meth:`relocate`); a crash is reported, not hidden. ``last_start_seconds`` says how long this call
        spent starting a backend (0 if none was started).
        """
        settings = self.settings()
        self.last_start_seconds = 0.0
        if settings.url:
            return BackendClient(settings.url, settings.token, settings.timeout)
        return self._local_backend(settings, cancelled).client(settings.timeout, self.relocate)

    def relocate(self, gone_url: str, cancelled: Optional[Callable[[], bool]] = None) -> tuple[str, Optional[str]]:
        """(url, token) to send a request to after the backend at ``gone_url`` answered that it stopped: the
        local one at that URL is given time to end, then the one running now, started afresh if none runs."""
        local = self._local
        if local is not None and local.url == gone_url and local.running():
            local.wait_for_exit(STOPPED_BACKEND_WAIT, lambda: self.closing or (cancelled is not None and cancelled()))
        client = self.client(cancelled)
        return client.url, client.token

    def _local_backend(self, settings: BackendSettings, cancelled: Optional[Callable[[], bool]]) -> LocalBackend:
        """The local backend, started (or restarted with new settings) if needed."""
        with self._lock:
            if self._local is not None and (not self._local.running() or self._local.args != settings.serve_args()):
                self._local.stop()  # it died, or the settings changed: start a fresh one
                self._local = None
            if self._local is None:
                start = time.monotonic()
                self._start_error = None
                def give_up() -> bool:
                    return self.closing or (cancelled is not None and cancelled())

                try:
                    self._local = start_local_backend(settings.python, settings.serve_args(), cancelled=give_up,
                                                      on_started=self._started)
                except BackendError as error:
                    if error.code != "cancelled":
                        self._start_error = error
                    raise
                finally:
                    self._starting = None
                self.last_start_seconds = time.monotonic() - start
            return self._local

    def _started(self, backend: LocalBackend) -> None:
        self._starting = backend

    def health(self) -> dict[str, Any]:
        """The backend's health (starting nothing); ``{"status": "stopped"}`` when no local one runs."""
        settings = self.settings()
        local = self._local
        if not settings.url and (local is None or not local.running()):
            self.last_health = {"status": "stopped"}
            return self.last_health
        client = BackendClient(settings.url, settings.token) if settings.url else local.client()  # type: ignore[union-attr]
        self.last_health = client.health()
        return self.last_health

    def status(self) -> BackendStatus:
        """The state right now, from what is known without asking the backend (never blocks)."""
        if self.is_remote():
            url = self.settings().url
            health = self.last_health
            if health.get("status") not in (None, "stopped"):
                return BackendStatus(REMOTE, f"remote, {health['status']} — {describe_health(health)}",
                                     f"Backend at {url}", health=health)
            return BackendStatus(REMOTE, "remote", f"Backend at {url} (not asked yet)")
        starting = self._starting
        if starting is not None:
            phase = starting.phase()
            if phase == "loading":
                return BackendStatus(LOADING, "loading the model…", "The backend process runs and loads the "
                                     "model (the first time after installing, this can take a minute).",
                                     starting.log_path)
            return BackendStatus(STARTING, "starting…", "Starting the backend's Python (torch takes a few seconds "
                                 "to load).", starting.log_path)
        local = self._local
        if local is not None:
            if local.running():
                health = self.last_health if self.last_health.get("status") not in (None, "stopped") else {}
                line = f"ready — {describe_health(health)}" if health else "ready"
                if health.get("status") == "busy":
                    line = line.replace("ready", "busy", 1)
                details = f"Local backend at {local.url}; log {local.log_path}"
                if health.get("version") and not same_release(health["version"]):
                    line = (f"ready — backend {health['version']}, plugin {plugin_version()}: update it "
                            "(Set up backend…)")
                    details = ("The backend environment holds another version than this plugin. Set up backend… "
                               "installs the plugin's own version into it. " + details)
                return BackendStatus(READY, line, details, local.log_path, health or None)
            return BackendStatus(FAILED, f"stopped unexpectedly ({self._exit_text(local)})",
                                 self.explain_exit(local), local.log_path)
        if self._start_error is not None:
            message = self._start_error.message
            code = self._start_error.code
            # No interpreter, one without the backend or its packages, or a Windows venv whose base Python was
            # uninstalled with its QGIS ("No Python at ..."): the set-up is what helps. A crash of a working
            # environment is a failure with its log (running the set-up again would not change it).
            if code in ("no_python", "bad_python") or (
                    code == "exited" and ("No module named" in message or "No Python at" in message)):
                return BackendStatus(NOT_SET_UP, "no working backend: click Set up backend…", message)
            if "weight files are missing" in message:
                return BackendStatus(FAILED, "weights missing: choose them with Weights… (Details… lists them)",
                                     message)
            return BackendStatus(FAILED, f"could not start: {_first_line(message)}", message)
        if not self.settings().python:
            return BackendStatus(NOT_SET_UP, "not set up yet: click Set up backend… (once, a few minutes)",
                                 "The backend runs in its own Python environment with PyTorch. Set up backend… "
                                 "creates it; or give the Python of an existing one.")
        return BackendStatus(STOPPED, "not started (starts with the first job)")

    @staticmethod
    def _exit_text(local: LocalBackend) -> str:
        code = local.process.returncode
        return f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"

    def explain_exit(self, local: LocalBackend) -> str:
        local.keep_log()  # it failed: its log goes where failed backends' logs are kept
        tail = local.log_tail(8).strip()
        return (f"The local backend process stopped ({self._exit_text(local)}). "
                + (f"Its last output:\n{tail}\n" if tail else "")
                + f"The full log is {local.log_path}. The next job starts a new backend.")

    def explain(self, error: BackendError) -> str:
        """The message for a failed request: a local backend that died is named as such, with its log tail."""
        local = self._local
        if local is None or self.is_remote() or local.running():
            return error.message
        return self.explain_exit(local).replace("stopped (", "stopped while working (", 1)

    def stop(self) -> None:
        """Stop the local backend, if one runs (a remote one is left alone); one still starting is killed."""
        starting = self._starting
        if starting is not None:
            starting.stop(timeout=5)  # without the lock: the start holds it until the process ends
        with self._lock:
            if self._local is not None:
                self._local.stop()
                self._local = None
            self._start_error = None
        self.last_health = {"status": "stopped"}

    def restart(self, cancelled: Optional[Callable[[], bool]] = None) -> BackendClient:
        self.stop()
        return self.client(cancelled)


def _first_line(text: str, limit: int = 90) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


__all__ = ["BackendManager", "BackendStatus", "BackendError", "BackendStartError", "describe_health",
           "shared_manager", "stop_shared"]


_shared: Optional[BackendManager] = None
_shared_lock = threading.Lock()


def stop_shared() -> None:
    """Stop the local backend of the process-wide manager, if there is one (QGIS or qgis_process is
    quitting: the plugin calls this on the application's ``aboutToQuit``, which QGIS emits where it runs no
    Python exit handlers)."""
    if _shared is not None:
        _shared.stop()


def shared_manager() -> BackendManager:
    """The process-wide manager used by the dock and the Processing algorithms (one local backend).

    A local backend it started is stopped when the process exits (:func:`stop_shared`, and Python's exit
    handlers where they run), so a headless ``qgis_process`` run leaves no backend and no working folder behind.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            from ..settings import backend_settings

            _shared = BackendManager(backend_settings)
            atexit.register(_shared.stop)
        return _shared
