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

Writes ``bench_out/stress.json`` and prints a summary. Linux only (reads ``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

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
        if python_path:
            env["PYTHONPATH"] = python_path + os.pathsep + env.get("PYTHONPATH", "")
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


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--synonyms", type=int, default=4, help="synonyms per class in the many-classes request")
    parser.add_argument("--skip-known", action="store_true", help="only the many-classes request")
    parser.add_argument("--skip-many", action="store_true", help="only the known-answers run")
    parser.add_argument("--backend-path", help="PYTHONPATH for the many-classes server (another checkout)")
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    say(f"report: {args.out}")
    failed = report.get("known_answers", {}).get("errors", 0)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
