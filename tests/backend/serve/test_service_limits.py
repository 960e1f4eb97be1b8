"""The service's bounds over real sockets: queue, cancellation, progress, out-of-memory recovery, faults, tokens."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from segearth_backend import load_segmenter
from segearth_backend.serve.app import ServiceSettings, create_app
from segearth_backend.serve.protocol import BUNDLE_TYPE, read_bundle
from tests.backend.service_helpers import (
    CLASSES,
    SERVER_KINDS,
    TOKEN,
    ServerProcess,
    ThreadServer,
    call,
    error_of,
    health,
    raw_request,
    segment_body,
    server_args,
    tiny_server_args,
    wait_for,
)


@pytest.fixture(scope="module")
def shared_segmenter(tiny_paths, tmp_path_factory):
    return load_segmenter(device="cpu", cache_dir=tmp_path_factory.mktemp("cache"), batch_size=8, **tiny_paths)


class Gate:
    """Holds the real segmenter's ``predict`` until released (to keep the worker busy on cue)."""

    def __init__(self, segmenter):
        self.segmenter = segmenter
        self.real = segmenter.predict
        self.entered = threading.Event()
        self.release = threading.Event()

    def predict(self, *args, **kwargs):
        self.entered.set()
        if not self.release.wait(60):
            raise RuntimeError("gate never released")
        return self.real(*args, **kwargs)


# ------------------------------------------------------------------ bounded queue

