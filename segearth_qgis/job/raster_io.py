"""Reading pixel blocks and writing result GeoTIFFs with GDAL (no QGIS imports).

Blocks are addressed in the processing :class:`~segearth_qgis.core.grid.Grid`
(rows, columns, half-open). Arrays are ``rows x cols`` (one band) in GDAL's
order.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence

import numpy as np
from osgeo import gdal, ogr, osr

from ..core.grid import Grid
from ..core.pixels import PixelRecipe, to_rgb
from ..core.request_rules import NODATA_LABEL
from ..errors import AoiError, LayerError
from .gdal_errors import GdalError, checked, collect_errors, is_gdal_failure_code

#: The ``SEGEARTH_SOFTWARE`` metadata item of the rasters this plugin writes (how a result is recognised).
SOFTWARE = "SegEarth-OV for QGIS"


class BandReader(Protocol):
    def read(self, bands: Sequence[int], grid: Grid, rows: tuple[int, int], cols: tuple[int, int]
             ) -> dict[int, np.ndarray]:
        """Bands resampled onto ``grid``'s cells ``rows x cols``."""

    def close(self) -> None:
        """Release the data source (called when the job ends)."""


class GdalBandReader:
    """Windowed reads from a GDAL dataset (average when shrinking, bilinear when enlarging)."""

    def __init__(self, source: str, native: Grid) -> None:
        with collect_errors() as log:
            try:
                self.dataset = checked(f"open {source}", lambda: gdal.Open(source), log)
            except GdalError as error:
                raise LayerError(f"The raster {source} cannot be read any more ({error.reason}): is it still "
                                 "there?") from None
        self.native = native

    def read(self, bands: Sequence[int], grid: Grid, rows: tuple[int, int], cols: tuple[int, int]
             ) -> dict[int, np.ndarray]:
        xmin, ymin, xmax, ymax = grid.sub_extent(rows[0], rows[1], cols[0], cols[1])
        xoff = (xmin - self.native.x0) / self.native.pixel_width
        yoff = (self.native.y0 - ymax) / self.native.pixel_height
        xsize = (xmax - xmin) / self.native.pixel_width
        ysize = (ymax - ymin) / self.native.pixel_height
        width, height = cols[1] - cols[0], rows[1] - rows[0]
        aligned = all(abs(v - round(v)) < 1e-6 for v in (xoff, yoff, xsize, ysize))
        if aligned:
            xoff, yoff, xsize, ysize = round(xoff), round(yoff), round(xsize), round(ysize)
        shrinking = xsize > width * 1.0001
        algorithm = gdal.GRIORA_NearestNeighbour if aligned and xsize == width else (
            gdal.GRIORA_Average if shrinking else gdal.GRIORA_Bilinear)
        out: dict[int, np.ndarray] = {}
        with collect_errors() as log:
            for number in bands:
                band = self.dataset.GetRasterBand(number)
                try:
                    out[number] = checked(f"read band {number}", partial(
                        band.ReadAsArray, xoff, yoff, xsize, ysize, width, height, resample_alg=algorithm), log)
                except GdalError as error:
                    raise LayerError(f"Band {number} of the raster could not be read: {error.reason}.") from None
        return out

    def close(self) -> None:
        self.dataset = None


