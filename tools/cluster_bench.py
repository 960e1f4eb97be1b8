"""Throughput of ``serve`` and ``serve --ray`` with 1 and 2 replicas, on this machine's CPUs.

For each configuration a backend is started (tiny test weights, or a full-size ViT-B/16 image tower with
JBU-One and random weights: the compute of the real model), ``--blocks`` blocks of ``--block`` x ``--block``
pixels are sent through the plugin's client with as many in flight as the backend has replicas (after one
warm-up block), and the wall time is measured. Configurations:

- ``plain``: ``serve`` (one process; torch uses every core),
- ``ray1``: ``serve --ray --replicas 1 --cpus-per-replica <all cores>`` (Ray's overhead against ``plain``),
- ``ray1x1``: ``serve --ray --replicas 1 --cpus-per-replica 1``,
- ``ray2x1``: ``serve --ray --replicas 2 --cpus-per-replica 1`` (scaling against ``ray1x1``).

Prints a table and writes JSON (``--out``). Linux only.
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
sys.path[:0] = [str(ROOT), str(ROOT / "backend"), str(ROOT / "tools")]

from stress import cpu_model, full_size_model  # noqa: E402 - after the path set-up

PARITY = ROOT / "tests" / "data" / "parity"
TOKEN = "cluster-bench-token-5e1a"
CLASSES = ["background", "building,roof,house", "road,street", "tree,forest", "water,river", "grass", "car"]
CONFIGS = ("plain", "ray1", "ray1x1", "ray2x1")


def say(text: str) -> None:
    print(f"[cluster-bench] {text}", flush=True)


def config_args(name: str, cores: int) -> tuple[list[str], int]:
    """``serve`` arguments of a configuration, and its replicas."""
    ray = ["--ray", "--ray-object-store-mb", "400"]
    return {
        "plain": ([], 1),
        "ray1": ([*ray, "--replicas", "1", "--cpus-per-replica", str(cores), "--ray-cpus", str(cores)], 1),
        "ray1x1": ([*ray, "--replicas", "1", "--cpus-per-replica", "1", "--ray-cpus", str(cores)], 1),
        "ray2x1": ([*ray, "--replicas", "2", "--cpus-per-replica", "1", "--ray-cpus", str(max(cores, 2))], 2),
    }[name]


def start_server(args: list[str], workdir: Path) -> tuple[subprocess.Popen, str, float]:
    """A backend process, its URL and the seconds it took to become ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready, log = workdir / "ready.json", workdir / "server.log"
    start = time.monotonic()
    with open(log, "wb") as stream:
        process = subprocess.Popen([sys.executable, "-m", "segearth_backend", "serve", "--port", "0", "--ready-file",
                                    str(ready), "--device", "cpu", *args], stdout=subprocess.DEVNULL, stderr=stream,
                                   env=dict(os.environ, SEGEARTH_BACKEND_TOKEN=TOKEN))
    while not ready.is_file():
        if process.poll() is not None or time.monotonic() - start > 900:
            process.kill()
            raise RuntimeError(f"the backend did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    document = json.loads(ready.read_text())
    if "url" not in document:
        raise RuntimeError(f"the backend could not load the model: {document.get('error')}")
    return process, document["url"], time.monotonic() - start


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()


def measure(url: str, blocks: list[np.ndarray], in_flight: int) -> float:
    """Seconds to segment ``blocks[1:]`` with ``in_flight`` requests at a time, after ``blocks[0]`` as a warm-up
    on every replica (text embeddings, first-call costs). Every block differs, so no answer comes from the
    backend's feature cache."""
    from segearth_qgis.client.backend_client import BackendClient

    client = BackendClient(url, TOKEN, timeout=3600)
    warm = [threading.Thread(target=client.segment, args=(blocks[0][: 224 + 16 * k], CLASSES))
            for k in range(in_flight)]
    for thread in warm:
        thread.start()
    for thread in warm:
        thread.join()
    queue = list(blocks[1:])
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                image = queue.pop()
            client.segment(image, CLASSES)

    start = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(in_flight)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.monotonic() - start


def run(model: str, block: int, count: int, configs: list[str], workdir: Path) -> dict[str, Any]:
    if model == "tiny":
        weights = ["--model", str(PARITY / "tiny-clip.json"), "--clip-weights", str(PARITY / "tiny-clip.pt"),
                   "--upsampler-weights", str(PARITY / "tiny-simfeatup.ckpt")]
    else:
        config, clip, upsampler = full_size_model(workdir)
        weights = ["--model", str(config), "--clip-weights", str(clip), "--upsampler-weights", str(upsampler)]
    cores = os.cpu_count() or 1
    rng = np.random.default_rng(0)
    blocks = [rng.integers(0, 256, size=(block, block, 3), dtype=np.uint8) for _ in range(count + 1)]
    rows = []
    for name in configs:
        args, replicas = config_args(name, cores)
        say(f"{name}: starting ({' '.join(args) or 'plain'})")
        process, url, started = start_server([*weights, "--cache-dir", str(workdir / "cache"), *args], workdir / name)
        try:
            seconds = measure(url, blocks, replicas)
        finally:
            stop(process)
        megapixels = count * block * block / 1e6
        rows.append({"config": name, "replicas": replicas, "start_seconds": round(started, 1),
                     "seconds": round(seconds, 2), "megapixels_per_s": round(megapixels / seconds, 4),
                     "seconds_per_block": round(seconds / count, 2)})
        say(f"{name}: {seconds:.1f} s for {count} blocks")
    return {"model": model, "block": block, "blocks": count, "cpu": cpu_model(), "cores": cores,
            "python": platform.python_version(), "results": rows}


def table(report: dict[str, Any]) -> str:
    lines = [f"model {report['model']}, {report['blocks']} blocks of {report['block']} px, {report['cores']} cores "
             f"({report['cpu']})", f"{'config':8} {'replicas':>8} {'s/block':>8} {'MP/s':>8} {'start s':>8}"]
    for row in report["results"]:
        lines.append(f"{row['config']:8} {row['replicas']:>8} {row['seconds_per_block']:>8} "
                     f"{row['megapixels_per_s']:>8} {row['start_seconds']:>8}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "vitb16"], default="tiny")
    parser.add_argument("--block", type=int, default=1024, help="block side in pixels")
    parser.add_argument("--blocks", type=int, default=8, help="blocks measured per configuration")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    parser.add_argument("--out", default="bench_out/cluster.json")
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    with tempfile.TemporaryDirectory(prefix="segearth-cluster-bench-") as tmp:
        report = run(args.model, args.block, args.blocks, configs, Path(tmp))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
