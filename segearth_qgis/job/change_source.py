"""Both dates on one grid: the after raster read on the before raster's processing grid (QGIS + GDAL).

The processing grid is the before raster's (:func:`~segearth_qgis.job.source_plan.plan_source`: its pixels, snapped
to its anchor grid at the processing resolution). The after raster is brought onto the before raster's
*native* grid first, then read exactly as the before raster is (same windows, same native-to-processing
resampling), so identical images give identical blocks:

- **a file GDAL can open** becomes a warped VRT onto the before raster's native grid (CRS, geotransform,
  size), computed lazily block by block as it is read (no copy, bounded memory). When the after raster is
  the before grid shifted by whole pixels (same CRS and pixel size) the VRT copies pixels (nearest
  neighbour: nothing is resampled, identical images stay identical); otherwise it resamples **bilinearly**:
  smooth for imagery, edges keep their place (nearest neighbour moves them by up to half a pixel, which the
  model would see as shifted edges and report as change along them), no overshoot at edges (cubic kernels
  ring), and GDAL widens the kernel when the after raster is finer, so it averages instead of aliasing.
  Pixels outside the after raster or nodata in it become invalid through the VRT's alpha band.
- **any other provider** (WMS, XYZ, virtual rasters) is read through its own blocks when it has the before
  raster's CRS, and through QGIS's own reprojection (``QgsRasterProjector``, nearest neighbour, the only
  resampling it offers) otherwise; pixels outside its extent are invalid.

Each date keeps its own band mapping, nodata and stretch (they may come from different sensors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
from osgeo import gdal
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCoordinateTransformContext,
    QgsDistanceArea,
    QgsGeometry,
    QgsRasterBlock,
    QgsRasterBlockFeedback,
    QgsRasterLayer,
    QgsRasterProjector,
    QgsRectangle,
)

from ..core.grid import Grid, Rect, intersect
from ..core.pixels import PixelRecipe
from ..errors import GridError, LayerError
from ..qgis_compat import SQUARE_METERS
from .aoi import AreaOfInterest
from .gdal_errors import GdalError, checked, collect_errors
from .layer_input import ProviderBandReader, build_recipe, native_grid
from .raster_io import BandReader, GdalBandReader, PixelSource, polygon_mask
from .source_plan import SourcePlan, choose_bands, plan_source

#: How the after raster is resampled onto the before grid, as the log and report say it.
RESAMPLING_NONE = "none (the after raster is the before grid shifted by whole pixels)"
RESAMPLING_BILINEAR = "bilinear (GDAL warp onto the before raster's grid)"
RESAMPLING_PROVIDER = "the layer's own blocks (same CRS)"
RESAMPLING_PROJECTOR = "nearest neighbour (QGIS's raster reprojection)"
#: Row areas are measured on this many rows at most and interpolated between them (they vary smoothly).
AREA_SAMPLES = 257
#: Vertices per edge of the outlines measured or reprojected (long edges bend in another CRS).
EDGE_VERTICES = 32
#: The ellipsoid areas are measured on when neither the project nor the CRS names one.
FALLBACK_ELLIPSOID = "EPSG:7030"


@dataclass
class AfterReading:
    """How to read the after raster on the before raster's grid.

    Attributes:
        recipe: its bands, nodata, alpha (the VRT's) and stretch, as band numbers of what the reader reads.
        make_reader: builds the reader on the job's thread.
        coverage: WKT polygons (before CRS) outside which the after raster has no data; () when the reader
            says so itself (the VRT's alpha band).
        resampling: how it is resampled (one of the ``RESAMPLING_*`` texts).
    """

    recipe: PixelRecipe
    make_reader: Callable[[], BandReader]
    coverage: tuple[str, ...]
    resampling: str


@dataclass
class ChangeSourcePlan:
    """Both dates on the before raster's processing grid; :meth:`sources` runs on the job's own thread.

    Attributes:
        before: the before raster's prepared job (grid, CRS, recipe, reader, AOI polygons).
        after_name: the after layer's name.
        after: how to read the after raster on that grid.
        row_areas: ``grid.height`` float64, the area in m² of one pixel of each row (ellipsoidal).
    """

    before: SourcePlan
    after_name: str
    after: AfterReading
    row_areas: np.ndarray

    @property
    def grid(self) -> Grid:
        return self.before.grid

    @property
    def crs_wkt(self) -> str:
        return self.before.crs_wkt

    @property
    def crs(self) -> QgsCoordinateReferenceSystem:
        """The processing grid's CRS (the before raster's)."""
        return QgsCoordinateReferenceSystem.fromWkt(self.crs_wkt)

    def open(self) -> tuple[PixelSource, PixelSource]:
        """The pixel sources of both dates (the after one masked by the AOI and its coverage)."""
        before = self.before.open()
        masks = [polygon_mask(wkts, self.grid, self.crs_wkt) for wkts in (self.before.polygons, self.after.coverage)
                 if wkts]
        mask = None
        if len(masks) == 1:
            mask = masks[0]
        elif masks:
            first, second = masks

            def mask(rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
                return first(rows, cols) & second(rows, cols)

        return before, PixelSource(self.after.make_reader(), self.after.recipe, self.grid, mask)


def _densified(rect: QgsRectangle) -> QgsGeometry:
    geometry = QgsGeometry.fromRect(rect)
    return geometry.densifyByCount(EDGE_VERTICES)


def extent_in(layer: QgsRasterLayer, crs: QgsCoordinateReferenceSystem,
              context: QgsCoordinateTransformContext) -> QgsGeometry:
    """``layer``'s extent as a polygon in ``crs`` (edges densified, so they bend as they should)."""
    outline = _densified(layer.extent())
    if layer.crs() != crs:
        try:
            outline.transform(QgsCoordinateTransform(layer.crs(), crs, context))
        except Exception as error:  # QgsCsException: no overlap at all between the two CRSs' areas of use
            raise GridError(f"The after raster '{layer.name()}' cannot be placed in the before raster's CRS "
                            f"({error}): do the two rasters cover the same ground?") from None
    return outline


def _aligned(after: QgsRasterLayer, before: QgsRasterLayer, before_grid: Grid) -> bool:
    """True when ``after``'s pixels are ``before``'s grid shifted by whole pixels (same CRS and pixel size)."""
    if after.crs() != before.crs():
        return False
    grid = native_grid(after)
    same_size = (math.isclose(grid.pixel_width, before_grid.pixel_width, rel_tol=1e-9)
                 and math.isclose(grid.pixel_height, before_grid.pixel_height, rel_tol=1e-9))
    if not same_size:
        return False
    dx = (grid.x0 - before_grid.x0) / before_grid.pixel_width
    dy = (before_grid.y0 - grid.y0) / before_grid.pixel_height
    return abs(dx - round(dx)) < 1e-6 and abs(dy - round(dy)) < 1e-6


def _gdal_source(layer: QgsRasterLayer) -> Optional[str]:
    """The source GDAL can open for ``layer``, or None."""
    if layer.providerType() != "gdal" or not layer.source():
        return None
    with collect_errors():
        probe = gdal.OpenEx(layer.source(), gdal.OF_RASTER)
    return layer.source() if probe is not None else None


def warped_vrt(source: str, before_grid: Grid, before_wkt: str, aligned: bool) -> tuple[str, int]:
    """The XML of a VRT that warps ``source`` onto ``before_grid`` (CRS ``before_wkt``), with an alpha band last,
    and its number of bands.

    Raises:
        LayerError: GDAL cannot warp it.
    """
    xmin, ymin, xmax, ymax = before_grid.extent
    with collect_errors() as log:
        try:
            dataset = checked("warp the after raster", lambda: gdal.Warp(
                "", source, format="VRT", outputBounds=(xmin, ymin, xmax, ymax), width=before_grid.width,
                height=before_grid.height, dstSRS=before_wkt, resampleAlg="near" if aligned else "bilinear",
                dstAlpha=True, multithread=False), log)
        except GdalError as error:
            raise LayerError(f"The after raster cannot be brought onto the before raster's grid: {error.reason}. "
                             "Check that both have a CRS.") from None
        xml = dataset.GetMetadata("xml:VRT")[0]
        bands = dataset.RasterCount
        dataset = None
    return str(xml), bands


class _Projected:
    """``block(band, extent, width, height)`` of a provider, reprojected by QGIS into another CRS."""

    def __init__(self, layer: QgsRasterLayer, crs: QgsCoordinateReferenceSystem,
                 context: QgsCoordinateTransformContext) -> None:
        # A clone: providers are not thread-safe, and the job runs on a worker thread.
        self.source = layer.dataProvider().clone()  # the projector reads it: it lives as long as the projector
        self.projector = QgsRasterProjector()
        self.projector.setInput(self.source)
        self.projector.setCrs(layer.crs(), crs, context)

    def block(self, band: int, extent: QgsRectangle, width: int, height: int) -> QgsRasterBlock:
        return self.projector.block(band, extent, width, height, QgsRasterBlockFeedback())


class ProjectedBandReader(ProviderBandReader):
    """A provider's blocks reprojected by QGIS (``QgsRasterProjector``, nearest neighbour) into another CRS."""

    def __init__(self, layer: QgsRasterLayer, crs: QgsCoordinateReferenceSystem,
                 context: QgsCoordinateTransformContext) -> None:
        self.provider = _Projected(layer, crs, context)


def read_after(after: QgsRasterLayer, before: QgsRasterLayer, bands: Sequence[int],
               context: QgsCoordinateTransformContext) -> AfterReading:
    """How to read ``after`` on ``before``'s grid with ``bands`` (none: the layer's; one; or R, G, B).

    Raises:
        LayerError: a band the after layer does not have, or a raster GDAL cannot warp.
    """
    rgb = choose_bands(after, bands)
    before_grid = native_grid(before)
    recipe = build_recipe(after, rgb)  # its own nodata and stretch (over the whole after layer)
    source = _gdal_source(after)
    if source is not None:
        aligned = _aligned(after, before, before_grid)
        xml, count = warped_vrt(source, before_grid, before.crs().toWkt(), aligned)
        # The VRT's last band is its alpha: outside the after raster, nodata in it (or its own alpha 0).
        recipe = PixelRecipe(recipe.rgb_bands, count, recipe.nodata, recipe.stretch)

        def make_gdal_reader() -> BandReader:
            try:
                return GdalBandReader(xml, before_grid)
            except LayerError:
                raise LayerError(f"The after raster {source} cannot be read any more: is it still there?") from None

        return AfterReading(recipe, make_gdal_reader, (), RESAMPLING_NONE if aligned else RESAMPLING_BILINEAR)
    coverage = (extent_in(after, before.crs(), context).asWkt(),)
    if after.crs() == before.crs():
        provider_reader = ProviderBandReader(after)
        return AfterReading(recipe, lambda: provider_reader, coverage, RESAMPLING_PROVIDER)
    projected = ProjectedBandReader(after, before.crs(), context)
    return AfterReading(recipe, lambda: projected, coverage, RESAMPLING_PROJECTOR)


def row_areas(grid: Grid, crs: QgsCoordinateReferenceSystem, context: QgsCoordinateTransformContext,
              ellipsoid: str = "") -> np.ndarray:
    """The area in m² of one pixel of each row of ``grid`` (``grid.height`` float64), on the ellipsoid.

    Each sampled row is measured whole (its edges densified) and divided by its width, so a row's value is
    its mean pixel area; at most :data:`AREA_SAMPLES` rows are measured and the rest interpolated. The
    ellipsoid is ``ellipsoid`` (a project's), else the CRS's, else WGS 84's, as ``segearth:segment_vector``
    measures polygons.
    """
    measure = QgsDistanceArea()
    measure.setSourceCrs(crs, context)
    chosen = ellipsoid if ellipsoid not in ("", "NONE") else ""
    measure.setEllipsoid(chosen or crs.ellipsoidAcronym() or FALLBACK_ELLIPSOID)
    samples = np.unique(np.linspace(0, grid.height - 1, min(grid.height, AREA_SAMPLES)).round().astype(int))
    measured = []
    for row in samples:
        xmin, ymin, xmax, ymax = grid.sub_extent(int(row), int(row) + 1, 0, grid.width)
        strip = _densified(QgsRectangle(xmin, ymin, xmax, ymax))
        area = measure.convertAreaMeasurement(measure.measureArea(strip), SQUARE_METERS)
        measured.append(area / grid.width)
    return np.interp(np.arange(grid.height), samples, np.asarray(measured, np.float64))


def plan_change_source(before: QgsRasterLayer, after: QgsRasterLayer, before_bands: Sequence[int],
                   after_bands: Sequence[int], aoi: AreaOfInterest, resolution: Optional[float] = None,
                   clip: Optional[Rect] = None, context: Optional[QgsCoordinateTransformContext] = None,
                   ellipsoid: str = "") -> ChangeSourcePlan:
    """Both dates over ``aoi`` on the before raster's grid at ``resolution``; cheap (no pixel is read).

    Raises:
        LayerError, AoiError, GridError (ValueErrors) with a message for the user: an invalid layer, bands it
        does not have, an AOI off the before raster, an after raster that does not overlap the area.
    """
    if before is None or not before.isValid():
        raise LayerError("Choose a valid raster layer as the before date.")
    if after is None or not after.isValid():
        raise LayerError("Choose a valid raster layer as the after date.")
    context = context or QgsCoordinateTransformContext()
    job = plan_source(before, before_bands, aoi, resolution, clip)
    outline = extent_in(after, before.crs(), context)
    box = outline.boundingBox()
    if intersect(job.grid.extent, (box.xMinimum(), box.yMinimum(), box.xMaximum(), box.yMaximum())) is None \
            or not outline.intersects(QgsGeometry.fromRect(QgsRectangle(*job.grid.extent))):
        raise GridError(f"The after raster '{after.name()}' does not overlap the before raster '{before.name()}' over "
                        "the area: choose two rasters of the same place (and check their CRSs).")
    reading = read_after(after, before, after_bands, context)
    areas = row_areas(job.grid, before.crs(), context, ellipsoid)
    return ChangeSourcePlan(job, after.name(), reading, areas)

