"""Speed and memory benchmark of the engine (``make bench``).

Builds the full-size architecture (ViT-B/16 + JBU-One, D = 512) with the real
weights when asked and available, random ones otherwise (the compute is the
same). On a 448 x 448 image, in one process (so the ratios hold whatever CPU
this runs on), it times:

- the plain open_clip image tower on the same nine 224-pixel windows;
- a first run of the engine (class embeddings cached, nothing else): its ratio to the plain tower;
- a re-query: the same image with another, already embedded class list (from the feature cache),
  its ratio to the first run, and its difference from a fresh engine's answer;
- bfloat16 on the CPU (weights cast) against float32;
- text encoding of new classes (the text cache is memory-only here, so encoding is what is timed).

Then, each in a child process (peak memory is per process), the 1000 x 1000
sample tile (``--sample``, read with GDAL): first run, re-query and peak RSS
with the default feature cache, and the bfloat16 labels' agreement with
float32. Prints the CPU model and a table; writes a JSON report.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from .config import DEFAULT_FEATURE_CACHE_MB, DEFAULT_MODEL
from .device import cpu_capabilities
from .model.clip_loader import LoadedClip
from .model.presets import get_preset
from .model.text_embedder import TextEmbedder
from .pipeline.features import normalise
from .pipeline.segmenter import Segmenter, load_segmenter
from .upsampler.jbu import JBUOne

OEM_CLASSES = ["background", "bareland,barren", "grass", "pavement", "road", "tree,forest",
               "water,river", "cropland", "building,roof,house"]
REQUERY_CLASSES = ["background", "building", "road,street", "tree", "low vegetation,grass", "car",
                   "water", "bare soil"]
NEW_CLASSES = ["solar panel", "parking lot", "swimming pool", "railway", "bridge", "ship",
               "tennis court", "greenhouse", "quarry"]
#: The targets (issue #25, second pass): float32 first run within 1.3x the plain tower; bfloat16 (on CPUs
#: with bfloat16 instructions) 3x faster than float32 end to end, the upsampler at most 40 % of its run,
#: 99 % of labels equal; the sample's peak memory 2.0 GB.
TARGETS = {"first_run_vs_tower": 1.3, "requery_vs_first_run": 0.1, "sample_requery_s": 2.0,
           "sample_peak_rss_gb": 2.0, "embed_class_s": 1.5, "bf16_speedup": 3.0, "bf16_upsampler_share": 0.4,
           "bf16_labels_equal": 0.99}
DEFAULT_SAMPLE = Path("../shared/data/oem_koeln_50.tif")


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB.

    On Linux ``VmHWM`` (the high-water mark of this program's memory): ``ru_maxrss`` carries the parent's
    peak across fork + exec, so a child started by a large benchmark would report its parent's peak.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9


def random_segmenter(device: str, cache_dir: Optional[Path], batch_size: Optional[int], precision: str = "auto",
                     feature_cache_mb: Optional[float] = None) -> Segmenter:
    """ViT-B/16 CLIP and a JBU-One upsampler with seeded random weights."""
    import open_clip

    torch.manual_seed(0)
    architecture = get_preset(DEFAULT_MODEL).architecture
    model = open_clip.create_model(architecture, pretrained=None).eval()
    clip = LoadedClip(model, open_clip.get_tokenizer(architecture), architecture, "random (benchmark)")
    upsampler = JBUOne(int(model.visual.output_dim)).eval()
    return Segmenter(clip, upsampler, torch.device(device), cache_dir=cache_dir, batch_size=batch_size,
                     precision=precision, upsampler_source="random (benchmark)",
                     feature_cache_mb=DEFAULT_FEATURE_CACHE_MB if feature_cache_mb is None else feature_cache_mb,
                     owns_model=True)


def build(device: str, real: bool, batch_size: Optional[int], precision: str = "auto",
          feature_cache_mb: Optional[float] = None) -> Segmenter:
    if real:
        return load_segmenter(device=device, batch_size=batch_size, precision=precision,
                              feature_cache_mb=feature_cache_mb)
    return random_segmenter(device, None, batch_size, precision, feature_cache_mb)


def best_of(repeats: int, run: Callable[[], Any]) -> tuple[float, list[float], Any]:
    """(best seconds, every run's seconds, the best run's result)."""
    times, results = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        results.append(run())
        times.append(time.perf_counter() - start)
    best = int(np.argmin(times))
    return times[best], [round(t, 3) for t in times], results[best]


def interleaved(repeats: int, *runs: Callable[[], Any]) -> list[tuple[float, list[float], Any]]:
    """:func:`best_of` for several runs, taking turns (run 1, run 2, run 1, ...)."""
    times: list[list[float]] = [[] for _ in runs]
    results: list[list[Any]] = [[] for _ in runs]
    for _ in range(repeats):
        for number, run in enumerate(runs):
            start = time.perf_counter()
            results[number].append(run())
            times[number].append(time.perf_counter() - start)
    out = []
    for series, values in zip(times, results):
        best = int(np.argmin(series))
        out.append((series[best], [round(t, 3) for t in series], values[best]))
    return out


@torch.inference_mode()
def plain_tower(segmenter: Segmenter, image: np.ndarray) -> Callable[[], Any]:
    """The plain open_clip image tower (``visual(crops)``) on the engine's own windows of ``image``
    (zero-padded to 224 pixels when the image is smaller: open_clip takes its own input size only)."""
    import torch.nn.functional as F

    from .windows import window_grid

    def crop(w: Any) -> torch.Tensor:
        pixels = normalise(image[w.y0:w.y1, w.x0:w.x1], None, segmenter.device)
        return F.pad(pixels, (0, 224 - w.width, 0, 224 - w.height))

    height, width = image.shape[:2]
    crops = torch.cat([crop(w) for w in window_grid(height, width, 224, 112, segmenter.patch, segmenter.min_window)])
    visual = segmenter.visual

    def run() -> Any:
        with torch.inference_mode():
            return visual(crops.to(segmenter.cast) if segmenter.cast is not None else crops)
    return run


def difference(a: Any, b: Any) -> dict[str, float]:
    """Largest probability difference and share of equal labels of two predictions."""
    return {"max_abs_dp": float(np.abs(a.probabilities - b.probabilities).max()),
            "labels_equal": float((a.labels == b.labels).mean())}


def time_embedding(segmenter: Segmenter) -> tuple[float, float]:
    """Seconds to encode one new class, and per class for several together (memory-only text cache)."""
    text = TextEmbedder(segmenter.text.model, segmenter.text.tokenizer, segmenter.device, cache_dir=None)
    text.embed(["warm-up"])  # first call pays one-off set-up costs
    start = time.perf_counter()
    text.embed(NEW_CLASSES[:1])
    one = time.perf_counter() - start
    start = time.perf_counter()
    text.embed(NEW_CLASSES[1:])
    many = (time.perf_counter() - start) / (len(NEW_CLASSES) - 1)
    if text.computed != len(NEW_CLASSES) + 1:
        raise RuntimeError("the embedding benchmark did not encode every class")
    return one, many


def bench_device(device: str, size: int, repeats: int, real: bool, batch_size: Optional[int]) -> dict[str, Any]:
    start = time.perf_counter()
    segmenter = build(device, real, batch_size)
    load_s = time.perf_counter() - start
    image = np.random.default_rng(0).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    embed_s, embed_many_s = time_embedding(segmenter)
    segmenter.embed_classes(OEM_CLASSES)
    segmenter.embed_classes(REQUERY_CLASSES)
    segmenter.predict(image[:64, :64], OEM_CLASSES)  # warm-up: compiles the CPU kernels
    segmenter.predict(image, OEM_CLASSES)

    def first_run() -> Any:
        segmenter.feature_cache.clear()
        return segmenter.predict(image, OEM_CLASSES)
    # Interleaved, best of each: a load that comes and goes hits both alike.
    (tower_s, tower_runs, _), (first_s, first_runs, first) = interleaved(
        repeats, plain_tower(segmenter, image), first_run)
    requery_s, requery_runs, requery = best_of(repeats, lambda: segmenter.predict(image, REQUERY_CLASSES, 0.1))
    segmenter.feature_cache.clear()
    fresh = segmenter.predict(image, REQUERY_CLASSES, 0.1)

    result: dict[str, Any] = {
        "device": segmenter.describe()["device"], "weights": "real" if real else "random",
        "batch_size": segmenter.batch_size, "image": f"{size}x{size}", "classes": len(OEM_CLASSES),
        "load_s": round(load_s, 3), "embed_class_s": round(embed_s, 3), "embed_class_batched_s": round(embed_many_s, 3),
        "plain_tower_s": round(tower_s, 3), "plain_tower_runs_s": tower_runs,
        "first_run_s": round(first_s, 3), "first_run_runs_s": first_runs,
        "first_run_vs_tower": round(first_s / tower_s, 3),
        "first_run_stages_s": {k: round(v, 3) for k, v in first.timings.items() if not k.startswith("cache_")},
        "requery_s": round(requery_s, 3), "requery_runs_s": requery_runs,
        "requery_vs_first_run": round(requery_s / first_s, 3),
        "requery_stages_s": {k: round(v, 3) for k, v in requery.timings.items() if not k.startswith("cache_")},
        "requery_vs_fresh_engine": difference(requery, fresh),
    }
    if device == "cpu":
        bf16 = Segmenter(segmenter.clip, segmenter.upsampler, segmenter.device, batch_size=batch_size,
                         precision="bf16", feature_cache_mb=0)
        bf16.text = segmenter.text
        if bf16.precision_note:  # no fast bfloat16 here: the engine runs float32, nothing to compare
            result.update({"bf16_note": bf16.precision_note, "peak_rss_gb": round(peak_rss_gb(), 3)})
            return result
        bf16.predict(image, OEM_CLASSES)  # warm-up
        (bf16_s, bf16_runs, bf16_pred), (bf16_tower_s, _, _), (f32_s, _, _) = interleaved(
            repeats, lambda: bf16.predict(image, OEM_CLASSES), plain_tower(bf16, image), first_run)
        first_s = min(first_s, f32_s)
        stages = {k: round(v, 3) for k, v in bf16_pred.timings.items() if not k.startswith("cache_")}
        result.update({"bf16_first_run_s": round(bf16_s, 3), "bf16_runs_s": bf16_runs,
                       "bf16_speedup": round(first_s / bf16_s, 2), "bf16_stages_s": stages,
                       "bf16_upsampler_share": round(stages["upsampler"] / stages["total"], 3),
                       "bf16_tower_speedup": round(tower_s / bf16_tower_s, 2),
                       "bf16_vs_float32": difference(bf16_pred, first)})
    result["peak_rss_gb"] = round(peak_rss_gb(), 3)
    return result


def read_sample(path: Path) -> np.ndarray:
    """The first three bands of a GeoTIFF as ``H x W x 3`` uint8 (GDAL)."""
    from osgeo import gdal

    dataset = gdal.Open(str(path))
    if dataset is None or dataset.RasterCount < 3:
        raise RuntimeError(f"{path} is not a readable raster with three bands")
    bands = [dataset.GetRasterBand(i).ReadAsArray() for i in (1, 2, 3)]
    return np.ascontiguousarray(np.stack(bands, axis=-1).astype(np.uint8))


def sample_child(path: Path, precision: str, labels_out: Path, real: bool) -> dict[str, Any]:
    """In a fresh process: first run and re-query of the sample with the default feature cache.

    ``path``: the sample as ``.npy`` (what the parent read), so that this process, like the service, never
    loads GDAL (about 70 MB), or a GeoTIFF.
    """
    image = np.load(path) if path.suffix == ".npy" else read_sample(path)
    segmenter = build("cpu", real, None, precision)
    segmenter.embed_classes(OEM_CLASSES)
    segmenter.embed_classes(REQUERY_CLASSES)
    segmenter.predict(image[:64, :64], OEM_CLASSES)  # warm-up: compiles the CPU kernels
    start = time.perf_counter()
    first = segmenter.predict(image, OEM_CLASSES, 0.1, probabilities=False)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    again = segmenter.predict(image, REQUERY_CLASSES, 0.1, probabilities=False)
    requery_s = time.perf_counter() - start
    np.save(labels_out, first.labels)
    return {"precision": segmenter.precision, "image": f"{image.shape[0]}x{image.shape[1]}",
            "first_run_s": round(first_s, 3), "requery_s": round(requery_s, 3),
            "requery_window_hits": again.timings["cache_window_hits"],
            "requery_kernel_hit": again.timings["cache_kernel_hit"],
            "feature_cache_mb": segmenter.feature_cache.stats()["capacity_mb"],
            "cache_used_mb": again.timings["cache_used_mb"], "peak_rss_gb": round(peak_rss_gb(), 3)}


def bench_sample(path: Path, real: bool) -> dict[str, Any]:
    """The sample in float32 and bfloat16, each in its own process; bfloat16's label agreement."""
    results: dict[str, Any] = {"sample": str(path)}
    with tempfile.TemporaryDirectory() as tmp:
        pixels = Path(tmp) / "sample.npy"
        np.save(pixels, read_sample(path))
        for precision in ("auto", "bf16"):
            labels = Path(tmp) / f"{precision}.npy"
            command = [sys.executable, "-m", "segearth_backend.speed_bench", "--sample-child", str(pixels),
                       "--precision", precision, "--labels-out", str(labels)] + (["--real-weights"] if real else [])
            done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
            if done.returncode != 0:
                raise RuntimeError(f"the sample benchmark ({precision}) failed:\n{done.stderr[-3000:]}")
            results["float32" if precision == "auto" else "bfloat16"] = json.loads(done.stdout.strip().splitlines()[-1])
        agreement = (np.load(Path(tmp) / "auto.npy") == np.load(Path(tmp) / "bf16.npy")).mean()
    results["bf16_label_agreement"] = round(float(agreement), 4)
    return results


