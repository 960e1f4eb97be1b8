"""Reading pixel blocks and writing result GeoTIFFs with GDAL (no QGIS imports).

Blocks are addressed in the processing :class:`~segearth_qgis.core.grid.Grid`
(rows, columns, half-open). Arrays are ``rows x cols`` (one band) in GDAL's
order.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence

import numpy as np
from osgeo import gdal, ogr, osr

from .core.grid import Grid
from .core.pixels import PixelRecipe, to_rgb

gdal.UseExceptions()
ogr.UseExceptions()

NODATA_LABEL = 255
#: Files are created private (mkstemp) and get the user's usual permissions when committed.
_UMASK = os.umask(0)
os.umask(_UMASK)


class OutputError(Exception):
    """The output file cannot be written (exists, folder missing, not writable)."""


class BandReader(Protocol):
    def read(self, bands: Sequence[int], grid: Grid, rows: tuple[int, int], cols: tuple[int, int]
             ) -> dict[int, np.ndarray]:
        """Bands resampled onto ``grid``'s cells ``rows x cols``."""

    def close(self) -> None:
        """Release the data source (called when the job ends)."""


class GdalBandReader:
    """Windowed reads from a GDAL dataset (average when shrinking, bilinear when enlarging)."""

    def __init__(self, source: str, native: Grid) -> None:
        self.dataset = gdal.Open(source)
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
        return {b: self.dataset.GetRasterBand(b).ReadAsArray(xoff, yoff, xsize, ysize, width, height,
                                                             resample_alg=algorithm) for b in bands}

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
        target = gdal.GetDriverByName("MEM").Create("", width, height, 1, gdal.GDT_Byte)
        target.SetGeoTransform((xmin, grid.pixel_width, 0.0, ymax, 0.0, -grid.pixel_height))
        target.SetProjection(crs_wkt)
        gdal.RasterizeLayer(target, [1], layer, burn_values=[1])
        return target.GetRasterBand(1).ReadAsArray().astype(bool)

    mask.keep_alive = source  # type: ignore[attr-defined]  # the layer lives as long as the function
    return mask


def check_output_path(path: str, overwrite: bool) -> Path:
    """Refuse a path that exists (unless ``overwrite``) or whose folder is missing or read-only."""
    target = Path(path).expanduser()
    if target.exists() and not overwrite:
        raise OutputError(f"{target} already exists: choose another file name, or confirm overwriting it.")
    if not target.parent.is_dir():
        raise OutputError(f"The folder {target.parent} does not exist: create it or choose another folder.")
    if not os.access(target.parent, os.W_OK):
        raise OutputError(f"The folder {target.parent} is not writable: choose another folder.")
    return target


class _AtomicGeoTiff:
    """A GeoTIFF written to a temporary name in the target folder and renamed when complete."""

    def __init__(self, path: str, grid: Grid, crs_wkt: str, bands: int, data_type: int, overwrite: bool) -> None:
        self.target = check_output_path(path, overwrite)
        handle, tmp = tempfile.mkstemp(dir=self.target.parent, prefix=f".{self.target.stem}.", suffix=".part.tif")
        os.close(handle)
        self.tmp = Path(tmp)
        options = ["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER"]
        self.dataset = gdal.GetDriverByName("GTiff").Create(str(self.tmp), grid.width, grid.height, bands,
                                                            data_type, options)
        self.dataset.SetGeoTransform(grid.geotransform)
        self.dataset.SetProjection(crs_wkt)

    def commit(self) -> Path:
        """Close and move into place (with its .aux.xml side file, if any)."""
        self.dataset.FlushCache()
        self.dataset = None
        aux = Path(str(self.tmp) + ".aux.xml")
        if aux.exists():
            os.replace(aux, Path(str(self.target) + ".aux.xml"))
        os.chmod(self.tmp, 0o666 & ~_UMASK)
        os.replace(self.tmp, self.target)
        return self.target

    def abort(self) -> None:
        """Drop the partial file; nothing is left behind."""
        self.dataset = None
        for leftover in (self.tmp, Path(str(self.tmp) + ".aux.xml")):
            if leftover.exists():
                leftover.unlink()


class LabelWriter(_AtomicGeoTiff):
    """The class raster: uint8, nodata 255, colour table, class names as categories and metadata."""

    def __init__(self, path: str, grid: Grid, crs_wkt: str, names: Sequence[str],
                 colours: Sequence[tuple[int, int, int, int]], overwrite: bool = False) -> None:
        super().__init__(path, grid, crs_wkt, 1, gdal.GDT_Byte, overwrite)
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
        self.dataset.SetMetadataItem("SEGEARTH_SOFTWARE", "SegEarth-OV for QGIS")

    def write(self, labels: np.ndarray, row: int, col: int) -> None:
        self.dataset.GetRasterBand(1).WriteArray(labels, col, row)


class ProbabilityWriter(_AtomicGeoTiff):
    """K float32 bands of class probabilities, band descriptions = class names."""

    def __init__(self, path: str, grid: Grid, crs_wkt: str, names: Sequence[str], overwrite: bool = False) -> None:
        super().__init__(path, grid, crs_wkt, len(names), gdal.GDT_Float32, overwrite)
        for index, name in enumerate(names, start=1):
            band = self.dataset.GetRasterBand(index)
            band.SetDescription(name)
            band.SetNoDataValue(-1.0)
            band.Fill(-1.0)

    def write(self, probabilities: np.ndarray, valid: np.ndarray, row: int, col: int) -> None:
        for index in range(probabilities.shape[0]):
            values = probabilities[index].astype(np.float32)
            values[~valid] = -1.0
            self.dataset.GetRasterBand(index + 1).WriteArray(values, col, row)
