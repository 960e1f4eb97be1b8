"""SAR input preparation: decibels, stretch, nodata and the reference's 8-bit read, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from segearth_qgis.core.pixels import PixelRecipe, to_rgb
from segearth_qgis.core.sar import (
    AMPLITUDE,
    DECIBELS,
    IMAGE,
    LINEAR,
    SarSettings,
    fitted_db_range,
    sar_to_grey,
    sar_to_rgb,
    to_decibels,
)
from segearth_qgis.errors import LayerError


def test_power_and_amplitude_to_decibels():
    power = np.array([[1.0, 0.1, 0.01, 0.001]], np.float32)
    np.testing.assert_allclose(to_decibels(power, LINEAR), [[0.0, -10.0, -20.0, -30.0]], atol=1e-5)
    amplitude = np.array([[1, 10, 100]], np.uint16)
    np.testing.assert_allclose(to_decibels(amplitude, AMPLITUDE), [[0.0, 20.0, 40.0]])
    assert np.isnan(to_decibels(np.array([0.0, -1.0]), LINEAR)).all()


def test_fixed_stretch_maps_minus_25_to_0_db_onto_0_to_255():
    power = np.array([[10 ** -3.0, 10 ** -2.5, 10 ** -1.2, 1.0, 10.0]], np.float32)  # -30, -25, -12, 0, +10 dB
    grey, valid = sar_to_grey(power, SarSettings(LINEAR))
    assert grey.tolist() == [[0, 0, 133, 255, 255]] and valid.all()  # -12 dB: 13 * 255 / 25 = 132.6
    decibels = np.array([[-25.0, -20.0, 0.0]])
    grey, _ = sar_to_grey(decibels, SarSettings(DECIBELS, -30.0, -10.0))
    assert grey.tolist() == [[64, 128, 255]]  # (x + 30) * 255 / 20, rounded


def test_nodata_zero_nan_and_declared_value_are_masked():
    power = np.array([[0.0, np.nan, 0.05, -1.0, 0.2, np.inf]], np.float32)
    rgb, valid = sar_to_rgb(power, SarSettings(LINEAR), nodata=0.2)
    assert valid.tolist() == [[False, False, True, False, False, False]]
    assert rgb.shape == (1, 6, 3) and (rgb[0, ~valid[0]] == 0).all()
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()  # R = G = B
    # In decibels 0 is a value, not nodata.
    _, valid_db = sar_to_grey(np.array([[0.0, -10.0]]), SarSettings(DECIBELS))
    assert valid_db.all()


def test_image_units_read_like_the_reference():
    eight = np.array([[0, 17, 255]], np.uint8)
    assert sar_to_grey(eight, SarSettings(IMAGE))[0].tolist() == [[0, 17, 255]]
    sixteen = np.array([[0x00FF, 0x0100, 0xABCD, 0xFFFF]], np.uint16)
    assert sar_to_grey(sixteen, SarSettings(IMAGE))[0].tolist() == [[0x00, 0x01, 0xAB, 0xFF]]  # low byte dropped
    with pytest.raises(LayerError, match="not an 8/16-bit grey image"):
        sar_to_grey(np.zeros((2, 2), np.float32), SarSettings(IMAGE))


def test_fitted_range_uses_percentiles_of_valid_decibels():
    rng = np.random.default_rng(5)
    decibels = rng.uniform(-22.0, -4.0, size=(50, 40))
    power = (10 ** (decibels / 10)).astype(np.float32)
    power[:5] = 0.0  # swath edge
    low, high = fitted_db_range(power, LINEAR)
    expected = np.percentile(decibels[5:], [2, 98])
    assert low == pytest.approx(expected[0], abs=1e-3) and high == pytest.approx(expected[1], abs=1e-3)
    with pytest.raises(LayerError, match="no valid pixel"):
        fitted_db_range(np.zeros((3, 3), np.float32), LINEAR)


@pytest.mark.parametrize("settings", [dict(units="dB"), dict(low_db=0.0, high_db=-25.0),
                                      dict(low_db=float("nan"))])
def test_bad_settings_are_clear_errors(settings):
    with pytest.raises(LayerError, match="SAR"):
        SarSettings(**settings)


def test_pixel_recipe_with_sar_uses_one_band_and_masks_alpha():
    power = np.array([[0.0, 0.01, 1.0]], np.float32)
    other = np.array([[5.0, 5.0, 5.0]], np.float32)
    alpha = np.array([[255, 255, 0]], np.uint8)
    recipe = PixelRecipe((1, 1, 1), alpha_band=3, sar=SarSettings(LINEAR))
    rgb, valid = to_rgb({1: power, 2: other, 3: alpha}, recipe)
    assert valid.tolist() == [[False, True, False]]
    assert rgb[0, :, 0].tolist() == [0, 51, 0]  # -20 dB: 5 * 255 / 25 = 51
