"""Which backend the plugin uses, and the lifetime of a local one (no Qt, thread-safe)."""

from __future__ import annotations

import atexit
import threading
from typing import Any, Callable, Optional

from .backend_client import BackendClient, BackendSettings, LocalBackend, start_local_backend
from .errors import BackendError


class BackendManager:
    """Hands out clients: for a configured URL, or for a local backend started on demand.

    ``settings()`` is read at every call, so changes in the panel apply to the
    next start. Methods may block (start-up, HTTP) and belong on worker threads.
    """

    def __init__(self, settings: Callable[[], BackendSettings]) -> None:
        self.settings = settings
        self._local: Optional[LocalBackend] = None
        self._lock = threading.Lock()
        self.last_health: dict[str, Any] = {}

    @property
    def local(self) -> Optional[LocalBackend]:
        return self._local

    def is_remote(self) -> bool:
        return bool(self.settings().url)

    def client(self, cancelled: Optional[Callable[[], bool]] = None) -> BackendClient:
        """A client for a ready backend, starting the local one if needed."""
        settings = self.settings()
        if settings.url:
            return BackendClient(settings.url, settings.token, settings.timeout)
        with self._lock:
            if self._local is not None and not self._local.running():
                self._local = None  # it died: start a fresh one
            if self._local is None:
                self._local = start_local_backend(settings.python, cancelled=cancelled)
            return self._local.client(settings.timeout)

    def health(self) -> dict[str, Any]:
        """The backend's health (starting nothing); ``{"status": "stopped"}`` when no local one runs."""
        settings = self.settings()
        if not settings.url and (self._local is None or not self._local.running()):
            self.last_health = {"status": "stopped"}
            return self.last_health
        client = BackendClient(settings.url, settings.token) if settings.url else self._local.client()  # type: ignore[union-attr]
        self.last_health = client.health()
        return self.last_health

    def explain(self, error: BackendError) -> str:
        """The message for a failed request: a local backend that died is named as such, with its log tail."""
        local = self._local
        if local is None or self.is_remote() or local.running():
            return error.message
        code = local.process.returncode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        tail = local.log_tail(8).strip()
        return (f"The local backend process stopped while working (it {how}). "
                + (f"Its last output:\n{tail}\n" if tail else "")
                + f"The full log is {local.log_path}. The next job starts a new backend.")

    def stop(self) -> None:
        """Stop the local backend, if one runs (a remote one is left alone)."""
        with self._lock:
            if self._local is not None:
                self._local.stop()
                self._local = None
        self.last_health = {"status": "stopped"}

    def restart(self, cancelled: Optional[Callable[[], bool]] = None) -> BackendClient:
        self.stop()
        return self.client(cancelled)


def status_line(health: dict[str, Any], remote: bool, error: Optional[str] = None) -> str:
    """One line for the panel: where, device, upsampler, state."""
    where = "remote" if remote else "local"
    if error:
        return f"Backend ({where}): unavailable — {error}"
    status = health.get("status", "unknown")
    if status in ("stopped", "unknown"):
        return f"Backend ({where}): {'not started (starts with the first job)' if status == 'stopped' else status}"
    device = health.get("device") or {}
    kind = str(device.get("type", "?")).upper()
    name = str(device.get("name", ""))
    label = kind if name.upper() in ("", kind) else f"{kind} {name}"
    if device.get("type") == "cuda" and "memory_free_mb" in device:
        label += f", {device['memory_free_mb'] / 1024:.1f} GB free"
    return f"Backend ({where}): {status} — {label} — {health.get('upsampler', '?')}"


__all__ = ["BackendManager", "BackendError", "status_line", "shared_manager"]


_shared: Optional[BackendManager] = None
_shared_lock = threading.Lock()


def shared_manager() -> BackendManager:
    """The process-wide manager used by the dock and the Processing algorithms (one local backend).

    A local backend it started is stopped when the process exits, so a
    headless ``qgis_process`` run leaves no backend behind.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            from .settings import backend_settings

            _shared = BackendManager(backend_settings)
            atexit.register(_shared.stop)
        return _shared
