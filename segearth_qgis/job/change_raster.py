"""The change raster on disk: its writer, its legend in the file, and the minimum mapping unit (GDAL, no QGIS).

The change raster is a tiled GeoTIFF of uint16 codes (:mod:`.core.change`: 0 no change, 1 uncertain,
``2 + before * K + after`` a transition, 65535 nodata) on the processing grid. The minimum mapping unit is
applied to the finished file with GDAL's sieve (:func:`sieve_changes`), block by block.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from osgeo import gdal

from ..core.change import FIRST_TRANSITION, NODATA_CHANGE, UNCERTAIN, TransitionTally, transition_name
from ..core.grid import Grid
from .gdal_errors import GdalError, checked, collect_errors, is_gdal_failure_code
from .raster_io import SOFTWARE, GeoTiffWriter

#: Rows read and written at a time when a finished raster is walked again.
ROWS_PER_STEP = 256
#: Category names are written for codes up to this one (beyond, the .qml and the metadata carry the names).
MAX_CATEGORY_CODE = 4096
#: The transitions of a 4-connected region are one patch (as gdal:polygonize draws them).
CONNECTEDNESS = 4
#: Nodata of the confidence raster.
CONFIDENCE_NODATA = -1.0


class ChangeWriter(GeoTiffWriter):
    """The change raster: uint16 codes, nodata 65535, the class list and the coding in its metadata."""

    def __init__(self, path: Path, grid: Grid, crs_wkt: str, names: Sequence[str]) -> None:
        super().__init__(path, grid, crs_wkt, 1, gdal.GDT_UInt16)
        band = self.dataset.GetRasterBand(1)
        band.SetNoDataValue(NODATA_CHANGE)
        band.Fill(NODATA_CHANGE)
        band.SetDescription("change")
        self.dataset.SetMetadataItem("SEGEARTH_CHANGE_CLASSES", json.dumps(list(names)))
        self.dataset.SetMetadataItem("SEGEARTH_CHANGE_CODES", f"0 no change, 1 uncertain, {FIRST_TRANSITION} + "
                                     f"before * {len(names)} + after a transition, {NODATA_CHANGE} nodata")
        self.dataset.SetMetadataItem("SEGEARTH_SOFTWARE", SOFTWARE)

    def write(self, codes: np.ndarray, row: int, col: int) -> None:
        """Codes ``rows x cols`` uint16 at (row, col) of the grid."""
        self.write_band(1, codes, row, col)


class ConfidenceWriter(GeoTiffWriter):
    """float32, per pixel the smaller of the two dates' top probabilities (nodata -1)."""

    def __init__(self, path: Path, grid: Grid, crs_wkt: str) -> None:
        super().__init__(path, grid, crs_wkt, 1, gdal.GDT_Float32)
        band = self.dataset.GetRasterBand(1)
        band.SetNoDataValue(CONFIDENCE_NODATA)
        band.Fill(CONFIDENCE_NODATA)
        band.SetDescription("confidence")

    def write(self, confidence: np.ndarray, row: int, col: int) -> None:
        """``rows x cols`` float32 (NaN: nodata) at (row, col) of the grid."""
        self.write_band(1, np.where(np.isnan(confidence), CONFIDENCE_NODATA, confidence).astype(np.float32), row, col)


def name_codes(path: Path, codes: Sequence[int], names: Sequence[str]) -> None:
    """Write the names of ``codes`` into the finished change raster: category names (up to
    :data:`MAX_CATEGORY_CODE`; GDAL keeps them in the ``.aux.xml``) and the ``SEGEARTH_CHANGE_TRANSITIONS``
    metadata item (JSON ``{code: "tree → building"}``).

    Raises:
        GdalError: the file could not be updated.
    """
    named = {int(code): transition_name(int(code), names) for code in codes}
    with collect_errors() as log:
        dataset = checked(f"open {path.name}", lambda: gdal.Open(str(path), gdal.GA_Update), log)
        dataset.SetMetadataItem("SEGEARTH_CHANGE_TRANSITIONS", json.dumps({str(k): v for k, v in named.items()},
                                                                          ensure_ascii=False))
        highest = max([UNCERTAIN, *named])
        if highest <= MAX_CATEGORY_CODE:
            categories = [""] * (highest + 1)
            categories[0], categories[UNCERTAIN] = "no change", "uncertain"
            for code, name in named.items():
                categories[code] = name
            dataset.GetRasterBand(1).SetCategoryNames(categories)
        checked(f"finish {path.name}", dataset.FlushCache, log, failed=is_gdal_failure_code)
        dataset = None
        reason = log.take()
    if reason:
        raise GdalError(f"finish {path.name}", reason)


