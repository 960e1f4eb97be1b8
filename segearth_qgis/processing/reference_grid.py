"""A reference (raster or polygons) brought onto a class raster's pixel grid, and the pairs counted (GDAL).

The reference ends up as an Int32 GeoTIFF on exactly the class raster's grid
(same size, geotransform and CRS): a raster by nearest-neighbour warping, polygons
by burning a class code at every pixel whose centre they cover. Pixels without
reference are :data:`REFERENCE_NODATA`. Both rasters are then read in row
blocks and the ``(reference code, class value)`` pairs counted, so neither is
ever held whole in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import numpy as np
from osgeo import gdal, ogr, osr
from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsCoordinateTransformContext, QgsGeometry

from ..errors import AccuracyError
from ..job.gdal_errors import ErrorLog, GdalError, checked, collect_errors, is_gdal_failure_code, opened

REFERENCE_NODATA = -(2**31)
BLOCK_ROWS = 256


@dataclass(frozen=True)
class ClassGrid:
    """The class raster's file and grid (north-up; geotransform in GDAL's order)."""

    path: str
    width: int
    height: int
    geotransform: tuple[float, ...]
    wkt: str
    nodata: Optional[float]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` in the grid's CRS."""
        x0, dx, _, y0, _, dy = self.geotransform
        xs, ys = (x0, x0 + dx * self.width), (y0, y0 + dy * self.height)
        return min(xs), min(ys), max(xs), max(ys)


def open_class_grid(path: str) -> ClassGrid:
    """The grid of the single-band class raster at ``path``.

    Raises:
        AccuracyError: not readable by GDAL, not one band, or rotated.
    """
    with collect_errors() as log:
        dataset = opened(path, log)
        if dataset is None:
            raise AccuracyError(f"'{path}' cannot be opened by GDAL: save the classification as a GeoTIFF first.")
        if dataset.RasterCount != 1:
            raise AccuracyError(f"'{path}' has {dataset.RasterCount} bands; a class raster has one.")
        geotransform = tuple(dataset.GetGeoTransform())
        if geotransform[2] or geotransform[4]:
            raise AccuracyError(f"'{path}' is rotated; warp it to a north-up grid first (gdalwarp).")
        return ClassGrid(path, dataset.RasterXSize, dataset.RasterYSize, geotransform, dataset.GetProjection(),
                         dataset.GetRasterBand(1).GetNoDataValue())


def _grid_dataset(grid: ClassGrid, target: str, log: ErrorLog) -> gdal.Dataset:
    """An empty Int32 GeoTIFF on ``grid`` (all :data:`REFERENCE_NODATA`), inside :func:`collect_errors`."""
    try:
        dataset = checked(f"create {target}", lambda: gdal.GetDriverByName("GTiff").Create(
            target, grid.width, grid.height, 1, gdal.GDT_Int32, ["TILED=YES", "COMPRESS=DEFLATE"]), log)
    except GdalError as error:
        raise AccuracyError(f"Cannot write the temporary file '{target}': {error.reason}") from None
    dataset.SetGeoTransform(grid.geotransform)
    dataset.SetProjection(grid.wkt)
    band = dataset.GetRasterBand(1)
    band.SetNoDataValue(REFERENCE_NODATA)
    band.Fill(REFERENCE_NODATA)
    return dataset


def warp_reference(source: str, grid: ClassGrid, target: str) -> None:
    """Resample the reference raster ``source`` (band 1) onto ``grid`` by nearest neighbour into ``target``.

    The reference's own nodata value, and everything outside it, become :data:`REFERENCE_NODATA`.

    Raises:
        AccuracyError: unreadable, not one band, or the warp failed.
    """
    with collect_errors() as log:
        dataset = opened(source, log)
        if dataset is None:
            raise AccuracyError(f"The reference raster '{source}' cannot be opened by GDAL.")
        if dataset.RasterCount != 1:
            raise AccuracyError(f"The reference raster has {dataset.RasterCount} bands; give a single band of class "
                                "codes.")
        output = _grid_dataset(grid, target, log)
        try:
            checked("warp", lambda: gdal.Warp(output, dataset, resampleAlg="near", dstNodata=REFERENCE_NODATA), log)
            checked("flush", output.FlushCache, log, failed=is_gdal_failure_code)
        except GdalError as error:
            raise AccuracyError("The reference could not be resampled onto the classification's grid: "
                                f"{error.reason}") from None


