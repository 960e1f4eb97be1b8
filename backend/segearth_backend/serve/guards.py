"""What the service checks before it does any work: host, origin, token, content type, body size.

A web page the user happens to open can send requests to ``127.0.0.1``; the
checks here keep it out. :class:`RequestGuard` refuses, before routing, any
request whose ``Host`` is not a loopback name when the service listens on
loopback (DNS rebinding) and any request whose ``Origin`` is a web page
other than a loopback or same-origin one. Route handlers then check the
token, the content type and read the body within its size and time limits
(:func:`read_body`; all bodies being received share one :class:`UploadBudget`).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from typing import Any, Optional
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import MAX_MESSAGE_CHARS, ApiError, InputError
from .protocol import ProtocolError, TooLargeError

#: Seconds a client is asked to wait when the bodies being received fill the upload budget.
RETRY_AFTER_UPLOADS = 2
#: Seconds a client is asked to wait before sending again a request the service could not finish as it stopped.
RETRY_AFTER_STOPPING = 3


def error_response(status: int, code: str, message: str, headers: Optional[dict[str, str]] = None) -> JSONResponse:
    """The JSON error answer; the message is cut to ``MAX_MESSAGE_CHARS`` whatever it quotes."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS - 3] + "..."
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def input_error_answer(error: InputError) -> ApiError:
    """The answer to bad input: 413 for a part larger than any valid request needs, 400 for a malformed body
    (:class:`ProtocolError`), 422 for invalid values."""
    status = 413 if isinstance(error, TooLargeError) else 400 if isinstance(error, ProtocolError) else 422
    return ApiError(status, getattr(error, "code", "bad_input"), str(error))


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (``127.x``, ``::1``), without brackets or port."""
    name = host.strip().lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, Optional[str]]:
    """``Host`` header -> (name, port or None); ``[::1]:8765`` -> (``::1``, ``8765``)."""
    value = value.strip()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") else None
    if value.count(":") == 1:
        name, _, port = value.partition(":")
        return name, port
    return value, None


def _shown(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


class RequestGuard:
    """ASGI middleware: refuses foreign ``Host`` (when on loopback) and ``Origin`` headers before any work.

    Args:
        app: the application behind the guard.
        loopback_only: the service listens on a loopback address, so every
            genuine request names a loopback host.
    """

    def __init__(self, app: ASGIApp, loopback_only: bool) -> None:
        self.app = app
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
            refusal = self.refusal(headers.get("host"), headers.get("origin"), scope.get("scheme", "http"))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, host: Optional[str], origin: Optional[str], scheme: str) -> Optional[JSONResponse]:
        """The error answer for these headers, or None when they are acceptable."""
        if self.loopback_only:
            name, port = split_host(host or "")
            if not host or not is_loopback(name) or (port is not None and not port.isdigit()):
                return error_response(
                    421, "bad_host",
                    f"This backend listens on loopback and answers only requests addressed to localhost, 127.0.0.1 "
                    f"or [::1] (Host was {_shown(host or '')}). Use http://127.0.0.1:<port>.")
        if origin is not None and not self._origin_allowed(origin, host, scheme):
            return error_response(
                403, "bad_origin",
                f"Requests from web pages are refused (Origin {_shown(origin)}). Use the QGIS plugin or another "
                "client that sends no Origin header.")
        return None

    @staticmethod
    def _origin_allowed(origin: str, host: Optional[str], scheme: str) -> bool:
        if host is not None and origin.strip().lower() == f"{scheme}://{host.strip().lower()}":
            return True  # same origin
        try:
            parts = urlsplit(origin.strip())
            name = parts.hostname
        except ValueError:
            return False
        return parts.scheme in ("http", "https") and name is not None and is_loopback(name)


def token_matches(request: Request, token: Optional[str]) -> bool:
    """True when the server has no token, or the request carries it (constant-time comparison)."""
    if token is None:
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(given) and hmac.compare_digest(given.strip().encode(), token.encode())


def check_token(request: Request, token: Optional[str]) -> None:
    """Raise the 401 answer unless the request carries the server's token."""
    if token_matches(request, token):
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ApiError(401, "unauthorized", "This backend needs a token: send 'Authorization: Bearer <token>'.")
    raise ApiError(401, "unauthorized", "The token is wrong: check the backend token in the plugin settings.")


