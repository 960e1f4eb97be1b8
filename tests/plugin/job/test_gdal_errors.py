"""Our GDAL calls work the same with GDAL's Python exceptions off (QGIS < 3.38) and on (QGIS 3.38+ switches them
on for the whole process), and state their mode (GDAL 3.9+ warns about calls that do not)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from osgeo import gdal

from segearth_qgis.errors import AccuracyError
from segearth_qgis.job.gdal_errors import GdalError, checked, collect_errors, opened
from segearth_qgis.map.result_style import read_class_raster
from segearth_qgis.processing.reference_grid import open_class_grid
from tests.helpers import ROOT, subprocess_env


@pytest.fixture(params=["exceptions off", "exceptions on"])
def gdal_mode(request):
    """GDAL's process-wide mode as QGIS before 3.38 (off) and from 3.38 on (on) leaves it; restored afterwards."""
    before = gdal.GetUseExceptions()
    if request.param == "exceptions on":
        gdal.UseExceptions()
    else:
        gdal.DontUseExceptions()
    yield request.param
    if before:
        gdal.UseExceptions()
    else:
        gdal.DontUseExceptions()


def test_a_file_gdal_cannot_open_is_our_error_in_either_mode(gdal_mode, tmp_path):
    not_a_raster = tmp_path / "notes.tif"
    not_a_raster.write_text("not a raster")
    with collect_errors() as log:
        assert opened(str(not_a_raster), log) is None
        with pytest.raises(GdalError, match="open"):
            checked("open", lambda: gdal.Open(str(tmp_path / "missing.tif")), log)
    assert read_class_raster(str(not_a_raster)) is None
    with pytest.raises(AccuracyError, match="cannot be opened by GDAL"):
        open_class_grid(str(not_a_raster))
    assert gdal.GetUseExceptions() == (gdal_mode == "exceptions on")  # the process's mode is left as it was


def test_our_calls_state_gdals_error_mode(tmp_path):
    """GDAL 3.9+ prints a FutureWarning at the first call made in no stated mode (the user sees it in `make demo`)."""
    not_a_raster = tmp_path / "notes.tif"
    not_a_raster.write_text("not a raster")
    code = ("from segearth_qgis.map.result_style import read_class_raster\n"
            f"assert read_class_raster({str(not_a_raster)!r}) is None\n")
    result = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], capture_output=True,
                            text=True, cwd=ROOT, env=subprocess_env(), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
