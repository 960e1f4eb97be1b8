"""`make bench-large`: a large raster through ``qgis_process run segearth:segment``, as a headless team runs it.

A GeoTIFF of ``--megapixels`` (default 64 MP: 8000 x 8000, RGB, tiled) is made from the Köln sample mirrored
tile by tile (real aerial content, no two neighbouring tiles equal), then for each precision (``float32``,
``bfloat16``) a backend is started (``serve --precision ...``: the full-size ViT-B/16 image tower and JBU-One with
random weights, the compute of the real model; or the tiny test weights with ``--model tiny``) and
``qgis_process`` segments the whole raster against it. Measured:

- megapixels per minute of the ``qgis_process`` run (the backend already started and warm: the model's load is
  given apart);
- the peak memory (maximum resident set) of ``qgis_process`` (QGIS: reading blocks, writing the GeoTIFF) and of
  the backend, exactly, from ``wait4``'s resource usage of each process;
- the share of labels equal between the precisions.

Prints a table and writes JSON (``--out``). Linux only (``qgis_process`` and ``wait4``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "backend"), str(ROOT / "tools")]

from change_bench import weights  # noqa: E402 - after the path set-up
from cluster_bench import TOKEN, start_server  # noqa: E402
from demo import OEM_CLASSES  # noqa: E402
from stress import cpu_model  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "oem_koeln_50.tif"
#: The raster's tile side (pixels): the sample is read at this size and mirrored from one tile to the next.
TILE = 1000


def say(text: str) -> None:
    print(f"[large-bench] {text}", flush=True)


def sample_tile(sample: Path) -> np.ndarray:
    """``TILE x TILE x 3`` uint8 from the sample's first three bands (the sample itself when it has that size)."""
    from osgeo import gdal

    dataset = gdal.Open(str(sample))
    if dataset is None or dataset.RasterCount < 3:
        raise SystemExit(f"{sample}: not a raster with three bands (give another with --sample)")
    bands = [dataset.GetRasterBand(b + 1).ReadAsArray(0, 0, dataset.RasterXSize, dataset.RasterYSize,
                                                      buf_xsize=TILE, buf_ysize=TILE) for b in range(3)]
    return np.stack(bands, axis=-1).astype(np.uint8)


