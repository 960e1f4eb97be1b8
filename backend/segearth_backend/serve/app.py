"""The HTTP inference service (``segearth-backend serve``), on Starlette + uvicorn.

Endpoints (protocol version 1; see the README):

- ``GET /health``: versions, status, the sliding window, device, precision and what the CPU supports, the feature
  cache (hits, misses, memory); with the token (or when the server has none) also the loaded
  weights and the load error.
- ``POST /segment``: a bundle (``params.json``, ``image.npy``, ``valid.npy``)
  in, a bundle (``meta.json``, ``labels.npy``, ``probabilities.npy``) out.
- ``GET /progress/{request_id}``: windows done / total of a named request.
- ``POST /classes/embed``: JSON ``{"classes": [...]}``: pre-computes embeddings.
- ``GET /models``: the model presets and which are installed here (token: it names local paths).

Inference runs on an engine behind a bounded queue (:mod:`.engine_base`): one
worker thread in this process (:mod:`.local_engine`), or the replicas of a Ray Serve
application (:mod:`.ray_engine`, ``serve --ray``); the routes, guards and
answers are the same for both. :mod:`.guards` keeps out web pages, foreign hosts, wrong content types and
oversized bodies before any work is done; :mod:`.connections` times out silent connections and bounds how
many are open. A request takes its place in the queue only once its whole body has arrived. When the
service stops (SIGTERM, SIGINT, its parent gone), running work has a grace period (:mod:`.stopping`) to finish; what
does not is cancelled and answered 503 ``shutting_down`` with ``Retry-After``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import sys
import tempfile
import threading
import time
import traceback
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..config import EngineConfig
from ..errors import ApiError, ConfigError
from .connections import ConnectionLimits
from .engine_base import EngineBase
from .guards import (
    RequestGuard,
    UploadBudget,
    error_response,
    is_loopback,
)
from .local_engine import LocalEngine
from .progress import JobBoard
from .protocol import PROTOCOL_VERSION
from .ray_settings import RaySettings
from .routes import EXCEPTION_HANDLERS, Routes
from .stopping import GRACEFUL_SHUTDOWN_SECONDS, Stopping

__all__ = ["ServiceSettings", "create_app", "serve", "is_loopback", "ApiError", "LocalEngine", "ENV_TOKEN"]

log = logging.getLogger(__name__)

ENV_TOKEN = "SEGEARTH_BACKEND_TOKEN"
DEFAULT_MAX_REQUEST_MB = 512
DEFAULT_MAX_QUEUE = 4
#: Seconds a client may take to send a request body (a slow body holds a connection, not a queue place).
DEFAULT_BODY_TIMEOUT = 60.0


@dataclass(frozen=True)
class ServiceSettings:
    """How the service listens, what it loads and how much work it accepts (validated here, once).

    Attributes:
        max_request_bytes: largest request body.
        max_queue: requests that may wait while one runs (more get 503 + Retry-After).
        body_timeout: seconds a client may take to send its body.
        connections: how long a connection may idle or take to send a request head, how many may be open.
        oom_recover_after: successful requests after a CUDA out-of-memory
            error before the configured batch size is tried again.
        ray: serve through a Ray Serve application (replicas, cluster) instead of this process.
    """

    engine: EngineConfig = field(default_factory=EngineConfig)
    host: str = "127.0.0.1"
    port: int = 8765
    token: Optional[str] = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_MB * 2**20
    max_queue: int = DEFAULT_MAX_QUEUE
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    oom_recover_after: int = 20
    ready_file: Optional[Path] = None
    warmup: bool = True
    exit_with_parent: bool = False
    ray: Optional[RaySettings] = None

    def __post_init__(self) -> None:
        if self.max_request_bytes < 1:
            raise ConfigError("--max-request-mb must be positive.")
        if self.max_queue < 0:
            raise ConfigError(f"--max-queue must be 0 or more, got {self.max_queue}.")
        if not self.body_timeout > 0:
            raise ConfigError(f"--body-timeout must be a positive number of seconds, got {self.body_timeout}.")
        if self.oom_recover_after < 1:
            raise ConfigError("oom_recover_after must be at least 1.")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be between 0 and 65535, got {self.port}.")
        if self.token is not None and (not self.token.strip() or any(c.isspace() for c in self.token)):
            raise ConfigError("The token must be non-empty and contain no spaces or line breaks.")


def read_token_file(path: Path) -> str:
    """The token stored in ``path`` (surrounding whitespace removed).

    Raises:
        ConfigError: unreadable or empty file, or (POSIX) one that other users may read or change.
    """
    try:
        mode = path.stat().st_mode
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"Cannot read the token file {path}: {error}.") from None
    if os.name == "posix" and mode & 0o077:
        raise ConfigError(f"The token file {path} may be read or changed by other users (mode "
                          f"{stat.S_IMODE(mode):o}): run `chmod 600 {path}` and start again.")
    if not token:
        raise ConfigError(f"The token file {path} is empty: write the token into it.")
    return token


class FaultBarrier:
    """ASGI middleware: an unexpected exception becomes one logged traceback and a generic 500 answer.

    The answer names a reference to find the traceback in the log, and no
    internals (exception text can hold paths or data).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:  # noqa: BLE001 - the barrier: log once, answer generically, keep serving
            reference = uuid.uuid4().hex[:8]
            log.error("internal error %s on %s %s:\n%s", reference, scope.get("method"), scope.get("path"),
                      traceback.format_exc())
            if not started:
                response = error_response(500, "internal_error", f"The backend failed on an internal error "
                                          f"(reference {reference} in its log). The backend keeps running; "
                                          "retry, and report the problem if it happens again.")
                await response(scope, receive, send)


