"""The plugin's client against misbehaving servers, proxies, and a real backend it cancels."""

from __future__ import annotations

import io
import json
import socket
import socketserver
import sys
import threading
import time
import zipfile
from typing import Callable

import numpy as np
import pytest

from segearth_qgis.client import protocol
from segearth_qgis.client.backend_client import BackendClient, BackendError
from segearth_qgis.client.local_backend import start_local_backend
from segearth_qgis.client.target import proxy_for
from tests.helpers import zip_with_flag
from tests.plugin.helpers import read_http_request

CLASSES = ["background", "building,roof", "road", "water"]
HEALTH = {"protocol": 1, "version": "0.1.0", "status": "ready", "auth": True}


def http_answer(body: bytes, status: str = "200 OK", content_type: str = "application/json",
                length: int | None = None, extra: str = "") -> bytes:
    size = len(body) if length is None else length
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {size}\r\n{extra}"
            "Connection: close\r\n\r\n").encode() + body


class CannedServer:
    """A TCP server that records each request's head and answers ``reply(head)`` (raw HTTP bytes)."""

    def __init__(self, reply: Callable[[bytes], bytes], host: str = "127.0.0.1") -> None:
        self.heads: list[bytes] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                request = read_http_request(self.request)
                if request is None:
                    return
                head = request[0]
                outer.heads.append(head)
                self.request.sendall(reply(head))

        self.server = socketserver.ThreadingTCPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def canned():
    servers: list[CannedServer] = []

    def make(reply: Callable[[bytes], bytes], host: str = "127.0.0.1") -> CannedServer:
        servers.append(CannedServer(reply, host))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def bundle(members: dict, compression: int = zipfile.ZIP_STORED) -> bytes:
    if compression == zipfile.ZIP_STORED:
        return protocol.encode(members)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, value in members.items():
            data = io.BytesIO()
            np.save(data, value)
            archive.writestr(name, data.getvalue() if name.endswith(".npy") else json.dumps(value))
    return buffer.getvalue()


def lying_npy() -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (100000, 100000)})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("meta.json", "{}")
        archive.writestr("labels.npy", header.getvalue() + b"\0" * 16)
    return buffer.getvalue()


GOOD_META = {"protocol": 1, "names": ["a"]}
SEGMENT_ANSWERS = [  # name, answer body, code, message fragment
    ("not a bundle", b"<html>proxy error</html>", "bad_answer", "not a SegEarth bundle"),
    ("compressed member", bundle({"meta.json": GOOD_META, "labels.npy": np.zeros((4, 4), np.uint8)},
                                 zipfile.ZIP_DEFLATED), "bad_answer", "compressed"),
    ("lying npy header", lying_npy(), "bad_answer", "declares 10000000000 bytes"),
    ("labels of another size", bundle({"meta.json": GOOD_META, "labels.npy": np.zeros((3, 4), np.uint8)}),
     "bad_answer", "expected a 4 x 4 uint8"),
    ("labels as floats", bundle({"meta.json": GOOD_META, "labels.npy": np.zeros((4, 4), np.float32)}),
     "bad_answer", "uint8"),
    ("other protocol", bundle({"meta.json": {"protocol": 2}, "labels.npy": np.zeros((4, 4), np.uint8)}),
     "protocol_mismatch", "protocol 2"),
    ("encrypted member", zip_with_flag(bundle({"meta.json": GOOD_META, "labels.npy": np.zeros((4, 4), np.uint8)}),
                                       "labels.npy", 0x01), "bad_answer", "encrypted"),
]


@pytest.mark.parametrize("name, answer, code, fragment", SEGMENT_ANSWERS, ids=[a[0] for a in SEGMENT_ANSWERS])
def test_malformed_segment_answers(canned, name, answer, code, fragment):
    server = canned(lambda head: http_answer(answer, content_type=protocol.BUNDLE_TYPE))
    with pytest.raises(BackendError, match=fragment) as caught:
        BackendClient(server.url()).segment(np.zeros((4, 4, 3), np.uint8), ["a"])
    assert caught.value.code == code


