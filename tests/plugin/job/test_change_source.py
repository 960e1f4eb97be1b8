"""The after raster read on the before raster's grid (other CRS, resolution, offset, other providers), in a real
QGIS with a real backend: the change maps against the aligned pair's."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pytest
from osgeo import gdal, osr
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransformContext,
    QgsDistanceArea,
    QgsGeometry,
    QgsRasterLayer,
    QgsRectangle,
    QgsUnitTypes,
)

from segearth_qgis.core.blocks import context_span
from segearth_qgis.core.change import FIRST_TRANSITION, NO_CHANGE, NODATA_CHANGE, ChangeRule
from segearth_qgis.core.grid import Grid
from segearth_qgis.errors import GridError
from segearth_qgis.job.aoi import AreaOfInterest
from segearth_qgis.job.change_engine import ChangeOutputs, ChangeParams, execute_change
from segearth_qgis.job.change_source import (
    RESAMPLING_BILINEAR,
    RESAMPLING_NONE,
    RESAMPLING_PROJECTOR,
    RESAMPLING_PROVIDER,
    plan_change_source,
    row_areas,
)
from segearth_qgis.job.outputs import plan_outputs
from tests.plugin.helpers import (
    LINES,
    PAIR_SIZE,
    PASTED,
    UTM,
    read_band,
    smooth_image,
    write_geotiff,
    write_pasted_pair,
)

SIZE, REGION = PAIR_SIZE, PASTED


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """As in test_change_engine: 336 x 336 px, a 64 x 64 region pasted from elsewhere into the after date."""
    return write_pasted_pair(tmp_path_factory.mktemp("pair"))


def layer(path) -> QgsRasterLayer:
    loaded = QgsRasterLayer(str(path), path.stem, "gdal")
    assert loaded.isValid()
    return loaded


def compare(client, before: QgsRasterLayer, after: QgsRasterLayer, output, rule: Optional[ChangeRule] = None):
    """The change job from QGIS layers (plan_change_source + execute_change); returns (result, codes, resampling)."""
    prepared = plan_change_source(before, after, (), (), AreaOfInterest())
    outputs = ChangeOutputs(plan_outputs(str(output), None, [before.source(), after.source()]))
    result = execute_change(prepared, ChangeParams(LINES, outputs, rule or ChangeRule()), client)
    return result, read_band(output), prepared.after.resampling


@pytest.fixture(scope="module")
def aligned(change_backend, pair, tmp_path_factory):
    folder = tmp_path_factory.mktemp("aligned")
    result, codes, resampling = compare(change_backend.client(), layer(pair[0]), layer(pair[1]), folder / "c.tif")
    assert resampling == RESAMPLING_NONE
    return codes


def _beyond_reach() -> np.ndarray:
    beyond = np.ones((SIZE, SIZE), bool)
    start, stop = context_span(*REGION, SIZE)
    beyond[start:stop, start:stop] = False
    return beyond


def test_an_after_raster_offset_by_whole_pixels_gives_the_same_change_map(change_backend, pair, aligned, tmp_path):
    # The after date on a larger grid that starts 20 px further left and 12 px further up, with other pixels around.
    canvas = smooth_image(SIZE + 40, SIZE + 30, seed=11)
    canvas[:, 12:12 + SIZE, 20:20 + SIZE] = pair[2]
    x0, px, _, y0, _, py = UTM
    shifted = write_geotiff(tmp_path / "shifted.tif", canvas, 32633, (x0 - 20 * px, px, 0.0, y0 - 12 * py, 0.0, py))
    _, codes, resampling = compare(change_backend.client(), layer(pair[0]), layer(shifted), tmp_path / "c.tif")
    assert resampling == RESAMPLING_NONE  # copied, not resampled
    np.testing.assert_array_equal(codes, aligned)


def test_an_after_raster_in_another_crs_and_resolution_gives_nearly_the_same_change_map(change_backend, pair, aligned,
                                                                                       tmp_path):
    reference = osr.SpatialReference()
    reference.ImportFromEPSG(3035)  # ETRS89 / LAEA Europe, at 1.5 m instead of 2 m
    other = str(tmp_path / "laea.tif")
    gdal.Warp(other, str(pair[1]), dstSRS=reference.ExportToWkt(), xRes=1.5, yRes=1.5, resampleAlg="bilinear")
    _, codes, resampling = compare(change_backend.client(), layer(pair[0]), layer(tmp_path / "laea.tif"),
                                   tmp_path / "c.tif")
    assert resampling == RESAMPLING_BILINEAR
    border = np.zeros(codes.shape, bool)
    border[:2], border[-2:], border[:, :2], border[:, -2:] = True, True, True, True  # the warp's edge may be nodata
    assert (codes[~border] != NODATA_CHANGE).all()
    changed, expected = codes >= FIRST_TRANSITION, aligned >= FIRST_TRANSITION
    agree = (changed == expected)[~border].mean()
    # Resampled twice (there and back), the after date is a little blurred: the maps agree within that.
    assert agree > 0.97, agree
    inside = np.zeros(codes.shape, bool)
    inside[REGION[0]:REGION[1], REGION[0]:REGION[1]] = True
    assert (changed & expected & inside).sum() > 0.5 * (expected & inside).sum()
    assert (changed & _beyond_reach()).mean() < 0.01


def test_rasters_that_do_not_overlap_are_refused(pair, tmp_path):
    far = write_geotiff(tmp_path / "far.tif", smooth_image(50, 50), 32633, (700000.0, 2.0, 0.0, 5000000.0, 0.0, -2.0))
    with pytest.raises(GridError, match="does not overlap the before raster"):
        plan_change_source(layer(pair[0]), layer(far), (), (), AreaOfInterest())


def _virtual(base, crs: str, extent: tuple[float, float, float, float], width: int, height: int) -> QgsRasterLayer:
    text = ",".join(f"{value:.6f}" for value in extent)
    uri = (f"?crs={crs}&extent={text}&width={width}&height={height}&formula=%22base@1%22"
           f"&base:uri={base}&base:provider=gdal")
    loaded = QgsRasterLayer(uri, "virtual", "virtualraster")
    assert loaded.isValid() and loaded.providerType() == "virtualraster"
    return loaded


@pytest.fixture(scope="module")
def grey(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grey")
    return write_geotiff(folder / "grey.tif", smooth_image(120, 140, bands=1, seed=3), 32633, UTM)


def test_another_provider_in_the_same_crs_is_read_through_its_blocks(change_backend, grey, tmp_path):
    x0, _, _, y0, _, _ = UTM
    # Two virtual rasters (float32, stretched alike) of the same pixels: no change at all, to the last pixel.
    before, after = (_virtual(grey, "EPSG:32633", (x0, y0 - 240, x0 + 280, y0), 140, 120) for _ in range(2))
    result, codes, resampling = compare(change_backend.client(), before, after, tmp_path / "c.tif",
                                        ChangeRule(0.0, 0.0))
    assert resampling == RESAMPLING_PROVIDER
    assert (codes == NO_CHANGE).all()


def test_another_provider_in_another_crs_is_reprojected_by_qgis(change_backend, grey, tmp_path):
    x0, _, _, y0, _, _ = UTM
    from qgis.core import QgsCoordinateTransform

    to_laea = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:32633"),
                                     QgsCoordinateReferenceSystem("EPSG:3035"), QgsCoordinateTransformContext())
    # The left half of the before raster only, in LAEA at 2 m.
    box = to_laea.transformBoundingBox(QgsRectangle(x0, y0 - 240, x0 + 140, y0))
    width, height = round(box.width() / 2), round(box.height() / 2)
    virtual = _virtual(grey, "EPSG:3035", (box.xMinimum(), box.yMinimum(), box.xMinimum() + 2 * width,
                                           box.yMinimum() + 2 * height), width, height)
    result, codes, resampling = compare(change_backend.client(), layer(grey), virtual, tmp_path / "c.tif")
    assert resampling == RESAMPLING_PROJECTOR
    # Valid exactly where a pixel's centre lies in the virtual raster's extent (give or take a pixel at its edge).
    extent = QgsRectangle(box.xMinimum(), box.yMinimum(), box.xMinimum() + 2 * width, box.yMinimum() + 2 * height)
    inside, near_edge = np.zeros(codes.shape, bool), np.zeros(codes.shape, bool)
    for row in range(codes.shape[0]):
        for col in range(codes.shape[1]):
            centre = to_laea.transform(x0 + 2 * col + 1, y0 - 2 * row - 1)
            inside[row, col] = extent.contains(centre)
            near_edge[row, col] = extent.buffered(3).contains(centre) and not extent.buffered(-3).contains(centre)
    # QGIS 3.40's projector (an approximate transform) leaves a few pixels of a block's outermost rows and
    # columns empty (12 of 8892 here, every 16th or so): the block's own border counts as an edge too.
    near_edge[[0, -1], :] = near_edge[:, [0, -1]] = True
    valid = codes != NODATA_CHANGE
    assert (valid == inside)[~near_edge].all() and 0.3 < inside.mean() < 0.8
    assert result.tally.valid_pixels == valid.sum()


def test_row_areas_are_ellipsoidal_pixel_areas():
    context = QgsCoordinateTransformContext()
    utm = QgsCoordinateReferenceSystem("EPSG:32633")
    grid = Grid(500000.0, 5600000.0, 2.0, 2.0, 300, 1000)
    areas = row_areas(grid, utm, context)
    # On the central meridian UTM shrinks distances by 0.9996: a 2 m pixel covers 4 / 0.9996² m² of ellipsoid.
    assert areas == pytest.approx(np.full(1000, 4.0 / 0.9996 ** 2), rel=2e-4)
    geographic = Grid(10.0, 60.0, 0.001, 0.001, 50, 4000)  # 60°N to 56°N
    areas = row_areas(geographic, QgsCoordinateReferenceSystem("EPSG:4326"), context)
    measure = QgsDistanceArea()
    measure.setSourceCrs(QgsCoordinateReferenceSystem("EPSG:4326"), context)
    measure.setEllipsoid("EPSG:7030")
    for row in (0, 1234, 3999):
        pixel = QgsGeometry.fromRect(QgsRectangle(10.0, 60.0 - 0.001 * (row + 1), 10.001, 60.0 - 0.001 * row))
        expected = measure.convertAreaMeasurement(measure.measureArea(pixel), QgsUnitTypes.AreaSquareMeters)
        assert areas[row] == pytest.approx(expected, rel=1e-5)
    assert areas[0] < areas[-1]  # pixels grow towards the equator
