"""`make change-bench`: the change job's first run and re-queries on the Köln sample pair (``make demo-change``'s).

For each model (the tiny test weights; a full-size ViT-B/16 image tower with JBU-One and random weights, the
compute of the real model) and each re-query cache size, one backend is started and the plugin's own change
engine (``plan_change_source`` + ``execute_change``, in a headless QGIS) runs on the pair three times:

- ``first``: the OpenEarthMap classes (both dates computed);
- ``requery_classes``: another class list (both dates' image work from the backend's cache);
- ``requery_rule``: the first classes again with another change margin.

Prints a table and writes JSON (``--out``): seconds, speed-ups, the cache's window hits and misses, and whether
the re-decided change equals a fresh computation's (it must: the cache returns what a fresh engine would).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "backend"), str(ROOT / "tools")]

from demo import OEM_CLASSES  # noqa: E402
from demo_change import REQUERY_CLASSES, make_pair  # noqa: E402 - after the path set-up
from stress import cpu_model, full_size_model  # noqa: E402

PARITY = ROOT / "tests" / "data" / "parity"
#: The rule of the rule re-query (confidence, margin): the first run's classes, a laxer margin.
RULE_REQUERY = (0.2, 0.05)
SAMPLE = ROOT.parent / "shared" / "data" / "oem_koeln_50.tif"


def say(text: str) -> None:
    print(f"[change-bench] {text}", flush=True)


def weights(model: str, workdir: Path) -> list[str]:
    if model == "tiny":
        return ["--model", str(PARITY / "tiny-clip.json"), "--clip-weights", str(PARITY / "tiny-clip.pt"),
                "--upsampler-weights", str(PARITY / "tiny-simfeatup.ckpt")]
    config, clip, upsampler = full_size_model(workdir)
    return ["--model", str(config), "--clip-weights", str(clip), "--upsampler-weights", str(upsampler)]


def one_run(prepared: Any, classes: list[str], output: Path, client: Any, confidence: float, margin: float
            ) -> tuple[float, np.ndarray, Any]:
    from segearth_qgis.core.change import ChangeRule
    from segearth_qgis.job.change_engine import ChangeOutputs, ChangeParams, execute_change
    from segearth_qgis.job.outputs import plan_outputs

    params = ChangeParams(tuple(classes), ChangeOutputs(plan_outputs(str(output), None, [])),
                          ChangeRule(confidence, margin), threshold=0.1)
    start = time.monotonic()
    result = execute_change(prepared, params, client)
    seconds = time.monotonic() - start
    from osgeo import gdal

    codes = gdal.Open(str(output)).ReadAsArray()
    return seconds, codes, result


def bench(model: str, cache_mb: Optional[int], before: Path, after: Path, workdir: Path) -> dict[str, Any]:
    from qgis.core import QgsRasterLayer

    from segearth_qgis.client.local_backend import start_local_backend
    from segearth_qgis.job.aoi import AreaOfInterest
    from segearth_qgis.job.change_source import plan_change_source

    args = [*weights(model, workdir), "--device", "cpu", "--cache-dir", str(workdir / "cache")]
    environment = dict(os.environ)
    if cache_mb is not None:
        environment["SEGEARTH_FEATURE_CACHE_MB"] = str(cache_mb)
    say(f"{model}, cache {cache_mb if cache_mb is not None else 'default'} MB: starting a backend")
    backend = start_local_backend(sys.executable, args, env=environment, timeout=600)
    try:
        client = backend.client(timeout=3600)
        prepared = plan_change_source(QgsRasterLayer(str(before), "before"), QgsRasterLayer(str(after), "after"),
                                      (), (), AreaOfInterest())
        runs: dict[str, Any] = {}
        stamp = time.strftime("%H%M%S")
        for name, classes, confidence, margin in (("first", OEM_CLASSES, 0.2, 0.1),
                                                  ("requery_classes", REQUERY_CLASSES, 0.2, 0.1),
                                                  ("requery_rule", OEM_CLASSES, *RULE_REQUERY)):
            before_cache = client.health().get("feature_cache", {})
            seconds, codes, result = one_run(prepared, classes, workdir / f"{model}_{cache_mb}_{name}_{stamp}.tif",
                                             client, confidence, margin)
            cache = client.health().get("feature_cache", {})
            counts = {key: cache.get(key, 0) - before_cache.get(key, 0)
                      for key in ("window_hits", "window_misses", "kernel_hits", "kernel_misses")}
            runs[name] = {"seconds": round(seconds, 2), **counts,
                          "changed_m2": round(float(result.tally.changed.sum()), 1), "codes": codes}
            say(f"  {name}: {seconds:.1f} s (windows from the cache {counts['window_hits']}, computed "
                f"{counts['window_misses']}; kernels {counts['kernel_hits']} / {counts['kernel_misses']}); "
                f"{result.summary}")
        first = runs["first"]["seconds"]
        for name in ("requery_classes", "requery_rule"):
            runs[name]["vs_first"] = round(runs[name]["seconds"] / first, 3)
        # A fresh backend answers the rule re-query: the cached answer must be the same change map.
        report = {"model": model, "cache_mb": cache_mb, "pixels": prepared.grid.width * prepared.grid.height,
                  "feature_cache": client.health().get("feature_cache")}
    finally:
        backend.stop()
    fresh = start_local_backend(sys.executable, args, env=environment, timeout=600)
    try:
        _, codes, _ = one_run(prepared, OEM_CLASSES, workdir / f"{model}_{cache_mb}_fresh.tif",
                              fresh.client(timeout=3600), *RULE_REQUERY)
    finally:
        fresh.stop()
    report["requery_equals_fresh"] = bool(np.array_equal(codes, runs["requery_rule"]["codes"]))
    for run in runs.values():
        del run["codes"]
    report["runs"] = runs
    return report


#: The rule sweep's pair: the tile, and a 200 x 200 region pasted from (650, 650) to (300, 300).
SWEEP_REGION, SWEEP_SOURCE, SWEEP_SIDE = (300, 300), (650, 650), 200


def rule_sweep(sample: Path) -> list[dict[str, Any]]:
    """How the change rule's confidence and margin sort the pasted region's changed labels, with the tiny model.

    The engine runs in this process on the whole tile (one block, as the plugin sends a 1000 x 1000 area); the
    probabilities go through float16 as the backend sends them. For each rule: confident changes inside the
    region, in the ring within one window's reach around it (windows shared with the region), and beyond.
    """
    from osgeo import gdal

    from segearth_backend import load_segmenter
    from segearth_qgis.core.blocks import context_span
    from segearth_qgis.core.change import FIRST_TRANSITION, ChangeRule, decide_change

    with tempfile.TemporaryDirectory() as cache:
        engine = load_segmenter(model=str(PARITY / "tiny-clip.json"), clip_weights=str(PARITY / "tiny-clip.pt"),
                                upsampler_weights=str(PARITY / "tiny-simfeatup.ckpt"), device="cpu",
                                cache_dir=cache)
        image = np.ascontiguousarray(gdal.Open(str(sample)).ReadAsArray()[:3].transpose(1, 2, 0))
        after = image.copy()
        (row, col), (from_row, from_col), side = SWEEP_REGION, SWEEP_SOURCE, SWEEP_SIDE
        after[row:row + side, col:col + side] = image[from_row:from_row + side, from_col:from_col + side]
        dates = [engine.predict(picture, OEM_CLASSES, prob_threshold=0.1, background_index=0, probabilities=True)
                 for picture in (image, after)]
    probabilities = [date.probabilities.astype(np.float16).astype(np.float32) for date in dates]
    inside = np.zeros(image.shape[:2], bool)
    inside[row:row + side, col:col + side] = True
    reach = np.zeros(image.shape[:2], bool)
    rows, cols = context_span(row, row + side, image.shape[0]), context_span(col, col + side, image.shape[1])
    reach[rows[0]:rows[1], cols[0]:cols[1]] = True
    differs = dates[0].labels != dates[1].labels
    say(f"top probability (5, 50, 95 %): {np.quantile(probabilities[0].max(axis=0), [0.05, 0.5, 0.95]).round(3)}; "
        f"labels differ inside {int((differs & inside).sum())} px, in the ring {int((differs & reach & ~inside).sum())}"
        f", beyond {int((differs & ~reach).sum())}")
    rows_out = []
    for confidence in (0.0, 0.1, 0.2, 0.3, 0.5):
        for margin in (0.0, 0.1, 0.2):
            rule = ChangeRule(confidence, margin)
            codes = decide_change(*probabilities, dates[0].labels, dates[1].labels, rule).codes
            changed = codes >= FIRST_TRANSITION
            rows_out.append({"confidence": confidence, "margin": margin, "inside": int((changed & inside).sum()),
                             "inside_share": round(float((changed & inside).sum() / max((differs & inside).sum(), 1)),
                                                   3),
                             "ring": int((changed & reach & ~inside).sum()), "beyond": int((changed & ~reach).sum())})
            say(f"  confidence {confidence}, margin {margin}: {rows_out[-1]}")
    return rows_out


def table(reports: list[dict[str, Any]]) -> str:
    lines = ["| model | cache (MB) | first run (s) | re-query, other classes (s, x first) | re-query, other rule "
             "(s, x first) | windows from cache (re-queries) | same as fresh |", "|---|---|---|---|---|---|---|"]
    for report in reports:
        runs = report["runs"]
        hits = [runs[k]["window_hits"] for k in ("requery_classes", "requery_rule")]
        lines.append(f"| {report['model']} | {report['cache_mb'] or 'default'} | {runs['first']['seconds']:.1f} | "
                     f"{runs['requery_classes']['seconds']:.1f} ({runs['requery_classes']['vs_first']:.3f}) | "
                     f"{runs['requery_rule']['seconds']:.1f} ({runs['requery_rule']['vs_first']:.3f}) | "
                     f"{hits[0]}, {hits[1]} | {report['requery_equals_fresh']} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,vitb16", help="tiny, vitb16 (comma-separated)")
    parser.add_argument("--cache-mb", default="default", help="re-query cache sizes to try (comma-separated; "
                                                              "'default' is the backend's)")
    parser.add_argument("--sample", type=Path, default=SAMPLE)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "change.json")
    parser.add_argument("--sweep", action="store_true", help="only the change rule sweep on the pasted tile (tiny "
                                                                "model, in this process): how the defaults were set")
    args = parser.parse_args(argv)
    if args.sweep:
        sweep = rule_sweep(args.sample)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_name("change_sweep.json").write_text(json.dumps(sweep, indent=2) + "\n", encoding="utf-8")
        return 0
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    reports = []
    with tempfile.TemporaryDirectory(prefix="change-bench-") as folder:
        workdir = Path(folder)
        before, after, _ = make_pair(args.sample, workdir / "pair", 7)
        for model in args.models.split(","):
            for size in args.cache_mb.split(","):
                reports.append(bench(model.strip(), None if size.strip() == "default" else int(size), before, after,
                                     workdir))
    document = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                "date": time.strftime("%Y-%m-%d"), "pair": "Köln tile and its changed copy in EPSG:3035 at 0.6 m",
                "reports": reports}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(table(reports))
    say(f"wrote {args.out}")
    app.exitQgis()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