def _code(value: object) -> Optional[int]:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def rasterize_reference(features: Iterable[tuple[QgsGeometry, object]], source_crs: QgsCoordinateReferenceSystem,
                        grid: ClassGrid, target: str,
                        transform_context: QgsCoordinateTransformContext) -> dict[int, Optional[str]]:
    """Burn polygons with class values onto ``grid`` (pixel centres inside) into ``target``.

    Values that are all whole numbers are used as codes (unnamed); otherwise
    each distinct text is a named class with a code of its own. Features
    without geometry or value are skipped; where polygons overlap, the later wins.

    Returns:
        the reference classes: code -> name (None for numeric codes).

    Raises:
        AccuracyError: no polygon with a value.
    """
    rows = [(geometry, value) for geometry, value in features
            if geometry is not None and not geometry.isEmpty() and value is not None and str(value).strip() != ""]
    if not rows:
        raise AccuracyError("The reference polygons have no feature with both a geometry and a class value.")
    codes = [_code(value) for _, value in rows]
    classes: dict[int, Optional[str]]
    if all(code is not None for code in codes):
        classes = {int(code): None for code in codes if code is not None}
        burn = [int(code) for code in codes if code is not None]
    else:
        names = sorted({str(value).strip() for _, value in rows}, key=str.casefold)
        classes = dict(enumerate(names))
        index = {name: code for code, name in classes.items()}
        burn = [index[str(value).strip()] for _, value in rows]
    grid_crs = QgsCoordinateReferenceSystem.fromWkt(grid.wkt)
    transform = QgsCoordinateTransform(source_crs, grid_crs, transform_context)
    with collect_errors() as log:
        try:
            memory, layer = _memory_layer(grid.wkt, rows, burn, transform, log)  # keep memory: the layer needs it
            dataset = _grid_dataset(grid, target, log)
            checked("rasterize", lambda: gdal.RasterizeLayer(dataset, [1], layer, options=["ATTRIBUTE=code"]), log,
                    failed=is_gdal_failure_code)
            checked("flush", dataset.FlushCache, log, failed=is_gdal_failure_code)
        except GdalError as error:
            raise AccuracyError(f"The reference polygons could not be rasterized: {error.reason}") from None
    return classes


def _memory_layer(wkt: str, rows: list[tuple[QgsGeometry, object]], burn: list[int],
                  transform: QgsCoordinateTransform, log: ErrorLog) -> tuple[ogr.DataSource, ogr.Layer]:
    """An OGR memory data source and its layer (in the grid's CRS ``wkt``): the polygons, codes in field "code"."""
    reference = osr.SpatialReference()
    checked("read the grid's CRS", lambda: reference.ImportFromWkt(wkt), log, failed=bool)
    memory = checked("create a memory layer", lambda: ogr.GetDriverByName("Memory").CreateDataSource("reference"),
                     log)
    layer = memory.CreateLayer("reference", reference, ogr.wkbUnknown)
    layer.CreateField(ogr.FieldDefn("code", ogr.OFTInteger))
    for (geometry, _), code in zip(rows, burn):
        projected = QgsGeometry(geometry)
        projected.transform(transform)
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkb(bytes(projected.asWkb())))
        feature.SetField("code", code)
        layer.CreateFeature(feature)
    return memory, layer


def count_pairs(grid: ClassGrid, reference_path: str, cancelled: Callable[[], bool] = lambda: False,
                progress: Callable[[float], None] = lambda fraction: None) -> tuple[dict[tuple[int, int], int], int]:
    """Count ``(reference code, class value)`` pixel pairs over the grid.

    Pixels where the reference is :data:`REFERENCE_NODATA` or the class raster is its nodata are skipped.

    Returns:
        the counts and the number of skipped pixels.
    """
    with collect_errors() as log:
        return _count_pairs(grid, reference_path, cancelled, progress, log)


def _count_pairs(grid: ClassGrid, reference_path: str, cancelled: Callable[[], bool],
                 progress: Callable[[float], None], log: ErrorLog) -> tuple[dict[tuple[int, int], int], int]:
    class_dataset, reference_dataset = opened(grid.path, log), opened(reference_path, log)  # keep: bands need them
    if class_dataset is None or reference_dataset is None:
        raise AccuracyError(f"'{grid.path if class_dataset is None else reference_path}' cannot be read any more: "
                            "is it still there?")
    classes, reference = class_dataset.GetRasterBand(1), reference_dataset.GetRasterBand(1)
    pairs: dict[tuple[int, int], int] = {}
    skipped = 0
    for row in range(0, grid.height, BLOCK_ROWS):
        if cancelled():
            raise AccuracyError("Cancelled.")
        rows = min(BLOCK_ROWS, grid.height - row)
        predicted = classes.ReadAsArray(0, row, grid.width, rows)
        codes = reference.ReadAsArray(0, row, grid.width, rows).astype(np.int64)
        keep = codes != REFERENCE_NODATA
        if grid.nodata is not None and not math.isnan(grid.nodata):
            keep &= predicted != grid.nodata
        skipped += int(keep.size - keep.sum())
        if keep.any():
            stacked = np.stack([codes[keep], predicted[keep].astype(np.int64)], axis=1)
            unique, counts = np.unique(stacked, axis=0, return_counts=True)
            for (code, value), count in zip(unique.tolist(), counts.tolist()):
                pairs[(code, value)] = pairs.get((code, value), 0) + count
        progress((row + rows) / grid.height)
    return pairs, skipped
