"""The service's bounds over real sockets: queue, cancellation, progress, out-of-memory recovery, faults, tokens."""

from __future__ import annotations

import json
import logging
import signal
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


def _slow_upload(port: int, stop: threading.Event) -> socket.socket:
    """A /segment request with the token whose 1 MB body comes one byte per second (in a thread)."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall((f"POST /segment HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                  f"Content-Type: {BUNDLE_TYPE}\r\nContent-Length: 1000000\r\n\r\n").encode())

    def trickle() -> None:
        while not stop.wait(1.0):
            try:
                conn.sendall(b"\0")
            except OSError:
                return

    threading.Thread(target=trickle, daemon=True).start()
    return conn


def test_slow_uploads_hold_no_place_in_the_queue(server):
    """Clients sending their body at 1 byte/s, as many as the queue has places and more, once kept every
    real /segment at 503 busy for up to 300 s: a request takes its place only once its body is in."""
    info = health(server.url)
    places = info["replicas"]["total"] + info["max_queue"]
    port = int(server.url.rsplit(":", 1)[1])
    stop = threading.Event()
    slow = [_slow_upload(port, stop) for _ in range(places + 1)]
    try:
        small = segment_body(np.zeros((40, 40, 3), np.uint8))
        status, body, _ = call(server.url, "/segment", small, TOKEN, timeout=120)
        assert status == 200, body[:300]
        assert health(server.url)["queued"] == 0  # the uploads hold no place...
        assert all(_still_sending(conn) for conn in slow)  # ...and were neither answered nor cut off
    finally:
        stop.set()
        for conn in slow:
            conn.close()


def _still_sending(conn: socket.socket) -> bool:
    """True while the server has neither answered nor closed ``conn`` (it is still reading the body)."""
    conn.setblocking(False)
    try:
        conn.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        conn.setblocking(True)
    return False


def test_a_client_gone_while_sending_is_not_an_internal_error(server):
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall((f"POST /segment HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                      f"Content-Type: {BUNDLE_TYPE}\r\nContent-Length: 1000000\r\n\r\n").encode() + b"\0" * 1000)
    assert wait_for(lambda: "before sending its whole request" in server.log(), 20)
    assert "Traceback" not in server.log() and health(server.url)["status"] == "ready"


# ------------------------------------------------------------------ a stopping backend, a full queue (own servers)

LONG_IMAGE = np.random.default_rng(6).integers(0, 256, size=(1000, 1000, 3), dtype=np.uint8)  # 81 windows


def _post_in_thread(url: str, body: bytes, answers: list) -> threading.Thread:
    thread = threading.Thread(target=lambda: answers.append(call(url, "/segment", body, TOKEN, timeout=300)))
    thread.start()
    return thread


@pytest.mark.parametrize("kind", SERVER_KINDS)
def test_sigterm_during_a_job_answers_503_shutting_down_with_retry_after(kind, parity_dir, tmp_path):
    """A stopping backend once cut the running request off with a plain-text 500 after 10 s."""
    server = ServerProcess([*tiny_server_args(parity_dir, tmp_path / "cache"), *server_args(kind)], tmp_path / "s",
                           env_extra={"SEGEARTH_BACKEND_TOKEN": TOKEN})
    answers: list = []
    try:
        thread = _post_in_thread(server.url, segment_body(LONG_IMAGE, {"request_id": "stopped"}), answers)
        assert wait_for(lambda: (_progress(server, "stopped") or {}).get("state") == "running", 120)
        server.process.send_signal(signal.SIGTERM)
        thread.join(120)
        assert answers, "no answer"
        status, body, headers = answers[0]
        assert status == 503 and error_of(body)[0] == "shutting_down", body[:300]
        assert headers["retry-after"].isdigit() and "again" in error_of(body)[1]
        assert server.process.wait(60) is not None
    finally:
        server.stop()
    assert "Traceback" not in server.log() and "Exception in ASGI application" not in server.log()


def test_retry_after_of_a_full_queue_follows_the_running_work(parity_dir, tmp_path):
    """A full queue once answered Retry-After: 1 while the running request needed seconds more."""
    server = ServerProcess([*tiny_server_args(parity_dir, tmp_path / "cache"), "--max-queue", "0"], tmp_path / "s",
                           env_extra={"SEGEARTH_BACKEND_TOKEN": TOKEN})
    answers: list = []
    try:
        thread = _post_in_thread(server.url, segment_body(LONG_IMAGE, {"request_id": "long"}), answers)
        assert wait_for(lambda: (_progress(server, "long") or {}).get("windows_done", 0) > 0, 300)
        document = _progress(server, "long")
        status, body, headers = call(server.url, "/segment", segment_body(np.zeros((20, 20, 3), np.uint8)), TOKEN)
        assert status == 503 and error_of(body)[0] == "busy"
        done, total = document["windows_done"], document["windows_total"]
        left = document["seconds"] * (total - done) / done  # what the progress so far says
        retry = int(headers["retry-after"])
        assert min(60, left) / 4 - 1 <= retry <= 4 * left + 2, (retry, left, document)
        assert retry >= 2  # the running request needs seconds more
    finally:
        server.stop()
        thread.join(60)


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
    token_file.chmod(0o600)
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


@pytest.mark.parametrize("content, mode, fragment", [
    ("", 0o600, "is empty"), (None, 0o600, "Cannot read the token file"),
    ("secret-for-everyone", 0o644, "may be read or changed by other users"),
    ("secret-for-the-group", 0o640, "chmod 600"),
])
def test_bad_token_file_stops_at_start(tmp_path, content, mode, fragment):
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
        token_file.chmod(mode)
    result = subprocess.run([sys.executable, "-m", "segearth_backend", "serve", "--port", "0", "--token-file",
                             str(token_file)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and fragment in result.stderr
