import math

import pytest

from segearth_qgis.core.classes import PRESETS, class_colours, class_lines, class_name
from segearth_qgis.core.grid import Grid, GridError, estimate, processing_grid


def test_presets_are_the_papers():
    presets = {p.name: p for p in PRESETS}
    assert presets["OpenEarthMap"].threshold == 0.1 and len(presets["OpenEarthMap"].classes) == 9
    assert presets["LoveDA"].classes[1] == "building,roof,house" and presets["LoveDA"].threshold == 0.3
    assert (presets["Buildings"].threshold, presets["Roads"].threshold, presets["Water"].threshold) == (0.6, 0.7, 0.6)


def test_canonical_and_distinct_colours():
    lines = ["background", "water,river", "tree, forest", "building,roof", "road", "solar panel", "ship", "lake"]
    colours = class_colours(lines)
    assert colours[0][3] == 0  # background transparent
    assert colours[1][2] > 200 and colours[1][0] < 60  # water blue
    assert colours[2][1] > colours[2][0] and colours[2][1] > colours[2][2]  # trees green
    assert colours[3][0] > 200 and colours[3][1] < 60  # buildings red
    assert colours[4][0] == colours[4][1] == colours[4][2]  # roads grey
    assert len(set(colours)) == len(colours)  # 'lake' does not reuse water's blue
    assert class_colours(["a", "b"], background_index=None)[0][3] == 255


def test_text_box_lines_and_names():
    assert class_lines(" road \n\n tree, forest\n") == ["road", "tree, forest"]
    assert class_name("tree,forest") == "tree, forest"


RASTER = Grid(x0=1000.0, y0=5000.0, pixel_width=0.5, pixel_height=0.5, width=200, height=100)


def test_whole_raster_at_native_resolution():
    assert processing_grid(RASTER, None, None) == RASTER


def test_aoi_snapped_outwards_to_source_pixels():
    grid = processing_grid(RASTER, (1010.2, 4970.1, 1020.1, 4990.3), 0.5)
    assert (grid.x0, grid.y0, grid.width, grid.height) == (1010.0, 4990.5, 21, 41)
    assert grid.extent[0] <= 1010.2 and grid.extent[2] >= 1020.1


def test_aoi_clipped_to_the_raster_and_resampled():
    grid = processing_grid(RASTER, (900.0, 4900.0, 1050.0, 5100.0), 2.0)
    assert (grid.x0, grid.y0) == (1000.0, 5000.0)
    assert (grid.width, grid.height, grid.pixel_width) == (25, 25, 2.0)
    assert grid.geotransform == (1000.0, 2.0, 0.0, 5000.0, 0.0, -2.0)


def test_aoi_outside_is_a_clear_error():
    with pytest.raises(GridError, match="does not overlap the raster"):
        processing_grid(RASTER, (0.0, 0.0, 10.0, 10.0), None)
    with pytest.raises(GridError, match="positive number"):
        processing_grid(RASTER, None, -1.0)


def test_estimate():
    result = estimate(Grid(0, 0, 1, 1, 2000, 1000), 1024, 2.0)
    assert result["pixels"] == 2e6 and result["blocks"] >= 2 and result["seconds"] == pytest.approx(5.2)
    assert math.isnan(estimate(RASTER, 1024, None)["seconds"])
