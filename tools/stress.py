"""`make stress`: many clients against one real backend process, and the many-classes request.

1. *Known answers*: a backend with the tiny test weights; ``--clients`` threads
   each send ``--requests`` blocks (random sizes, class lists, thresholds,
   masks, with and without probabilities) through the plugin's client, and
   every answer is compared with the engine run in this process. Reports
   errors (must be 0), throughput and the server's peak memory.
2. *Many classes*: a backend with the full-size image tower (ViT-B/16, D = 512,
   JBU-One; random weights, a small text tower: the image-side memory is the
   real one) gets a 512 x 512 block with 254 classes x 4 synonyms, labels only
   and then with probabilities; reports the server's peak memory after each.
   ``--backend-path`` runs that server from another checkout (to compare).
3. *Clients that jam*: a backend with the tiny weights (``--max-queue 1``) and
   - ``--idle-sockets`` connections that send nothing or stall in their request head: how fast
     ``/health`` answers while they are open, and how long until the server has closed them all;
   - ``--slow-clients`` uploads at one byte per second (with the token): whether real ``/segment``
     requests sent meanwhile are answered, and how fast;
   - a ``params.json`` of ``--json-mb`` megabytes: the answer (413, before parsing) and how long
     ``/health`` takes meanwhile (the plugin waits 10 s).
   Each case reports ``ok``; one that is not makes the exit code 1. ``--backend-path`` runs that
   server from another checkout too.

Writes ``bench_out/stress.json`` and prints a summary. Linux only (reads ``/proc``).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PARITY = ROOT / "tests" / "data" / "parity"
TOKEN = "stress-token-0d9c"
CLASS_POOL = ["background", "building,roof,house", "road,street", "tree,forest", "water,river", "grass",
              "bare soil", "car", "parking lot", "field,cropland"]


def say(text: str) -> None:
    print(f"[stress] {text}", flush=True)


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


class Server:
    """``python -m segearth_backend serve`` in a subprocess, with a token; ``peak_mb()`` reads VmHWM."""

    def __init__(self, args: list[str], workdir: Path, python_path: Optional[str] = None) -> None:
        ready, self.log = workdir / "ready.json", workdir / "server.log"
        env = dict(os.environ, SEGEARTH_BACKEND_TOKEN=TOKEN)
        # This checkout's backend unless another is named (the venv's editable install may be another one's).
        env["PYTHONPATH"] = (python_path or str(ROOT / "backend")) + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "segearth_backend", "serve", "--port", "0",
                                             "--ready-file", str(ready), "--device", "cpu", *args],
                                            stdout=subprocess.DEVNULL, stderr=log, env=env)
        deadline = time.monotonic() + 600
        while not ready.is_file():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"the backend did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)
        self.url = json.loads(ready.read_text())["url"]

    def peak_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def known_answers(clients: int, requests: int, workdir: Path) -> dict[str, Any]:
    from segearth_backend import load_segmenter
    from segearth_qgis.client.backend_client import BackendClient, BackendError

    rng = np.random.default_rng(2024)
    jobs = []
    for _ in range(clients * requests):
        height, width = (int(v) for v in rng.integers(40, 600, size=2))
        classes = [str(c) for c in rng.choice(CLASS_POOL, size=int(rng.integers(2, 8)), replace=False)]
        valid = rng.random((height, width)) > 0.05 if rng.random() < 0.5 else None
        jobs.append({"image": rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), "classes": classes,
                     "threshold": float(rng.choice([0.0, 0.2, 0.5])), "valid": valid,
                     "probabilities": bool(rng.random() < 0.5)})
    say(f"computing {len(jobs)} reference answers in this process")
    engine = load_segmenter(model=str(PARITY / "tiny-clip.json"), clip_weights=str(PARITY / "tiny-clip.pt"),
                            upsampler_weights=str(PARITY / "tiny-simfeatup.ckpt"), device="cpu",
                            cache_dir=workdir / "reference-cache")
    expected = [engine.predict(j["image"], j["classes"], j["threshold"], valid=j["valid"]) for j in jobs]
    del engine

    workdir.mkdir(parents=True, exist_ok=True)
    server = Server(["--model", str(PARITY / "tiny-clip.json"), "--clip-weights", str(PARITY / "tiny-clip.pt"),
                     "--upsampler-weights", str(PARITY / "tiny-simfeatup.ckpt"), "--cache-dir",
                     str(workdir / "server-cache"), "--max-queue", str(clients)], workdir)
    errors: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        backend = BackendClient(server.url, TOKEN, timeout=600)
        for number in range(index * requests, (index + 1) * requests):
            job, reference = jobs[number], expected[number]
            try:
                answer = backend.segment(job["image"], job["classes"], prob_threshold=job["threshold"],
                                         valid=job["valid"], probabilities=job["probabilities"],
                                         progress=(lambda d, t: None) if number % 2 else None)
                problem = None
                if not np.array_equal(answer.labels, reference.labels):
                    problem = f"labels differ in {(answer.labels != reference.labels).sum()} pixels"
                elif job["probabilities"] and np.abs(answer.probabilities - reference.probabilities).max() > 1e-3:
                    problem = "probabilities differ"
            except BackendError as error:
                problem = f"{error.code}: {error}"
            if problem:
                with lock:
                    errors.append(f"request {number}: {problem}")

    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - start
    peak = server.peak_mb()
    server.stop()
    pixels = sum(j["image"].shape[0] * j["image"].shape[1] for j in jobs)
    return {"clients": clients, "requests_per_client": requests, "requests": len(jobs), "errors": len(errors),
            "error_list": errors[:20], "seconds": round(seconds, 1),
            "requests_per_s": round(len(jobs) / seconds, 2), "megapixels": round(pixels / 1e6, 2),
            "server_peak_rss_mb": round(peak)}


def full_size_model(workdir: Path) -> tuple[Path, Path, Path]:
    """A ViT-B/16 image tower (D = 512) with a small text tower, and a JBU-One, random weights, on disk."""
    import torch
    from open_clip.model import CLIP

    from segearth_backend.upsampler.jbu import JBUOne

    config = {"embed_dim": 512, "quick_gelu": True,
              "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    config_path, clip_path, upsampler_path = workdir / "vitb16-image.json", workdir / "clip.pt", workdir / "up.pt"
    config_path.write_text(json.dumps(config))
    torch.save(CLIP(**config).state_dict(), clip_path)
    torch.save(JBUOne(512).state_dict(), upsampler_path)
    return config_path, clip_path, upsampler_path


def many_classes(workdir: Path, synonyms: int, backend_path: Optional[str]) -> dict[str, Any]:
    from segearth_qgis.client.backend_client import BackendClient

    config, clip, upsampler = full_size_model(workdir)
    server = Server(["--model", str(config), "--clip-weights", str(clip), "--upsampler-weights", str(upsampler),
                     "--cache-dir", str(workdir / "many-cache"), "--max-request-mb", "64"], workdir, backend_path)
    try:
        client = BackendClient(server.url, TOKEN, timeout=3600)
        classes = [",".join(f"class {k} synonym {j}" for j in range(synonyms)) for k in range(254)]
        image = np.random.default_rng(0).integers(0, 256, size=(512, 512, 3), dtype=np.uint8)
        report: dict[str, Any] = {"image": "512x512", "classes": 254, "queries": 254 * synonyms,
                                  "backend": backend_path or "this checkout", "after_load_mb": round(server.peak_mb())}
        start = time.monotonic()
        client.embed_classes(classes)
        report["embed_seconds"] = round(time.monotonic() - start, 1)
        report["after_embed_mb"] = round(server.peak_mb())
        for probabilities in (False, True):
            start = time.monotonic()
            answer = client.segment(image, classes, probabilities=probabilities)
            name = "with_probabilities" if probabilities else "labels_only"
            report[f"{name}_seconds"] = round(time.monotonic() - start, 1)
            report[f"{name}_peak_mb"] = round(server.peak_mb())
            report[f"{name}_server_timings"] = {k: round(v, 2) for k, v in answer.meta.get("timings", {}).items()}
        return report
    finally:
        server.stop()


def timed_health(url: str, timeout: float = 30.0) -> tuple[int, float]:
    """(status, seconds) of one ``GET /health``; status 0 when it got no answer within ``timeout``."""
    host, port = url.split("//")[1].rsplit(":", 1)
    start = time.monotonic()
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request("GET", "/health")
        status = connection.getresponse().status
    except OSError:
        status = 0
    finally:
        connection.close()
    return status, round(time.monotonic() - start, 3)


def while_running(work: Callable[[], Any], url: str) -> tuple[Any, list[tuple[int, float]]]:
    """``work()`` on a thread, with ``/health`` asked every 0.5 s meanwhile: (its result, the health answers)."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(work()))
    thread.start()
    answers = []
    while thread.is_alive():
        answers.append(timed_health(url))
        thread.join(0.5)
    return (result[0] if result else None), answers