def _changed(codes: np.ndarray) -> np.ndarray:
    return (codes >= FIRST_TRANSITION) & (codes != NODATA_CHANGE)


def sieve_changes(path: Path, scratch: Path, grid: Grid, min_pixels: int, row_areas: np.ndarray,
                  tally: TransitionTally, cancelled: Callable[[], bool] = lambda: False) -> int:
    """Apply the minimum mapping unit to the finished change raster at ``path``, in place.

    ``scratch``: a temporary file the caller reserved (and removes) for the change mask.

    Patches of change (4-connected pixels with any transition code) smaller than ``min_pixels`` are
    merged into their surroundings by GDAL's sieve on the change mask; their pixels, whose labels differ
    but whose change is too small to map, become *uncertain*, and ``tally`` loses them from its changes.
    Nodata counts as surroundings. Memory: GDAL's sieve (a few rows and one entry per patch) and
    :data:`ROWS_PER_STEP` rows at a time here.

    Returns:
        the number of pixels made uncertain.

    Raises:
        GdalError: a read, the sieve or a write failed; InterruptedError: ``cancelled()`` became true.
    """
    if min_pixels <= 1:
        return 0
    mask_path = scratch
    demoted = 0
    with collect_errors() as log:
        dataset = checked(f"open {path.name}", lambda: gdal.Open(str(path), gdal.GA_Update), log)
        band = dataset.GetRasterBand(1)
        mask_set = checked("create the change mask", lambda: gdal.GetDriverByName("GTiff").Create(
            str(mask_path), grid.width, grid.height, 1, gdal.GDT_Byte, ["TILED=YES", "COMPRESS=DEFLATE"]), log)
        mask = mask_set.GetRasterBand(1)
        for row in range(0, grid.height, ROWS_PER_STEP):
            rows = min(ROWS_PER_STEP, grid.height - row)
            values = band.ReadAsArray(0, row, grid.width, rows)
            mask.WriteArray(_changed(values).astype(np.uint8), 0, row)

        def keep_going(*_: object) -> int:
            return 0 if cancelled() else 1

        try:
            checked("sieve the change patches", lambda: gdal.SieveFilter(
                mask, None, mask, int(min_pixels), CONNECTEDNESS, callback=keep_going), log,
                failed=is_gdal_failure_code)
        except GdalError:
            if cancelled():  # the callback stopped it
                raise InterruptedError("cancelled") from None
            raise
        if cancelled():
            raise InterruptedError("cancelled")
        for row in range(0, grid.height, ROWS_PER_STEP):
            rows = min(ROWS_PER_STEP, grid.height - row)
            values = band.ReadAsArray(0, row, grid.width, rows)
            gone = _changed(values) & (mask.ReadAsArray(0, row, grid.width, rows) == 0)
            if gone.any():
                areas = np.broadcast_to(row_areas[row:row + rows, None], gone.shape)
                tally.remove_changes(values[gone], areas[gone])
                values[gone] = UNCERTAIN
                checked(f"write {path.name}", functools.partial(band.WriteArray, values, 0, row), log,
                        failed=is_gdal_failure_code)
                demoted += int(gone.sum())
        checked(f"finish {path.name}", dataset.FlushCache, log, failed=is_gdal_failure_code)
        band = mask = None
        dataset = mask_set = None
        reason = log.take()
    if reason:
        raise GdalError(f"sieve {path.name}", reason)
    return demoted


def read_codes(path: Path, rows: Optional[tuple[int, int]] = None) -> np.ndarray:
    """The codes of a change raster (all of it, or ``rows``), for tests and small rasters."""
    dataset = gdal.Open(str(path))
    try:
        band = dataset.GetRasterBand(1)
        if rows is None:
            return band.ReadAsArray()
        return band.ReadAsArray(0, rows[0], dataset.RasterXSize, rows[1] - rows[0])
    finally:
        dataset = None