def test_truncated_answer(canned):
    server = canned(lambda head: http_answer(b'{"protocol": 1', length=5000))
    with pytest.raises(BackendError, match="was cut off after 14 bytes") as caught:
        BackendClient(server.url()).health()
    assert caught.value.code == "truncated_answer"


def test_truncated_segment_answer(canned):
    full = bundle({"meta.json": GOOD_META, "labels.npy": np.zeros((64, 64), np.uint8)})
    server = canned(lambda head: http_answer(full[:2000], content_type=protocol.BUNDLE_TYPE, length=len(full)))
    with pytest.raises(BackendError) as caught:
        BackendClient(server.url()).segment(np.zeros((64, 64, 3), np.uint8), ["a"])
    assert caught.value.code == "truncated_answer"


@pytest.mark.parametrize("body", [b"<html>It works!</html>", b"[1, 2]", b"\xff\xfe"])
def test_health_that_is_not_json(canned, body):
    server = canned(lambda head: http_answer(body, content_type="text/html"))
    with pytest.raises(BackendError, match="not a JSON object: is that URL a SegEarth-OV backend") as caught:
        BackendClient(server.url()).health()
    assert caught.value.code == "bad_answer"


def test_protocol_mismatch_in_health(canned):
    server = canned(lambda head: http_answer(json.dumps({**HEALTH, "protocol": 7}).encode()))
    with pytest.raises(BackendError, match="speaks protocol 7, this plugin 1") as caught:
        BackendClient(server.url()).health()
    assert caught.value.code == "protocol_mismatch"


def test_an_endless_answer_is_refused(canned):
    server = canned(lambda head: http_answer(b"{}", length=10**12))
    with pytest.raises(BackendError, match="more than the .* expected") as caught:
        BackendClient(server.url()).health()
    assert caught.value.code == "bad_answer"


def test_non_json_error_answer_keeps_the_status(canned):
    server = canned(lambda head: http_answer(b"Bad Gateway", status="502 Bad Gateway", content_type="text/plain"))
    with pytest.raises(BackendError, match=r"refused the request \(502\): Bad Gateway") as caught:
        BackendClient(server.url()).health()
    assert caught.value.status == 502


def test_busy_backend_is_retried_after_retry_after(canned):
    answers = [http_answer(b'{"error": "busy", "message": "busy"}', status="503 Service Unavailable",
                           extra="Retry-After: 1\r\n"), http_answer(json.dumps(HEALTH).encode())]
    server = canned(lambda head: answers.pop(0))
    start = time.monotonic()
    assert BackendClient(server.url()).health()["status"] == "ready"
    assert 0.9 < time.monotonic() - start < 10 and len(server.heads) == 2



def test_the_busy_wait_is_the_plugin_s_one_retry_loop_and_cancels_promptly(canned, monkeypatch):
    """The client's wait for a busy backend is retry.with_retries / wait_unless_cancelled, cancellable."""
    import segearth_qgis.client.backend_client as backend_client
    from segearth_qgis.client import retry

    waits = []
    real_wait = retry.wait_unless_cancelled
    monkeypatch.setattr(retry, "wait_unless_cancelled", lambda seconds, cancelled: waits.append(seconds) or
                        real_wait(seconds, cancelled))
    assert backend_client.with_retries is retry.with_retries
    busy = http_answer(b'{"error": "busy", "message": "busy"}', status="503 Service Unavailable",
                       extra="Retry-After: 30\r\n")
    server = canned(lambda head: busy)
    stop_at = time.monotonic() + 1.0
    start = time.monotonic()
    with pytest.raises(BackendError) as caught:
        BackendClient(server.url()).segment(np.zeros((8, 8, 3), np.uint8), CLASSES,
                                            cancelled=lambda: time.monotonic() > stop_at)
    assert caught.value.code == "cancelled" and time.monotonic() - start < 5 and waits == [30.0]

def test_bad_url_is_refused():
    with pytest.raises(BackendError, match="not an http:// or https:// URL") as caught:
        BackendClient("ftp://gpu-box:8765")
    assert caught.value.code == "bad_url"


# ------------------------------------------------------------------ proxies

