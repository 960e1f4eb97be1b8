"""Connections no local process can jam the backend with, against a real backend process over real sockets:
idle and slow connections are closed, hundreds of them leave ``/health`` answering, the access log never
writes a query string down, and a backend without a token says that any local user can use it.

The HTTP front (its protocol class, its limits) is the same for ``serve`` and ``serve --ray``: the plain
server stands for both here; the tests whose outcome depends on the engine run on both (test_service_limits).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from segearth_backend.serve.connections import ConnectionLimits, protocol_class
from tests.backend.service_helpers import ServerProcess, call, health, tiny_server_args, wait_for

#: The server's --idle-timeout here (the default is longer; a short one keeps the test short).
IDLE = 3.0


@pytest.fixture(scope="module")
def server(parity_dir, tmp_path_factory):
    """A backend without a token (as a user starts one by hand), with a short idle timeout."""
    tmp = tmp_path_factory.mktemp("connections")
    process = ServerProcess([*tiny_server_args(parity_dir, tmp / "cache", "none"), "--no-warmup",
                             "--idle-timeout", str(IDLE)], tmp)
    yield process
    process.stop()
    assert "Traceback" not in process.log()


def _port(server: ServerProcess) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _closed_by_server(conn: socket.socket) -> bool:
    """True once the server has closed ``conn`` (end of file, or a reset)."""
    conn.setblocking(False)
    try:
        return conn.recv(65536) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def test_health_answers_while_300_idle_sockets_are_open(server):
    """uvicorn's concurrency limit (256) once counted idle sockets: 300 of them made /health answer 503."""
    sockets = [socket.create_connection(("127.0.0.1", _port(server)), timeout=10) for _ in range(300)]
    try:
        for index, conn in enumerate(sockets[::3]):  # a third of them start a request head and stall
            conn.sendall(f"GET /health HTTP/1.1\r\nX-Stall-{index}: ".encode())
        status, body, _ = call(server.url, "/health", timeout=10)
        assert status == 200 and b'"ready"' in body, body[:300]
    finally:
        for conn in sockets:
            conn.close()


def test_silent_slow_and_idle_connections_are_closed(server):
    """A connection that sends nothing, one that sends its headers a byte at a time and a keep-alive one
    that idles after its answer are all closed once the idle timeout has passed."""
    port = _port(server)
    silent = socket.create_connection(("127.0.0.1", port), timeout=10)
    slow = socket.create_connection(("127.0.0.1", port), timeout=10)
    idle = socket.create_connection(("127.0.0.1", port), timeout=10)
    idle.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert idle.recv(65536).startswith(b"HTTP/1.1 200")
    stop = threading.Event()

    def trickle() -> None:  # one header byte every 0.3 s: never a whole head
        head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
        for byte in head:
            if stop.wait(0.3):
                return
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                return

    sender = threading.Thread(target=trickle)
    sender.start()
    start = time.monotonic()
    try:
        assert wait_for(lambda: _closed_by_server(silent), 30), "a silent connection stayed open"
        assert wait_for(lambda: _closed_by_server(idle), 30), "an idle keep-alive connection stayed open"
        assert wait_for(lambda: not sender.is_alive() or _closed_by_server(slow), 30), \
            "a connection sending its head a byte at a time stayed open"
        assert time.monotonic() - start >= IDLE - 0.5  # not before the timeout
    finally:
        stop.set()
        sender.join(10)
        for conn in (silent, slow, idle):
            conn.close()
    assert health(server.url)["status"] == "ready"


def test_the_access_log_never_writes_a_query_string(server):
    secret = "secret-token-value-19d7"
    assert call(server.url, f"/health?token={secret}&x=1", timeout=10)[0] == 200
    assert wait_for(lambda: "GET /health?<query not logged>" in server.log(), 10), server.log()[-2000:]
    assert secret not in server.log()


def test_a_backend_without_a_token_warns_once_that_any_local_user_can_use_it(server):
    assert call(server.url, "/health")[0] == 200
    assert server.log().count("any local user of this machine can use this backend") == 1


def test_beyond_max_connections_the_longest_idle_ones_are_closed():
    """uvicorn with the service's protocol class (a plain app in this process): a connection beyond the cap
    closes the longest-idle ones, never one whose request is being answered."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    release = threading.Event()

    async def slow(request):
        while not release.is_set():
            await asyncio.sleep(0.05)
        return PlainTextResponse("done")

    app = Starlette(routes=[Route("/slow", slow), Route("/health", lambda request: PlainTextResponse("ok"))])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    limits = ConnectionLimits(idle_timeout=60, max_connections=10)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, http=protocol_class(limits), loop="asyncio"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert wait_for(lambda: bool(server.started), 20)
    busy = socket.create_connection(("127.0.0.1", port), timeout=30)
    idle = []
    try:
        busy.sendall(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # being answered
        assert wait_for(lambda: len(server.server_state.tasks) == 1, 10)
        for _ in range(9):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            assert wait_for(lambda: len(server.server_state.connections) == len(idle) + 1, 10)
        for _ in range(3):  # three more: the three idle longest make room
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        assert wait_for(lambda: all(_closed_by_server(conn) for conn in idle[:3]), 10)
        assert not any(_closed_by_server(conn) for conn in idle[3:])
        status, body, _ = call(f"http://127.0.0.1:{port}", "/health", timeout=10)
        assert status == 200
        release.set()
        busy.settimeout(10)
        assert busy.recv(65536).startswith(b"HTTP/1.1 200")  # the busy one was never cut
    finally:
        release.set()
        for conn in (busy, *idle):
            conn.close()
        server.should_exit = True
        thread.join(20)
