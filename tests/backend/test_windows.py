import pytest

from segearth_backend.windows import Padding, grid_count, group_by_shape, patch_padding, window_grid


def brute_force_windows(height, width, crop, stride):
    """The reference rule written out: start every stride, shift back to end at the border."""
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    out = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * stride + crop, height), min(c * stride + crop, width)
            out.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return out


SIZES = [(448, 448), (240, 400), (224, 224), (225, 1000), (100, 50), (1, 1), (17, 300)]


@pytest.mark.parametrize("height, width", SIZES)
def test_grid_matches_the_reference_rule(height, width):
    windows = window_grid(height, width)
    assert [(w.y0, w.y1, w.x0, w.x1) for w in windows] == brute_force_windows(height, width, 224, 112)


def test_every_pixel_is_covered_and_border_windows_are_shifted_back():
    windows = window_grid(240, 400)
    assert grid_count(240, 224, 112) == 2 and grid_count(400, 224, 112) == 3
    # The last row / column of windows ends exactly on the border.
    assert {w.y1 for w in windows} == {224, 240} and {w.y0 for w in windows} == {0, 16}
    assert {w.x1 for w in windows} == {224, 336, 400} and {w.x0 for w in windows} == {0, 112, 176}
    covered = [[0] * 400 for _ in range(240)]
    for w in windows:
        for y in range(w.y0, w.y1):
            for x in range(w.x0, w.x1):
                covered[y][x] += 1
    assert min(min(row) for row in covered) == 1


def test_full_windows_are_not_padded():
    assert all(not w.pad.any and w.height == 224 for w in window_grid(448, 600))


def test_small_window_padding_is_split_evenly_extra_pixel_bottom_right():
    assert patch_padding(100, 50, 16) == Padding(top=6, bottom=6, left=7, right=7)
    assert patch_padding(99, 33, 16) == Padding(top=6, bottom=7, left=7, right=8)
    assert patch_padding(112, 16, 16) == Padding()


def test_min_size_pads_tiny_windows_further():
    assert patch_padding(1, 20, 16, min_size=48) == Padding(top=23, bottom=24, left=14, right=14)
    window = window_grid(5, 300, min_size=48)[0]
    assert (window.padded_height, window.padded_width) == (48, 224)


def test_groups_by_padded_shape():
    groups = group_by_shape(window_grid(100, 500))
    assert list(groups) == [(112, 224)] and len(groups[(112, 224)]) == 4


@pytest.mark.parametrize("args", [(0, 10), (10, 0)])
def test_empty_image_is_refused(args):
    with pytest.raises(ValueError, match="at least 1 x 1"):
        window_grid(*args)


def test_crop_must_be_a_patch_multiple():
    with pytest.raises(ValueError, match="multiple of the patch"):
        window_grid(100, 100, crop=100, patch=16)
