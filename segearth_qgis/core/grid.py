"""The processing grid: the AOI on the raster, at the chosen resolution (no QGIS).

Rectangles are ``(xmin, ymin, xmax, ymax)`` in the raster's CRS; grids are
north-up with rows going down (GDAL's geotransform convention).

Every processing grid is cut from one *anchor grid* per raster and
resolution: the raster covered from its own top-left corner at the processing
resolution. The sliding windows are placed on the anchor grid, as a run over
the whole raster would place them (:mod:`.blocks` reads the context they need
beyond the area), so a pixel's label does not depend on the area drawn around it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from ..errors import GridError

Rect = tuple[float, float, float, float]


@dataclass(frozen=True)
class Anchor:
    """Where a grid lies on its anchor grid: its first pixel's (row, column) and the anchor grid's size."""

    row: int
    col: int
    height: int
    width: int


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: origin at the top-left corner, square-ish pixels.

    ``anchor``: its place on the raster's anchor grid (None: the grid is its own anchor).
    """

    x0: float
    y0: float
    pixel_width: float
    pixel_height: float
    width: int
    height: int
    anchor: Optional[Anchor] = field(default=None, compare=False)

    @property
    def geotransform(self) -> tuple[float, float, float, float, float, float]:
        return (self.x0, self.pixel_width, 0.0, self.y0, 0.0, -self.pixel_height)

    @property
    def extent(self) -> Rect:
        return (self.x0, self.y0 - self.height * self.pixel_height, self.x0 + self.width * self.pixel_width, self.y0)

    def sub_extent(self, row0: int, row1: int, col0: int, col1: int) -> Rect:
        """The extent of rows ``[row0, row1)`` and columns ``[col0, col1)``."""
        return (self.x0 + col0 * self.pixel_width, self.y0 - row1 * self.pixel_height,
                self.x0 + col1 * self.pixel_width, self.y0 - row0 * self.pixel_height)


def intersect(a: Rect, b: Rect) -> Rect | None:
    xmin, ymin, xmax, ymax = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (xmin, ymin, xmax, ymax) if xmin < xmax and ymin < ymax else None


def anchor_grid(raster: Grid, resolution: float | None) -> Grid:
    """The raster at ``resolution`` map units per pixel, from its top-left corner (the raster itself when native).

    Only whole pixels inside the raster count (at least one), so reads never leave it.

    Raises:
        GridError: the resolution is not a positive number.
    """
    step = raster.pixel_width if resolution is None else resolution
    if not math.isfinite(step) or step <= 0:
        raise GridError(f"The processing resolution must be a positive number, got {resolution}.")
    if math.isclose(step, raster.pixel_width, rel_tol=1e-9):
        return raster
    ratio = raster.pixel_height / raster.pixel_width
    width = max(1, math.floor(raster.width * raster.pixel_width / step + 1e-9))
    height = max(1, math.floor(raster.height * raster.pixel_height / (step * ratio) + 1e-9))
    return Grid(raster.x0, raster.y0, step, step * ratio, width, height)


def processing_grid(raster: Grid, aoi: Rect | None, resolution: float | None) -> Grid:
    """The grid to segment: ``aoi`` clipped to ``raster``, at ``resolution`` map units per pixel.

    The area is snapped outwards to whole pixels of the anchor grid (:func:`anchor_grid`; at the
    native resolution, the raster's own pixels: no resampling at all) and knows its place on it.

    Raises:
        GridError: the AOI misses the raster, or the resolution is not a
            positive number, or the grid would be empty.
    """
    area = raster.extent if aoi is None else intersect(raster.extent, aoi)
    if area is None:
        raise GridError("The area of interest does not overlap the raster: draw it over the layer, or use the whole "
                        "layer.")
    anchor = anchor_grid(raster, resolution)
    col0 = max(math.floor((area[0] - anchor.x0) / anchor.pixel_width + 1e-9), 0)
    col1 = min(math.ceil((area[2] - anchor.x0) / anchor.pixel_width - 1e-9), anchor.width)
    row0 = max(math.floor((anchor.y0 - area[3]) / anchor.pixel_height + 1e-9), 0)
    row1 = min(math.ceil((anchor.y0 - area[1]) / anchor.pixel_height - 1e-9), anchor.height)
    if col1 <= col0 or row1 <= row0:
        raise GridError("The area of interest is smaller than one pixel at this resolution: draw a larger area or "
                        "choose a finer resolution.")
    return Grid(anchor.x0 + col0 * anchor.pixel_width, anchor.y0 - row0 * anchor.pixel_height,
                anchor.pixel_width, anchor.pixel_height, col1 - col0, row1 - row0,
                Anchor(row0, col0, anchor.height, anchor.width))


def estimate(grid: Grid, block: int, seconds_per_megapixel: float | None) -> dict[str, float]:
    """Pixel count, block count and (when a speed is known) seconds, for the panel."""
    from .blocks import plan_grid_blocks

    pixels = grid.width * grid.height
    blocks = len(plan_grid_blocks(grid, block))
    seconds = pixels / 1e6 * seconds_per_megapixel * 1.3 if seconds_per_megapixel else float("nan")
    return {"pixels": float(pixels), "blocks": float(blocks), "seconds": seconds}
