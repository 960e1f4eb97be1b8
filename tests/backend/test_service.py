"""The HTTP service, over real sockets: results, errors, auth, limits, concurrency, lifecycle."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from urllib.parse import urlparse

import numpy as np
import pytest
import torch

from segearth_backend.protocol import BUNDLE_TYPE, read_bundle, write_bundle
from segearth_backend.service import ServiceSettings, create_app

CLASSES = ["background", "building,roof", "road", "tree,forest", "water"]


def call(url, path, body=None, token=None, content_type=BUNDLE_TYPE, method=None, timeout=60):
    request = urllib.request.Request(url + path, data=body, method=method or ("POST" if body is not None else "GET"))
    request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def segment_body(image, params=None, valid=None, extra=None):
    members = {"params.json": {"classes": CLASSES, **(params or {})}, "image.npy": image}
    if valid is not None:
        members["valid.npy"] = valid
    members.update(extra or {})
    return write_bundle(members)


def error_of(body):
    payload = json.loads(body)
    assert set(payload) == {"error", "message"}
    return payload["error"], payload["message"]


def test_segment_matches_the_in_process_engine(backend_server, tiny_segmenter, rng):
    image = rng.integers(0, 256, size=(150, 260, 3), dtype=np.uint8)
    valid = np.ones((150, 260), bool)
    valid[:20] = False
    params = {"prob_threshold": 0.3, "background_index": 0, "bias_lambda": -0.3, "return_probabilities": True}
    status, body = call(backend_server["url"], "/segment", segment_body(image, params, valid), backend_server["token"])
    assert status == 200
    answer = read_bundle(body, {"meta.json", "labels.npy", "probabilities.npy"})
    expected = tiny_segmenter.predict(image, CLASSES, prob_threshold=0.3, valid=valid)
    np.testing.assert_array_equal(answer["labels.npy"], expected.labels)
    assert answer["probabilities.npy"].dtype == np.float16
    np.testing.assert_allclose(answer["probabilities.npy"], expected.probabilities, atol=1e-3)
    meta = answer["meta.json"]
    assert meta["names"] == ["background", "building", "road", "tree", "water"] and meta["timings"]["total"] > 0


def test_unicode_class_names(backend_server, rng):
    image = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    body = segment_body(image, {"classes": ["Hintergrund", "Gebäude,Dach", "道路"]})
    status, answer = call(backend_server["url"], "/segment", body, backend_server["token"])
    assert status == 200
    meta = read_bundle(answer, {"meta.json", "labels.npy"})["meta.json"]
    assert meta["classes"] == ["Hintergrund", "Gebäude,Dach", "道路"]


def _pickled_npy():
    data = io.BytesIO()
    np.save(data, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("params.json", json.dumps({"classes": CLASSES}))
        archive.writestr("image.npy", data.getvalue())
    return buffer.getvalue()


def _compressed():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("params.json", json.dumps({"classes": CLASSES}))
    return buffer.getvalue()


BAD_REQUESTS = [
    ("garbage body", lambda: b"\x00garbage", 400, "bad_request", "not a SegEarth bundle"),
    ("pickled array", _pickled_npy, 400, "bad_request", "pickles are refused"),
    ("compressed member", _compressed, 400, "bad_request", "compressed"),
    ("no image", lambda: write_bundle({"params.json": {"classes": CLASSES}}), 400, "bad_request", "image.npy"),
    ("unknown member", lambda: write_bundle({"params.json": {}, "x.npy": np.zeros(1)}), 400, "bad_request",
     "Unknown bundle member"),
    ("wrong dtype", lambda: segment_body(np.zeros((8, 8, 3), np.uint16)), 422, "bad_image", "dtype uint8"),
    ("float NaN", lambda: segment_body(np.full((8, 8, 3), np.nan, np.float32)), 422, "bad_image", "NaN"),
    ("one channel", lambda: segment_body(np.zeros((8, 8, 1), np.uint8)), 422, "bad_image", "H x W x 3"),
    ("four channels", lambda: segment_body(np.zeros((8, 8, 4), np.uint8)), 422, "bad_image", "drop alpha"),
    ("0 x 0", lambda: segment_body(np.zeros((0, 0, 3), np.uint8)), 422, "bad_image", "at least 1 x 1"),
    ("empty classes", lambda: segment_body(np.zeros((8, 8, 3), np.uint8), {"classes": []}), 422, "bad_classes",
     "empty"),
    ("duplicate classes", lambda: segment_body(np.zeros((8, 8, 3), np.uint8), {"classes": ["a", "A"]}), 422,
     "bad_classes", "unique"),
    ("unknown field", lambda: segment_body(np.zeros((8, 8, 3), np.uint8), {"colour": "red"}), 422, "bad_parameter",
     "Unknown parameter"),
    ("bad threshold", lambda: segment_body(np.zeros((8, 8, 3), np.uint8), {"prob_threshold": 2}), 422,
     "bad_parameter", "between 0 and 1"),
    ("old protocol", lambda: segment_body(np.zeros((8, 8, 3), np.uint8), {"protocol": 0}), 422, "protocol_mismatch",
     "protocol 0"),
    ("mask shape", lambda: segment_body(np.zeros((8, 8, 3), np.uint8), valid=np.ones((4, 4), bool)), 422,
     "bad_image", "image's size"),
]


@pytest.mark.parametrize("name, make_body, status, code, fragment", BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS])
def test_bad_requests_get_the_right_status(backend_server, name, make_body, status, code, fragment):
    got_status, body = call(backend_server["url"], "/segment", make_body(), backend_server["token"])
    assert got_status == status
    got_code, message = error_of(body)
    assert got_code == code and fragment in message


def test_auth(backend_server):
    body = segment_body(np.zeros((8, 8, 3), np.uint8))
    status, answer = call(backend_server["url"], "/segment", body)
    assert status == 401 and "needs a token" in error_of(answer)[1]
    status, answer = call(backend_server["url"], "/segment", body, token="wrong")
    assert status == 401 and "token is wrong" in error_of(answer)[1]
    status, answer = call(backend_server["url"], "/classes/embed", b"{}", content_type="application/json")
    assert status == 401
    assert call(backend_server["url"], "/health")[0] == 200  # health needs no token


def test_oversized_body_is_refused_before_reading(backend_server):
    """A huge declared size gets 413 at once; the server does not wait for the body."""
    parsed = urlparse(backend_server["url"])
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as conn:
        conn.sendall((f"POST /segment HTTP/1.1\r\nHost: [::1]\r\nAuthorization: Bearer {backend_server['token']}\r\n"
                      f"Content-Type: {BUNDLE_TYPE}\r\nContent-Length: 1000000000000\r\n\r\n").encode())
        reply = conn.recv(65536).decode()
        while not reply.endswith("}"):  # the body may come in a second segment
            chunk = conn.recv(65536).decode()
            if not chunk:
                break
            reply += chunk
    assert reply.startswith("HTTP/1.1 413")
    assert '"error":"too_large"' in reply and "at most 8 MB" in reply


def test_streamed_body_over_the_limit(backend_server):
    """Without a declared size (chunked upload) the limit still holds while reading."""
    import http.client

    parsed = urlparse(backend_server["url"])
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    chunks = (b"\0" * 2**16 for _ in range(8 * 16 + 1))  # 8 MB + 64 KB
    conn.request("POST", "/segment", body=chunks, encode_chunked=True,
                 headers={"Authorization": f"Bearer {backend_server['token']}", "Content-Type": BUNDLE_TYPE})
    response = conn.getresponse()
    assert response.status == 413 and error_of(response.read())[0] == "too_large"
    conn.close()


def test_embed_endpoint(backend_server):
    payload = json.dumps({"classes": ["solar panel", "a,b"]}).encode()
    status, body = call(backend_server["url"], "/classes/embed", payload, backend_server["token"],
                        content_type="application/json")
    assert status == 200 and json.loads(body)["queries"] == 3
    status, body = call(backend_server["url"], "/classes/embed", b"{bad", backend_server["token"], "application/json")
    assert status == 400
    status, body = call(backend_server["url"], "/classes/embed", json.dumps({"classes": [""]}).encode(),
                        backend_server["token"], content_type="application/json")
    assert status == 422 and error_of(body)[0] == "bad_classes"


def test_unknown_route_and_method_answer_json(backend_server):
    status, body = call(backend_server["url"], "/nope")
    assert status == 404 and error_of(body)[0] == "http_error"
    status, body = call(backend_server["url"], "/segment", method="GET")
    assert status == 405


def test_still_healthy_after_200_bad_requests(backend_server):
    for index in range(200):
        body = b"junk" if index % 2 else segment_body(np.zeros((3, 3, 2), np.uint8))
        assert call(backend_server["url"], "/segment", body, backend_server["token"])[0] in (400, 422)
    status, body = call(backend_server["url"], "/health")
    assert status == 200 and json.loads(body)["status"] == "ready"


def test_health_document(backend_server):
    health = json.loads(call(backend_server["url"], "/health")[1])
    assert health["protocol"] == 1 and health["version"] == "0.1.0" and health["auth"] is True
    assert health["model"] == "tiny-clip" and health["upsampler"] == "SimFeatUp (JBU-One)"
    assert health["device"]["type"] == "cpu"


def test_two_concurrent_clients_and_health_while_busy(backend_server, tiny_segmenter, rng):
    images = [rng.integers(0, 256, size=(700, 700, 3), dtype=np.uint8) for _ in range(2)]
    results: dict[int, tuple] = {}

    def worker(index):
        results[index] = call(backend_server["url"], "/segment", segment_body(images[index]), backend_server["token"])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    start = time.monotonic()
    status, body = call(backend_server["url"], "/health", timeout=5)
    assert status == 200 and time.monotonic() - start < 2
    health = json.loads(body)
    assert health["status"] == "busy" and health["queued"] >= 1
    for thread in threads:
        thread.join(120)
    for index in range(2):
        status, body = results[index]
        assert status == 200
        labels = read_bundle(body, {"meta.json", "labels.npy"})["labels.npy"]
        np.testing.assert_array_equal(labels, tiny_segmenter.predict(images[index], CLASSES).labels)


def test_token_never_logged(backend_server):
    assert backend_server["token"] not in backend_server["log"].read_text()


def test_refuses_network_listen_without_token(tmp_path):
    result = subprocess.run([sys.executable, "-m", "segearth_backend", "serve", "--host", "0.0.0.0", "--port", "0"],
                            capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin", "HOME": str(tmp_path)})
    assert result.returncode == 2 and "refusing to listen on 0.0.0.0 without a token" in result.stderr


def test_failed_model_load_exits_with_the_reason(tmp_path):
    ready = tmp_path / "ready.json"
    result = subprocess.run(
        [sys.executable, "-m", "segearth_backend", "serve", "--port", "0", "--ready-file", str(ready),
         "--clip-weights", str(tmp_path / "missing.pt"), "--device", "cpu", "--cache-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "does not exist" in json.loads(ready.read_text())["error"]
    assert "missing.pt' does not exist" in result.stderr and "Traceback" not in result.stderr


def test_sigterm_shuts_down_cleanly(tiny_paths, tmp_path):
    from tests.backend.conftest import launch_server

    process, url, log_path = launch_server(
        ["--model", tiny_paths["model"], "--clip-weights", tiny_paths["clip_weights"], "--upsampler-weights", "none",
         "--device", "cpu", "--cache-dir", str(tmp_path / "c"), "--no-warmup"], tmp_path)
    assert process.stdout.readline().decode().strip() == f"SEGEARTH_BACKEND_READY {url}"
    process.terminate()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says why it stopped.
    assert process.wait(20) in (0, -15)
    log = log_path.read_text()
    assert "Waiting for application shutdown" in log and "Application shutdown complete" in log


# ---------------------------------------------------------------- in-process server (uvicorn in a thread)

class _ThreadServer:
    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(20)


def test_503_while_loading_then_ready(tiny_paths, tmp_path):
    from segearth_backend import load_segmenter

    release = threading.Event()

    def slow_factory():
        release.wait(30)
        return load_segmenter(device="cpu", cache_dir=tmp_path, **tiny_paths)

    app = create_app(ServiceSettings(warmup=False), slow_factory)
    with _ThreadServer(app) as server:
        assert json.loads(call(server.url, "/health")[1])["status"] == "loading"
        status, body = call(server.url, "/segment", segment_body(np.zeros((8, 8, 3), np.uint8)))
        assert status == 503 and error_of(body)[0] == "loading"
        release.set()
        app.state.engine.loaded.wait(30)
        assert json.loads(call(server.url, "/health")[1])["status"] == "ready"
        assert call(server.url, "/segment", segment_body(np.zeros((8, 8, 3), np.uint8)))[0] == 200


def test_cuda_out_of_memory_is_retried_with_smaller_batches(tiny_paths, tmp_path):
    """No GPU here: the real engine is wrapped to fail like CUDA does until the batch is small enough."""
    from segearth_backend import load_segmenter

    segmenter = load_segmenter(device="cpu", cache_dir=tmp_path, batch_size=8, **tiny_paths)
    real_predict = segmenter.predict

    def predict(*args, **kwargs):
        if segmenter.batch_size > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_predict(*args, **kwargs)

    segmenter.predict = predict
    app = create_app(ServiceSettings(warmup=False), lambda: segmenter)
    with _ThreadServer(app) as server:
        app.state.engine.loaded.wait(30)
        assert call(server.url, "/segment", segment_body(np.zeros((30, 30, 3), np.uint8)))[0] == 200
        assert segmenter.batch_size == 2


def test_internal_fault_is_500_and_server_keeps_serving(tiny_paths, tmp_path):
    from segearth_backend import load_segmenter

    segmenter = load_segmenter(device="cpu", cache_dir=tmp_path, **tiny_paths)
    calls = []
    real_predict = segmenter.predict

    def predict(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated fault")
        return real_predict(*args, **kwargs)

    segmenter.predict = predict
    app = create_app(ServiceSettings(warmup=False), lambda: segmenter)
    with _ThreadServer(app) as server:
        app.state.engine.loaded.wait(30)
        status, body = call(server.url, "/segment", segment_body(np.zeros((30, 30, 3), np.uint8)))
        assert status == 500 and error_of(body)[0] == "internal_error" and "simulated fault" not in error_of(body)[1]
        assert call(server.url, "/segment", segment_body(np.zeros((30, 30, 3), np.uint8)))[0] == 200
