"""The HTTP inference service (``segearth-backend serve``), on Starlette + uvicorn.

Endpoints (protocol version 1; see the README):

- ``GET /health``: versions, status, device, precision and what the CPU supports, the feature
  cache (hits, misses, memory); with the token (or when the server has none) also the loaded
  weights and the load error.
- ``POST /segment``: a bundle (``params.json``, ``image.npy``, ``valid.npy``)
  in, a bundle (``meta.json``, ``labels.npy``, ``probabilities.npy``) out.
- ``GET /progress/{request_id}``: windows done / total of a named request.
- ``POST /classes/embed``: JSON ``{"classes": [...]}``: pre-computes embeddings.
- ``GET /models``: the model presets and which are installed here (token: it names local paths).

Inference runs on an engine behind a bounded queue (:mod:`.engine_state`): one
worker thread in this process (:mod:`.worker`), or the replicas of a Ray Serve
application (:mod:`.ray_engine`, ``serve --ray``); the routes, guards and
answers are the same for both. :mod:`.guards` keeps out web pages, foreign hosts, wrong content types and
oversized bodies before any work is done; :mod:`.connections` times out silent connections and bounds how
many are open. A request takes its place in the queue only once its whole body has arrived. When the
service stops (SIGTERM, SIGINT, its parent gone), running work has ``STOP_GRACE_SECONDS`` to finish; what
does not is cancelled and answered 503 ``shutting_down`` with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
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
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, TypeVar, cast

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..config import EngineConfig
from ..errors import ConfigError, InputError, PredictionCancelledError
from ..pipeline.classes import parse_classes
from .connections import ConnectionLimits
from .engine_base import EngineState
from .guards import (
    ApiError,
    RequestGuard,
    UploadBudget,
    check_content_type,
    check_token,
    error_response,
    input_error_answer,
    is_loopback,
    read_body,
    shutting_down,
    token_matches,
    wait_for_disconnect,
)
from .inference import SegmentAnswer, SegmentRequest
from .local_engine import Engine
from .progress import REQUEST_ID, Job, JobBoard
from .protocol import BUNDLE_TYPE, JSON_TYPE, MAX_JSON_BYTES, PROTOCOL_VERSION, load_json, read_bundle, write_bundle
from .ray_settings import RaySettings

__all__ = ["ServiceSettings", "create_app", "serve", "is_loopback", "ApiError", "Engine", "ENV_TOKEN"]

log = logging.getLogger(__name__)
T = TypeVar("T")

ENV_TOKEN = "SEGEARTH_BACKEND_TOKEN"
DEFAULT_MAX_REQUEST_MB = 512
DEFAULT_MAX_QUEUE = 4
#: Seconds a client may take to send a request body (a slow body holds a connection, not a queue place).
DEFAULT_BODY_TIMEOUT = 60.0
#: Seconds running work may take to finish once the service begins to stop; then it is cancelled.
STOP_GRACE_SECONDS = 3.0
#: Seconds uvicorn waits for the answers of a stopping service (more than the grace plus one window batch).
GRACEFUL_SHUTDOWN_SECONDS = 10
SEGMENT_MEMBERS = {"params.json", "image.npy", "valid.npy"}
SEGMENT_PARAMS = {"classes", "prob_threshold", "background_index", "bias_lambda", "return_probabilities",
                  "protocol", "request_id"}
#: /health fields that name local files; shown only to clients with the token.
PRIVATE_HEALTH_FIELDS = ("clip_weights", "upsampler_weights", "upsampler_reason", "error")


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


def _segment_params(params: Any) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise ApiError(422, "bad_parameter", "params.json must be a JSON object.")
    unknown = sorted(set(params) - SEGMENT_PARAMS)
    if unknown:
        raise ApiError(422, "bad_parameter", f"Unknown parameter(s) {', '.join(u[:40] for u in unknown[:5])}; "
                       f"known: {', '.join(sorted(SEGMENT_PARAMS))}.")
    if params.get("protocol", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise ApiError(422, "protocol_mismatch", f"The client speaks protocol {str(params['protocol'])[:20]}, this "
                       f"backend {PROTOCOL_VERSION}: update the plugin or the backend so they match.")
    if "classes" not in params:
        raise ApiError(422, "bad_classes", "params.json needs 'classes': a list of class lines.")
    if not isinstance(params.get("return_probabilities", False), bool):
        raise ApiError(422, "bad_parameter", "return_probabilities must be true or false.")
    request_id = params.get("request_id")
    if request_id is not None and (not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id)):
        raise ApiError(422, "bad_parameter", "request_id must be 1 to 64 letters, digits, '.', '_' or '-'.")
    return params


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
               on_ready: Optional[Callable[[EngineState], None]] = None,
               engine: Optional[EngineState] = None) -> Starlette:
    """The ASGI app.

    Inference runs on ``engine`` (for instance a :class:`~segearth_backend.serve.ray_engine.RayEngine`), or else
    on an :class:`~segearth_backend.serve.local_engine.Engine` in this process whose ``factory()`` builds the segmenter;
    either is loaded on a background thread at start-up.
    """
    if engine is None:
        if factory is None:
            raise ValueError("create_app needs a segmenter factory or an engine")
        engine = Engine(factory, settings.warmup, settings.max_queue, settings.oom_recover_after)
    board = JobBoard()
    stop = Stopping(engine, board)
    # Bodies being received, all together: as much as the queue could hold.
    uploads = UploadBudget((engine.slots + engine.max_queue) * settings.max_request_bytes)

    async def health(request: Request) -> JSONResponse:
        status = "busy" if engine.status == "ready" and engine.admitted else engine.status
        body: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "version": __version__, "status": status,
                                "queued": engine.admitted, "max_queue": engine.max_queue,
                                "auth": settings.token is not None}
        if engine.error:
            body["error"] = engine.error
        body.update(engine.info)
        body.update(engine.health_fields())
        if engine.seconds_per_megapixel is not None:
            body["seconds_per_megapixel"] = round(engine.seconds_per_megapixel, 3)
        if not token_matches(request, settings.token):
            for name in PRIVATE_HEALTH_FIELDS:
                body.pop(name, None)
        return JSONResponse(body)

    async def segment(request: Request) -> Response:
        check_token(request, settings.token)
        check_content_type(request, BUNDLE_TYPE)
        engine.check_room(board.active())  # a full queue is answered before the body is read
        body = await read_body(request, settings.max_request_bytes, settings.body_timeout, uploads, stop.begun)
        members = await run_in_threadpool(read_bundle, body, SEGMENT_MEMBERS)  # off the event loop
        del body
        if "image.npy" not in members or "params.json" not in members:
            raise ApiError(400, "bad_request", "The bundle needs params.json and image.npy.")
        params = _segment_params(members["params.json"])
        parse_classes(params["classes"])  # validate before queueing
        work = SegmentRequest.from_params(params, members["image.npy"], members.get("valid.npy"))
        del members
        with engine.admit(board.active()):  # a place in the queue only once the whole body is in
            job = board.open(params.get("request_id"))
            if job is None:
                raise ApiError(409, "request_id_in_use", f"A request named {params['request_id']!r} is still "
                               "running: give each request its own request_id.")
            job.pixels = work.pixels
            start = time.perf_counter()
            answer = await stop.unless_expired(_run_watched(request, engine, work, job, board))
            seconds = time.perf_counter() - start
            engine.record_speed(seconds, work.pixels)
        out: dict[str, Any] = {
            "meta.json": {"protocol": PROTOCOL_VERSION, "classes": list(answer.lines),
                          "names": list(answer.names), "timings": answer.timings,
                          "server_seconds": seconds, "request_id": job.request_id},
            "labels.npy": answer.labels,
        }
        if answer.probabilities is not None:
            out["probabilities.npy"] = answer.probabilities
        return Response(await run_in_threadpool(write_bundle, out), media_type=BUNDLE_TYPE)

    async def progress(request: Request) -> JSONResponse:
        check_token(request, settings.token)
        request_id = request.path_params["request_id"]
        job = board.get(request_id) if REQUEST_ID.fullmatch(request_id) else None
        if job is None:
            raise ApiError(404, "unknown_request", "No request with that request_id is running or finished "
                           "recently: send request_id in params.json to follow a request.")
        return JSONResponse(job.document())

    async def embed(request: Request) -> JSONResponse:
        check_token(request, settings.token)
        check_content_type(request, JSON_TYPE)
        engine.check_room(board.active())
        body = await read_body(request, MAX_JSON_BYTES, settings.body_timeout, uploads, stop.begun,
                               what="The /classes/embed body", hint="Send a shorter class list.")
        payload = load_json(body, "The /classes/embed body")
        if not isinstance(payload, dict) or set(payload) - {"classes"} or "classes" not in payload:
            raise ApiError(422, "bad_parameter", 'The body must be {"classes": [class lines]}.')
        parse_classes(payload["classes"])  # validate before queueing
        with engine.admit(board.active()):
            start = time.perf_counter()
            classes, queries = await stop.unless_expired(engine.embed(payload["classes"]))
        return JSONResponse({"classes": classes, "queries": queries,
                             "seconds": round(time.perf_counter() - start, 3)})

    async def models(request: Request) -> JSONResponse:
        from starlette.concurrency import run_in_threadpool

        from ..model.listing import model_status

        check_token(request, settings.token)  # the list names local paths

        rows = await run_in_threadpool(model_status, settings.engine.cache_dir)
        return JSONResponse({"presets": rows, "loaded": engine.info.get("model_preset")})

    async def api_error(request: Request, error: Exception) -> JSONResponse:
        api = cast(ApiError, error)
        return error_response(api.status, api.code, api.message, api.headers)

    async def input_error(request: Request, error: Exception) -> JSONResponse:
        api = input_error_answer(cast(InputError, error))
        return error_response(api.status, api.code, api.message)

    async def http_error(request: Request, error: Exception) -> JSONResponse:
        http = cast(HTTPException, error)
        return error_response(http.status_code, "http_error", str(http.detail))

    async def client_gone(request: Request, error: Exception) -> JSONResponse:
        log.info("%s %s: the client went away before sending its whole request", request.method, request.url.path)
        return error_response(400, "client_disconnected", "The client closed the connection.")

    async def cancelled(request: Request, error: Exception) -> JSONResponse:
        if engine.stopping:
            log.info("%s %s: not finished before the service stopped", request.method, request.url.path)
            answer = shutting_down()
            return error_response(answer.status, answer.code, answer.message, answer.headers)
        log.info("%s %s: %s", request.method, request.url.path, error)
        return error_response(409, "cancelled", str(error))

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
        routes=[Route("/health", health, methods=["GET"]), Route("/segment", segment, methods=["POST"]),
                Route("/progress/{request_id}", progress, methods=["GET"]),
                Route("/classes/embed", embed, methods=["POST"]), Route("/models", models, methods=["GET"])],
        middleware=[Middleware(FaultBarrier), Middleware(RequestGuard, loopback_only=is_loopback(settings.host))],
        exception_handlers={ApiError: api_error, InputError: input_error, HTTPException: http_error,
                            ClientDisconnect: client_gone, PredictionCancelledError: cancelled},
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.board = board
    app.state.stop = stop
    return app


class Stopping:
    """The service's graceful stop (:meth:`begin`, when uvicorn begins to shut down).

    New requests and bodies still being received are answered 503 ``shutting_down`` at once; running and
    queued work gets ``grace`` seconds to finish, then it is cancelled between window batches and answered
    503 ``shutting_down`` with ``Retry-After`` (the client sends it again to a restarted backend).
    """

    def __init__(self, engine: EngineState, board: JobBoard, grace: float = STOP_GRACE_SECONDS) -> None:
        self.engine, self.board, self.grace = engine, board, grace
        self.begun: Optional[asyncio.Event] = None
        self.expired: Optional[asyncio.Event] = None

    def start(self) -> None:
        """Make the events on the service's event loop (at start-up)."""
        self.begun, self.expired = asyncio.Event(), asyncio.Event()

    def begin(self) -> None:
        """On the event loop: refuse new work, cancel what still runs after ``grace`` seconds."""
        if self.engine.stopping:
            return
        self.engine.stopping = True
        if self.begun is not None:
            self.begun.set()
        running = len(self.board.active())
        if running:
            log.info("stopping: %d request(s) in progress get %.0f s to finish", running, self.grace)
        asyncio.get_running_loop().call_later(self.grace, self._expire)

    def _expire(self) -> None:
        if self.expired is not None:
            self.expired.set()
        cancelled = self.board.cancel_active()
        if cancelled:
            log.warning("stopping: %d request(s) did not finish in time; they are answered 503 shutting_down",
                        cancelled)

    async def unless_expired(self, work: Awaitable[T]) -> T:
        """``await work``, unless the stop's grace expires first: then the 503 ``shutting_down`` answer."""
        if self.expired is None:
            return await work
        task = asyncio.ensure_future(work)
        expiry = asyncio.ensure_future(self.expired.wait())
        try:
            await asyncio.wait({task, expiry}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            expiry.cancel()
        if task.done():
            return task.result()
        task.cancel()
        raise shutting_down()


async def _run_watched(request: Request, engine: EngineState, work: SegmentRequest, job: Job,
                       board: JobBoard) -> SegmentAnswer:
    """Run ``work`` on the engine; if the client disconnects meanwhile, cancel it between window batches."""
    async def watch() -> None:
        try:
            await wait_for_disconnect(request)
        except Exception:  # noqa: BLE001 - a broken receive channel is not a disconnect; keep working
            return
        log.info("request %s: the client went away; stopping its work", job.request_id)
        job.cancel.set()

    watcher = asyncio.ensure_future(watch())
    try:
        result = await engine.segment(work, job)
    except (PredictionCancelledError, asyncio.CancelledError):
        board.close(job, "cancelled")
        raise
    except BaseException:
        board.close(job, "failed")
        raise
    finally:
        watcher.cancel()
    board.close(job, "done")
    return result


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
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as error:
        log.error("cannot listen on %s:%s (%s): pick another --port, or 0 for a free one.",
                  settings.host, settings.port, error.strerror)
        return 2
    sock.listen(64)
    port = sock.getsockname()[1]
    url = f"http://{'[' + settings.host + ']' if family == socket.AF_INET6 else settings.host}:{port}"
    log.info("listening on %s; loading the model", url)

    engine: Optional[EngineState] = None
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

    def on_ready(engine: EngineState) -> None:
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
