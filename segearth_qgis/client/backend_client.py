"""Talking to the SegEarth-OV backend over HTTP (stdlib + numpy only); :mod:`.local_backend` starts a local one.

Importable from QGIS's Python: no torch, no QGIS. Every failure becomes a
:class:`BackendError` whose message a user can act on.

Settings come from :class:`BackendSettings` (``SEGEARTH_BACKEND_URL``,
``SEGEARTH_BACKEND_TOKEN``, ``SEGEARTH_BACKEND_PYTHON``); the engine's own
``SEGEARTH_*`` variables pass through to an auto-started backend.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import secrets
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from ..core.request_rules import DEFAULT_BIAS_LAMBDA
from ..errors import BackendError
from . import protocol
from .retry import RetryPolicy, with_retries
from .target import Target, proxy_for

__all__ = ["BackendClient", "BackendError", "BackendSettings", "SegmentResult"]

ENV_URL = "SEGEARTH_BACKEND_URL"
ENV_TOKEN = "SEGEARTH_BACKEND_TOKEN"
ENV_PYTHON = "SEGEARTH_BACKEND_PYTHON"
#: Extra ``serve`` arguments for a backend the plugin starts, e.g. ``--ray --replicas 2`` (several GPUs).
ENV_ARGS = "SEGEARTH_BACKEND_ARGS"
#: Seconds to wait for a local backend that announced its stop to end before a request goes to a fresh one.
STOPPED_BACKEND_WAIT = 20.0
#: The answer of a backend that stopped before it finished a request (503, with Retry-After).
STOPPED_CODE = "shutting_down"


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
    #: The CLIP model: a preset name or an open_clip JSON config (None: the backend's own / SEGEARTH_MODEL).
    model: Optional[str] = None

    def serve_args(self) -> tuple[str, ...]:
        """``segearth-backend serve`` arguments for these settings (a local backend)."""
        args: list[str] = ["--model", self.model] if self.model else []
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


#: Largest answer accepted from ``/health``, ``/progress`` and ``/classes/embed``.
SMALL_ANSWER_BYTES = 4 * 2**20
#: Seconds between two progress / cancel checks while a block is in flight.
POLL_SECONDS = 0.3
#: A busy backend (503 "busy" with Retry-After) is asked again after the time it names, as long as the
#: request's deadline allows.
BUSY_RETRY = RetryPolicy(retries=10**6, first_delay=0.0, factor=1.0, max_delay=float("inf"))


def _is_busy(error: BackendError) -> bool:
    return error.status == 503 and error.code == "busy" and error.retry_after is not None


def _never() -> bool:
    return False


#: ``relocate(url, cancelled)``: the (url, token) to use after the backend at ``url`` stopped or went away.
Relocate = Callable[[str, Optional[Callable[[], bool]]], tuple[str, Optional[str]]]


class _Call:
    """One HTTP exchange that another thread may abort (its socket is shut down)."""

    def __init__(self) -> None:
        self.aborted = threading.Event()
        self.connection: Optional[http.client.HTTPConnection] = None

    def abort(self) -> None:
        self.aborted.set()
        connection = self.connection
        sock = connection.sock if connection is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class BackendClient:
    """HTTP client for one backend URL (stdlib ``http.client``; proxies only for remote URLs).

    Args:
        relocate: for a backend the plugin runs: after the backend answered that it stopped, the next request
            asks ``relocate`` where the backend runs now (a fresh one may have been started). A backend that
            crashed is not followed: its failure is reported (with its log), not hidden by a restart.
    """

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 600.0,
                 relocate: Optional[Relocate] = None) -> None:
        self.timeout = timeout
        self._target = Target.parse(url, token)
        self._relocate = relocate
        self._stopped = False

    @property
    def url(self) -> str:
        return self._target.url

    @property
    def token(self) -> Optional[str]:
        return self._target.token

    # ------------------------------------------------------------ transport
    def _current(self, cancelled: Optional[Callable[[], bool]]) -> Target:
        """The target for a new request: after the backend answered that it stopped, wherever it runs now."""
        if self._stopped and self._relocate is not None:
            url, token = self._relocate(self._target.url, cancelled)
            self._target, self._stopped = Target.parse(url, token), False
        return self._target

    def _connection(self, target: Target, timeout: float) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
        """A connection (direct, or to the proxy), the path prefix to request, and proxy headers."""
        proxy = proxy_for(target.url)
        if proxy is None:
            if target.scheme == "https":
                return http.client.HTTPSConnection(target.host, target.port, timeout=timeout,
                                                   context=ssl.create_default_context()), target.base_path, {}
            return http.client.HTTPConnection(target.host, target.port, timeout=timeout), target.base_path, {}
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        if parts.scheme != "http" or not parts.hostname:
            raise BackendError(f"The proxy {parts.scheme}://{parts.hostname} for {target.url} is not supported: use "
                               "an http:// proxy, or list the backend host in no_proxy.", "bad_proxy")
        headers = {}
        if parts.username:
            credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            headers["Proxy-Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
        if target.scheme == "https":
            tunnel = http.client.HTTPSConnection(parts.hostname, parts.port or 80, timeout=timeout,
                                                 context=ssl.create_default_context())
            tunnel.set_tunnel(target.host, target.port, headers=headers)
            return tunnel, target.base_path, {}
        plain = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
        return plain, f"http://{target.host}:{target.port}{target.base_path}", headers

    def _exchange(self, target: Target, method: str, path: str, body: Optional[bytes], content_type: Optional[str],
                  timeout: float, max_answer: int, call: Optional[_Call]) -> tuple[int, dict[str, str], bytes]:
        """Send one request; (status, lower-cased headers, body). Transport failures become BackendError."""
        call = call or _Call()
        connection, prefix, headers = self._connection(target, timeout)
        if content_type:
            headers["Content-Type"] = content_type
        if target.token:
            headers["Authorization"] = f"Bearer {target.token}"
        call.connection = connection
        try:
            connection.connect()
            if call.aborted.is_set():
                raise BackendError("The request was cancelled.", "cancelled")
            connection.request(method, prefix + path, body=body, headers=headers)
            response = connection.getresponse()
            answer_headers = {name.lower(): value for name, value in response.getheaders()}
            length = answer_headers.get("content-length", "")
            if length.isdigit() and int(length) > max_answer:
                raise BackendError(f"The backend's answer to {path} is {int(length)} bytes, more than the "
                                   f"{max_answer} expected: is {target.url} a SegEarth-OV backend?", "bad_answer")
            chunks: list[bytes] = []
            size = 0
            while True:
                chunk = response.read(min(1 << 20, max_answer + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > max_answer:
                    raise BackendError(f"The backend's answer to {path} is larger than the {max_answer} bytes "
                                       f"expected: is {target.url} a SegEarth-OV backend?", "bad_answer")
            data = b"".join(chunks)
            if length.isdigit() and len(data) < int(length):
                raise http.client.IncompleteRead(data, int(length) - len(data))
            return response.status, answer_headers, data
        except BackendError:
            raise
        except http.client.IncompleteRead as error:
            if call.aborted.is_set():
                raise BackendError("The request was cancelled.", "cancelled") from None
            raise BackendError(f"The backend's answer to {path} was cut off after {len(error.partial)} bytes (it "
                               "may have crashed or been stopped): check that it is running and try again.",
                               "truncated_answer") from None
        except TimeoutError:
            if call.aborted.is_set():
                raise BackendError("The request was cancelled.", "cancelled") from None
            raise BackendError(f"The SegEarth-OV backend at {target.url} did not answer {path} within {timeout:.0f} s: "
                               "it may be overloaded or stuck; check its log, or try again.", "timeout") from None
        except (OSError, http.client.HTTPException) as error:
            if call.aborted.is_set():
                raise BackendError("The request was cancelled.", "cancelled") from None
            reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
            raise BackendError(
                f"Cannot reach the SegEarth-OV backend at {target.url} ({reason}). Check that it is running "
                "(start it from the plugin panel, or `segearth-backend serve`) and that the URL is right.",
                "unreachable") from None
        finally:
            connection.close()

    def _request(self, method: str, path: str, body: Optional[bytes] = None, content_type: Optional[str] = None,
                 timeout: Optional[float] = None, max_answer: int = SMALL_ANSWER_BYTES,
                 call: Optional[_Call] = None, cancelled: Optional[Callable[[], bool]] = None,
                 target: Optional[Target] = None) -> tuple[bytes, str]:
        """One request; errors become BackendError. A 503 "busy" answer is sent again after its Retry-After
        while that ends before the request's deadline (the plugin's one retry loop, :mod:`.retry`).

        ``target``: where to send it (default: :meth:`_current`, which follows a restarted local backend).
        """
        target = target or self._current(cancelled)
        deadline = time.monotonic() + (timeout or self.timeout)

        def once() -> tuple[bytes, str]:
            remaining = max(1.0, deadline - time.monotonic())
            status, headers, data = self._exchange(target, method, path, body, content_type, remaining,
                                                   max_answer, call)
            if status < 400:
                return data, headers.get("content-type", "")
            try:
                payload = json.loads(data.decode("utf-8"))
                message, code = str(payload["message"]), str(payload["error"])
            except (ValueError, KeyError, TypeError, RecursionError):
                message, code = data.decode("utf-8", "replace")[:300] or f"HTTP {status}", "http_error"
            retry = headers.get("retry-after", "")
            wait = float(retry) if retry.isdigit() else None
            if code == STOPPED_CODE:
                self._stopped = True  # the next request asks where the backend runs now
                raise BackendError(f"The backend was stopped before it finished the request ({status}): "
                                   f"{message}", code, status, wait)
            raise BackendError(f"The backend refused the request ({status}): {message}", code, status, wait)

        return with_retries(once, path, BUSY_RETRY, cancelled or _never, lambda message: None, _is_busy, deadline)

    def _json(self, data: bytes, what: str) -> dict[str, Any]:
        try:
            document = json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError):
            document = None
        if not isinstance(document, dict):
            raise BackendError(f"The backend at {self.url} answered {what} with something that is not a JSON "
                               "object: is that URL a SegEarth-OV backend?", "bad_answer")
        return document

    # ------------------------------------------------------------ endpoints
    def health(self, timeout: float = 10.0) -> dict[str, Any]:
        """The backend's ``/health`` document (protocol, versions, device, weights, status)."""
        body, _ = self._request("GET", "/health", timeout=timeout)
        health = self._json(body, "/health")
        if health.get("protocol") != protocol.PROTOCOL_VERSION:
            raise BackendError(
                f"The backend at {self.url} speaks protocol {str(health.get('protocol'))[:20]}, this plugin "
                f"{protocol.PROTOCOL_VERSION}: update whichever is older.", "protocol_mismatch")
        return health

    def progress(self, request_id: str, timeout: float = 10.0, target: Optional[Target] = None) -> dict[str, Any]:
        """``/progress/{request_id}``: ``state``, ``windows_done``, ``windows_total`` of a named request
        (asked of ``target``, the backend working on it, when given)."""
        body, _ = self._request("GET", f"/progress/{urllib.parse.quote(request_id)}", timeout=timeout,
                                target=target)
        return self._json(body, "/progress")

    def segment(self, image: np.ndarray, classes: Sequence[str], prob_threshold: float = 0.0,
                background_index: int = 0, bias_lambda: float = DEFAULT_BIAS_LAMBDA, valid: Optional[np.ndarray] = None,
                probabilities: bool = False, progress: Optional[Callable[[int, int], None]] = None,
                cancelled: Optional[Callable[[], bool]] = None) -> SegmentResult:
        """Segment one block: ``image`` H x W x 3 uint8 RGB, optional ``valid`` H x W bool.

        Args:
            progress: ``progress(windows_done, windows_total)``, called from a
                polling thread about every 0.3 s while the block is computed.
            cancelled: polled as often; when it returns True the connection is
                dropped, the backend stops the work between window batches, and
                ``BackendError(code="cancelled")`` is raised.

        Raises:
            BackendError: refused, unreachable, cancelled, or a malformed answer.
        """
        if cancelled is not None and cancelled():
            raise BackendError("The request was cancelled.", "cancelled")
        params: dict[str, Any] = {
            "protocol": protocol.PROTOCOL_VERSION, "classes": list(classes),
            "prob_threshold": float(prob_threshold), "background_index": int(background_index),
            "bias_lambda": float(bias_lambda), "return_probabilities": bool(probabilities)}
        request_id = f"qgis-{secrets.token_hex(8)}" if progress is not None else None
        if request_id is not None:
            params["request_id"] = request_id
        members: dict[str, Any] = {"params.json": params, "image.npy": image}
        if valid is not None:
            members["valid.npy"] = valid.astype(bool)
        height, width = image.shape[:2]
        expected = height * width * (1 + (2 * len(classes) if probabilities else 0)) + 16 * 2**20
        call = _Call()
        finished = threading.Event()
        target = self._current(cancelled)
        watcher = None
        if progress is not None or cancelled is not None:
            watcher = threading.Thread(target=self._watch,
                                       args=(call, finished, target, request_id, progress, cancelled),
                                       name="segearth-request-watch", daemon=True)
            watcher.start()
        try:
            body, _ = self._request("POST", "/segment", protocol.encode(members), protocol.BUNDLE_TYPE,
                                    max_answer=expected, call=call, cancelled=cancelled, target=target)
        finally:
            finished.set()
            if watcher is not None:
                watcher.join()
        return self._segment_answer(body, height, width, len(classes), probabilities)

    def _watch(self, call: _Call, finished: threading.Event, target: Target, request_id: Optional[str],
               progress: Optional[Callable[[int, int], None]], cancelled: Optional[Callable[[], bool]]) -> None:
        """Polling thread: report progress, abort the exchange when ``cancelled()`` becomes true."""
        while not finished.wait(POLL_SECONDS):
            if cancelled is not None and cancelled():
                call.abort()
                return
            if progress is not None and request_id is not None:
                try:
                    document = self.progress(request_id, timeout=5.0, target=target)
                except BackendError:
                    continue  # not registered yet, or a hiccup: the main exchange reports real failures
                done, total = document.get("windows_done"), document.get("windows_total")
                if isinstance(done, int) and isinstance(total, int) and total > 0:
                    progress(done, total)

    def _segment_answer(self, body: bytes, height: int, width: int, classes: int,
                        probabilities: bool) -> SegmentResult:
        try:
            answer = protocol.decode(body, {"meta.json", "labels.npy", "probabilities.npy"})
        except ValueError as error:
            raise BackendError(f"The backend's answer is malformed: {error}.", "bad_answer") from None
        labels, probs = answer.get("labels.npy"), answer.get("probabilities.npy")
        meta = answer.get("meta.json", {})
        if not isinstance(meta, dict):
            raise BackendError("The backend's answer is malformed: meta.json is not an object.", "bad_answer")
        if meta.get("protocol", protocol.PROTOCOL_VERSION) != protocol.PROTOCOL_VERSION:
            raise BackendError(f"The backend answered in protocol {str(meta.get('protocol'))[:20]}, this plugin "
                               f"speaks {protocol.PROTOCOL_VERSION}: update whichever is older.", "protocol_mismatch")
        if not isinstance(labels, np.ndarray) or labels.dtype != np.uint8 or labels.shape != (height, width):
            shape = getattr(labels, "shape", None)
            raise BackendError(f"The backend's answer is malformed: labels.npy is {shape}, expected a "
                               f"{height} x {width} uint8 array.", "bad_answer")
        if probabilities and (not isinstance(probs, np.ndarray) or probs.shape != (classes, height, width)):
            raise BackendError(f"The backend's answer is malformed: probabilities.npy is "
                               f"{getattr(probs, 'shape', None)}, expected {classes} x {height} x {width}.",
                               "bad_answer")
        return SegmentResult(labels, probs if probabilities else None, meta)

    def embed_classes(self, classes: Sequence[str]) -> dict[str, Any]:
        """Pre-compute the class embeddings so the first block is not slowed by text encoding."""
        body, _ = self._request("POST", "/classes/embed", json.dumps({"classes": list(classes)}).encode("utf-8"),
                                "application/json")
        return self._json(body, "/classes/embed")