def print_table(report: dict[str, Any]) -> None:
    cpu = report["cpu"]
    print(f"CPU: {cpu['model']} ({report['cpu_threads']} threads; bfloat16 instructions: "
          f"{', '.join(cpu['bf16_instructions']) or 'none found'}); torch {report['torch']}")
    for r in report["results"]:
        print(f"\n{r['device']['type']} {r['device']['name']}, {r['image']}, {r['weights']} weights:")
        rows = [
            ("plain open_clip image tower, same windows", f"{r['plain_tower_s']} s", ""),
            ("first run (text cached)", f"{r['first_run_s']} s = {r['first_run_vs_tower']}x tower",
             f"<= {TARGETS['first_run_vs_tower']}x"),
            ("  stages", ", ".join(f"{k} {v}" for k, v in r["first_run_stages_s"].items()), ""),
            ("re-query, new class list", f"{r['requery_s']} s = {r['requery_vs_first_run']}x first run",
             f"<= {TARGETS['requery_vs_first_run']}x"),
            ("  vs fresh engine", f"max |dP| {r['requery_vs_fresh_engine']['max_abs_dp']:.1e}, labels equal "
             f"{r['requery_vs_fresh_engine']['labels_equal']:.2%}", "<= 1e-5, 100 %"),
            ("embed one new class", f"{r['embed_class_s']} s ({r['embed_class_batched_s']} s batched)",
             f"<= {TARGETS['embed_class_s']} s"),
        ]
        if "bf16_note" in r:
            rows.append(("bfloat16 first run", r["bf16_note"], ""))
        if "bf16_speedup" in r:
            agreement = r["bf16_vs_float32"]
            rows += [
                ("bfloat16 first run", f"{r['bf16_first_run_s']} s: {r['bf16_speedup']}x faster (tower "
                 f"{r['bf16_tower_speedup']}x)", f">= {TARGETS['bf16_speedup']}x"),
                ("  upsampler share of the bfloat16 run", f"{r['bf16_upsampler_share']:.0%} ("
                 + ", ".join(f"{k} {v}" for k, v in r["bf16_stages_s"].items()) + ")",
                 f"<= {TARGETS['bf16_upsampler_share']:.0%}"),
                ("  bfloat16 vs float32", f"labels equal {agreement['labels_equal']:.2%}, max |dP| "
                 f"{agreement['max_abs_dp']:.2g}", f">= {TARGETS['bf16_labels_equal']:.0%}"),
            ]
        rows.append(("peak RSS (this process)", f"{r['peak_rss_gb']} GB", ""))
        for name, value, target in rows:
            print(f"  {name:<42} {value:<58} {target}")
    sample = report.get("sample")
    if sample:
        f32, b16 = sample["float32"], sample["bfloat16"]
        print(f"\nsample {sample['sample']} ({f32['image']}), default feature cache {f32['feature_cache_mb']} MB:")
        print(f"  {'first run (float32)':<42} {f32['first_run_s']} s")
        print(f"  {'re-query (float32)':<42} {f32['requery_s']:<58} <= {TARGETS['sample_requery_s']} s")
        print(f"  {'peak RSS (float32)':<42} {f32['peak_rss_gb']} GB{'':<53} <= {TARGETS['sample_peak_rss_gb']} GB")
        bf16_line = f"{b16['first_run_s']} s, {b16['requery_s']} s (peak RSS {b16['peak_rss_gb']} GB)"
        print(f"  {'bfloat16: first run, re-query':<42} {bf16_line:<58} peak <= {TARGETS['sample_peak_rss_gb']} GB")
        speedup = f"{f32['first_run_s'] / b16['first_run_s']:.2f}x faster than float32"
        print(f"  {'bfloat16 first run':<42} {speedup:<58} >= {TARGETS['bf16_speedup']}x")
        print(f"  {'bfloat16 labels equal to float32':<42} {sample['bf16_label_agreement']:<58.2%} "
              f">= {TARGETS['bf16_labels_equal']:.0%}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/bench.json"))
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", action="append", help="cpu and/or cuda (default: cpu, plus cuda if present)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--real-weights", action="store_true", help="use the configured real weights")
    parser.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE,
                        help="the 1000 x 1000 sample GeoTIFF (skipped when missing)")
    parser.add_argument("--sample-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--labels-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.sample_child is not None:
        print(json.dumps(sample_child(args.sample_child, args.precision, args.labels_out, args.real_weights)))
        return 0

    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    results = [bench_device(d, args.size, args.repeats, args.real_weights, args.batch_size) for d in devices]
    report: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                              "machine": platform.machine(), "cpu": cpu_capabilities(),
                              "cpu_threads": torch.get_num_threads(), "targets_cpu": TARGETS, "results": results}
    if args.sample.is_file():
        report["sample"] = bench_sample(args.sample, args.real_weights)
    else:
        print(f"(sample {args.sample} not found: its rows are skipped; pass --sample PATH)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"\nReport: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