@pytest.fixture
def proxy_env(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy",
                 "ALL_PROXY", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _outward_address() -> str:
    """This machine's own non-loopback address (a 'remote' host that needs no network)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
        except OSError:
            pytest.skip("no non-loopback interface")
        address = probe.getsockname()[0]
    if address.startswith("127."):
        pytest.skip("no non-loopback interface")
    return address


def test_loopback_never_goes_through_a_proxy(canned, proxy_env):
    proxy = canned(lambda head: http_answer(b'{"error": "proxy", "message": "via proxy"}', "502 Bad Gateway"))
    backend = canned(lambda head: http_answer(json.dumps(HEALTH).encode()))
    proxy_env.setenv("http_proxy", proxy.url())
    proxy_env.setenv("HTTP_PROXY", proxy.url())
    client = BackendClient(backend.url(), token="secret-token")
    assert client.health()["status"] == "ready"
    assert BackendClient(f"http://localhost:{backend.port}", token="secret-token").health()["status"] == "ready"
    assert proxy.heads == [] and len(backend.heads) == 2
    assert all(b"Bearer secret-token" in head for head in backend.heads)
    assert proxy_for(f"http://127.0.0.1:{backend.port}") is None and proxy_for("http://[::1]:1/") is None


def test_remote_urls_use_the_proxy_unless_no_proxy_says_otherwise(canned, proxy_env):
    address = _outward_address()
    proxy = canned(lambda head: http_answer(json.dumps({**HEALTH, "via": "proxy"}).encode()))
    backend = canned(lambda head: http_answer(json.dumps({**HEALTH, "via": "direct"}).encode()), host="0.0.0.0")
    proxy_env.setenv("http_proxy", proxy.url())
    remote = f"http://{address}:{backend.port}"
    assert BackendClient(remote).health()["via"] == "proxy"
    assert proxy.heads[0].startswith(f"GET {remote}/health HTTP/1.1".encode())
    proxy_env.setenv("no_proxy", f"localhost,{address}")
    assert BackendClient(remote).health()["via"] == "direct"
    assert len(proxy.heads) == 1 and len(backend.heads) == 1


# ------------------------------------------------------------------ a real backend, cancelled

@pytest.fixture(scope="module")
def local_backend(parity_dir, tmp_path_factory):
    args = ["--model", str(parity_dir / "tiny-clip.json"), "--clip-weights", str(parity_dir / "tiny-clip.pt"),
            "--upsampler-weights", str(parity_dir / "tiny-simfeatup.ckpt"), "--device", "cpu",
            "--cache-dir", str(tmp_path_factory.mktemp("cache"))]
    backend = start_local_backend(sys.executable, args, timeout=120)
    yield backend
    backend.stop()


def test_auto_started_backend_reports_progress(local_backend):
    client = local_backend.client()
    assert client.health()["auth"] is True and "clip_weights" in client.health()  # its own token: everything
    image = np.random.default_rng(1).integers(0, 256, size=(700, 700, 3), dtype=np.uint8)
    seen: list[tuple[int, int]] = []
    result = client.segment(image, CLASSES, progress=lambda done, total: seen.append((done, total)))
    assert result.labels.shape == (700, 700)
    assert seen and all(total == 36 for _, total in seen)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_cancel_drops_the_request_and_the_backend_stops_promptly(local_backend):
    client = local_backend.client()
    big = np.random.default_rng(2).integers(0, 256, size=(1800, 1800, 3), dtype=np.uint8)
    progressed = threading.Event()
    cancel = threading.Event()

    def on_progress(done: int, total: int) -> None:
        if done >= 2:
            progressed.set()
            cancel.set()

    start = time.monotonic()
    with pytest.raises(BackendError, match="cancelled") as caught:
        client.segment(big, CLASSES, progress=on_progress, cancelled=cancel.is_set)
    assert caught.value.code == "cancelled" and progressed.is_set()
    cancelled_at = time.monotonic()
    small = client.segment(np.zeros((40, 40, 3), np.uint8), CLASSES)  # the worker is free again
    assert small.labels.shape == (40, 40)
    assert time.monotonic() - cancelled_at < 30  # generous; typically about a second
    assert time.monotonic() - start < 120
    assert "client went away" in local_backend.log_tail(200)
