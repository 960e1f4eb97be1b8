"""The service's endpoints (``/health``, ``/segment``, ``/progress``, ``/classes/embed``, ``/models``) and
the answers to the errors they raise; :func:`~.app.create_app` puts them together with the guards."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..errors import ApiError, InputError, PredictionCancelledError
from ..pipeline.classes import parse_classes
from ..request_rules import WINDOW_SIZE, WINDOW_STRIDE
from .engine_base import EngineBase
from .guards import (
    UploadBudget,
    check_content_type,
    check_token,
    error_response,
    input_error_answer,
    read_body,
    shutting_down,
    token_matches,
    wait_for_disconnect,
)
from .inference import SegmentAnswer, SegmentRequest
from .progress import REQUEST_ID, Job, JobBoard
from .protocol import BUNDLE_TYPE, JSON_TYPE, MAX_JSON_BYTES, PROTOCOL_VERSION, load_json, read_bundle, write_bundle
from .stopping import Stopping

log = logging.getLogger(__name__)

SEGMENT_MEMBERS = {"params.json", "image.npy", "valid.npy"}
SEGMENT_PARAMS = {"classes", "prob_threshold", "background_index", "bias_lambda", "return_probabilities",
                  "protocol", "request_id"}
#: The sliding window every engine uses, published in /health (the plugin plans its blocks with it).
WINDOW = {"size": WINDOW_SIZE, "stride": WINDOW_STRIDE}
#: /health fields that name local files; shown only to clients with the token.
PRIVATE_HEALTH_FIELDS = ("clip_weights", "upsampler_weights", "upsampler_reason", "error")


class Routes:
    """The endpoints, bound to the service's settings (a ``ServiceSettings``), its engine, its request board,
    its graceful stop and the budget of request bodies being received."""

    def __init__(self, settings: Any, engine: EngineBase, board: JobBoard, stop: Stopping,
                 uploads: UploadBudget) -> None:
        self.settings, self.engine, self.board, self.stop, self.uploads = settings, engine, board, stop, uploads

    def table(self) -> list[Route]:
        return [Route("/health", self.health, methods=["GET"]), Route("/segment", self.segment, methods=["POST"]),
                Route("/progress/{request_id}", self.progress, methods=["GET"]),
                Route("/classes/embed", self.embed, methods=["POST"]), Route("/models", self.models, methods=["GET"])]

    async def health(self, request: Request) -> JSONResponse:
        status = "busy" if self.engine.status == "ready" and self.engine.admitted else self.engine.status
        body: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "version": __version__, "status": status,
                                "queued": self.engine.admitted, "max_queue": self.engine.max_queue,
                                "auth": self.settings.token is not None, "window": dict(WINDOW)}
        if self.engine.error:
            body["error"] = self.engine.error
        body.update(self.engine.info)
        body.update(self.engine.health_fields())
        if self.engine.seconds_per_megapixel is not None:
            body["seconds_per_megapixel"] = round(self.engine.seconds_per_megapixel, 3)
        if not token_matches(request, self.settings.token):
            for name in PRIVATE_HEALTH_FIELDS:
                body.pop(name, None)
        return JSONResponse(body)

    async def segment(self, request: Request) -> Response:
        settings, engine, board = self.settings, self.engine, self.board
        check_token(request, settings.token)
        check_content_type(request, BUNDLE_TYPE)
        engine.check_room(board.active())  # a full queue is answered before the body is read
        body = await read_body(request, settings.max_request_bytes, settings.body_timeout, self.uploads,
                               self.stop.begun)
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
            answer = await self.stop.unless_expired(_run_watched(request, engine, work, job, board))
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

    async def progress(self, request: Request) -> JSONResponse:
        check_token(request, self.settings.token)
        request_id = request.path_params["request_id"]
        job = self.board.get(request_id) if REQUEST_ID.fullmatch(request_id) else None
        if job is None:
            raise ApiError(404, "unknown_request", "No request with that request_id is running or finished "
                           "recently: send request_id in params.json to follow a request.")
        return JSONResponse(job.document())

    async def embed(self, request: Request) -> JSONResponse:
        check_token(request, self.settings.token)
        check_content_type(request, JSON_TYPE)
        self.engine.check_room(self.board.active())
        body = await read_body(request, MAX_JSON_BYTES, self.settings.body_timeout, self.uploads, self.stop.begun,
                               what="The /classes/embed body", hint="Send a shorter class list.")
        payload = load_json(body, "The /classes/embed body")
        if not isinstance(payload, dict) or set(payload) - {"classes"} or "classes" not in payload:
            raise ApiError(422, "bad_parameter", 'The body must be {"classes": [class lines]}.')
        parse_classes(payload["classes"])  # validate before queueing
        with self.engine.admit(self.board.active()):
            start = time.perf_counter()
            classes, queries = await self.stop.unless_expired(self.engine.embed(payload["classes"]))
        return JSONResponse({"classes": classes, "queries": queries,
                             "seconds": round(time.perf_counter() - start, 3)})

    async def models(self, request: Request) -> JSONResponse:
        from ..model.listing import model_status

        check_token(request, self.settings.token)  # the list names local paths

        rows = await run_in_threadpool(model_status, self.settings.engine.cache_dir)
        return JSONResponse({"presets": rows, "loaded": self.engine.info.get("model_preset")})


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
    if request.app.state.engine.stopping:
        log.info("%s %s: not finished before the service stopped", request.method, request.url.path)
        answer = shutting_down()
        return error_response(answer.status, answer.code, answer.message, answer.headers)
    log.info("%s %s: %s", request.method, request.url.path, error)
    return error_response(409, "cancelled", str(error))


#: The answers to what the endpoints raise (Starlette's exception handlers).
EXCEPTION_HANDLERS = {ApiError: api_error, InputError: input_error, HTTPException: http_error,
                      ClientDisconnect: client_gone, PredictionCancelledError: cancelled}


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


async def _run_watched(request: Request, engine: EngineBase, work: SegmentRequest, job: Job,
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
