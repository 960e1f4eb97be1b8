"""A backend process on this machine: started on a free loopback port, watched while it loads, stopped.

Standard library only, like :mod:`.backend_client`; the process runs ``python -m segearth_backend serve``
with the interpreter of *Set up backend…* (or ``SEGEARTH_BACKEND_PYTHON``) and an environment without
QGIS's Python settings. Every failure is a :class:`~segearth_qgis.errors.BackendStartError`.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from ..errors import BackendStartError
from .backend_client import ENV_ARGS, ENV_PYTHON, BackendClient
from .backend_setup import FOREIGN_PYTHON_VARIABLES, NO_WINDOW

__all__ = ["LocalBackend", "backend_environment", "split_arguments", "start_local_backend"]


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
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        if not failed:
            shutil.rmtree(self.log_path.parent, ignore_errors=True)


ENV_BACKEND_PYTHONPATH = "SEGEARTH_BACKEND_PYTHONPATH"


def backend_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The environment for a backend process: this one without QGIS's Python settings.

    QGIS (OSGeo4W on Windows, QGIS.app on macOS) sets PYTHONHOME and PYTHONPATH
    for its own Python; the backend's environment must not see them.
    ``SEGEARTH_BACKEND_PYTHONPATH``, when set, becomes the backend's PYTHONPATH
    (a development checkout's source tree).
    """
    environment = {key: value for key, value in env.items() if key not in FOREIGN_PYTHON_VARIABLES}
    if env.get(ENV_BACKEND_PYTHONPATH):
        environment["PYTHONPATH"] = env[ENV_BACKEND_PYTHONPATH]
    return environment


def split_arguments(text: str, windows: bool = sys.platform == "win32") -> list[str]:
    """Command-line arguments from one string; on Windows backslashes are path separators, not escapes
    (``--clip-weights "C:\\My data\\clip.bin"`` stays one path)."""
    if not windows:
        return shlex.split(text)
    return [part[1:-1] if len(part) >= 2 and part[0] == part[-1] and part[0] in "\"'" else part
            for part in shlex.split(text, posix=False)]


def start_local_backend(python: Optional[str] = None, args: Sequence[str] = (),
                        env: Optional[Mapping[str, str]] = None, timeout: float = 600.0,
                        cancelled: Optional[Callable[[], bool]] = None,
                        on_started: Optional[Callable[[LocalBackend], None]] = None) -> LocalBackend:
    """Start ``python -m segearth_backend serve`` on a free loopback port and wait until it is ready.

    Args:
        python: interpreter with the backend installed (default ``$SEGEARTH_BACKEND_PYTHON``).
        args: extra ``serve`` arguments (``--device cpu``...); ``$SEGEARTH_BACKEND_ARGS`` (in ``env``) adds
            more, such as ``--ray --replicas 2`` for one replica per GPU of this machine.
        env: environment for the process (default: this one).
        timeout: seconds to wait for the model to load.
        cancelled: polled while waiting; returning True stops the process.
        on_started: called with the (not yet ready) backend once its process runs.

    Raises:
        BackendStartError: no interpreter, the process exited (its log tail is in
            the message), timed out, or was cancelled.
    """
    environment = backend_environment(os.environ if env is None else env)
    python = python or environment.get(ENV_PYTHON)
    if not python:
        raise BackendStartError(
            "No backend is set up yet: in the SegEarth-OV panel click Backend, Set up backend… (once, a few "
            "minutes), or give the Python of an environment where segearth-backend is installed (Backend, "
            "Python; or SEGEARTH_BACKEND_PYTHON).", "no_python")
    token = secrets.token_urlsafe(24)
    environment["SEGEARTH_BACKEND_TOKEN"] = token  # passed by environment, never on the command line
    workdir = Path(tempfile.mkdtemp(prefix="segearth-backend-"))
    ready_file, log_path = workdir / "ready.json", workdir / "backend.log"
    try:
        extra = split_arguments(environment.get(ENV_ARGS, ""))
    except ValueError as error:
        raise BackendStartError(f"{ENV_ARGS} cannot be read as command-line arguments ({error}): fix its quotes.",
                                "bad_args") from None
    command = [python, "-m", "segearth_backend", "serve", "--host", "127.0.0.1", "--port", "0",
               "--ready-file", str(ready_file), "--exit-with-parent", *args, *extra]
    log_stream = open(log_path, "wb")  # noqa: SIM115 - handed to the child process
    try:
        # stdin: a pipe this process keeps open; the backend exits when it closes (--exit-with-parent), which
        # also happens when QGIS crashes. Windows: no console window for the backend.
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   stderr=log_stream, env=environment,
                                   start_new_session=sys.platform != "win32", creationflags=NO_WINDOW)
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
            if process.stdin is not None:
                process.stdin.close()
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
