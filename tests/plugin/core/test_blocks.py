"""Block planning: cores tile the grid, and stitched engine results equal a single run."""

import numpy as np
import pytest

from segearth_qgis.core.blocks import CROP, STRIDE, plan_axis, plan_blocks


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
