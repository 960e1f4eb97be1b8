"""`make demo`: segment the OpenEarthMap Köln tile headless with qgis_process, as the paper's demo does.

`make demo-sar` (``--sar``): segment the seeded synthetic Sentinel-1-like sample
(tests/data/sar_sample.tif, VV band, power in dB) with the SAR model (AlignEarth)
and the SAR starter classes. Without the AlignEarth weights it says where to get them
and runs with the tiny random test weights (SCLIP, last 2 blocks) instead.

Writes to ``demo_out/``: the class GeoTIFF with its QML style, a GeoPackage of
class polygons with its QML style, and ``preview.png`` (the result over the
image, with a legend). Offline without weights, it lists the files to place
and where, and stops.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_URL = "https://github.com/likyoo/SegEarth-OV/raw/main/demo/oem_koeln_50.tif"
TINY = ROOT / "tests" / "data" / "parity"
TINY_NOTE = "Tiny random test weights: the workflow is real, the classes are NOT meaningful"
TINY_BANNER = ("[demo] " + "=" * 70 + "\n[demo] DEMONSTRATION WITH TINY RANDOM TEST WEIGHTS: the classes are NOT "
               "meaningful.\n[demo] " + "=" * 70)
SAR_SAMPLE = ROOT / "tests" / "data" / "sar_sample.tif"
SAR_MODEL = "alignearth-sar-vit-b16"
TINY_SAR = ROOT / "tests" / "data" / "parity_sar" / "tiny-alignearth.json"
SAR_CLASSES = ["water", "flooded area,flood water", "urban,building", "vegetation,forest,cropland",
               "bare soil,barren", "ship,boat"]
OEM_CLASSES = ["background", "bareland,barren", "grass", "pavement", "road", "tree,forest", "water,river",
               "cropland", "building,roof,house"]


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def online(timeout: float = 5.0) -> bool:
    if os.environ.get("SEGEARTH_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        urllib.request.urlopen("https://huggingface.co", timeout=timeout).close()
        return True
    except OSError:
        return False


def sample_raster(out: Path, is_online: bool) -> Path:
    shared = ROOT.parent / "shared" / "data" / "oem_koeln_50.tif"
    if shared.is_file():
        return shared
    target = out / "oem_koeln_50.tif"
    if target.is_file():
        return target
    if not is_online:
        raise SystemExit(f"[demo] The sample raster is not here and there is no internet: download {SAMPLE_URL} "
                         f"to {target}.")
    say(f"downloading the sample raster from {SAMPLE_URL}")
    tmp = target.with_suffix(".part")
    with urllib.request.urlopen(SAMPLE_URL, timeout=60) as response, open(tmp, "wb") as stream:
        shutil.copyfileobj(response, stream)
    tmp.replace(target)
    return target


def qgis_process() -> str:
    found = shutil.which("qgis_process.bin") or shutil.which("qgis_process")
    if not found:
        raise SystemExit("[demo] qgis_process is not installed: apt-get install qgis (or run `make install`).")
    return found


def run_algorithm(binary: str, algorithm: str, parameters: dict[str, str], env: dict[str, str]) -> dict:
    arguments = [f"{key}={value}" for key, value in parameters.items()]
    say(f"qgis_process run {algorithm}")
    result = subprocess.run([binary, "--json", "run", algorithm, "--", *arguments], env=env, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise SystemExit(f"[demo] {algorithm} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(result.stdout[result.stdout.index("{"):])["results"]


def preview(image: Path, raster: Path, target: Path, note: str | None = None,
            title: str = "SegEarth-OV classes") -> Path:
    """The result over the image at 60 % opacity (drawn in the result's CRS and extent), with a legend (``title``)
    on the right (and ``note`` across the top)."""
    from qgis.core import QgsMapRendererCustomPainterJob, QgsMapSettings, QgsRasterLayer
    from qgis.PyQt.QtCore import QRectF, QSize, Qt
    from qgis.PyQt.QtGui import QColor, QFont, QFontMetrics, QImage, QPainter

    base, result = QgsRasterLayer(str(image), "image"), QgsRasterLayer(str(raster), "result")
    result.renderer().setOpacity(0.6)
    labels = [entry.label for entry in result.renderer().classes()]
    widest = max([QFontMetrics(QFont("Sans", 12)).horizontalAdvance(text) for text in [title, *labels]])
    size, legend_width = 800, max(260, widest + 80)  # room for the longest label ("tree, forest → building")
    settings = QgsMapSettings()
    settings.setLayers([result, base])
    settings.setDestinationCrs(result.crs())
    settings.setExtent(result.extent())
    settings.setOutputSize(QSize(size, size))
    settings.setBackgroundColor(QColor("white"))
    picture = QImage(size + legend_width, size, QImage.Format.Format_ARGB32)
    picture.fill(QColor("white"))
    painter = QPainter(picture)
    job = QgsMapRendererCustomPainterJob(settings, painter)
    job.start()
    job.waitForFinished()
    painter.setFont(QFont("Sans", 12))
    painter.drawText(QRectF(size + 20, 20, legend_width - 30, 30), Qt.AlignmentFlag.AlignLeft, title)
    for row, entry in enumerate(result.renderer().classes()):
        top = 60 + row * 32
        painter.fillRect(QRectF(size + 20, top, 22, 22), entry.color if entry.color.alpha() else QColor("#eeeeee"))
        painter.drawRect(QRectF(size + 20, top, 22, 22))
        painter.drawText(QRectF(size + 52, top, legend_width - 60, 24), Qt.AlignmentFlag.AlignVCenter, entry.label)
    if note:
        painter.fillRect(QRectF(0, 0, size + legend_width, 44), QColor(255, 255, 255, 220))
        painter.setPen(QColor(190, 0, 0))
        painter.setFont(QFont("Sans", 13, QFont.Weight.Bold))
        left_middle = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
        painter.drawText(QRectF(10, 8, size + legend_width - 20, 30), left_middle, note)
    painter.end()
    picture.save(str(target))
    return target


def use_tiny_weights(python: str, is_online: bool, target: str = "make demo", sar: bool = False) -> bool:
    """Whether the demo must run on the tiny random test weights (offline, weights missing): says so loudly.

    The SAR model's file is never downloaded automatically, so the SAR demo uses the tiny weights whenever
    it is missing, online or not.
    """
    model_env = dict(os.environ, SEGEARTH_MODEL=SAR_MODEL) if sar else None
    check = subprocess.run([python, "-m", "segearth_backend", "check-weights"], capture_output=True, text=True,
                           env=model_env)
    if check.returncode == 3:
        if not is_online or sar:
            print(check.stdout, end="")
            print("[demo] No internet here: place those files as shown (or set SEGEARTH_CLIP_WEIGHTS and "
                  f"SEGEARTH_UPSAMPLER_WEIGHTS to their paths) and run `{target}` again for real results.")
            print(TINY_BANNER, flush=True)
            return True
        say("weights are not cached yet: the backend downloads them on first use")
    elif check.returncode != 0:
        raise SystemExit(f"[demo] checking the weights failed:\n{check.stdout}{check.stderr}")
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "demo_out")
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"),
                        help="interpreter with segearth-backend installed")
    parser.add_argument("--sample", type=Path, help="raster to segment (default: the OpenEarthMap Köln tile)")
    parser.add_argument("--sar", action="store_true", help="the SAR demo: the synthetic SAR sample, the SAR model")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    python = args.python if Path(args.python).exists() else sys.executable
    is_online = online()

    tiny = use_tiny_weights(python, is_online, "make demo-sar" if args.sar else "make demo", sar=args.sar)
    image = args.sample or (SAR_SAMPLE if args.sar else sample_raster(args.out, is_online))
    binary = qgis_process()
    env = demo_environment(python, tiny, sar=args.sar)
    subprocess.run([binary, "plugins", "enable", "segearth_qgis"], env=env, capture_output=True)
    classes = "\n".join(SAR_CLASSES if args.sar else OEM_CLASSES)
    raster = args.out / f"{image.stem}_segearth.tif"
    gpkg = args.out / f"{image.stem}_polygons.gpkg"
    for stale in (raster, gpkg, raster.with_suffix(".qml"), gpkg.with_suffix(".qml")):
        if stale.exists():
            stale.unlink()
    # SAR: band 1 (VV), linear power -> dB, -25..0 dB, grey; threshold 0 as the AlignEarth configs.
    extra = ({"BANDS": "1", "SAR_INPUT": "1", "THRESHOLD": "0", "BACKGROUND": "-1"} if args.sar
             else {"THRESHOLD": "0.1"})
    run_algorithm(binary, "segearth:segment", {"INPUT": str(image), "CLASSES": classes, **extra,
                                               "OUTPUT": str(raster)}, env)
    run_algorithm(binary, "segearth:segment_vector", {"INPUT": str(image), "CLASSES": classes, **extra,
                                                      "MIN_AREA": "5", "OUTPUT": str(gpkg)}, env)

    sys.path.insert(0, str(ROOT))
    if tiny:
        label_as_demo(raster)
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    picture = preview(image, raster, args.out / "preview.png", TINY_NOTE if tiny else None)
    say(f"wrote {raster.name} (+ .qml), {gpkg.name} (+ .qml) and {picture.name} in {args.out}")
    if tiny:
        print(TINY_BANNER, flush=True)
    return 0


def demo_environment(python: str, tiny: bool, sar: bool = False) -> dict[str, str]:
    """qgis_process's environment: the plugin, the backend's Python, and the model (tiny weights offline)."""
    env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"),
               QGIS_PLUGINPATH=str(ROOT), SEGEARTH_BACKEND_PYTHON=python)
    if sar:
        env["SEGEARTH_MODEL"] = SAR_MODEL
    if tiny:
        env.update(SEGEARTH_MODEL=str(TINY_SAR if sar else TINY / "tiny-clip.json"),
                   SEGEARTH_CLIP_WEIGHTS=str(TINY / "tiny-clip.pt"),
                   SEGEARTH_UPSAMPLER_WEIGHTS=str(TINY / "tiny-simfeatup.ckpt"), SEGEARTH_DEVICE="cpu")
        if sar:  # the SAR model's attention on the tiny GELU model
            env.update(SEGEARTH_ATTENTION="SCLIP", SEGEARTH_LAST_BLOCKS="2")
    return env


def label_as_demo(raster: Path) -> None:
    """Say in the output's own metadata that its classes come from the tiny random test weights."""
    from osgeo import gdal

    from segearth_qgis.job.gdal_errors import checked, collect_errors

    with collect_errors() as log:  # GDAL's mode stated (GDAL 3.9+ warns otherwise), failures raised
        dataset = checked(f"open {raster}", lambda: gdal.Open(str(raster), gdal.GA_Update), log)
        dataset.SetMetadataItem("SEGEARTH_DEMO", TINY_NOTE)
        dataset = None


if __name__ == "__main__":
    raise SystemExit(main())
