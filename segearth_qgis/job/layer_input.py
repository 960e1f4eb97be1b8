"""From a QGIS raster layer to a :class:`~segearth_qgis.job.raster_io.PixelSource` (QGIS + GDAL)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
from osgeo import gdal
from qgis.core import Qgis, QgsProviderRegistry, QgsRasterLayer, QgsRectangle

from ..core.grid import Grid, Rect
from ..core.pixels import PixelRecipe
from ..core.sar import SarSettings
from ..errors import LayerError
from ..qgis_compat import ALPHA_BAND, renderer_band
from .gdal_errors import collect_errors, opened
from .raster_io import BandReader, GdalBandReader

NUMPY_TYPES = {
    Qgis.DataType.Byte: np.uint8, Qgis.DataType.UInt16: np.uint16, Qgis.DataType.Int16: np.int16,
    Qgis.DataType.UInt32: np.uint32, Qgis.DataType.Int32: np.int32, Qgis.DataType.Float32: np.float32,
    Qgis.DataType.Float64: np.float64,
}


def native_grid(layer: QgsRasterLayer) -> Grid:
    """The layer's own pixel grid (extent and size from the provider)."""
    extent = layer.extent()
    width, height = layer.width(), layer.height()
    if width < 1 or height < 1:
        raise LayerError(f"Layer '{layer.name()}' has no pixels.")
    return Grid(extent.xMinimum(), extent.yMaximum(), extent.width() / width, extent.height() / height, width, height)


def default_bands(layer: QgsRasterLayer) -> tuple[int, int, int]:
    """R, G, B band numbers: the renderer's, else 1-2-3, else the single band three times."""
    renderer = layer.renderer()
    if renderer is not None and renderer.type() == "multibandcolor":
        bands = (renderer.redBand(), renderer.greenBand(), renderer.blueBand())
        if all(b > 0 for b in bands):
            return bands
    if renderer is not None and renderer.type() == "singlebandgray":
        return (renderer_band(renderer),) * 3
    return (1, 2, 3) if layer.bandCount() >= 3 else (1, 1, 1)


def alpha_band(layer: QgsRasterLayer) -> Optional[int]:
    provider = layer.dataProvider()
    for band in range(1, layer.bandCount() + 1):
        if provider.colorInterpretation(band) == ALPHA_BAND:
            return band
    return None


def _renderer_range(layer: QgsRasterLayer, band: int) -> Optional[tuple[float, float]]:
    renderer = layer.renderer()
    enhancement = None
    if renderer is not None and renderer.type() == "multibandcolor":
        for number, getter in ((renderer.redBand(), renderer.redContrastEnhancement),
                               (renderer.greenBand(), renderer.greenContrastEnhancement),
                               (renderer.blueBand(), renderer.blueContrastEnhancement)):
            if number == band and getter() is not None:
                enhancement = getter()
                break
    elif renderer is not None and renderer.type() == "singlebandgray" and renderer_band(renderer) == band:
        enhancement = renderer.contrastEnhancement()
    if enhancement is None:
        return None
    low, high = enhancement.minimumValue(), enhancement.maximumValue()
    return (low, high) if high > low else None


