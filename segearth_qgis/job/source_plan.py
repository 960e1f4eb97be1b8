"""Where a job reads: the processing grid and the recipe of its pixel source, planned on the GUI / calling thread.

Shared by the dock and Processing; the :class:`~segearth_qgis.job.raster_io.PixelSource` itself is opened on the
job's own thread (:meth:`SourcePlan.open`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from qgis.core import QgsRasterLayer

from ..core.grid import Grid, Rect, intersect, processing_grid
from ..core.pixels import PixelRecipe
from ..core.sar import SarSettings
from ..errors import GridError, LayerError
from .aoi import AreaOfInterest, resolve
from .layer_input import build_recipe, default_bands, native_grid, reader_factory
from .raster_io import BandReader, PixelSource, polygon_mask


@dataclass
class SourcePlan:
    """The processing grid and how to read it; :meth:`open` runs on the job's own thread."""

    layer_name: str
    grid: Grid
    crs_wkt: str
    recipe: PixelRecipe
    make_reader: Callable[[], BandReader]
    polygons: tuple[str, ...] = ()

    def open(self) -> PixelSource:
        mask = polygon_mask(self.polygons, self.grid, self.crs_wkt) if self.polygons else None
        return PixelSource(self.make_reader(), self.recipe, self.grid, mask)


def choose_bands(layer: QgsRasterLayer, bands: Sequence[int]) -> tuple[int, int, int]:
    """Three band numbers from what the user picked: none (the layer's), one (repeated) or three."""
    picked = [int(b) for b in bands if int(b) > 0]
    if not picked:
        return default_bands(layer)
    if len(picked) == 1:
        return (picked[0],) * 3
    if len(picked) != 3:
        raise LayerError(f"Choose one band or three (R, G, B); {len(picked)} were given.")
    return (picked[0], picked[1], picked[2])


def plan_grid(layer: QgsRasterLayer, aoi: AreaOfInterest, resolution: Optional[float] = None,
              clip: Optional[Rect] = None) -> tuple[Grid, tuple[str, ...]]:
    """The processing grid and the mask polygons (WKT, raster CRS) for ``aoi`` on ``layer``; cheap."""
    if layer is None or not layer.isValid():
        raise LayerError("Choose a valid raster layer to segment.")
    resolved = resolve(aoi, layer.crs())
    area = resolved.rect
    if clip is not None:
        area = intersect(area, clip) if area is not None else clip
        if area is None:
            raise GridError("The extent and the mask polygons do not overlap.")
    return processing_grid(native_grid(layer), area, resolution), resolved.polygons_wkt


def plan_source(layer: QgsRasterLayer, bands: Sequence[int], aoi: AreaOfInterest,
                resolution: Optional[float] = None, clip: Optional[Rect] = None,
                sar: Optional[SarSettings] = None) -> SourcePlan:
    """Grid, pixel recipe and reader for ``layer`` over ``aoi`` at ``resolution`` map units per pixel.

    ``clip`` (in the raster's CRS) further limits the area, e.g. an extent given with a mask. ``sar``: the
    first chosen band is SAR backscatter, made into the SAR model's grey image (:mod:`..core.sar`).

    Raises:
        LayerError, AoiError, GridError (all ValueErrors) with a message for the user.
    """
    grid, polygons = plan_grid(layer, aoi, resolution, clip)
    # The stretch of non-8-bit data comes from the whole layer, so a pixel's colour (and label) does not
    # depend on the area drawn around it.
    recipe = build_recipe(layer, choose_bands(layer, bands), sar=sar)
    return SourcePlan(layer.name(), grid, layer.crs().toWkt(), recipe, reader_factory(layer), polygons)
