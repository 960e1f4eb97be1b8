"""`make demo-change`: change between two dates on a sample pair made from the Köln tile, headless (qgis_process).

No real pair of dates can be shipped, so a seeded script makes one: the *before* date is the OpenEarthMap Köln
tile (1000 x 1000 px, 0.5 m, EPSG:25832); the *after* date is the same tile with three regions of its upper half
(buildings) pasted into its lower half (fields), the "new buildings", then warped to another CRS and resolution
(EPSG:3035 at 0.6 m, bilinear) as a second sensor's image would come. ``segearth:change`` reads it back onto the
before grid on the fly.

One backend serves every run (as the dock's does), so the second run, with another class list, is a re-query:
both dates' image work comes from its cache. Writes ``demo_out/change/``: the change raster with its style, both
dates' segmentations, the transition matrix (GeoPackage), the HTML report, the change polygons, ``preview.png``
and ``timings.json`` (the time for the pair and for the re-query). Offline without weights it runs on the tiny
random test weights, labelled as such (see ``make demo``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

from demo import (  # noqa: E402 - the demo's own helpers, after the path is set
    OEM_CLASSES,
    TINY_BANNER,
    TINY_NOTE,
    demo_environment,
    label_as_demo,
    online,
    preview,
    qgis_process,
    sample_raster,
    say,
    use_tiny_weights,
)

#: The pasted regions: how many, and their side in pixels (from, to).
REGIONS, REGION_SIDE = 3, (120, 220)
#: The after date's CRS and pixel size (m): another sensor's grid.
AFTER_EPSG, AFTER_RESOLUTION = 3035, 0.6
#: The backend's re-query cache in the demo (MB), unless SEGEARTH_FEATURE_CACHE_MB says otherwise.
DEMO_CACHE_MB = 2048
#: The re-query's class list: other classes, the same images.
REQUERY_CLASSES = ["background", "building,roof,house", "road", "tree,forest", "water,river", "grass", "car"]


def make_pair(image: Path, folder: Path, seed: int) -> tuple[Path, Path, list[tuple[int, int, int, int, int]]]:
    """``before.tif`` (the tile's RGB), ``after_<epsg>.tif`` (regions pasted, warped) and the regions
    ``(row, col, side, from_row, from_col)``, all from ``seed``."""
    from osgeo import gdal, osr

    gdal.UseExceptions()
    folder.mkdir(parents=True, exist_ok=True)
    source = gdal.Open(str(image))
    before = folder / "before.tif"
    gdal.Translate(str(before), source, bandList=[1, 2, 3], creationOptions=["TILED=YES", "COMPRESS=DEFLATE"])
    pixels = source.ReadAsArray()[:3]
    rows, cols = pixels.shape[1:]
    rng = np.random.default_rng(seed)
    after = pixels.copy()
    regions = []
    for _ in range(REGIONS):  # from the upper half (the tile's buildings) into the lower half (its fields)
        side = int(rng.integers(*REGION_SIDE))
        side = min(side, rows // 2, cols)  # a small sample: smaller regions
        row = int(rng.integers(rows // 2, rows - side + 1))
        from_row = int(rng.integers(0, rows // 2 - side + 1))
        col, from_col = (int(v) for v in rng.integers(0, cols - side + 1, size=2))
        after[:, row:row + side, col:col + side] = pixels[:, from_row:from_row + side, from_col:from_col + side]
        regions.append((row, col, side, from_row, from_col))
    aligned = folder / "after_aligned.tif"
    target = gdal.GetDriverByName("GTiff").Create(str(aligned), cols, rows, 3, gdal.GDT_Byte)
    target.SetGeoTransform(source.GetGeoTransform())
    target.SetProjection(source.GetProjection())
    for band in range(3):
        target.GetRasterBand(band + 1).WriteArray(after[band])
    target = None
    reference = osr.SpatialReference()
    reference.ImportFromEPSG(AFTER_EPSG)
    warped = folder / f"after_epsg{AFTER_EPSG}.tif"
    gdal.Warp(str(warped), str(aligned), dstSRS=reference.ExportToWkt(), xRes=AFTER_RESOLUTION,
              yRes=AFTER_RESOLUTION, resampleAlg="bilinear", dstAlpha=True,
              creationOptions=["TILED=YES", "COMPRESS=DEFLATE"])
    aligned.unlink()
    return before, warped, regions


def run(binary: str, algorithm: str, parameters: dict[str, str], env: dict[str, str]) -> tuple[dict, str, float]:
    """``qgis_process run``: its results, its log and its wall time (QGIS's start included)."""
    arguments = [f"{key}={value}" for key, value in parameters.items()]
    say(f"qgis_process run {algorithm}")
    start = time.monotonic()
    result = subprocess.run([binary, "--json", "run", algorithm, "--", *arguments], env=env, capture_output=True,
                            text=True)
    seconds = time.monotonic() - start
    if result.returncode != 0:
        raise SystemExit(f"[demo] {algorithm} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    document = json.loads(result.stdout[result.stdout.index("{"):])
    return document["results"], json.dumps(document.get("log", "")) + result.stderr, seconds


def job_seconds(log: str) -> float:
    """The job's own time from the log ("9 block(s) of two dates in 12.3 s")."""
    marker = " block(s) of two dates in "
    text = log[log.index(marker) + len(marker):]
    return float(text.split(" s", 1)[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "demo_out")
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"),
                        help="interpreter with segearth-backend installed")
    parser.add_argument("--sample", type=Path, help="the before raster (default: the OpenEarthMap Köln tile)")
    parser.add_argument("--seed", type=int, default=7, help="where the changes are pasted")
    args = parser.parse_args(argv)
    python = args.python if Path(args.python).exists() else sys.executable
    is_online = online()
    tiny = use_tiny_weights(python, is_online, "make demo-change")
    out = args.out / "change"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    image = args.sample or sample_raster(args.out, is_online)
    before, after, regions = make_pair(image, args.out / "change_sample", args.seed)
    say(f"sample pair in {before.parent}: {before.name} and {after.name} (EPSG:{AFTER_EPSG}, {AFTER_RESOLUTION} m), "
        f"regions pasted at (row, col, side): {[r[:3] for r in regions]}")
    env = demo_environment(python, tiny)
    binary = qgis_process()
    subprocess.run([binary, "plugins", "enable", "segearth_qgis"], env=env, capture_output=True)

    sys.path.insert(0, str(ROOT))
    from segearth_qgis.client.local_backend import start_local_backend

    os.environ.update({k: v for k, v in env.items() if k.startswith("SEGEARTH_")})
    # Both dates' upsampler work of the 1000 x 1000 pair (about 1.4 GB) stays in the re-query cache.
    os.environ.setdefault("SEGEARTH_FEATURE_CACHE_MB", str(DEMO_CACHE_MB))
    say("starting one backend for every run (the re-query finds both dates' image work in its cache)")
    backend = start_local_backend(python)
    try:
        env.update(SEGEARTH_BACKEND_URL=backend.url, SEGEARTH_BACKEND_TOKEN=backend.token)
        common = {"BEFORE": str(before), "AFTER": str(after), "THRESHOLD": "0.1"}
        change = out / "koeln_change.tif"
        results, log, first = run(binary, "segearth:change", {
            **common, "CLASSES": "\n".join(OEM_CLASSES), "OUTPUT": str(change),
            "OUTPUT_BEFORE": str(out / "koeln_before.tif"), "OUTPUT_AFTER": str(out / "koeln_after.tif"),
            "OUTPUT_MATRIX": str(out / "koeln_matrix.gpkg"), "OUTPUT_HTML": str(out / "koeln_report.html")}, env)
        first_job = job_seconds(log)
        say(f"first run: {first:.1f} s ({first_job:.1f} s computing both dates); {results['SUMMARY']}")
        requery_results, log, requery = run(binary, "segearth:change", {
            **common, "CLASSES": "\n".join(REQUERY_CLASSES), "OUTPUT": str(out / "koeln_change_requery.tif")}, env)
        requery_job = job_seconds(log)
        say(f"re-query with other classes: {requery:.1f} s ({requery_job:.1f} s in the job); "
            f"{requery_results['SUMMARY']}")
        polygons = out / "koeln_change_polygons.gpkg"
        run(binary, "segearth:change_vector", {**common, "CLASSES": "\n".join(OEM_CLASSES), "MIN_AREA": "5",
                                               "OUTPUT": str(polygons)}, env)
    finally:
        backend.stop()
    if tiny:
        label_as_demo(change)
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    # Over the after date (reprojected on the fly), where the pasted "new buildings" are.
    picture = preview(after, change, out / "preview.png", TINY_NOTE if tiny else None, "Change (before → after)")
    from osgeo import gdal

    size = gdal.Open(str(before))
    timings = {"pair": f"{before.name} ({size.RasterXSize} x {size.RasterYSize} px) and {after.name}",
               "tiny_weights": tiny,
               "first_run_s": round(first, 2), "first_run_job_s": round(first_job, 2),
               "requery_s": round(requery, 2), "requery_job_s": round(requery_job, 2),
               "changed_m2": results["CHANGED_AREA"], "summary": results["SUMMARY"], "regions": regions}
    size = None
    (out / "timings.json").write_text(json.dumps(timings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    say(f"wrote {change.name} (+ .qml), both dates' segmentations, {polygons.name}, the matrix, the report, "
        f"{picture.name} and timings.json in {out}")
    if tiny:
        print(TINY_BANNER, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
