"""The HTTP service, over real sockets: results, errors, auth, limits, concurrency, lifecycle."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
import time
import zipfile
from urllib.parse import urlparse

import numpy as np
import pytest
import torch

from segearth_backend import __version__
from segearth_backend.serve.app import ServiceSettings, create_app
from segearth_backend.serve.protocol import BUNDLE_TYPE, read_bundle, write_bundle
from tests.backend.helpers import CLASSES, call, error_of, launch_server, segment_body
from tests.backend.service_helpers import ThreadServer
from tests.helpers import minimal_env, read_http_response, wait_for


def test_segment_matches_the_in_process_engine(backend_server, tiny_segmenter, rng):
    image = rng.integers(0, 256, size=(150, 260, 3), dtype=np.uint8)
    valid = np.ones((150, 260), bool)
    valid[:20] = False
    params = {"prob_threshold": 0.3, "background_index": 0, "bias_lambda": -0.3, "return_probabilities": True}
    status, body, _ = call(backend_server["url"], "/segment", segment_body(image, params, valid),
                           backend_server["token"])
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
    status, answer, _ = call(backend_server["url"], "/segment", body, backend_server["token"])
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
    got_status, body, _ = call(backend_server["url"], "/segment", make_body(), backend_server["token"])
    assert got_status == status
    got_code, message = error_of(body)
    assert got_code == code and fragment in message


def test_auth(backend_server):
    body = segment_body(np.zeros((8, 8, 3), np.uint8))
    status, answer, _ = call(backend_server["url"], "/segment", body)
    assert status == 401 and "needs a token" in error_of(answer)[1]
    status, answer, _ = call(backend_server["url"], "/segment", body, token="wrong")
    assert status == 401 and "token is wrong" in error_of(answer)[1]
    status, answer, _ = call(backend_server["url"], "/classes/embed", b"{}", content_type="application/json")
    assert status == 401
    assert call(backend_server["url"], "/health")[0] == 200  # health needs no token
    assert call(backend_server["url"], "/segment", body, token=backend_server["token"])[0] == 200


def _near_misses(token: str) -> list[tuple[str, str]]:
    return [("prefix", token[:-1]), ("first character", token[:1]), ("superset", token + "x"),
            ("prepended", "x" + token), ("upper case", token.upper()), ("swapped case", token.swapcase()),
            ("doubled", token * 2)]


@pytest.mark.parametrize("kind", ["prefix", "first character", "superset", "prepended", "upper case",
                                  "swapped case", "doubled"])
def test_near_miss_tokens_are_refused(backend_server, kind):
    given = dict(_near_misses(backend_server["token"]))[kind]
    assert given != backend_server["token"]
    for path, body, content_type in (("/segment", segment_body(np.zeros((8, 8, 3), np.uint8)), BUNDLE_TYPE),
                                     ("/classes/embed", b'{"classes": ["a"]}', "application/json")):
        status, answer, _ = call(backend_server["url"], path, body, token=given, content_type=content_type)
        assert status == 401 and error_of(answer)[0] == "unauthorized", (path, given)


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Bearer    ", "Basic {token}", "{token}", "bearer",
                                    "Token {token}"])
def test_malformed_authorization_headers_are_refused(backend_server, header):
    body = segment_body(np.zeros((8, 8, 3), np.uint8))
    status, answer, _ = call(backend_server["url"], "/segment", body,
                          headers={"Authorization": header.format(token=backend_server["token"])})
    assert status == 401 and error_of(answer)[0] == "unauthorized"


def test_oversized_body_is_refused_before_reading(backend_server):
    """A huge declared size gets 413 at once; the server does not wait for the body."""
    parsed = urlparse(backend_server["url"])
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as conn:
        conn.sendall((f"POST /segment HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"Authorization: Bearer {backend_server['token']}\r\n"
                      f"Content-Type: {BUNDLE_TYPE}\r\nContent-Length: 1000000000000\r\n\r\n").encode())
        reply = read_http_response(conn).decode()
    assert reply.startswith("HTTP/1.1 413")
    head, _, body = reply.partition("\r\n\r\n")
    code, message = error_of(body.encode())
    assert code == "too_large" and "at most 8 MB" in message


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
    status, body, _ = call(backend_server["url"], "/classes/embed", payload, backend_server["token"],
                        content_type="application/json")
    assert status == 200 and json.loads(body)["queries"] == 3
    status, body, _ = call(backend_server["url"], "/classes/embed", b"{bad", backend_server["token"],
                           "application/json")
    assert status == 400
    status, body, _ = call(backend_server["url"], "/classes/embed", json.dumps({"classes": [""]}).encode(),
                        backend_server["token"], content_type="application/json")
    assert status == 422 and error_of(body)[0] == "bad_classes"


def test_unknown_route_and_method_answer_json(backend_server):
    status, body, _ = call(backend_server["url"], "/nope")
    assert status == 404 and error_of(body)[0] == "http_error"
    status, body, _ = call(backend_server["url"], "/segment", method="GET")
    assert status == 405


def test_still_healthy_after_200_bad_requests(backend_server):
    for index in range(200):
        body = b"junk" if index % 2 else segment_body(np.zeros((3, 3, 2), np.uint8))
        assert call(backend_server["url"], "/segment", body, backend_server["token"])[0] in (400, 422)
    status, body, _ = call(backend_server["url"], "/health")
    assert status == 200 and json.loads(body)["status"] == "ready"


def test_health_document(backend_server):
    health = json.loads(call(backend_server["url"], "/health")[1])
    assert health["protocol"] == 1 and health["version"] == __version__ and health["auth"] is True
    assert health["model"] == "tiny-clip" and health["upsampler"] == "SimFeatUp (JBU-One)"
    assert health["device"]["type"] == "cpu"


def test_two_concurrent_clients_and_health_while_busy(backend_server, tiny_segmenter, rng):
    images = [rng.integers(0, 256, size=(700, 700, 3), dtype=np.uint8) for _ in range(2)]
    results: dict[int, tuple] = {}

    def worker(index):
        # The second waits behind the first: on a loaded machine both take minutes (no time is asserted here).
        results[index] = call(backend_server["url"], "/segment", segment_body(images[index]), backend_server["token"],
                              timeout=600)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    seen: list[dict] = []

    def busy() -> bool:
        start = time.monotonic()
        status, body, _ = call(backend_server["url"], "/health", timeout=30)
        assert status == 200
        seen.append({**json.loads(body), "seconds": time.monotonic() - start})
        return seen[-1]["status"] == "busy" and seen[-1]["queued"] >= 1

    wait_for(busy, timeout=120, message="the server never said it was busy while two requests ran")
    # /health answers from the event loop, not from behind the inference queue.
    assert min(entry["seconds"] for entry in seen) < 10
    for thread in threads:
        thread.join(900)
    for index in range(2):
        status, body, _ = results[index]
        assert status == 200
        labels = read_bundle(body, {"meta.json", "labels.npy"})["labels.npy"]
        np.testing.assert_array_equal(labels, tiny_segmenter.predict(images[index], CLASSES).labels)


def test_token_never_logged(backend_server):
    assert backend_server["token"] not in backend_server["log"].read_text()


def test_refuses_network_listen_without_token(tmp_path):
    result = subprocess.run([sys.executable, "-m", "segearth_backend", "serve", "--host", "0.0.0.0", "--port", "0"],
                            capture_output=True, text=True, timeout=60, env=minimal_env(tmp_path))
    assert result.returncode == 2 and "refusing to listen on 0.0.0.0 without a token" in result.stderr


def test_failed_model_load_exits_with_the_reason(tmp_path):
    ready = tmp_path / "ready.json"
    result = subprocess.run(
        [sys.executable, "-m", "segearth_backend", "serve", "--port", "0", "--ready-file", str(ready),
         "--clip-weights", str(tmp_path / "missing.pt"), "--device", "cpu", "--cache-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    error = json.loads(ready.read_text())["error"]
    assert "These weight files are missing" in error and str(tmp_path / "missing.pt") in error
    assert str(tmp_path / "missing.pt") in result.stderr and "Traceback" not in result.stderr


def test_sigterm_shuts_down_cleanly(tiny_paths, tmp_path):
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

def test_503_while_loading_then_ready(tiny_paths, tmp_path):
    from segearth_backend import load_segmenter

    release = threading.Event()

    def slow_factory():
        release.wait(30)
        return load_segmenter(device="cpu", cache_dir=tmp_path, **tiny_paths)

    app = create_app(ServiceSettings(warmup=False), slow_factory)
    with ThreadServer(app) as server:
        assert json.loads(call(server.url, "/health")[1])["status"] == "loading"
        status, body, _ = call(server.url, "/segment", segment_body(np.zeros((8, 8, 3), np.uint8)))
        assert status == 503 and error_of(body)[0] == "loading"
        release.set()
        app.state.engine.loaded.wait(30)
        assert json.loads(call(server.url, "/health")[1])["status"] == "ready"
        assert call(server.url, "/segment", segment_body(np.zeros((8, 8, 3), np.uint8)))[0] == 200


def _failing_like_cuda(segmenter, fails_while):
    """Wrap the real engine so it raises CUDA's out-of-memory error while ``fails_while(batch_size)``."""
    real_predict = segmenter.predict

    def predict(*args, **kwargs):
        if fails_while(segmenter.batch_size):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_predict(*args, **kwargs)

    segmenter.predict = predict
    return segmenter


