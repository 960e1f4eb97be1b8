"""A seeded, synthetic Sentinel-1-like SAR GeoTIFF (VV and VH power, float32) with its land-cover truth.

No public SAR sample can be shipped here, so this script *makes* one: it is realistic in
its numbers, not real data. Land-cover zones come from smoothed seeded noise, plus a
river and a road; each zone has a typical backscatter (sigma0, linear power) for VV and a
VH/VV ratio; bright point scatterers sit in the built-up zone; speckle is 4-look Gamma,
independent per polarisation; a triangle of zeros at one corner is the swath edge
(nodata 0, as in Sentinel-1 GRD products).

    python tools/sar_sample.py OUT.tif [--size 192] [--seed 22] [--truth TRUTH.tif]

Bands: 1 = VV, 2 = VH, float32, nodata 0, EPSG:32633, 10 m pixels. The truth raster
(uint8) holds the zone index of :data:`ZONES` (255 on the swath edge).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

#: (name, VV sigma0 linear, VH/VV ratio): typical C-band values, our choice for a plausible scene.
ZONES = (("water", 0.004, 0.15), ("bare soil", 0.02, 0.15), ("vegetation", 0.06, 0.30), ("built-up", 0.25, 0.10))
LOOKS = 4
ORIGIN = (500000.0, 5600000.0)
PIXEL = 10.0
EPSG = 32633


def _blur(field: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur through the FFT (periodic borders), ``rows x cols`` float64."""
    rows, cols = field.shape
    fy = np.fft.fftfreq(rows)[:, None]
    fx = np.fft.fftfreq(cols)[None, :]
    kernel = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx ** 2 + fy ** 2))
    return np.real(np.fft.ifft2(np.fft.fft2(field) * kernel))


def make_scene(size: int = 192, seed: int = 22) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(vv, vh, truth)``: ``size x size`` float32 sigma0 (0 = nodata) and uint8 zone indices (255 = nodata)."""
    rng = np.random.default_rng(seed)
    field = _blur(rng.standard_normal((size, size)), size / 10)
    cuts = np.quantile(field, [0.15, 0.45, 0.8])
    truth = np.digitize(field, cuts).astype(np.uint8)  # 0 water .. 3 built-up by rising field value
    rows, cols = np.mgrid[0:size, 0:size]
    river = np.abs(rows - (0.35 * size + 0.15 * cols + 6 * np.sin(cols / 9.0))) < 4
    truth[river] = 0
    road = np.abs(cols - 0.7 * size - 0.05 * rows) < 1.5
    truth[road & ~river] = 1
    vv = np.array([zone[1] for zone in ZONES])[truth]
    vh = vv * np.array([zone[2] for zone in ZONES])[truth]
    scatterers = (truth == 3) & (rng.random((size, size)) < 0.01)
    vv[scatterers], vh[scatterers] = 3.0, 0.3
    vv = vv * rng.gamma(LOOKS, 1.0 / LOOKS, size=vv.shape)
    vh = vh * rng.gamma(LOOKS, 1.0 / LOOKS, size=vh.shape)
    edge = rows + cols < size // 4
    vv[edge], vh[edge], truth[edge] = 0.0, 0.0, 255
    return vv.astype(np.float32), vh.astype(np.float32), truth


def write_sample(path: Path, size: int = 192, seed: int = 22, truth_path: Path | None = None) -> Path:
    """Write the two-band GeoTIFF (and the truth raster when asked); refuses to overwrite."""
    from osgeo import gdal, osr

    vv, vh, truth = make_scene(size, seed)
    for target in (path, truth_path):
        if target is not None and Path(target).exists():
            raise SystemExit(f"{target} exists: choose another path (nothing was overwritten).")
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(EPSG)
    transform = (ORIGIN[0], PIXEL, 0.0, ORIGIN[1], 0.0, -PIXEL)
    driver = gdal.GetDriverByName("GTiff")
    dataset = driver.Create(str(path), size, size, 2, gdal.GDT_Float32, ["COMPRESS=DEFLATE", "PREDICTOR=3"])
    dataset.SetGeoTransform(transform)
    dataset.SetProjection(srs.ExportToWkt())
    dataset.SetMetadataItem("SEGEARTH_SYNTHETIC", f"seeded synthetic SAR-like scene (tools/sar_sample.py, "
                                                  f"seed {seed}): not real data")
    for number, (name, values) in enumerate((("VV", vv), ("VH", vh)), start=1):
        band = dataset.GetRasterBand(number)
        band.WriteArray(values)
        band.SetNoDataValue(0.0)
        band.SetDescription(name)
    dataset = None
    if truth_path is not None:
        out = driver.Create(str(truth_path), size, size, 1, gdal.GDT_Byte, ["COMPRESS=DEFLATE"])
        out.SetGeoTransform(transform)
        out.SetProjection(srs.ExportToWkt())
        out.GetRasterBand(1).WriteArray(truth)
        out.GetRasterBand(1).SetNoDataValue(255)
        out = None
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--seed", type=int, default=22)
    parser.add_argument("--truth", type=Path, help="also write the zone indices here")
    args = parser.parse_args(argv)
    write_sample(args.out, args.size, args.seed, args.truth)
    print(f"wrote {args.out}" + (f" and {args.truth}" if args.truth else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