def build_recipe(layer: QgsRasterLayer, bands: Sequence[int], extent: Optional[Rect] = None,
                 sar: Optional[SarSettings] = None) -> PixelRecipe:
    """How to turn the chosen bands into RGB: nodata, alpha, and a stretch for non-8-bit data.

    The stretch of 16-bit and float bands is the layer's contrast enhancement
    (its renderer's min / max) when it has one, else the 2-98 % cumulative cut
    over the area, computed once for the whole job. With ``sar`` the first band
    is a SAR band made grey by :mod:`..core.sar` (no other stretch).

    Raises:
        LayerError: a band number that the layer does not have.
    """
    provider = layer.dataProvider()
    count = layer.bandCount()
    for band in bands:
        if not 1 <= band <= count:
            raise LayerError(f"Layer '{layer.name()}' has {count} band(s); band {band} does not exist.")
    rgb = (int(bands[0]), int(bands[1]), int(bands[2]))
    if sar is not None:
        rgb = (rgb[0],) * 3
    nodata = []
    for band in dict.fromkeys(rgb):
        if provider.sourceHasNoDataValue(band) and provider.useSourceNoDataValue(band):
            nodata.append((band, float(provider.sourceNoDataValue(band))))
    alpha = alpha_band(layer)
    if alpha in rgb:
        alpha = None
    stretch = None
    if sar is not None:
        return PixelRecipe(rgb, alpha, tuple(nodata), None, sar)
    if any(provider.dataType(band) != Qgis.DataType.Byte for band in rgb):
        area = QgsRectangle(*extent) if extent else layer.extent()
        ranges = []
        for band in rgb:
            span = _renderer_range(layer, band)
            if span is None:
                low, high = provider.cumulativeCut(band, 0.02, 0.98, area, 250000)
                span = (low, high if high > low else low + 1.0)
            ranges.append(span)
        stretch = tuple(ranges)
    return PixelRecipe(rgb, alpha, tuple(nodata), stretch)


class ProviderBandReader:
    """Reads through ``QgsRasterDataProvider.block()`` (WMS, XYZ, virtual rasters, anything)."""

    def __init__(self, layer: QgsRasterLayer) -> None:
        # A clone: providers are not thread-safe, and the job runs on a worker thread.
        self.provider = layer.dataProvider().clone()

    def read(self, bands: Sequence[int], grid: Grid, rows: tuple[int, int], cols: tuple[int, int]
             ) -> dict[int, np.ndarray]:
        extent = QgsRectangle(*grid.sub_extent(rows[0], rows[1], cols[0], cols[1]))
        width, height = cols[1] - cols[0], rows[1] - rows[0]
        out = {}
        for band in bands:
            block = self.provider.block(band, extent, width, height)
            dtype = NUMPY_TYPES.get(block.dataType())
            if dtype is None or not block.isValid():
                raise LayerError(f"Band {band} could not be read (data type {block.dataType()}).")
            # Nodata values are compared by value later (PixelRecipe.nodata), as for GDAL reads.
            out[band] = np.frombuffer(bytes(block.data()), dtype=dtype).reshape(height, width).copy()
        return out

    def close(self) -> None:
        self.provider = None


def reader_factory(layer: QgsRasterLayer) -> Callable[[], BandReader]:
    """Builds the reader on the thread that will use it: GDAL windowed reads for files GDAL
    can open, the provider's blocks for anything else (the provider is cloned here, on the
    GUI thread)."""
    if layer.providerType() == "gdal":
        source, native = layer.source(), native_grid(layer)
        with collect_errors() as log:  # a source GDAL cannot open alone is read through the provider instead
            probe = opened(source, log, gdal.OF_RASTER) if source else None
        # QGIS shows a per-dataset mask (an external .msk) as one more band, an alpha band GDAL does not have:
        # such a layer is read through the provider too.
        if probe is not None and layer.bandCount() <= probe.RasterCount:
            probe = None
            return lambda: GdalBandReader(source, native)
        probe = None
    reader = ProviderBandReader(layer)
    return lambda: reader


def layer_files(layer: QgsRasterLayer) -> list[str]:
    """The files a layer reads (its raster and GDAL's side files), which no output may replace."""
    files: list[str] = []
    source = layer.source()
    if layer.providerType() == "gdal" and source:
        with collect_errors() as log:
            dataset = opened(source, log, gdal.OF_RASTER)
            if dataset is not None:
                files.extend(dataset.GetFileList() or [])
            dataset = None
    path = QgsProviderRegistry.instance().decodeUri(layer.providerType(), source).get("path") or source
    if path:
        files.append(str(path))
    return list(dict.fromkeys(files))