def create_app(settings: ServiceSettings, factory: Optional[Callable[[], Any]] = None,
               on_ready: Optional[Callable[[EngineBase], None]] = None,
               engine: Optional[EngineBase] = None) -> Starlette:
    """The ASGI app.

    Inference runs on ``engine`` (for instance a :class:`~segearth_backend.serve.ray_engine.RayEngine`), or else
    on a :class:`~segearth_backend.serve.local_engine.LocalEngine` in this process whose ``factory()`` builds the
    segmenter; either is loaded on a background thread at start-up.
    """
    if engine is None:
        if factory is None:
            raise ValueError("create_app needs a segmenter factory or an engine")
        engine = LocalEngine(factory, settings.warmup, settings.max_queue, settings.oom_recover_after)
    board = JobBoard()
    stop = Stopping(engine, board)
    # Bodies being received, all together: as much as the queue could hold.
    uploads = UploadBudget((engine.slots + engine.max_queue) * settings.max_request_bytes)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop.start()
        loader = threading.Thread(target=_load_then_signal, name="segearth-loader", daemon=True)
        loader.start()
        yield
        engine.close()

    def _load_then_signal() -> None:
        engine.load()
        if on_ready is not None:
            on_ready(engine)

    app = Starlette(
        routes=Routes(settings, engine, board, stop, uploads).table(),
        middleware=[Middleware(FaultBarrier), Middleware(RequestGuard, loopback_only=is_loopback(settings.host))],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.board = board
    app.state.stop = stop
    return app


def write_ready_file(path: Path, document: dict[str, Any]) -> None:
    """Write the ready file atomically (a parent process polls for it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(document, stream)
    os.replace(tmp, path)


def _watch_parent(server: Any, interval: float = 1.0) -> None:
    """Stop ``server`` when the process that started us is gone (QGIS crashed, qgis_process ended).

    Two signs, either enough: standard input is a pipe whose other end the parent holds (the plugin's
    client keeps it open) and it reaches end-of-file when the parent ends, on every OS; on POSIX also, the
    parent process id changes or that process no longer exists. (On Windows the parent id stays the
    same after the parent ends, and a venv's ``python.exe`` is a launcher between the two.)
    """
    parent = os.getppid()

    def gone(why: str) -> None:
        log.warning("the process that started this backend (pid %d) is gone (%s): shutting down", parent, why)
        server.should_exit = True

    def watch_stdin() -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            return
        if not server.should_exit:
            gone("its end of our standard input closed")

    try:
        piped = stat.S_ISFIFO(os.fstat(0).st_mode)
    except OSError:
        piped = False
    if piped:
        threading.Thread(target=watch_stdin, name="segearth-parent-pipe", daemon=True).start()
    if sys.platform == "win32":
        return

    def watch() -> None:
        while not server.should_exit:
            time.sleep(interval)
            alive = os.getppid() == parent
            if alive:
                try:
                    os.kill(parent, 0)
                except ProcessLookupError:
                    alive = False
                except PermissionError:
                    pass
            if not alive:
                gone("it no longer runs")
                return

    threading.Thread(target=watch, name="segearth-parent-watch", daemon=True).start()


def _listen(host: str, port: int) -> Optional[tuple[socket.socket, str]]:
    """A listening socket on ``host``:``port`` (0: a free port) and its URL, or None (logged) when it cannot bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        log.error("cannot listen on %s:%s (%s): pick another --port, or 0 for a free one.", host, port, error.strerror)
        sock.close()
        return None
    sock.listen(64)
    bound = sock.getsockname()[1]
    return sock, f"http://{'[' + host + ']' if family == socket.AF_INET6 else host}:{bound}"


def serve(settings: ServiceSettings, factory: Optional[Callable[[], Any]] = None) -> int:
    """Listen, load the model, announce readiness, serve until SIGINT / SIGTERM. Returns the exit code."""
    import uvicorn

    from .connections import QueryOmitted, protocol_class, usable_connections

    if settings.token is None and not is_loopback(settings.host):
        log.error("refusing to listen on %s without a token: anyone on the network could use this machine. "
                  "Set SEGEARTH_BACKEND_TOKEN (or --token-file), or listen on 127.0.0.1.", settings.host)
        return 2
    if settings.token is None:
        log.warning("no token: any local user of this machine can use this backend (its model, its device and "
                    "the paths it names). Give it one with --token-file (or SEGEARTH_BACKEND_TOKEN) unless you are "
                    "this machine's only user.")
    listening = _listen(settings.host, settings.port)
    if listening is None:
        return 2
    sock, url = listening
    log.info("listening on %s; loading the model", url)

    engine: Optional[EngineBase] = None
    if settings.ray is not None:  # Ray is imported only here, when asked for
        from .ray_engine import RayEngine

        engine = RayEngine(settings.engine, settings.ray, settings.warmup, settings.max_queue,
                           settings.oom_recover_after)
    elif factory is None:
        from ..pipeline.segmenter import load_segmenter

        engine_config = settings.engine

        def factory() -> Any:
            return load_segmenter(config=engine_config)

    server: Optional[uvicorn.Server] = None

    def on_ready(engine: EngineBase) -> None:
        if engine.status == "ready":
            if settings.ready_file is not None:
                write_ready_file(settings.ready_file, {"url": url, "pid": os.getpid(),
                                                       "protocol": PROTOCOL_VERSION, "version": __version__})
            print(f"SEGEARTH_BACKEND_READY {url}", flush=True)
            log.info("ready: %s on %s", engine.info.get("model"), engine.info.get("device"))
        else:
            if settings.ready_file is not None:
                write_ready_file(settings.ready_file, {"error": engine.error, "pid": os.getpid()})
            if server is not None:
                server.should_exit = True

    app = create_app(settings, factory, on_ready, engine)
    limits = settings.connections
    fitting = usable_connections(limits.max_connections)
    if fitting < limits.max_connections:
        log.warning("this process may open too few files for --max-connections %d: serving at most %d connections",
                    limits.max_connections, fitting)
        limits = replace(limits, max_connections=fitting)
    logging.getLogger("uvicorn.access").addFilter(QueryOmitted())

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Optional[list[socket.socket]] = None) -> None:
            app.state.stop.begin()  # refuse new work; what runs gets the grace period, then 503 shutting_down
            await super().shutdown(sockets)

    # h11 and the asyncio loop whatever else is installed (uvicorn[standard], which Ray brings, would
    # switch to httptools and uvloop): the same HTTP behaviour everywhere. Connections are bounded and timed
    # out by the protocol class (connections.py), not by uvicorn's concurrency limit (which counted idle ones).
    config = uvicorn.Config(app, log_config=None, lifespan="on", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
                            timeout_keep_alive=int(max(1, limits.idle_timeout)), limit_concurrency=None,
                            http=protocol_class(limits), loop="asyncio")
    server = Server(config)
    if settings.exit_with_parent:
        _watch_parent(server)
    server.run(sockets=[sock])
    return 2 if app.state.engine.status == "failed" else 0