class PixelSource:
    """Bands -> uint8 RGB + valid mask for any block, with an optional polygon mask."""

    def __init__(self, reader: BandReader, recipe: PixelRecipe, grid: Grid,
                 mask: Optional[Callable[[tuple[int, int], tuple[int, int]], np.ndarray]] = None) -> None:
        self.reader, self.recipe, self.grid, self.mask = reader, recipe, grid, mask

    def read(self, rows: tuple[int, int], cols: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        bands = self.reader.read(self.recipe.bands_needed, self.grid, rows, cols)
        rgb, valid = to_rgb(bands, self.recipe)
        if self.mask is not None:
            valid &= self.mask(rows, cols)
            rgb[~valid] = 0
        return rgb, valid

    def close(self) -> None:
        """Close the reader and drop the mask's layer (GDAL objects must not outlive the job)."""
        self.reader.close()
        self.mask = None


def polygon_mask(wkts: Sequence[str], grid: Grid, crs_wkt: str
                 ) -> Callable[[tuple[int, int], tuple[int, int]], np.ndarray]:
    """A mask function: True inside the polygons (given as WKT in the grid's CRS)."""
    with collect_errors() as log:
        try:
            mask = _polygon_mask(wkts, grid, crs_wkt)
            reason = log.take()
        except RuntimeError as error:  # GDAL's exceptions are on
            reason = str(error).strip() or log.take() or "GDAL reported no reason"
    if reason:
        raise AoiError(f"The area-of-interest polygons cannot be used: {reason}.")
    return mask


def _polygon_mask(wkts: Sequence[str], grid: Grid, crs_wkt: str
                  ) -> Callable[[tuple[int, int], tuple[int, int]], np.ndarray]:
    driver = ogr.GetDriverByName("Memory")
    source = driver.CreateDataSource("mask")
    reference = osr.SpatialReference()
    reference.ImportFromWkt(crs_wkt)
    layer = source.CreateLayer("aoi", reference, ogr.wkbMultiPolygon)
    for wkt in wkts:
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        layer.CreateFeature(feature)

    def mask(rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        height, width = rows[1] - rows[0], cols[1] - cols[0]
        xmin, _, _, ymax = grid.sub_extent(rows[0], rows[1], cols[0], cols[1])
        with collect_errors() as errors:
            target = checked("make the area-of-interest mask",
                             lambda: gdal.GetDriverByName("MEM").Create("", width, height, 1, gdal.GDT_Byte), errors)
            target.SetGeoTransform((xmin, grid.pixel_width, 0.0, ymax, 0.0, -grid.pixel_height))
            target.SetProjection(crs_wkt)
            checked("rasterize the area of interest", lambda: gdal.RasterizeLayer(target, [1], layer, burn_values=[1]),
                    errors, failed=is_gdal_failure_code)
            return target.GetRasterBand(1).ReadAsArray().astype(bool)

    mask.keep_alive = source  # type: ignore[attr-defined]  # the layer lives as long as the function
    return mask


class GeoTiffWriter:
    """A tiled, compressed GeoTIFF written block by block at ``path`` (a staged temporary file).

    Every GDAL failure (a full disk, a vanished folder) raises
    :class:`~segearth_qgis.job.gdal_errors.GdalError`; :meth:`close` flushes and
    closes the file, so that errors surface before the file is moved into place.
    """

    def __init__(self, path: Path, grid: Grid, crs_wkt: str, bands: int, data_type: int) -> None:
        self.path = path
        options = ["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER"]
        with collect_errors() as log:
            self.dataset = checked(f"create {path.name}", lambda: gdal.GetDriverByName("GTiff").Create(
                str(path), grid.width, grid.height, bands, data_type, options), log)
            self.dataset.SetGeoTransform(grid.geotransform)
            self.dataset.SetProjection(crs_wkt)

    def write_band(self, band: int, values: np.ndarray, row: int, col: int) -> None:
        with collect_errors() as log:
            checked(f"write {self.path.name}", lambda: self.dataset.GetRasterBand(band).WriteArray(values, col, row),
                    log, failed=is_gdal_failure_code)

    def close(self) -> None:
        """Flush and close; raises GdalError when the data did not reach the disk."""
        if self.dataset is None:
            return
        with collect_errors() as log:
            checked(f"finish {self.path.name}", self.dataset.FlushCache, log, failed=is_gdal_failure_code)
            self.dataset = None
            reason = log.take()
        if reason:
            raise GdalError(f"finish {self.path.name}", reason)

    def discard(self) -> None:
        """Close without caring for errors (the file is about to be removed)."""
        with collect_errors():
            self.dataset = None


class LabelWriter(GeoTiffWriter):
    """The class raster: uint8, nodata 255, colour table, class names as categories and metadata."""

    def __init__(self, path: Path, grid: Grid, crs_wkt: str, names: Sequence[str],
                 colours: Sequence[tuple[int, int, int, int]]) -> None:
        super().__init__(path, grid, crs_wkt, 1, gdal.GDT_Byte)
        band = self.dataset.GetRasterBand(1)
        band.SetNoDataValue(NODATA_LABEL)
        band.Fill(NODATA_LABEL)
        table = gdal.ColorTable()
        for index, colour in enumerate(colours):
            table.SetColorEntry(index, tuple(colour))
        table.SetColorEntry(NODATA_LABEL, (0, 0, 0, 0))
        band.SetRasterColorTable(table)
        band.SetRasterColorInterpretation(gdal.GCI_PaletteIndex)
        band.SetCategoryNames(list(names))
        band.SetDescription("class")
        self.dataset.SetMetadataItem("SEGEARTH_CLASSES", json.dumps(list(names)))
        # RGBA: a GeoTIFF colour table keeps no alpha, and the background class is transparent.
        self.dataset.SetMetadataItem("SEGEARTH_COLOURS", json.dumps([list(colour) for colour in colours]))
        self.dataset.SetMetadataItem("SEGEARTH_SOFTWARE", SOFTWARE)

    def write(self, labels: np.ndarray, row: int, col: int) -> None:
        """Labels ``rows x cols`` uint8 at (row, col) of the grid."""
        self.write_band(1, labels, row, col)


class ProbabilityWriter(GeoTiffWriter):
    """K float32 bands of class probabilities, band descriptions = class names."""

    def __init__(self, path: Path, grid: Grid, crs_wkt: str, names: Sequence[str]) -> None:
        super().__init__(path, grid, crs_wkt, len(names), gdal.GDT_Float32)
        for index, name in enumerate(names, start=1):
            band = self.dataset.GetRasterBand(index)
            band.SetDescription(name)
            band.SetNoDataValue(-1.0)
            band.Fill(-1.0)

    def write(self, probabilities: np.ndarray, valid: np.ndarray, row: int, col: int) -> None:
        """Probabilities ``K x rows x cols`` (invalid pixels become -1) at (row, col) of the grid."""
        for index in range(probabilities.shape[0]):
            values = probabilities[index].astype(np.float32)
            values[~valid] = -1.0
            self.write_band(index + 1, values, row, col)
