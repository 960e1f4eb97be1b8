"""Plugin fixtures: generated GeoTIFFs, a local backend on the tiny weights, waiting for tasks."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from osgeo import gdal, osr

#: The class list used across the plugin tests, and the names the outputs must carry.
CLASSES = "background\nbuilding, roof\nroad\ntree, forest\nwater"
CLASS_NAMES = ["background", "building, roof", "road", "tree, forest", "water"]
#: A 2 m grid in UTM 33N (EPSG:32633).
UTM = (500000.0, 2.0, 0.0, 5600000.0, 0.0, -2.0)


def write_geotiff(path: Path, bands: np.ndarray, epsg: int, geotransform: tuple, nodata: Optional[float] = None,
                  alpha_band: Optional[int] = None) -> Path:
    """A GeoTIFF from a ``bands x rows x cols`` array (dtype kept)."""
    types = {np.uint8: gdal.GDT_Byte, np.uint16: gdal.GDT_UInt16, np.float32: gdal.GDT_Float32}
    count, rows, cols = bands.shape
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), cols, rows, count, types[bands.dtype.type])
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
    """Blocky uint8 'land cover' so classes form regions, plus noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(bands, rows // 32 + 1, cols // 32 + 1))
    image = np.kron(coarse, np.ones((32, 32)))[:, :rows, :cols]
    return np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(autouse=True, scope="session")
def isolated_panel_settings(qgis_app):
    """The panel's QgsSettings start empty in tests; the developer's own values come back afterwards."""
    from qgis.core import QgsSettings

    from segearth_qgis.settings import PREFIX

    store = QgsSettings()
    saved = {key: store.value(key) for key in store.allKeys() if key.startswith(PREFIX)}
    store.remove(PREFIX.rstrip("/"))
    yield
    store.remove(PREFIX.rstrip("/"))
    for key, value in saved.items():
        store.setValue(key, value)
    import gc

    gc.collect()  # free Qt/GDAL wrappers while QGIS still runs (it exits after this fixture)


@pytest.fixture(scope="session")
def backend_environment(parity_dir, tmp_path_factory):
    """The dock auto-starts `python -m segearth_backend serve` with the tiny weights."""
    names = ["SEGEARTH_BACKEND_PYTHON", "SEGEARTH_MODEL", "SEGEARTH_CLIP_WEIGHTS", "SEGEARTH_UPSAMPLER_WEIGHTS",
             "SEGEARTH_DEVICE", "SEGEARTH_CACHE_DIR", "SEGEARTH_BACKEND_URL"]
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({
        "SEGEARTH_BACKEND_PYTHON": sys.executable,
        "SEGEARTH_MODEL": str(parity_dir / "tiny-clip.json"),
        "SEGEARTH_CLIP_WEIGHTS": str(parity_dir / "tiny-clip.pt"),
        "SEGEARTH_UPSAMPLER_WEIGHTS": str(parity_dir / "tiny-simfeatup.ckpt"),
        "SEGEARTH_DEVICE": "cpu",
        "SEGEARTH_CACHE_DIR": str(tmp_path_factory.mktemp("backend-cache")),
    })
    os.environ.pop("SEGEARTH_BACKEND_URL", None)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def wait_until(predicate, timeout: float = 180.0) -> None:
    from qgis.PyQt.QtCore import QCoreApplication

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        QCoreApplication.processEvents()
        time.sleep(0.01)
