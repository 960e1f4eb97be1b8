"""Talking to the SegEarth-OV backend: start a local one, or use a URL (stdlib + numpy only).

Importable from QGIS's Python: no torch, no QGIS. Every failure becomes a
:class:`BackendError` whose message a user can act on.

Settings come from :class:`BackendSettings` (``SEGEARTH_BACKEND_URL``,
``SEGEARTH_BACKEND_TOKEN``, ``SEGEARTH_BACKEND_PYTHON``); the engine's own
``SEGEARTH_*`` variables pass through to an auto-started backend.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from . import protocol
from .errors import BackendError, BackendStartError

__all__ = ["BackendClient", "BackendError", "BackendSettings", "BackendStartError", "LocalBackend",
           "SegmentResult", "start_local_backend"]

ENV_URL = "SEGEARTH_BACKEND_URL"
ENV_TOKEN = "SEGEARTH_BACKEND_TOKEN"
ENV_PYTHON = "SEGEARTH_BACKEND_PYTHON"


@dataclass(frozen=True)
class BackendSettings:
    """Where the backend is: a URL (remote or already running) or a Python to start one with."""

    url: Optional[str] = None
    token: Optional[str] = None
    python: Optional[str] = None
    timeout: float = 600.0
    #: Weight files for a local backend (None: the backend's own configuration / SEGEARTH_* variables).
    clip_weights: Optional[str] = None
    upsampler_weights: Optional[str] = None

    def serve_args(self) -> tuple[str, ...]:
        """``segearth-backend serve`` arguments for these settings (a local backend)."""
        args: list[str] = []
        if self.clip_weights:
            args += ["--clip-weights", self.clip_weights]
        if self.upsampler_weights:
            args += ["--upsampler-weights", self.upsampler_weights]
        return tuple(args)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, **overrides: Any) -> BackendSettings:
        values: dict[str, Any] = {
            "url": env.get(ENV_URL) or None, "token": env.get(ENV_TOKEN) or None, "python": env.get(ENV_PYTHON) or None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class SegmentResult:
    """One block's answer: ``labels`` H x W uint8, ``probabilities`` K x H x W float16 or None."""

    labels: np.ndarray
    probabilities: Optional[np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)


class BackendClient:
    """HTTP client for one backend URL."""

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Optional[bytes] = None, content_type: Optional[str] = None,
                 timeout: Optional[float] = None) -> tuple[bytes, str]:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                payload = json.loads(raw.decode("utf-8"))
                message, code = payload["message"], payload["error"]
            except (ValueError, KeyError, TypeError):
                message, code = raw.decode("utf-8", "replace")[:300] or error.reason, "http_error"
            raise BackendError(f"The backend refused the request ({error.code}): {message}", code, error.code) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise BackendError(
                f"Cannot reach the SegEarth-OV backend at {self.url} ({reason}). Check that it is running "
                "(start it from the plugin panel, or `segearth-backend serve`) and that the URL is right.",
                "unreachable") from None

    def health(self, timeout: float = 10.0) -> dict[str, Any]:
        """The backend's ``/health`` document (protocol, versions, device, weights, status)."""
        body, _ = self._request("GET", "/health", timeout=timeout)
        health = json.loads(body.decode("utf-8"))
        if health.get("protocol") != protocol.PROTOCOL_VERSION:
            raise BackendError(
                f"The backend at {self.url} speaks protocol {health.get('protocol')}, this plugin "
                f"{protocol.PROTOCOL_VERSION}: update whichever is older.", "protocol_mismatch")
        return health

    def segment(self, image: np.ndarray, classes: Sequence[str], prob_threshold: float = 0.0,
                background_index: int = 0, bias_lambda: float = -0.3, valid: Optional[np.ndarray] = None,
                probabilities: bool = False) -> SegmentResult:
        """Segment one block: ``image`` H x W x 3 uint8 RGB, optional ``valid`` H x W bool."""
        members: dict[str, Any] = {
            "params.json": {"protocol": protocol.PROTOCOL_VERSION, "classes": list(classes),
                            "prob_threshold": float(prob_threshold), "background_index": int(background_index),
                            "bias_lambda": float(bias_lambda), "return_probabilities": bool(probabilities)},
            "image.npy": image,
        }
        if valid is not None:
            members["valid.npy"] = valid.astype(bool)
        body, _ = self._request("POST", "/segment", protocol.encode(members), protocol.BUNDLE_TYPE)
        try:
            answer = protocol.decode(body)
        except ValueError as error:
            raise BackendError(f"The backend's answer is malformed: {error}.", "bad_answer") from None
        return SegmentResult(answer["labels.npy"], answer.get("probabilities.npy"), answer.get("meta.json", {}))

    def embed_classes(self, classes: Sequence[str]) -> dict[str, Any]:
        """Pre-compute the class embeddings so the first block is not slowed by text encoding."""
        body, _ = self._request("POST", "/classes/embed", json.dumps({"classes": list(classes)}).encode("utf-8"),
                                "application/json")
        return dict(json.loads(body.decode("utf-8")))