def make_raster(path: Path, megapixels: float, sample: Path) -> tuple[int, int]:
    """A tiled RGB GeoTIFF of about ``megapixels`` (side a multiple of 16), written tile by tile; (rows, cols)."""
    from osgeo import gdal, osr

    side = max(16, int(round((megapixels * 1e6) ** 0.5 / 16)) * 16)
    tile = sample_tile(sample)
    driver = gdal.GetDriverByName("GTiff")
    dataset = driver.Create(str(path), side, side, 3, gdal.GDT_Byte, ["TILED=YES", "BIGTIFF=IF_SAFER"])
    dataset.SetGeoTransform((500000.0, 0.5, 0.0, 5650000.0, 0.0, -0.5))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32632)
    dataset.SetProjection(srs.ExportToWkt())
    for row in range(0, side, TILE):
        for col in range(0, side, TILE):
            block = tile[::-1] if (row // TILE) % 2 else tile
            block = block[:, ::-1] if (col // TILE) % 2 else block
            block = block[:side - row, :side - col]
            for band in range(3):
                dataset.GetRasterBand(band + 1).WriteArray(np.ascontiguousarray(block[..., band]), col, row)
    dataset.FlushCache()
    dataset = None
    return side, side


def wait_with_usage(process: subprocess.Popen, timeout: float) -> tuple[int, float]:
    """(exit status, peak resident memory in GB) of a child, from ``wait4`` (exact, unlike sampling)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage.ru_maxrss * 1024 / 1e9
        if time.monotonic() > deadline:
            process.kill()
            deadline = float("inf")
        time.sleep(0.2)


def qgis_process_command() -> str:
    found = shutil.which("qgis_process.bin") or shutil.which("qgis_process")
    if found is None:
        raise SystemExit("qgis_process is not installed (Debian: apt-get install qgis)")
    return found


def run_qgis_process(raster: Path, output: Path, url: str, home: Path) -> tuple[float, float, str]:
    """(seconds, peak GB, log) of one ``segearth:segment`` run against the backend at ``url``."""
    command = qgis_process_command()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "QT_QPA_PLATFORM": "offscreen",
           "QGIS_PLUGINPATH": str(ROOT), "PYTHONPATH": str(ROOT), "SEGEARTH_BACKEND_URL": url,
           "SEGEARTH_BACKEND_TOKEN": TOKEN}
    subprocess.run([command, "plugins", "enable", "segearth_qgis"], env=env, capture_output=True, timeout=300)
    log_path = home / "qgis_process.log"
    start = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen([command, "--json", "run", "segearth:segment", "--", f"INPUT={raster}",
                                    "CLASSES=" + "\n".join(OEM_CLASSES), "THRESHOLD=0.1", f"OUTPUT={output}"],
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
        status, peak_gb = wait_with_usage(process, timeout=6 * 3600)
    seconds = time.monotonic() - start
    text = log_path.read_text(errors="replace")
    if status != 0 or not output.is_file():
        raise SystemExit(f"qgis_process failed ({status}):\n{text[-3000:]}")
    return seconds, peak_gb, text


def bench_precision(precision: str, model_args: list[str], raster: Path, pixels: int, workdir: Path
                    ) -> dict[str, Any]:
    folder = workdir / precision
    home = folder / "home"
    home.mkdir(parents=True)
    args = [*model_args, "--precision", precision, "--cache-dir", str(folder / "cache")]
    say(f"{precision}: starting the backend")
    backend, url, load_s = start_server(args, folder / "backend")
    try:
        say(f"{precision}: qgis_process on {pixels / 1e6:.1f} MP")
        seconds, qgis_peak_gb, log = run_qgis_process(raster, folder / "labels.tif", url, home)
    finally:
        backend.terminate()
        _, backend_peak_gb = wait_with_usage(backend, timeout=60)
    note = next((line.strip() for line in (folder / "backend" / "server.log").read_text(errors="replace")
                 .splitlines() if "bfloat16" in line and "float32" in line), "")
    return {"precision": precision, "backend_start_s": round(load_s, 1), "seconds": round(seconds, 1),
            "mp_per_minute": round(pixels / 1e6 / (seconds / 60), 2), "qgis_process_peak_gb": round(qgis_peak_gb, 2),
            "backend_peak_gb": round(backend_peak_gb, 2), "backend_note": note,
            "blocks": next(iter(re.findall(r"\d+ block\(s\)[^\"\n]*", log)), "")}


def agreement(first: Path, second: Path) -> float:
    from osgeo import gdal

    a, b = gdal.Open(str(first)).ReadAsArray(), gdal.Open(str(second)).ReadAsArray()
    return float((a == b).mean())


def table(report: dict[str, Any]) -> str:
    lines = [f"{report['megapixels']:.1f} MP ({report['size']}) through qgis_process, model {report['model']}, "
             f"CPU {report['cpu']} ({report['cores']} cores)",
             f"{'precision':<10} {'MP/min':>8} {'time s':>8} {'QGIS peak GB':>13} {'backend peak GB':>16}"]
    for run in report["runs"]:
        lines.append(f"{run['precision']:<10} {run['mp_per_minute']:>8} {run['seconds']:>8} "
                     f"{run['qgis_process_peak_gb']:>13} {run['backend_peak_gb']:>16}")
        if run["backend_note"]:
            lines.append(f"  {run['backend_note']}")
    if "labels_equal" in report:
        lines.append(f"labels equal between the precisions: {100 * report['labels_equal']:.2f} %")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megapixels", type=float, default=64.0, help="raster size (default 64 MP)")
    parser.add_argument("--precisions", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    parser.add_argument("--model", choices=["vitb16", "tiny"], default="vitb16")
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="an RGB raster the large one is made from")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "large.json")
    args = parser.parse_args(argv)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    with tempfile.TemporaryDirectory(prefix="segearth-large-bench-") as temporary:
        workdir = Path(temporary)
        raster = workdir / "large.tif"
        say(f"making a {args.megapixels:g} MP raster from {args.sample.name}")
        rows, cols = make_raster(raster, args.megapixels, args.sample)
        model_args = weights(args.model, workdir)  # the weight files are written once for every precision
        runs = [bench_precision(p, model_args, raster, rows * cols, workdir) for p in precisions]
        report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "cores": os.cpu_count(),
                                  "machine": platform.machine(), "model": args.model, "size": f"{cols}x{rows}",
                                  "megapixels": rows * cols / 1e6, "runs": runs}
        if len(precisions) > 1:
            report["labels_equal"] = agreement(*(workdir / p / "labels.tif" for p in precisions[:2]))
    print(table(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    say(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
