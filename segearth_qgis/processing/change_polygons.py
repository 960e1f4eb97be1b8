"""Change polygons from a finished change raster: one polygon per 4-connected patch of one transition (GDAL + QGIS).

The changed pixels (transition codes) are polygonized with GDAL (``gdal.Polygonize``, the code of
``gdal:polygonize``, on a mask of the changed pixels, so unchanged ground makes no polygon) into a temporary
GeoPackage. The polygons are then burnt back onto the grid by their id (pixel centres: exactly the pixels
they came from), which gives each polygon's pixel count, area (the sum of its pixels' areas, as in the
transition matrix) and mean confidence in one pass over the rasters, block by block: memory stays bounded
by the grid's width and the number of polygons.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from osgeo import gdal, ogr, osr
from qgis.core import QgsGeometry, QgsProcessingException

from ..core.change import FIRST_TRANSITION, NODATA_CHANGE
from ..core.grid import Grid
from ..job.change_raster import ROWS_PER_STEP
from ..job.gdal_errors import ErrorLog, GdalError, checked, collect_errors, is_gdal_failure_code

ID_FIELD, CODE_FIELD = "pid", "code"
#: Features changed per transaction while ids are written.
BATCH = 10000


@dataclass(frozen=True)
class ChangePolygon:
    """One patch: its geometry (grid CRS), transition ``before -> after``, area (m²), pixels, mean confidence."""

    geometry: QgsGeometry
    before: int
    after: int
    area: float
    pixels: int
    confidence: float


def _create(path: Path, grid: Grid, crs_wkt: str, data_type: int, log: ErrorLog) -> gdal.Dataset:
    dataset = checked(f"create {path.name}", lambda: gdal.GetDriverByName("GTiff").Create(
        str(path), grid.width, grid.height, 1, data_type, ["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER"]), log)
    dataset.SetGeoTransform(grid.geotransform)
    dataset.SetProjection(crs_wkt)
    return dataset


@dataclass
class _Measured:
    """The temporary polygons (kept open) and, indexed by feature id, their pixels, areas and confidence sums."""

    store: ogr.DataSource
    layer: ogr.Layer
    pixels: np.ndarray
    areas: np.ndarray
    sums: np.ndarray


def _measure(change: Path, confidence: Path, grid: Grid, crs_wkt: str, row_areas: np.ndarray, work: Path,
             stop: Callable[[], None], progress: Callable[[float], None]) -> _Measured:
    with collect_errors() as log:
        source = checked(f"open {change.name}", lambda: gdal.Open(str(change)), log)
        codes = source.GetRasterBand(1)
        mask_set = _create(work / "changed.tif", grid, crs_wkt, gdal.GDT_Byte, log)
        mask = mask_set.GetRasterBand(1)
        for row in range(0, grid.height, ROWS_PER_STEP):
            rows = min(ROWS_PER_STEP, grid.height - row)
            values = codes.ReadAsArray(0, row, grid.width, rows)
            mask.WriteArray(((values >= FIRST_TRANSITION) & (values != NODATA_CHANGE)).astype(np.uint8), 0, row)
        stop()
        reference = osr.SpatialReference()
        reference.ImportFromWkt(crs_wkt)
        store = checked("create the polygons", lambda: ogr.GetDriverByName("GPKG").CreateDataSource(
            str(work / "polygons.gpkg")), log)
        layer = store.CreateLayer("polygons", reference, ogr.wkbPolygon)
        layer.CreateField(ogr.FieldDefn(CODE_FIELD, ogr.OFTInteger))
        layer.CreateField(ogr.FieldDefn(ID_FIELD, ogr.OFTInteger64))

        def keep_going(complete: float, *_: object) -> int:
            progress(0.5 * complete)
            return 0 if stopping() else 1

        def stopping() -> bool:
            try:
                stop()
            except QgsProcessingException:
                return True
            return False

        try:
            checked("polygonize the changes", lambda: gdal.Polygonize(codes, mask, layer, 0, [], callback=keep_going),
                    log, failed=is_gdal_failure_code)
        except GdalError:
            stop()
            raise
        stop()
        store.ExecuteSQL(f"UPDATE polygons SET {ID_FIELD} = fid")  # the id each polygon is burnt back with
        selection = store.ExecuteSQL("SELECT MAX(fid) FROM polygons")
        highest = int(selection.GetNextFeature().GetField(0) or 0)
        store.ReleaseResultSet(selection)
        ids_set = _create(work / "ids.tif", grid, crs_wkt, gdal.GDT_UInt32, log)
        checked("burn the polygons back", lambda: gdal.RasterizeLayer(
            ids_set, [1], layer, options=[f"ATTRIBUTE={ID_FIELD}"]), log, failed=is_gdal_failure_code)
        stop()
        scores_set = checked(f"open {confidence.name}", lambda: gdal.Open(str(confidence)), log)
        ids, scores = ids_set.GetRasterBand(1), scores_set.GetRasterBand(1)
        pixels = np.zeros(highest + 1, np.int64)
        areas, sums = np.zeros(highest + 1), np.zeros(highest + 1)
        for row in range(0, grid.height, ROWS_PER_STEP):
            rows = min(ROWS_PER_STEP, grid.height - row)
            found = ids.ReadAsArray(0, row, grid.width, rows).astype(np.int64).ravel()
            value = scores.ReadAsArray(0, row, grid.width, rows).astype(np.float64).ravel()
            pixels += np.bincount(found, minlength=highest + 1)
            areas += np.bincount(found, weights=np.repeat(row_areas[row:row + rows], grid.width),
                                 minlength=highest + 1)
            sums += np.bincount(found, weights=value, minlength=highest + 1)
            progress(0.5 + 0.3 * (row + rows) / grid.height)
            stop()
        ids = scores = mask = codes = None
        ids_set = scores_set = mask_set = source = None
    return _Measured(store, layer, pixels, areas, sums)


def change_polygons(change: Path, confidence: Path, grid: Grid, crs_wkt: str, row_areas: np.ndarray, classes: int,
                    work: Path, cancelled: Callable[[], bool], progress: Callable[[float], None] = lambda f: None
                    ) -> Iterator[ChangePolygon]:
    """The change patches of ``change`` (codes) with the mean of ``confidence`` over each, as they are read;
    temporary files go in the folder ``work`` and are removed at the end.

    Raises:
        QgsProcessingException: cancelled, or GDAL failed.
    """
    def stop() -> None:
        if cancelled():
            raise QgsProcessingException("Cancelled: no output was written.")

    try:
        try:
            measured = _measure(change, confidence, grid, crs_wkt, row_areas, work, stop, progress)
        except GdalError as error:
            raise QgsProcessingException(f"The change polygons could not be made: {error}") from None
        layer = measured.layer
        layer.ResetReading()
        count = max(layer.GetFeatureCount(), 1)
        for index, feature in enumerate(layer):
            if index % 256 == 0:
                stop()
                progress(0.8 + 0.2 * index / count)
            fid = feature.GetFID()
            pixels = int(measured.pixels[fid]) if fid < len(measured.pixels) else 0
            if pixels == 0:
                continue
            before, after = divmod(int(feature.GetField(CODE_FIELD)) - FIRST_TRANSITION, classes)
            geometry = QgsGeometry()
            geometry.fromWkb(bytes(feature.GetGeometryRef().ExportToWkb()))
            yield ChangePolygon(geometry, before, after, float(measured.areas[fid]), pixels,
                                float(measured.sums[fid] / pixels))
        measured.layer = measured.store = None
    finally:
        for name in ("changed.tif", "ids.tif", "polygons.gpkg"):
            with contextlib.suppress(OSError):
                (work / name).unlink()