def test_cuda_out_of_memory_is_retried_with_smaller_batches(tiny_paths, tmp_path, tiny_segmenter, rng):
    """No GPU here: the real engine is wrapped to fail like CUDA does until the batch is small enough."""
    from segearth_backend import load_segmenter

    segmenter = _failing_like_cuda(load_segmenter(device="cpu", cache_dir=tmp_path, batch_size=8, **tiny_paths),
                                   lambda batch: batch > 2)
    image = rng.integers(0, 256, size=(250, 300, 3), dtype=np.uint8)
    app = create_app(ServiceSettings(warmup=False), lambda: segmenter)
    with ThreadServer(app) as server:
        app.state.engine.loaded.wait(30)
        status, body, _ = call(server.url, "/segment", segment_body(image, {"return_probabilities": True}))
        assert status == 200 and segmenter.batch_size == 2
        answer = read_bundle(body, {"meta.json", "labels.npy", "probabilities.npy"})
        expected = tiny_segmenter.predict(image, CLASSES)
        np.testing.assert_array_equal(answer["labels.npy"], expected.labels)
        np.testing.assert_allclose(answer["probabilities.npy"], expected.probabilities, atol=1e-3)


def test_out_of_memory_at_one_window_is_a_503(tiny_paths, tmp_path):
    from segearth_backend import load_segmenter

    segmenter = _failing_like_cuda(load_segmenter(device="cpu", cache_dir=tmp_path, batch_size=4, **tiny_paths),
                                   lambda batch: True)
    app = create_app(ServiceSettings(warmup=False), lambda: segmenter)
    with ThreadServer(app) as server:
        app.state.engine.loaded.wait(30)
        status, body, _ = call(server.url, "/segment", segment_body(np.zeros((30, 30, 3), np.uint8)))
        code, message = error_of(body)
        assert status == 503 and code == "out_of_memory" and "smaller blocks" in message
        assert segmenter.batch_size == 1
        assert json.loads(call(server.url, "/health")[1])["status"] == "ready"


