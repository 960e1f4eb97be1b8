"""A backend process on this machine: started on a free loopback port, watched while it loads, stopped.

Standard library only, like :mod:`.backend_client`; the process runs ``python -m segearth_backend serve``
with the interpreter of *Set up backend…* (or ``SEGEARTH_BACKEND_PYTHON``) and an environment without
QGIS's Python settings. Every failure is a :class:`~segearth_qgis.errors.BackendStartError`.
"""

from __future__ import annotations

import contextlib
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
from .backend_client import ENV_ARGS, ENV_PYTHON, ENV_TOKEN, BackendClient, Relocate
from .backend_setup import FOREIGN_PYTHON_VARIABLES, NO_WINDOW, data_folder

#: Where the logs of local backends that failed are kept (default: ``logs`` in the plugin's data folder).
ENV_LOG_DIR = "SEGEARTH_LOG_DIR"
#: Logs of failed local backends kept in that folder; the oldest beyond this number are removed.
KEEP_LOGS = 20

__all__ = ["LocalBackend", "backend_environment", "log_folder", "split_arguments", "start_local_backend"]


def log_folder(env: Mapping[str, str] = os.environ) -> Path:
    """Where the logs of local backends that failed are kept: ``$SEGEARTH_LOG_DIR``, else ``logs`` in the
    plugin's data folder."""
    return Path(env[ENV_LOG_DIR]).expanduser() if env.get(ENV_LOG_DIR) else data_folder() / "logs"


def keep_log(log: Path, folder: Path, name: str, keep: int = KEEP_LOGS) -> Optional[Path]:
    """Move ``log`` into ``folder`` as ``name`` and remove the oldest ``backend-*.log`` beyond ``keep``;
    returns the new path, or None when it could not be moved (it stays where it is)."""
    target = folder / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.move(str(log), str(target))
    except OSError:
        return None
    for old in sorted(folder.glob("backend-*.log"))[:-keep]:
        with contextlib.suppress(OSError):
            old.unlink()
    return target


#: The files of a local backend's private working folder.
TOKEN_NAME, READY_NAME, LOG_NAME = "token", "ready.json", "backend.log"


class LocalBackend:
    """A backend process started by :func:`start_local_backend`; ``stop()`` ends it.

    Its private working folder (token file, ready file, log) is removed when it stops; when it failed, its
    log is first moved to the logs folder (:func:`log_folder`, the most recent ``KEEP_LOGS`` are kept) and
    ``log_path`` says where.
    """

    def __init__(self, process: subprocess.Popen, url: str, token: str, workdir: Path,
                 args: Sequence[str] = (), log_dir: Optional[Path] = None) -> None:
        self.process, self.url, self.token, self.workdir = process, url, token, workdir
        self.args = tuple(args)
        self.log_dir = log_dir if log_dir is not None else log_folder()
        self._kept_log: Optional[Path] = None
        self.started = time.strftime("%Y%m%d-%H%M%S")

    @property
    def log_path(self) -> Path:
        """The log: in the working folder while it runs, in the logs folder once kept."""
        return self._kept_log or self.workdir / LOG_NAME

    def keep_log(self) -> Path:
        """Move the log to the logs folder (once; for a backend that failed) and return where it is now."""
        if self._kept_log is None and (self.workdir / LOG_NAME).is_file():
            self._kept_log = keep_log(self.workdir / LOG_NAME, self.log_dir,
                                      f"backend-{self.started}-{self.process.pid}.log")
        return self.log_path

    def client(self, timeout: float = 600.0, relocate: Optional[Relocate] = None) -> BackendClient:
        return BackendClient(self.url, self.token, timeout, relocate)

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_for_exit(self, seconds: float, cancelled: Optional[Callable[[], bool]] = None) -> bool:
        """Wait up to ``seconds`` for the process to end (it is stopping); True when it has."""
        end = time.monotonic() + seconds
        while self.running() and time.monotonic() < end:
            if cancelled is not None and cancelled():
                break
            time.sleep(0.1)
        return not self.running()

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
        """SIGTERM, then SIGKILL after ``timeout`` seconds; idempotent. Removes the working folder; the log
        of a process that had already failed (or with ``keep_log``) is first moved to the logs folder."""
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
        if failed and self.keep_log() == self.workdir / LOG_NAME:
            return  # the log could not be moved: the folder stays, and log_path names it
        shutil.rmtree(self.workdir, ignore_errors=True)


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