class LocalBackend:
    """A backend process started by :func:`start_local_backend`; ``stop()`` ends it.

    Its working folder (ready file, log) is removed when it is stopped on
    purpose and kept when it failed, so the log can be read.
    """

    def __init__(self, process: subprocess.Popen, url: str, token: str, log_path: Path,
                 args: Sequence[str] = ()) -> None:
        self.process, self.url, self.token, self.log_path = process, url, token, log_path
        self.args = tuple(args)

    def client(self, timeout: float = 600.0) -> BackendClient:
        return BackendClient(self.url, self.token, timeout)

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def phase(self) -> str:
        """Where start-up is: ``starting`` (Python and torch load), ``loading`` (the model), or ``ready``."""
        if self.url:
            return "ready"
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "starting"
        return "loading" if "loading the model" in text else "starting"

    def failed(self) -> bool:
        """True when the process ended on its own (crashed, killed, refused to start)."""
        return self.process.poll() is not None and not self._stopping

    _stopping = False

    def stop(self, timeout: float = 15.0, keep_log: bool = False) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; idempotent. Removes the working folder
        unless the process had already failed or ``keep_log`` (its log is kept for the user)."""
        failed = self.failed() or keep_log
        self._stopping = True
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if not failed:
            shutil.rmtree(self.log_path.parent, ignore_errors=True)


def start_local_backend(python: Optional[str] = None, args: Sequence[str] = (),
                        env: Optional[Mapping[str, str]] = None, timeout: float = 600.0,
                        cancelled: Optional[Callable[[], bool]] = None,
                        on_started: Optional[Callable[[LocalBackend], None]] = None) -> LocalBackend:
    """Start ``python -m segearth_backend serve`` on a free loopback port and wait until it is ready.

    Args:
        python: interpreter with the backend installed (default ``$SEGEARTH_BACKEND_PYTHON``).
        args: extra ``serve`` arguments (``--device cpu``...).
        env: environment for the process (default: this one).
        timeout: seconds to wait for the model to load.
        cancelled: polled while waiting; returning True stops the process.
        on_started: called with the (not yet ready) backend once its process runs.

    Raises:
        BackendStartError: no interpreter, the process exited (its log tail is in
            the message), timed out, or was cancelled.
    """
    environment = dict(os.environ if env is None else env)
    python = python or environment.get(ENV_PYTHON)
    if not python:
        raise BackendStartError(
            "No Python interpreter is set for the backend: set SEGEARTH_BACKEND_PYTHON (or the plugin "
            "setting) to the python of the environment where `segearth-backend` is installed.", "no_python")
    token = secrets.token_urlsafe(24)
    environment["SEGEARTH_BACKEND_TOKEN"] = token  # passed by environment, never on the command line
    workdir = Path(tempfile.mkdtemp(prefix="segearth-backend-"))
    ready_file, log_path = workdir / "ready.json", workdir / "backend.log"
    command = [python, "-m", "segearth_backend", "serve", "--host", "127.0.0.1", "--port", "0",
               "--ready-file", str(ready_file), "--exit-with-parent", *args]
    log_stream = open(log_path, "wb")  # noqa: SIM115 - handed to the child process
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=log_stream, env=environment,
                                   start_new_session=sys.platform != "win32")
    except OSError as error:
        log_stream.close()
        raise BackendStartError(
            f"Cannot run the backend interpreter '{python}': {error.strerror or error}. Set "
            "SEGEARTH_BACKEND_PYTHON to a Python with segearth-backend installed.", "bad_python") from None
    log_stream.close()
    backend = LocalBackend(process, "", token, log_path, args)
    if on_started is not None:
        on_started(backend)
    deadline = time.monotonic() + timeout
    while True:
        if ready_file.is_file():
            document = json.loads(ready_file.read_text(encoding="utf-8"))
            if "url" in document:
                backend.url = document["url"]
                return backend
            backend.stop(keep_log=True)
            raise BackendStartError(f"The backend could not load the model: {document.get('error')}", "model_failed")
        if process.poll() is not None:
            raise BackendStartError(
                f"The backend exited during start-up (exit code {process.returncode}). Its last output:\n"
                f"{backend.log_tail()}\nThe full log is {log_path}.", "exited")
        if cancelled is not None and cancelled():
            backend.stop()
            raise BackendStartError("Starting the backend was cancelled.", "cancelled")
        if time.monotonic() > deadline:
            backend.stop(keep_log=True)
            raise BackendStartError(
                f"The backend did not become ready within {timeout:.0f} s. Its last output:\n{backend.log_tail()}\n"
                f"The full log is {log_path}.", "timeout")
        time.sleep(0.1)