def check_content_type(request: Request, expected: str) -> None:
    """Raise the 415 answer unless the body's media type is ``expected`` (parameters such as charset allowed)."""
    given = request.headers.get("content-type", "")
    if given.split(";", 1)[0].strip().lower() != expected:
        raise ApiError(415, "unsupported_media_type",
                       f"{request.method} {request.url.path} takes Content-Type {expected}, not "
                       f"{_shown(given) if given else 'none'}.")


class UploadBudget:
    """The bytes of request bodies being received, all requests together, and their bound.

    A body takes from the budget as its bytes arrive (not as its ``Content-Length`` announces), so clients
    that send slowly hold almost nothing; used only on the event loop's thread.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> None:
        """Count ``size`` more bytes, or raise the 503 answer when that would pass the bound."""
        if self.used + size > self.limit:
            raise ApiError(503, "busy", f"The backend is receiving {self.used / 2**20:.0f} MB of other requests; "
                           f"retry in {RETRY_AFTER_UPLOADS} s.", {"Retry-After": str(RETRY_AFTER_UPLOADS)})
        self.used += size

    def give_back(self, size: int) -> None:
        self.used -= size


def size_text(size: int) -> str:
    """``size`` bytes in MB (whole, or with one decimal), or in KB below one megabyte."""
    if size < 2**20:
        return f"{size / 1024:.0f} KB"
    megabytes = size / 2**20
    return f"{megabytes:.0f} MB" if megabytes.is_integer() or megabytes >= 100 else f"{megabytes:.1f} MB"


async def read_body(request: Request, limit: int, timeout: float, budget: UploadBudget,
                    stopping: Optional[asyncio.Event] = None, what: str = "The request",
                    hint: str = "Send smaller blocks.") -> bytes:
    """The request body, refused early when it is (or becomes) larger than ``limit`` bytes.

    Args:
        budget: the upload budget the body's bytes count against while it is received.
        stopping: set when the service begins to shut down; the reading then ends with 503 ``shutting_down``.
        what: the body's name in messages; ``hint`` what to do when it is too large.

    Raises:
        ApiError: 400 bad Content-Length, 413 too large (before reading when declared), 408 when the body
            takes longer than ``timeout`` seconds, 503 when the upload budget is spent or the service stops.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_request", "Content-Length is not a number.")
        if int(declared) > limit:
            raise ApiError(413, "too_large", f"{what} is {size_text(int(declared))}; this backend accepts at most "
                           f"{size_text(limit)}. {hint}")
    taken = 0

    async def collect() -> bytes:
        nonlocal taken
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "too_large", f"{what} is larger than {size_text(limit)}. {hint}")
            budget.take(len(chunk))
            taken += len(chunk)
            chunks.append(chunk)
        return b"".join(chunks)

    reading = asyncio.ensure_future(collect())
    waits: set[asyncio.Future[Any]] = {reading}
    if stopping is not None:
        waits.add(asyncio.ensure_future(stopping.wait()))
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if reading.done():
            return reading.result()
        if stopping is not None and stopping.is_set():
            raise shutting_down()
        raise ApiError(408, "timeout", f"{what} did not arrive within {timeout:.0f} s (--body-timeout).")
    finally:
        for future in waits:
            future.cancel()
        budget.give_back(taken)


def shutting_down() -> ApiError:
    """The answer to a request the service cannot finish because it is shutting down (503, ``shutting_down``)."""
    return ApiError(503, "shutting_down", "The backend is shutting down and did not finish this request; send it "
                    f"again once the backend runs again (in {RETRY_AFTER_STOPPING} s or later).",
                    {"Retry-After": str(RETRY_AFTER_STOPPING)})


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client goes away (call after the body was read)."""
    while True:
        message: Any = await request.receive()
        if message.get("type") == "http.disconnect":
            return