def write_private(path: Path, text: str) -> None:
    """Create ``path`` holding ``text``, readable and writable by this user only (0600 on POSIX)."""
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(text)


def start_local_backend(python: Optional[str] = None, args: Sequence[str] = (),
                        env: Optional[Mapping[str, str]] = None, timeout: float = 600.0,
                        cancelled: Optional[Callable[[], bool]] = None,
                        on_started: Optional[Callable[[LocalBackend], None]] = None) -> LocalBackend:
    """Start ``python -m segearth_backend serve`` on a free loopback port and wait until it is ready.

    The backend gets a fresh random token in a file of its private working folder (0600; never on the
    command line, never in its environment). If it fails to start, its log is moved to the logs folder
    (:func:`log_folder`) and the error names it.

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
    try:
        extra = split_arguments(environment.get(ENV_ARGS, ""))
    except ValueError as error:
        raise BackendStartError(f"{ENV_ARGS} cannot be read as command-line arguments ({error}): fix its quotes.",
                                "bad_args") from None
    token = secrets.token_urlsafe(24)
    environment.pop(ENV_TOKEN, None)  # a remote backend's token is not this one's business
    workdir = Path(tempfile.mkdtemp(prefix="segearth-backend-"))  # private: 0700
    ready_file, log_path, token_file = workdir / READY_NAME, workdir / LOG_NAME, workdir / TOKEN_NAME
    write_private(token_file, token)
    command = [python, "-m", "segearth_backend", "serve", "--host", "127.0.0.1", "--port", "0",
               "--ready-file", str(ready_file), "--token-file", str(token_file), "--exit-with-parent", *args, *extra]
    log_stream = open(log_path, "wb")  # noqa: SIM115 - handed to the child process
    try:
        # stdin: a pipe this process keeps open; the backend exits when it closes (--exit-with-parent), which
        # also happens when QGIS crashes. Windows: no console window for the backend.
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   stderr=log_stream, env=environment,
                                   start_new_session=sys.platform != "win32", creationflags=NO_WINDOW)
    except OSError as error:
        log_stream.close()
        shutil.rmtree(workdir, ignore_errors=True)
        raise BackendStartError(
            f"Cannot run the backend interpreter '{python}': {error.strerror or error}. Set "
            "SEGEARTH_BACKEND_PYTHON to a Python with segearth-backend installed.", "bad_python") from None
    log_stream.close()
    backend = LocalBackend(process, "", token, workdir, args, log_folder(environment))
    if on_started is not None:
        on_started(backend)
    return _wait_until_ready(backend, ready_file, timeout, cancelled)


def _wait_until_ready(backend: LocalBackend, ready_file: Path, timeout: float,
                      cancelled: Optional[Callable[[], bool]]) -> LocalBackend:
    """Poll ``ready_file`` until ``backend`` announces its URL; every way it can fail is a BackendStartError."""
    deadline = time.monotonic() + timeout
    while True:
        if ready_file.is_file():
            document = json.loads(ready_file.read_text(encoding="utf-8"))
            if "url" in document:
                backend.url = document["url"]
                return backend
            backend.stop(keep_log=True)
            raise BackendStartError(f"The backend could not load the model: {document.get('error')}\n"
                                    f"Its log is {backend.log_path}.", "model_failed")
        if backend.process.poll() is not None:
            tail = backend.log_tail()
            backend.stop(keep_log=True)
            raise BackendStartError(
                f"The backend exited during start-up (exit code {backend.process.returncode}). Its last output:\n"
                f"{tail}\nThe full log is {backend.log_path}.", "exited")
        if cancelled is not None and cancelled():
            backend.stop()
            raise BackendStartError("Starting the backend was cancelled.", "cancelled")
        if time.monotonic() > deadline:
            backend.stop(keep_log=True)
            raise BackendStartError(
                f"The backend did not become ready within {timeout:.0f} s. Its last output:\n{backend.log_tail()}\n"
                f"The full log is {backend.log_path}.", "timeout")
        time.sleep(0.1)
