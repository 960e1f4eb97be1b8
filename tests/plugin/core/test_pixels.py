import numpy as np
import pytest

from segearth_qgis.core.pixels import PixelRecipe, stretch_to_uint8, to_rgb


def test_uint8_rgb_used_as_is_with_nodata_mask():
    rng = np.random.default_rng(0)
    bands = {b: rng.integers(1, 256, (4, 5), dtype=np.uint8) for b in (1, 2, 3)}
    bands[2][1, 1] = 0
    rgb, valid = to_rgb(bands, PixelRecipe((1, 2, 3), nodata=((2, 0.0),)))
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 5, 3)
    assert not valid[1, 1] and valid.sum() == 19
    np.testing.assert_array_equal(rgb[..., 0][valid], bands[1][valid])
    assert (rgb[1, 1] == 0).all()


@pytest.mark.parametrize("dtype, nodata", [(np.uint8, 100.0), (np.uint8, 255.0), (np.uint16, 1000.0),
                                           (np.int16, -9999.0), (np.float32, -1.5)])
def test_nodata_is_exactly_the_nodata_value(dtype, nodata):
    """Values above and below the nodata value stay valid; only equal ones are masked."""
    values = np.array([[nodata - 1, nodata, nodata + 1], [0, nodata, 5]], dtype=np.float64)
    if np.issubdtype(dtype, np.integer):
        values = np.clip(values, np.iinfo(dtype).min, np.iinfo(dtype).max)
    band = values.astype(dtype)
    stretch = None if dtype == np.uint8 else ((float(band.min()), float(band.max()) + 1.0),) * 3
    rgb, valid = to_rgb({1: band}, PixelRecipe((1, 1, 1), nodata=((1, nodata),), stretch=stretch))
    np.testing.assert_array_equal(valid, band != band.dtype.type(nodata))
    assert (rgb[~valid] == 0).all()


def test_nodata_on_one_band_masks_the_pixel_in_all_channels():
    bands = {1: np.array([[7, 7]], np.uint8), 2: np.array([[9, 3]], np.uint8), 3: np.array([[1, 1]], np.uint8)}
    rgb, valid = to_rgb(bands, PixelRecipe((1, 2, 3), nodata=((2, 3.0),)))
    assert valid.tolist() == [[True, False]] and rgb[0, 1].tolist() == [0, 0, 0] and rgb[0, 0].tolist() == [7, 9, 1]


def test_single_band_is_replicated():
    band = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb, valid = to_rgb({1: band}, PixelRecipe((1, 1, 1)))
    assert valid.all() and all((rgb[..., c] == band).all() for c in range(3))


def test_uint16_is_stretched_with_the_job_range():
    band = np.array([[100, 600, 1100, 2000]], dtype=np.uint16)
    rgb, _ = to_rgb({1: band, 2: band, 3: band}, PixelRecipe((1, 2, 3), stretch=((100, 1100),) * 3))
    assert rgb[0, :, 0].tolist() == [0, 128, 255, 255]


def test_float_nan_and_alpha_are_invalid():
    band = np.array([[0.1, np.nan], [0.5, 0.9]], dtype=np.float32)
    alpha = np.array([[255, 255], [0, 255]], dtype=np.uint8)
    rgb, valid = to_rgb({1: band, 2: band, 3: band, 4: alpha},
                        PixelRecipe((1, 2, 3), alpha_band=4, stretch=((0.0, 1.0),) * 3))
    assert valid.tolist() == [[True, False], [False, True]]
    assert rgb[0, 0, 0] == 26 and rgb[1, 1, 2] == 229  # float32 0.9 is 0.89999998


def test_bands_needed_in_order_without_repeats():
    assert PixelRecipe((3, 2, 1), alpha_band=4).bands_needed == [3, 2, 1, 4]
    assert PixelRecipe((1, 1, 1)).bands_needed == [1]


@pytest.mark.parametrize("low, high", [(5.0, 5.0), (float("nan"), 1.0)])
def test_degenerate_stretch_does_not_divide_by_zero(low, high):
    stretched = stretch_to_uint8(np.array([5.0, 6.0]), low, high)
    assert stretched.dtype == np.uint8
    expected = [0, 255] if low == 5.0 else [0, 0]  # a span of 1 from low; NaN maps to 0
    assert stretched.tolist() == expected