def test_full_queue_answers_503_with_retry_after_before_the_body(shared_segmenter, monkeypatch):
    gate = Gate(shared_segmenter)
    monkeypatch.setattr(shared_segmenter, "predict", gate.predict)
    app = create_app(ServiceSettings(warmup=False, max_queue=1), lambda: shared_segmenter)
    results: dict[int, int] = {}
    with ThreadServer(app) as server:
        assert app.state.engine.loaded.wait(30)
        body = segment_body(np.zeros((30, 30, 3), np.uint8))

        def post(index: int) -> None:
            results[index] = call(server.url, "/segment", body)[0]

        first = threading.Thread(target=post, args=(0,))
        second = threading.Thread(target=post, args=(1,))
        try:
            first.start()
            assert gate.entered.wait(30)  # one runs
            second.start()
            assert wait_for(lambda: app.state.engine.admitted == 2, 30)  # one waits
            reply = raw_request(server.url, f"POST /segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                                f"{BUNDLE_TYPE}\r\nContent-Length: 5000000").decode()  # the body never comes
            assert reply.startswith("HTTP/1.1 503")
            assert "retry-after:" in reply.lower() and '"error":"busy"' in reply
            assert json.loads(call(server.url, "/health")[1])["queued"] == 2
        finally:
            gate.release.set()
            first.join(60)
            if second.ident is not None:
                second.join(60)
    assert results == {0: 200, 1: 200}


# ------------------------------------------------------------------ cancellation and progress (real process)

@pytest.fixture(scope="module", params=SERVER_KINDS)
def server(request, parity_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    process = ServerProcess([*tiny_server_args(parity_dir, tmp / "cache"), "--max-queue", "2",
                             *server_args(request.param)], tmp, env_extra={"SEGEARTH_BACKEND_TOKEN": TOKEN})
    yield process
    process.stop()


def _progress(server, request_id):
    status, body, _ = call(server.url, f"/progress/{request_id}", token=TOKEN)
    return json.loads(body) if status == 200 else None


def test_progress_of_a_named_request(server):
    image = np.random.default_rng(3).integers(0, 256, size=(700, 700, 3), dtype=np.uint8)
    seen = []
    done = threading.Event()

    def poll():
        while not done.is_set():
            document = _progress(server, "progress-test")
            if document:
                seen.append(document)
            time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    status, body, _ = call(server.url, "/segment", segment_body(image, {"request_id": "progress-test"}), TOKEN)
    done.set()
    poller.join()
    assert status == 200
    assert read_bundle(body, {"meta.json", "labels.npy"})["meta.json"]["request_id"] == "progress-test"
    final = _progress(server, "progress-test")
    assert final["state"] == "done" and final["windows_done"] == final["windows_total"] == 36
    running = [d for d in seen if d["state"] == "running"]
    assert any(0 < d["windows_done"] < 36 for d in running) and all(d["windows_done"] <= 36 for d in running)
    counts = [d["windows_done"] for d in running]
    assert counts == sorted(counts)


def test_a_dropped_connection_stops_the_work_and_frees_the_worker(server):
    big = np.random.default_rng(4).integers(0, 256, size=(1800, 1800, 3), dtype=np.uint8)  # 256 windows
    body = segment_body(big, {"request_id": "dropped"})
    port = int(server.url.rsplit(":", 1)[1])
    conn = socket.create_connection(("127.0.0.1", port), timeout=30)
    conn.sendall((f"POST /segment HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                  f"Content-Type: {BUNDLE_TYPE}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
    assert wait_for(lambda: (_progress(server, "dropped") or {}).get("windows_done", 0) >= 2, 120)
    conn.close()  # the client goes away
    start = time.monotonic()
    assert wait_for(lambda: _progress(server, "dropped")["state"] == "cancelled", 30)
    stopped = _progress(server, "dropped")
    assert stopped["windows_done"] < stopped["windows_total"] == 256
    small = segment_body(np.zeros((40, 40, 3), np.uint8))
    assert call(server.url, "/segment", small, TOKEN, timeout=30)[0] == 200
    assert time.monotonic() - start < 30  # generous: typically about a second
    assert health(server.url)["status"] == "ready"
    log = server.log()
    assert "client went away" in log and "Traceback" not in log and "internal error" not in log


def test_a_client_gone_while_sending_is_not_an_internal_error(server):
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall((f"POST /segment HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                      f"Content-Type: {BUNDLE_TYPE}\r\nContent-Length: 1000000\r\n\r\n").encode() + b"\0" * 1000)
    assert wait_for(lambda: "before sending its whole request" in server.log(), 20)
    assert "Traceback" not in server.log() and health(server.url)["status"] == "ready"


# ------------------------------------------------------------------ out of memory

def _oom_app(segmenter, fail_above: int, recover_after: int = 2):
    """The real engine, made to fail like CUDA does while its batch is larger than ``fail_above``."""
    real = segmenter.predict
    calls = []

    def predict(*args, **kwargs):
        calls.append(segmenter.batch_size)
        if segmenter.batch_size > fail_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    segmenter.predict = predict
    return create_app(ServiceSettings(warmup=False, oom_recover_after=recover_after), lambda: segmenter), calls


def test_out_of_memory_retry_gives_the_normal_answer_and_the_batch_size_recovers(tiny_paths, tmp_path):
    reference = load_segmenter(device="cpu", cache_dir=tmp_path / "a", **tiny_paths)
    segmenter = load_segmenter(device="cpu", cache_dir=tmp_path / "b", batch_size=8, **tiny_paths)
    image = np.random.default_rng(5).integers(0, 256, size=(260, 300, 3), dtype=np.uint8)
    expected = reference.predict(image, CLASSES, prob_threshold=0.2)
    app, calls = _oom_app(segmenter, fail_above=2, recover_after=2)
    with ThreadServer(app) as server:
        assert app.state.engine.loaded.wait(30)
        body = segment_body(image, {"prob_threshold": 0.2, "return_probabilities": True})
        status, answer, _ = call(server.url, "/segment", body)
        assert status == 200 and calls == [8, 4, 2]
        got = read_bundle(answer, {"meta.json", "labels.npy", "probabilities.npy"})
        np.testing.assert_array_equal(got["labels.npy"], expected.labels)
        np.testing.assert_allclose(got["probabilities.npy"], expected.probabilities, atol=1e-3)
        assert health(server.url)["batch_size"] == 2
        assert call(server.url, "/segment", segment_body(np.zeros((20, 20, 3), np.uint8)))[0] == 200
        assert health(server.url)["batch_size"] == 8  # two successes: the configured size is tried again
        assert call(server.url, "/segment", segment_body(np.zeros((20, 20, 3), np.uint8)))[0] == 200
        assert calls[-3:] == [8, 4, 2]


def test_out_of_memory_at_one_window_is_503(tiny_paths, tmp_path):
    segmenter = load_segmenter(device="cpu", cache_dir=tmp_path, batch_size=4, **tiny_paths)
    app, calls = _oom_app(segmenter, fail_above=0)
    with ThreadServer(app) as server:
        assert app.state.engine.loaded.wait(30)
        status, body, _ = call(server.url, "/segment", segment_body(np.zeros((20, 20, 3), np.uint8)))
        assert status == 503 and error_of(body)[0] == "out_of_memory" and calls == [4, 2, 1]
        assert health(server.url)["status"] == "ready"


# ------------------------------------------------------------------ internal faults

def test_internal_fault_is_a_generic_500_with_one_logged_traceback(shared_segmenter, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("secret detail /home/someone/data.tif")

    monkeypatch.setattr(shared_segmenter, "predict", broken)
    app = create_app(ServiceSettings(warmup=False), lambda: shared_segmenter)
    with caplog.at_level(logging.INFO), ThreadServer(app) as server:
        assert app.state.engine.loaded.wait(30)
        status, body, _ = call(server.url, "/segment", segment_body(np.zeros((20, 20, 3), np.uint8)))
        code, message = error_of(body)
        assert status == 500 and code == "internal_error"
        assert "secret" not in message and "RuntimeError" not in message and "reference" in message
        reference = message.split("reference ")[1].split(" ")[0]
        monkeypatch.undo()
        assert call(server.url, "/segment", segment_body(np.zeros((20, 20, 3), np.uint8)))[0] == 200
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert text.count("Traceback") == 1 and "secret detail" in text and reference in text
    assert "Exception in ASGI application" not in text and not any(r.exc_info for r in caplog.records)


# ------------------------------------------------------------------ tokens

def test_token_file(parity_dir, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("file-token-123\n")
    server = ServerProcess([*tiny_server_args(parity_dir, tmp_path / "cache", "none"), "--no-warmup",
                            "--token-file", str(token_file)], tmp_path / "s")
    try:
        assert call(server.url, "/segment", segment_body(np.zeros((8, 8, 3), np.uint8)))[0] == 401
        assert call(server.url, "/segment", segment_body(np.zeros((8, 8, 3), np.uint8)), "file-token-123")[0] == 200
        assert "file-token-123" not in server.log() and "command line" not in server.log()
    finally:
        server.stop()


def test_token_on_the_command_line_is_warned_about(parity_dir, tmp_path):
    server = ServerProcess([*tiny_server_args(parity_dir, tmp_path / "cache", "none"), "--no-warmup",
                            "--token", "cli-token-456"], tmp_path / "s")
    try:
        assert call(server.url, "/health", token="cli-token-456")[0] == 200
        assert "token was given on the command line" in server.log() and "cli-token-456" not in server.log()
    finally:
        server.stop()


@pytest.mark.parametrize("content, fragment", [("", "is empty"), (None, "Cannot read the token file")])
def test_bad_token_file_stops_at_start(tmp_path, content, fragment):
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    result = subprocess.run([sys.executable, "-m", "segearth_backend", "serve", "--port", "0", "--token-file",
                             str(token_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and fragment in result.stderr
