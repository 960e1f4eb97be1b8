"""SAR input from a QGIS raster layer: a small overview of one band, and a stretch fitted to it (QGIS + numpy)."""

from __future__ import annotations

from typing import Optional

import numpy as np
from qgis.core import QgsRasterLayer

from ..core.sar import SarSettings, fitted_db_range
from ..errors import LayerError
from .layer_input import NUMPY_TYPES

#: The overview's longer side, in pixels (what the preview shows and the fitted stretch is computed from).
OVERVIEW_SIZE = 256


def band_overview(layer: QgsRasterLayer, band: int, size: int = OVERVIEW_SIZE
                  ) -> tuple[np.ndarray, Optional[float]]:
    """The whole layer's ``band`` resampled to at most ``size`` pixels a side (rows x cols), and its nodata.

    Raises:
        LayerError: the band does not exist or cannot be read.
    """
    provider = layer.dataProvider()
    if not 1 <= band <= layer.bandCount():
        raise LayerError(f"Layer '{layer.name()}' has {layer.bandCount()} band(s); band {band} does not exist.")
    scale = min(1.0, size / max(layer.width(), layer.height()))
    width, height = max(1, round(layer.width() * scale)), max(1, round(layer.height() * scale))
    block = provider.block(band, layer.extent(), width, height)
    dtype = NUMPY_TYPES.get(block.dataType())
    if dtype is None or not block.isValid():
        raise LayerError(f"Band {band} of '{layer.name()}' could not be read (data type {block.dataType()}).")
    values = np.frombuffer(bytes(block.data()), dtype=dtype).reshape(height, width).copy()
    nodata = None
    if provider.sourceHasNoDataValue(band) and provider.useSourceNoDataValue(band):
        nodata = float(provider.sourceNoDataValue(band))
    return values, nodata


def fitted_settings(layer: QgsRasterLayer, band: int, units: str) -> SarSettings:
    """:class:`SarSettings` whose dB range is the 2-98 % of the layer's band (from its overview), for the whole job.

    Raises:
        LayerError: no valid pixel, a flat band, or units without decibels (8/16-bit image).
    """
    values, nodata = band_overview(layer, band)
    low, high = fitted_db_range(values, units, nodata)
    return SarSettings(units, low, high)
