"""Plugin-test helpers: generated GeoTIFFs, the class list used across tests, waiting on Qt."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from osgeo import gdal, osr

#: The class list used across the plugin tests, and the names the outputs must carry.
CLASSES = "background\nbuilding, roof\nroad\ntree, forest\nwater"
CLASS_NAMES = ["background", "building, roof", "road", "tree, forest", "water"]
#: A 2 m grid in UTM 33N (EPSG:32633).
UTM = (500000.0, 2.0, 0.0, 5600000.0, 0.0, -2.0)

_GDAL_TYPES = {np.uint8: gdal.GDT_Byte, np.uint16: gdal.GDT_UInt16, np.int16: gdal.GDT_Int16,
               np.float32: gdal.GDT_Float32, np.float64: gdal.GDT_Float64}


def write_geotiff(path: Path, bands: np.ndarray, epsg: int, geotransform: tuple, nodata: Optional[float] = None,
                  alpha_band: Optional[int] = None) -> Path:
    """A GeoTIFF from a ``bands x rows x cols`` array (dtype kept)."""
    count, rows, cols = bands.shape
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), cols, rows, count, _GDAL_TYPES[bands.dtype.type])
    dataset.SetGeoTransform(geotransform)
    reference = osr.SpatialReference()
    reference.ImportFromEPSG(epsg)
    dataset.SetProjection(reference.ExportToWkt())
    for index in range(count):
        band = dataset.GetRasterBand(index + 1)
        band.WriteArray(bands[index])
        if nodata is not None and index + 1 != alpha_band:
            band.SetNoDataValue(nodata)
        if index + 1 == alpha_band:
            band.SetColorInterpretation(gdal.GCI_AlphaBand)
    dataset = None
    return path


def smooth_image(rows: int, cols: int, bands: int = 3, seed: int = 0) -> np.ndarray:
    """Blocky uint8 'land cover' (``bands x rows x cols``) so classes form regions, plus noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(bands, rows // 32 + 1, cols // 32 + 1))
    image = np.kron(coarse, np.ones((32, 32)))[:, :rows, :cols]
    return np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)


def read_band(path: Path, band: int = 1) -> np.ndarray:
    """One band of a raster file, read with GDAL and closed again."""
    dataset = gdal.Open(str(path))
    try:
        return dataset.GetRasterBand(band).ReadAsArray()
    finally:
        dataset = None


def wait_until(predicate: Callable[[], object], timeout: float = 240.0) -> None:
    """Process Qt events until ``predicate`` is true (tasks finish on the GUI thread)."""
    from qgis.PyQt.QtCore import QCoreApplication

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        QCoreApplication.processEvents()
        time.sleep(0.01)
