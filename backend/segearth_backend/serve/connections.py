"""The service's HTTP connections: how long one may stay silent, how many may be open, what the access log shows.

uvicorn's h11 protocol, as configured before, never timed out a connection that sent nothing, or sent its
request line and headers slowly, and counted every open connection toward one concurrency limit: a few
hundred idle sockets, opened by any local process without a token, made ``/health`` answer 503. Here:

- a connection must send a whole request head within ``idle_timeout`` seconds of being opened or of its
  previous answer (a keep-alive connection idles as long), or it is closed;
- at most ``max_connections`` are open; a new one beyond that closes the connections that have been idle
  longest (those between requests: a request being received or worked on is never cut);
- the request body's own deadline is the service's (``--body-timeout``, :func:`~.guards.read_body`);
- the access log shows paths without their query strings (a ``?token=...`` is never written down).

Only ``serve`` imports this module (it imports uvicorn).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import ConfigError

log = logging.getLogger(__name__)

#: Seconds a connection may stay silent between requests, or take to send a request's line and headers.
DEFAULT_IDLE_TIMEOUT = 10.0
#: Connections open at once; beyond that the longest-idle ones are closed.
DEFAULT_MAX_CONNECTIONS = 1000
#: File descriptors kept for everything else (model files, Ray's sockets, logs) beside the connections.
FILE_RESERVE = 256


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a connection may idle and how many may be open (validated here, once)."""

    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def __post_init__(self) -> None:
        if not self.idle_timeout > 0:
            raise ConfigError(f"--idle-timeout must be a positive number of seconds, got {self.idle_timeout}.")
        if self.max_connections < 8:
            raise ConfigError(f"--max-connections must be at least 8, got {self.max_connections}.")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the idle deadline and the connection cap of :class:`ConnectionLimits`."""

    limits = ConnectionLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._deadline: Optional[asyncio.TimerHandle] = None
        self._await_request()
        self._make_room()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._await_request()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    # ------------------------------------------------------------------ idle deadline
    def between_requests(self) -> bool:
        """True while no request is being received or answered on this connection."""
        return self.cycle is None or self.cycle.response_complete

    def _await_request(self) -> None:
        """From now on the client has ``idle_timeout`` seconds to send a whole request head."""
        self._cancel_deadline()
        self.idle_since = time.monotonic()
        self._awaited = self.cycle  # replaced by a new cycle once a request head has arrived
        self._deadline = self.loop.call_later(self.limits.idle_timeout, self._on_deadline)

    def _cancel_deadline(self) -> None:
        deadline = getattr(self, "_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._deadline = None

    def _on_deadline(self) -> None:
        self._deadline = None
        if self.cycle is self._awaited:  # no new request head since: idle, or sending it too slowly
            self.close_quietly()

    def close_quietly(self) -> None:
        """Close the connection between requests (nothing is being answered on it)."""
        if self.transport.is_closing():
            return
        with contextlib.suppress(h11.LocalProtocolError):  # half-way through a request head: just close
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()

    # ------------------------------------------------------------------ connection cap
    def _make_room(self) -> None:
        """Beyond ``max_connections``, close the longest-idle connections (this one last)."""
        if len(self.connections) <= self.limits.max_connections:
            return
        others = [c for c in self.connections if c is not self and not c.transport.is_closing()]
        excess = len(others) + 1 - self.limits.max_connections  # those closing already are on their way out
        if excess <= 0:
            return
        idle = sorted((c for c in others if isinstance(c, GuardedH11Protocol) and c.between_requests()),
                      key=lambda c: c.idle_since)
        for connection in idle[:excess]:
            connection.close_quietly()
        if excess > len(idle):
            log.warning("%d connections are busy (the most allowed: --max-connections %d): refusing a new one",
                        len(others), self.limits.max_connections)
            self.close_quietly()


def protocol_class(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """The uvicorn ``http`` protocol class for ``limits``."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


def usable_connections(wanted: int) -> int:
    """Raise this process's open-file limit so ``wanted`` connections fit beside ``FILE_RESERVE`` other files
    (up to the hard limit); returns how many connections fit now (``wanted`` or fewer)."""
    if sys.platform == "win32":
        return wanted
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + FILE_RESERVE
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(8, min(wanted, soft - FILE_RESERVE))


class QueryOmitted(logging.Filter):
    """Takes the query string out of uvicorn's access-log lines (it may hold a token)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args: Any = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?<query not logged>", *args[3:])
        return True
