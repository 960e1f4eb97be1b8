"""Speed and memory benchmark of the engine (``make bench``).

Builds the full-size architecture (ViT-B/16 + JBU-One, D = 512) with the real
weights when they are available and random ones otherwise (the compute is
the same), then times text embedding of new classes and the segmentation of a
448 x 448 image with cached class embeddings, on the CPU and, when present,
on CUDA. Writes a JSON report and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .clip_loader import LoadedClip
from .config import DEFAULT_MODEL
from .presets import get_preset
from .segmenter import Segmenter, load_segmenter
from .upsampler import JBUOne

OEM_CLASSES = ["background", "bareland,barren", "grass", "pavement", "road", "tree,forest",
               "water,river", "cropland", "building,roof,house"]
NEW_CLASSES = ["solar panel", "parking lot", "swimming pool", "railway", "bridge", "ship",
               "tennis court", "greenhouse", "quarry"]
TARGETS = {"predict_cached_s": 3.0, "embed_class_s": 1.5, "peak_rss_gb": 2.5}


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB (Linux reports KiB)."""
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9


def random_segmenter(device: str, cache_dir: Path, batch_size: Optional[int]) -> Segmenter:
    """ViT-B/16 CLIP and a JBU-One upsampler with seeded random weights."""
    import open_clip

    torch.manual_seed(0)
    architecture = get_preset(DEFAULT_MODEL).architecture
    model = open_clip.create_model(architecture, pretrained=None).eval()
    clip = LoadedClip(model, open_clip.get_tokenizer(architecture), architecture, "random (benchmark)")
    upsampler = JBUOne(int(model.visual.output_dim)).eval()
    return Segmenter(clip, upsampler, torch.device(device), cache_dir=cache_dir,
                     batch_size=batch_size, upsampler_source="random (benchmark)")


def bench_device(device: str, size: int, repeats: int, real: bool, batch_size: Optional[int]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        start = time.perf_counter()
        if real:
            segmenter = load_segmenter(device=device, cache_dir=None, batch_size=batch_size)
        else:
            segmenter = random_segmenter(device, cache, batch_size)
        load_s = time.perf_counter() - start
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)

        segmenter.embed_classes(["warm-up"])  # first call pays one-off set-up costs
        start = time.perf_counter()
        segmenter.embed_classes(NEW_CLASSES[:1])
        embed_s = time.perf_counter() - start
        start = time.perf_counter()
        segmenter.embed_classes(NEW_CLASSES[1:])
        embed_many_s = (time.perf_counter() - start) / (len(NEW_CLASSES) - 1)

        segmenter.predict(image, OEM_CLASSES)  # warm-up, embeds the OEM classes
        runs = [segmenter.predict(image, OEM_CLASSES) for _ in range(repeats)]
        best = min(runs, key=lambda r: r.timings["total"])
        return {
            "device": segmenter.describe()["device"],
            "weights": "real" if real else "random",
            "batch_size": segmenter.batch_size,
            "image": f"{size}x{size}",
            "classes": len(OEM_CLASSES),
            "load_s": round(load_s, 3),
            "embed_class_s": round(embed_s, 3),
            "embed_class_batched_s": round(embed_many_s, 3),
            "predict_cached_s": round(best.timings["total"], 3),
            "predict_runs_s": [round(r.timings["total"], 3) for r in runs],
            "stages_s": {k: round(v, 3) for k, v in best.timings.items() if k != "total"},
            "peak_rss_gb": round(peak_rss_gb(), 3),
        }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/bench.json"))
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", action="append", help="cpu and/or cuda (default: cpu, plus cuda if present)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--real-weights", action="store_true", help="use the configured real weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    results = [bench_device(d, args.size, args.repeats, args.real_weights, args.batch_size) for d in devices]
    report = {"torch": torch.__version__, "python": platform.python_version(),
              "machine": platform.machine(), "cpu_threads": torch.get_num_threads(),
              "targets_cpu": TARGETS, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))

    print(f"{'device':<28} {'predict s':>9} {'embed/class s':>13} {'peak RSS GB':>11}  stages (s)")
    for r in results:
        stages = ", ".join(f"{k} {v}" for k, v in r["stages_s"].items())
        name = f"{r['device']['type']} {r['device']['name']}"[:28]
        print(f"{name:<28} {r['predict_cached_s']:>9} {r['embed_class_s']:>13} {r['peak_rss_gb']:>11}  {stages}")
    print(f"CPU targets: predict <= {TARGETS['predict_cached_s']} s, embed <= {TARGETS['embed_class_s']} s/class, "
          f"peak RSS <= {TARGETS['peak_rss_gb']} GB. Report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
