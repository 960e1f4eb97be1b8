"""SAR input through Processing: the seeded SAR sample (tests/data/sar_sample.tif) segmented with SAR_INPUT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from qgis.core import QgsProcessingException

from segearth_qgis.core.sar import LINEAR, SarSettings, fitted_db_range, sar_to_rgb
from tests.plugin.helpers import CLASSES, read_band


def run(algorithm, **parameters):
    import processing

    return processing.run(f"segearth:{algorithm}", parameters)


def _expected(segmenter, vv: np.ndarray, settings: SarSettings):
    rgb, valid = sar_to_rgb(vv, settings, nodata=0.0)
    return segmenter.predict(rgb, CLASSES.splitlines(), valid=valid).labels


def test_sar_power_band_is_converted_to_db_grey_and_edges_masked(sar_sample, provider, tmp_path, tiny_segmenter):
    result = run("segment", INPUT=str(sar_sample), CLASSES=CLASSES, BANDS=[1], SAR_INPUT=1,
                 OUTPUT=str(tmp_path / "sar.tif"))
    labels = read_band(Path(result["OUTPUT"]))
    vv = read_band(sar_sample, 1)
    assert (labels[vv == 0] == 255).all() and (labels[vv > 0] != 255).all()  # the swath edge is nodata
    np.testing.assert_array_equal(labels, _expected(tiny_segmenter, vv, SarSettings(LINEAR)))


def test_sar_fitted_stretch_and_vh_band(sar_sample, provider, tmp_path, tiny_segmenter):
    result = run("segment", INPUT=str(sar_sample), CLASSES=CLASSES, BANDS=[2], SAR_INPUT=1, SAR_FIT=True,
                 OUTPUT=str(tmp_path / "vh.tif"))
    labels = read_band(Path(result["OUTPUT"]))
    vh = read_band(sar_sample, 2)
    # The layer's overview is its full resolution here (192 px < 256), so the fit is over every pixel.
    low, high = fitted_db_range(vh, LINEAR, 0.0)
    np.testing.assert_array_equal(labels, _expected(tiny_segmenter, vh, SarSettings(LINEAR, low, high)))


def test_bad_sar_stretch_is_refused_before_anything_is_written(sar_sample, provider, tmp_path):
    with pytest.raises(QgsProcessingException, match="low below the high"):
        run("segment", INPUT=str(sar_sample), CLASSES=CLASSES, BANDS=[1], SAR_INPUT=1, SAR_DB_MIN=0.0,
            SAR_DB_MAX=-25.0, OUTPUT=str(tmp_path / "bad.tif"))
    assert not (tmp_path / "bad.tif").exists()