@pytest.mark.parametrize("failure, fragment", [
    ("weights", "CLIP weights file"),
    ("crash", "RuntimeError: the loader crashed"),
])
def test_model_that_fails_to_load_answers_503_with_the_reason(tiny_paths, tmp_path, failure, fragment):
    from segearth_backend import load_segmenter

    def factory():
        if failure == "crash":
            raise RuntimeError("the loader crashed")
        return load_segmenter(device="cpu", cache_dir=tmp_path, model=tiny_paths["model"],
                              clip_weights=str(tmp_path / "missing.pt"))

    app = create_app(ServiceSettings(warmup=False), factory)
    with ThreadServer(app) as server:
        app.state.engine.loaded.wait(30)
        health = json.loads(call(server.url, "/health")[1])
        assert health["status"] == "failed" and fragment in health["error"]
        status, body, _ = call(server.url, "/segment", segment_body(np.zeros((8, 8, 3), np.uint8)))
        code, message = error_of(body)
        assert status == 503 and code == "model_failed" and "failed to load" in message  # details: /health
        status, body, _ = call(server.url, "/classes/embed", b'{"classes": ["a"]}', content_type="application/json")
        assert status == 503 and error_of(body)[0] == "model_failed"


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
    with ThreadServer(app) as server:
        app.state.engine.loaded.wait(30)
        status, body, _ = call(server.url, "/segment", segment_body(np.zeros((30, 30, 3), np.uint8)))
        assert status == 500 and error_of(body)[0] == "internal_error" and "simulated fault" not in error_of(body)[1]
        assert call(server.url, "/segment", segment_body(np.zeros((30, 30, 3), np.uint8)))[0] == 200
