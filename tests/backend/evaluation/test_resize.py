"""The keep-ratio resize to fit 448 x 448: mmcv's size rule and bilinear pixels."""

import numpy as np
import pytest

from segearth_backend.evaluation.resize import rescale_size, resize_image


@pytest.mark.parametrize("size, expected", [
    ((1000, 1000), (448, 448)),   # OpenEarthMap 1024-class tiles shrink to 448
    ((512, 1024), (224, 448)),
    ((1080, 1280), (378, 448)),   # 1080 * 0.35 = 378.0
    ((300, 200), (448, 299)),     # 200 * 448 / 300 = 298.67 -> int(299.17)
    ((10, 7), (448, 314)),        # small images are enlarged: 7 * 44.8 = 313.6 -> 314
    ((896, 896), (448, 448)),
    ((2, 900), (1, 448)),         # 2 * 0.4978 + 0.5 = 1.496 -> 1
])
def test_mmcv_size_rule(size, expected):
    height, width = size
    factor = 448 / max(height, width)
    assert rescale_size(height, width) == (int(height * factor + 0.5), int(width * factor + 0.5)) == expected


def _bilinear_reference(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Half-pixel-centre bilinear interpolation written out with numpy (no antialiasing)."""
    height, width = image.shape[:2]
    def taps(out_size, in_size):
        centre = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
        centre = np.clip(centre, 0, None)
        low = np.minimum(np.floor(centre).astype(int), in_size - 1)
        high = np.minimum(low + 1, in_size - 1)
        return low, high, centre - low
    y0, y1, fy = taps(rows, height)
    x0, x1, fx = taps(cols, width)
    img = image.astype(np.float64)
    top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
    bottom = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
    out = top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size, target", [((60, 40), (448, 299)), ((1000, 700), (448, 314)), ((64, 64), (448, 448))])
def test_bilinear_pixels(rng, size, target):
    image = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)
    resized = resize_image(image, target)
    assert resized.shape == target + (3,) and resized.dtype == np.uint8
    reference = _bilinear_reference(image, *target)
    difference = np.abs(resized.astype(int) - reference.astype(int))
    assert difference.max() <= 1 and (difference == 0).mean() > 0.999


def test_same_size_is_untouched(rng):
    image = rng.integers(0, 256, size=(448, 300, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_image(image, (448, 300)), image)
    flat = np.full((50, 30, 3), 77, np.uint8)
    assert (resize_image(flat, (448, 269)) == 77).all()
