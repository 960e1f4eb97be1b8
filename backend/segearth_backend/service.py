"""The HTTP inference service (``segearth-backend serve``), on Starlette + uvicorn.

Endpoints (protocol version 1; see the README):

- ``GET /health`` (no token): versions, device, loaded weights, status.
- ``POST /segment``: a bundle (``params.json``, ``image.npy``, ``valid.npy``)
  in, a bundle (``meta.json``, ``labels.npy``, ``probabilities.npy``) out.
- ``POST /classes/embed``: JSON ``{"classes": [...]}``: pre-computes embeddings.
- ``GET /models`` (no token): the model presets and which are installed here.

Inference runs on one worker thread (requests queue), so concurrent clients
cannot exhaust device memory while ``/health`` keeps answering.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional, cast

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import __version__
from .classes import parse_classes
from .config import EngineConfig
from .errors import InputError, SegEarthError
from .protocol import BUNDLE_TYPE, PROTOCOL_VERSION, ProtocolError, read_bundle, write_bundle

log = logging.getLogger(__name__)

ENV_TOKEN = "SEGEARTH_BACKEND_TOKEN"
DEFAULT_MAX_REQUEST_MB = 512
SEGMENT_PARAMS = {"classes", "prob_threshold", "background_index", "bias_lambda", "return_probabilities", "protocol"}


@dataclass(frozen=True)
class ServiceSettings:
    """How the service listens and what it loads."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    host: str = "127.0.0.1"
    port: int = 8765
    token: Optional[str] = None
    max_request_bytes: int = DEFAULT_MAX_REQUEST_MB * 2**20
    ready_file: Optional[Path] = None
    warmup: bool = True
    exit_with_parent: bool = False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiError(Exception):
    """An error answered as ``{"error": code, "message": ...}`` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


class Engine:
    """The segmenter behind the service: loading state, one worker thread, busy count."""

    def __init__(self, factory: Callable[[], Any], warmup: bool) -> None:
        self.factory = factory
        self.warmup = warmup
        self.status = "loading"
        self.error: Optional[str] = None
        self.segmenter: Any = None
        self.info: dict[str, Any] = {}
        self.loaded = threading.Event()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segearth-inference")
        self.pending = 0
        self.seconds_per_megapixel: Optional[float] = None

    def load(self) -> None:
        """Build the segmenter and warm it up (compiles kernels); runs on a thread."""
        try:
            segmenter = self.factory()
            if self.warmup:
                segmenter.predict(np.zeros((64, 64, 3), np.uint8), ["warm-up a", "warm-up b"])
            self.segmenter, self.info, self.status = segmenter, segmenter.describe(), "ready"
        except SegEarthError as error:
            self.status, self.error = "failed", str(error)
            log.error("the model could not be loaded: %s", error)
        except Exception as error:  # noqa: BLE001 - reported through /health and the exit code
            self.status, self.error = "failed", f"{type(error).__name__}: {error}"
            log.error("the model could not be loaded:\n%s", traceback.format_exc())
        finally:
            self.loaded.set()

    def require_ready(self) -> None:
        """Raise the 503 answer while the model loads or after it failed to."""
        if self.status == "loading":
            raise ApiError(503, "loading", "The model is still loading; retry in a few seconds.")
        if self.status == "failed":
            raise ApiError(503, "model_failed", f"The model failed to load: {self.error}")

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function(segmenter, *args)`` on the inference thread (queued)."""
        self.require_ready()
        self.pending += 1
        try:
            return await asyncio.wrap_future(self.executor.submit(self._with_retry, function, *args))
        finally:
            self.pending -= 1

    def _with_retry(self, function: Callable[..., Any], *args: Any) -> Any:
        """Call on the worker; a CUDA out-of-memory error is retried with smaller batches."""
        import torch

        while True:
            try:
                return function(self.segmenter, *args)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                if self.segmenter.batch_size <= 1:
                    raise ApiError(503, "out_of_memory", "The GPU ran out of memory even one window at a time; "
                                   "send smaller blocks or free GPU memory.") from None
                self.segmenter.batch_size = max(1, self.segmenter.batch_size // 2)
                log.warning("CUDA out of memory: retrying with batches of %d windows", self.segmenter.batch_size)


def _check_token(request: Request, token: Optional[str]) -> None:
    if token is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ApiError(401, "unauthorized", "This backend needs a token: send 'Authorization: Bearer <token>'.")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "unauthorized", "The token is wrong: check the backend token in the plugin settings.")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_request", "Content-Length is not a number.")
        if int(declared) > limit:
            raise ApiError(413, "too_large", f"The request is {int(declared) / 2**20:.1f} MB; this backend accepts at "
                           f"most {limit / 2**20:.0f} MB. Send smaller blocks.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"The request is larger than {limit / 2**20:.0f} MB. Send smaller blocks.")
        chunks.append(chunk)
    return b"".join(chunks)


def _segment_params(params: Any) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise ApiError(422, "bad_parameter", "params.json must be a JSON object.")
    unknown = sorted(set(params) - SEGMENT_PARAMS)
    if unknown:
        raise ApiError(422, "bad_parameter", f"Unknown parameter(s) {', '.join(unknown)}; "
                       f"known: {', '.join(sorted(SEGMENT_PARAMS))}.")
    if params.get("protocol", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise ApiError(422, "protocol_mismatch", f"The client speaks protocol {params['protocol']}, this backend "
                       f"{PROTOCOL_VERSION}: update the plugin or the backend so they match.")
    if "classes" not in params:
        raise ApiError(422, "bad_classes", "params.json needs 'classes': a list of class lines.")
    if not isinstance(params.get("return_probabilities", False), bool):
        raise ApiError(422, "bad_parameter", "return_probabilities must be true or false.")
    return params


def create_app(settings: ServiceSettings, factory: Callable[[], Any],
               on_ready: Optional[Callable[[Engine], None]] = None) -> Starlette:
    """The ASGI app. ``factory()`` builds the segmenter (on a background thread at start-up)."""
    engine = Engine(factory, settings.warmup)

    async def health(request: Request) -> JSONResponse:
        status = "busy" if engine.status == "ready" and engine.pending else engine.status
        body: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "version": __version__, "status": status,
                                "queued": engine.pending, "auth": settings.token is not None}
        if engine.error:
            body["error"] = engine.error
        if engine.info:
            body.update(engine.info)
            if engine.segmenter is not None and engine.segmenter.device.type == "cuda":
                from .device import describe

                body["device"] = describe(engine.segmenter.device)  # fresh free-memory figure
        if engine.seconds_per_megapixel is not None:
            body["seconds_per_megapixel"] = round(engine.seconds_per_megapixel, 3)
        return JSONResponse(body)

    async def segment(request: Request) -> Response:
        _check_token(request, settings.token)
        engine.require_ready()  # before reading a large body
        body = await _read_body(request, settings.max_request_bytes)
        members = read_bundle(body, {"params.json", "image.npy", "valid.npy"})
        if "image.npy" not in members or "params.json" not in members:
            raise ApiError(400, "bad_request", "The bundle needs params.json and image.npy.")
        params = _segment_params(members["params.json"])
        image, valid = members["image.npy"], members.get("valid.npy")
        start = time.perf_counter()
        prediction = await engine.run(
            lambda s: s.predict(image, params["classes"], prob_threshold=params.get("prob_threshold", 0.0),
                                background_index=params.get("background_index", 0),
                                bias_lambda=params.get("bias_lambda", -0.3), valid=valid))
        seconds = time.perf_counter() - start
        if image.size:
            engine.seconds_per_megapixel = seconds / (image.shape[0] * image.shape[1] / 1e6)
        out: dict[str, Any] = {
            "meta.json": {"protocol": PROTOCOL_VERSION, "classes": list(prediction.classes.lines),
                          "names": list(prediction.classes.names), "timings": prediction.timings,
                          "server_seconds": seconds},
            "labels.npy": prediction.labels,
        }
        if params.get("return_probabilities", False):
            out["probabilities.npy"] = prediction.probabilities.astype(np.float16)
        return Response(write_bundle(out), media_type=BUNDLE_TYPE)

    async def embed(request: Request) -> JSONResponse:
        _check_token(request, settings.token)
        body = await _read_body(request, settings.max_request_bytes)
        try:
            payload = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ApiError(400, "bad_request", f"The body is not JSON: {error}.") from None
        if not isinstance(payload, dict) or set(payload) - {"classes"} or "classes" not in payload:
            raise ApiError(422, "bad_parameter", 'The body must be {"classes": [class lines]}.')
        parse_classes(payload["classes"])  # validate before queueing
        start = time.perf_counter()
        class_set = await engine.run(lambda s: s.embed_classes(payload["classes"]))
        return JSONResponse({"classes": class_set.num_classes, "queries": class_set.num_queries,
                             "seconds": round(time.perf_counter() - start, 3)})

    async def models(request: Request) -> JSONResponse:
        from starlette.concurrency import run_in_threadpool

        from .model_listing import model_status

        rows = await run_in_threadpool(model_status, settings.engine.cache_dir)
        return JSONResponse({"presets": rows, "loaded": engine.info.get("model_preset")})

    async def api_error(request: Request, error: Exception) -> JSONResponse:
        api = cast(ApiError, error)
        return error_response(api.status, api.code, api.message)

    async def input_error(request: Request, error: Exception) -> JSONResponse:
        status = 400 if isinstance(error, ProtocolError) else 422
        return error_response(status, getattr(error, "code", "bad_input"), str(error))

    async def http_error(request: Request, error: Exception) -> JSONResponse:
        http = cast(HTTPException, error)
        return error_response(http.status_code, "http_error", str(http.detail))

    async def fault(request: Request, error: Exception) -> JSONResponse:
        log.error("internal error on %s:\n%s", request.url.path,
                  "".join(traceback.format_exception(type(error), error, error.__traceback__)))
        return error_response(500, "internal_error", f"The backend failed: {type(error).__name__}: {error}. "
                              "The backend log has the details; the backend keeps running.")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loader = threading.Thread(target=_load_then_signal, name="segearth-loader", daemon=True)
        loader.start()
        yield
        engine.executor.shutdown(wait=False, cancel_futures=True)

    def _load_then_signal() -> None:
        engine.load()
        if on_ready is not None:
            on_ready(engine)

    app = Starlette(
        routes=[Route("/health", health, methods=["GET"]), Route("/segment", segment, methods=["POST"]),
                Route("/classes/embed", embed, methods=["POST"]), Route("/models", models, methods=["GET"])],
        exception_handlers={ApiError: api_error, InputError: input_error, HTTPException: http_error,
                            Exception: fault},
        lifespan=lifespan,
    )
    app.state.engine = engine
    return app


def write_ready_file(path: Path, document: dict[str, Any]) -> None:
    """Write the ready file atomically (a parent process polls for it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(document, stream)
    os.replace(tmp, path)


def _watch_parent(server: Any, interval: float = 1.0) -> None:
    """Stop ``server`` when the process that started us is gone (QGIS crashed, qgis_process ended)."""
    parent = os.getppid()

    def watch() -> None:
        while not server.should_exit:
            time.sleep(interval)
            alive = os.getppid() == parent
            if alive and sys.platform != "win32":
                try:
                    os.kill(parent, 0)
                except ProcessLookupError:
                    alive = False
                except PermissionError:
                    pass
            if not alive:
                log.warning("the process that started this backend (pid %d) is gone: shutting down", parent)
                server.should_exit = True

    threading.Thread(target=watch, name="segearth-parent-watch", daemon=True).start()


def serve(settings: ServiceSettings, factory: Optional[Callable[[], Any]] = None) -> int:
    """Listen, load the model, announce readiness, serve until SIGINT / SIGTERM. Returns the exit code."""
    import uvicorn

    if settings.token is None and not is_loopback(settings.host):
        log.error("refusing to listen on %s without a token: anyone on the network could use this machine. "
                  "Set SEGEARTH_BACKEND_TOKEN (or --token), or listen on 127.0.0.1.", settings.host)
        return 2
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

    if factory is None:
        from .segmenter import load_segmenter

        engine_config = settings.engine

        def factory() -> Any:
            return load_segmenter(config=engine_config)

    server: Optional[uvicorn.Server] = None

    def on_ready(engine: Engine) -> None:
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

    app = create_app(settings, factory, on_ready)
    config = uvicorn.Config(app, log_config=None, lifespan="on", timeout_graceful_shutdown=10,
                            limit_concurrency=256)
    server = uvicorn.Server(config)
    if settings.exit_with_parent:
        _watch_parent(server)
    server.run(sockets=[sock])
    return 2 if app.state.engine.status == "failed" else 0
