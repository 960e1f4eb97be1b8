"""Block planning: cores tile the grid, and stitched engine results equal a single run."""

import numpy as np
import pytest

from segearth_qgis.core.blocks import CROP, STRIDE, context_span, plan_axis, plan_blocks, plan_grid_blocks
from segearth_qgis.core.grid import Anchor, Grid


@pytest.mark.parametrize("size, block", [(1, 1024), (224, 336), (500, 336), (1000, 448), (4000, 1024), (1010, 336),
                                         (560, 336), (561, 336), (3000, 1000)])
def test_cores_tile_the_axis_and_margins_are_aligned(size, block):
    spans = plan_axis(size, block)
    assert spans[0].core_start == 0 and spans[-1].core_stop == size
    for before, after in zip(spans, spans[1:]):
        assert before.core_stop == after.core_start
    for span in spans:
        assert span.start % STRIDE == 0
        assert span.core_start - span.start in (0, STRIDE)
        assert span.stop - span.core_stop in (0, STRIDE)
        assert span.stop - span.start >= min(CROP, size)
        assert span.stop - span.start <= max(block // STRIDE * STRIDE, CROP + STRIDE) + CROP


def test_small_areas_are_one_block():
    assert [(s.start, s.stop) for s in plan_axis(900, 1024)] == [(0, 900)]


def test_blocks_are_row_major():
    blocks = plan_blocks(1200, 1000, block=448)
    columns = len(plan_axis(1000, 448))
    assert columns > 1 and len(blocks) == len(plan_axis(1200, 448)) * columns
    assert [b.rows.start for b in blocks[:columns]] == [0] * columns
    assert blocks[columns].rows.start > 0


def test_plan_axis_refuses_empty():
    with pytest.raises(ValueError, match="size must be at least 1, got 0"):
        plan_axis(0, 1024)


@pytest.mark.parametrize("height, width", [(600, 500), (340, 700)])
def test_stitched_blocks_equal_one_run(tiny_segmenter, height, width):
    """The real engine on each block, cores stitched: the same as segmenting the whole area at once."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    classes = ["background", "building,roof", "road", "tree"]
    whole = tiny_segmenter.predict(image, classes)
    stitched = np.zeros((len(classes), height, width), np.float32)
    blocks = plan_blocks(height, width, block=336)
    assert len(blocks) > 2
    for block in blocks:
        part = tiny_segmenter.predict(image[block.rows.start:block.rows.stop, block.cols.start:block.cols.stop],
                                      classes)
        rows, cols = block.core_in_block()
        stitched[:, block.rows.core_start:block.rows.core_stop, block.cols.core_start:block.cols.core_stop] = \
            part.probabilities[:, rows, cols]
    np.testing.assert_allclose(stitched, whole.probabilities, atol=1e-5)


@pytest.mark.parametrize("size, start, stop", [(700, 37, 401), (700, 0, 700), (700, 650, 700), (700, 500, 540),
                                               (180, 20, 100), (1000, 777, 1000), (1000, 112, 336)])
def test_context_is_every_window_that_covers_the_area(size, start, stop):
    """The context spans exactly the windows (of a run over the whole axis) that touch the area."""
    from segearth_backend.windows import axis_spans

    covering = [(a, b) for a, b in axis_spans(size, CROP, STRIDE) if a < stop and b > start]
    assert context_span(start, stop, size) == (covering[0][0], max(b for _, b in covering))
    with pytest.raises(ValueError, match="non-empty part"):
        context_span(10, 10, size)


@pytest.mark.parametrize("rows, cols", [((37, 401), (90, 450)), ((150, 520), (31, 333)), ((0, 90), (600, 700)),
                                        ((480, 600), (0, 700))])
def test_any_area_gets_the_labels_of_a_run_over_the_whole_raster(tiny_segmenter, rows, cols):
    """Blocks on the anchor grid, with their context read beyond the area: every pixel's label is the one a
    run over the whole raster gives, so two overlapping areas agree exactly on their overlap."""
    rng = np.random.default_rng(5)
    scene = rng.integers(0, 256, size=(600, 700, 3), dtype=np.uint8)
    classes = ["background", "building,roof", "road", "tree"]
    whole = tiny_segmenter.predict(scene, classes).labels
    height, width = rows[1] - rows[0], cols[1] - cols[0]
    grid = Grid(0.0, 0.0, 1.0, 1.0, width, height, Anchor(rows[0], cols[0], 600, 700))
    labels = np.full((height, width), 99, np.uint8)
    blocks = plan_grid_blocks(grid, block=336)
    for block in blocks:
        read = scene[rows[0] + block.rows.start:rows[0] + block.rows.stop,
                     cols[0] + block.cols.start:cols[0] + block.cols.stop]
        assert read.shape[:2] == (block.height, block.width)  # the context lies inside the raster
        part = tiny_segmenter.predict(read, classes).labels
        core_rows, core_cols = block.core_in_block()
        labels[block.rows.core_start:block.rows.core_stop, block.cols.core_start:block.cols.core_stop] = \
            part[core_rows, core_cols]
    np.testing.assert_array_equal(labels, whole[rows[0]:rows[1], cols[0]:cols[1]])