def idle_sockets(server: Server, count: int) -> dict[str, Any]:
    """``count`` connections that send nothing (a third stall in their request head)."""
    port = int(server.url.rsplit(":", 1)[1])
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    for conn in sockets[::3]:
        conn.sendall(b"GET /health HTTP/1.1\r\nX-Stall: ")
    opened = time.monotonic()
    status, seconds = timed_health(server.url)
    open_left = set(range(count))
    while open_left and time.monotonic() - opened < 120:
        for index in list(open_left):
            conn = sockets[index]
            conn.setblocking(False)
            try:
                if conn.recv(1024) == b"":
                    open_left.discard(index)
            except BlockingIOError:
                pass
            except OSError:
                open_left.discard(index)
        time.sleep(0.2)
    closed_after = round(time.monotonic() - opened, 1)
    for conn in sockets:
        conn.close()
    return {"sockets": count, "health_status": status, "health_seconds": seconds,
            "all_closed_by_server": not open_left, "closed_within_s": closed_after,
            "ok": status == 200 and not open_left}


def slow_clients(server: Server, count: int, requests: int) -> dict[str, Any]:
    """``count`` uploads at 1 byte/s while ``requests`` real blocks are segmented through the plugin's client."""
    from segearth_qgis.client.backend_client import BackendClient, BackendError

    port = int(server.url.rsplit(":", 1)[1])
    stop = threading.Event()
    uploads = []
    for _ in range(count):
        conn = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn.sendall((f"POST /segment HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                      "Content-Type: application/x-segearth-bundle\r\nContent-Length: 1000000\r\n\r\n").encode())
        uploads.append(conn)

    def trickle() -> None:
        while not stop.wait(1.0):
            for conn in uploads:
                with contextlib.suppress(OSError):  # the server cut it off (--body-timeout)
                    conn.sendall(b"\0")

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    client = BackendClient(server.url, TOKEN, timeout=300)
    rng = np.random.default_rng(3)
    seconds, failures = [], []
    try:
        for _ in range(requests):
            image = rng.integers(0, 256, size=(200, 200, 3), dtype=np.uint8)  # a new one: no re-query cache
            start = time.monotonic()
            try:
                client.segment(image, ["road", "roof", "tree"])
                seconds.append(round(time.monotonic() - start, 2))
            except BackendError as error:
                failures.append(f"{error.code}: {error.message[:120]}")
    finally:
        stop.set()
        sender.join(5)
        for conn in uploads:
            conn.close()
    return {"slow_uploads": count, "requests": requests, "answered": len(seconds), "failures": failures,
            "seconds": seconds, "ok": not failures}


def large_json(server: Server, megabytes: int) -> dict[str, Any]:
    """A /segment bundle whose params.json is ``megabytes`` MB of valid JSON."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("params.json", json.dumps({"classes": ["road"], "pad": "x" * (megabytes * 2**20)}))
        image = io.BytesIO()
        np.save(image, np.zeros((8, 8, 3), np.uint8))
        archive.writestr("image.npy", image.getvalue())
    body = buffer.getvalue()
    host, port = server.url.split("//")[1].rsplit(":", 1)

    def send() -> tuple[int, str, float]:
        start = time.monotonic()
        connection = http.client.HTTPConnection(host, int(port), timeout=300)
        try:
            connection.request("POST", "/segment", body=body, headers={
                "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-segearth-bundle"})
            response = connection.getresponse()
            answer = json.loads(response.read())
            return response.status, str(answer.get("error")), round(time.monotonic() - start, 2)
        finally:
            connection.close()

    (status, code, seconds), health = while_running(send, server.url)
    slowest = max((s for _, s in health), default=0.0)
    return {"params_json_mb": megabytes, "status": status, "error": code, "answer_seconds": seconds,
            "health_asked": len(health), "health_slowest_seconds": slowest,
            "health_all_answered": all(h == 200 for h, _ in health),
            "ok": status == 413 and slowest < 10 and all(h == 200 for h, _ in health)}


def jamming_clients(workdir: Path, sockets: int, slow: int, json_mb: int,
                    backend_path: Optional[str]) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    server = Server(["--model", str(PARITY / "tiny-clip.json"), "--clip-weights", str(PARITY / "tiny-clip.pt"),
                     "--upsampler-weights", str(PARITY / "tiny-simfeatup.ckpt"), "--cache-dir",
                     str(workdir / "cache"), "--max-queue", "1", "--max-request-mb", str(json_mb + 64)], workdir,
                    backend_path)
    try:
        report: dict[str, Any] = {"backend": backend_path or "this checkout"}
        say(f"{sockets} idle and stalled connections")
        report["idle_sockets"] = idle_sockets(server, sockets)
        say(json.dumps(report["idle_sockets"]))
        say(f"{slow} uploads at 1 byte/s while real blocks are segmented")
        report["slow_clients"] = slow_clients(server, slow, 3)
        say(json.dumps(report["slow_clients"]))
        say(f"a params.json of {json_mb} MB")
        report["large_json"] = large_json(server, json_mb)
        say(json.dumps(report["large_json"]))
        report["server_peak_rss_mb"] = round(server.peak_mb())
        return report
    finally:
        server.stop()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--synonyms", type=int, default=4, help="synonyms per class in the many-classes request")
    parser.add_argument("--skip-known", action="store_true", help="only the many-classes request")
    parser.add_argument("--skip-many", action="store_true", help="skip the many-classes request")
    parser.add_argument("--skip-jam", action="store_true", help="skip the clients that try to jam the backend")
    parser.add_argument("--idle-sockets", type=int, default=300, help="idle connections opened at once")
    parser.add_argument("--slow-clients", type=int, default=4, help="uploads at 1 byte/s at once")
    parser.add_argument("--json-mb", type=int, default=100, help="size of the oversized params.json")
    parser.add_argument("--backend-path", help="PYTHONPATH for the many-classes and jamming servers (another "
                        "checkout's backend folder, to compare)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "stress.json")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    report: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()}
    with tempfile.TemporaryDirectory(prefix="segearth-stress-") as tmp:
        workdir = Path(tmp)
        if not args.skip_known:
            say(f"{args.clients} clients x {args.requests} requests against one backend (tiny weights)")
            report["known_answers"] = known_answers(args.clients, args.requests, workdir / "known")
            say(json.dumps(report["known_answers"]))
        if not args.skip_many:
            say(f"512 x 512 with 254 classes x {args.synonyms} synonyms (ViT-B/16 image tower, random weights)")
            (workdir / "many").mkdir()
            report["many_classes"] = many_classes(workdir / "many", args.synonyms, args.backend_path)
            say(json.dumps(report["many_classes"]))
        if not args.skip_jam:
            say("clients that try to jam the backend (tiny weights, --max-queue 1)")
            report["jamming_clients"] = jamming_clients(workdir / "jam", args.idle_sockets, args.slow_clients,
                                                        args.json_mb, args.backend_path)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    say(f"report: {args.out}")
    failed = report.get("known_answers", {}).get("errors", 0)
    jammed = [name for name, case in report.get("jamming_clients", {}).items()
              if isinstance(case, dict) and not case.get("ok")]
    if jammed:
        say(f"not ok: {', '.join(jammed)}")
    return 1 if failed or jammed else 0


if __name__ == "__main__":
    raise SystemExit(main())
