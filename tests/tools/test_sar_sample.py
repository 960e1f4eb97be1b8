"""The seeded SAR sample: tests/data/sar_sample.tif is what tools/sar_sample.py makes, and looks like SAR."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from osgeo import gdal

from tests.helpers import DATA, ROOT

SAMPLE = DATA / "sar_sample.tif"


def test_the_shipped_sample_is_reproduced_by_the_generator(tmp_path):
    out, truth = tmp_path / "again.tif", tmp_path / "truth.tif"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "sar_sample.py"), str(out), "--truth", str(truth)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shipped, again = gdal.Open(str(SAMPLE)), gdal.Open(str(out))
    assert shipped.GetGeoTransform() == again.GetGeoTransform() and shipped.RasterCount == 2
    for number, name in ((1, "VV"), (2, "VH")):
        band = shipped.GetRasterBand(number)
        assert band.GetDescription() == name and band.GetNoDataValue() == 0.0
        np.testing.assert_array_equal(band.ReadAsArray(), again.GetRasterBand(number).ReadAsArray())
    assert "not real data" in shipped.GetMetadataItem("SEGEARTH_SYNTHETIC")
    # Backscatter like C-band: water dark, built-up bright; VH below VV; zero on the swath edge only.
    zones = gdal.Open(str(truth)).ReadAsArray()
    vv, vh = shipped.GetRasterBand(1).ReadAsArray(), shipped.GetRasterBand(2).ReadAsArray()
    median_db = [10 * np.log10(np.median(vv[zones == zone])) for zone in range(4)]
    assert median_db == sorted(median_db) and median_db[0] < -20 and median_db[3] > -9
    assert all(np.median(vh[zones == zone]) < np.median(vv[zones == zone]) for zone in range(4))
    assert ((vv == 0) == (zones == 255)).all() and ((vh == 0) == (zones == 255)).all()
    # It never overwrites.
    again = None
    refused = subprocess.run([sys.executable, str(ROOT / "tools" / "sar_sample.py"), str(out)],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "nothing was overwritten" in refused.stderr
