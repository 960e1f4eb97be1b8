"""The processing grid: the AOI on the raster, at the chosen resolution (no QGIS).

Rectangles are ``(xmin, ymin, xmax, ymax)`` in the raster's CRS; grids are
north-up with rows going down (GDAL's geotransform convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import GridError

Rect = tuple[float, float, float, float]


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: origin at the top-left corner, square-ish pixels."""

    x0: float
    y0: float
    pixel_width: float
    pixel_height: float
    width: int
    height: int

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


def processing_grid(raster: Grid, aoi: Rect | None, resolution: float | None) -> Grid:
    """The grid to segment: ``aoi`` clipped to ``raster``, at ``resolution`` map units per pixel.

    At the raster's native resolution the AOI is snapped outwards to whole
    source pixels (no resampling at all); at another resolution the grid
    starts at the clipped AOI's top-left corner.

    Raises:
        GridError: the AOI misses the raster, or the resolution is not a
            positive number, or the grid would be empty.
    """
    area = raster.extent if aoi is None else intersect(raster.extent, aoi)
    if area is None:
        raise GridError("The area of interest does not overlap the raster: draw it over the layer, or use the whole "
                        "layer.")
    step = raster.pixel_width if resolution is None else resolution
    if not math.isfinite(step) or step <= 0:
        raise GridError(f"The processing resolution must be a positive number, got {resolution}.")
    if math.isclose(step, raster.pixel_width, rel_tol=1e-9):
        col0 = math.floor((area[0] - raster.x0) / raster.pixel_width + 1e-9)
        col1 = math.ceil((area[2] - raster.x0) / raster.pixel_width - 1e-9)
        row0 = math.floor((raster.y0 - area[3]) / raster.pixel_height + 1e-9)
        row1 = math.ceil((raster.y0 - area[1]) / raster.pixel_height - 1e-9)
        col0, row0 = max(col0, 0), max(row0, 0)
        col1, row1 = min(col1, raster.width), min(row1, raster.height)
        return Grid(raster.x0 + col0 * raster.pixel_width, raster.y0 - row0 * raster.pixel_height,
                    raster.pixel_width, raster.pixel_height, col1 - col0, row1 - row0)
    ratio = raster.pixel_height / raster.pixel_width
    width = max(1, round((area[2] - area[0]) / step))
    height = max(1, round((area[3] - area[1]) / (step * ratio)))
    return Grid(area[0], area[3], step, step * ratio, width, height)


def estimate(grid: Grid, block: int, seconds_per_megapixel: float | None) -> dict[str, float]:
    """Pixel count, block count and (when a speed is known) seconds, for the panel."""
    from .blocks import plan_blocks

    pixels = grid.width * grid.height
    blocks = len(plan_blocks(grid.height, grid.width, block))
    seconds = pixels / 1e6 * seconds_per_megapixel * 1.3 if seconds_per_megapixel else float("nan")
    return {"pixels": float(pixels), "blocks": float(blocks), "seconds": seconds}
