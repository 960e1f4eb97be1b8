"""The dock's outcome line: the shares and the warning of the one reporter Processing uses too."""

from __future__ import annotations

from pathlib import Path

from qgis.core import Qgis

from segearth_qgis.core.report import shares_warning
from segearth_qgis.gui.runner import outcome_text, shares_text
from segearth_qgis.job.engine import JobResult
from tests.plugin.helpers import CLASS_NAMES


def result_with(class_pixels: dict[int, int]) -> JobResult:
    return JobResult(Path("out.tif"), None, None, CLASS_NAMES, [(0, 0, 0, 255)] * 5, 2.0, 10**6, 1, class_pixels)


def test_a_uniform_result_gives_the_warning_processing_gives():
    result = result_with({0: 998, 2: 2, 255: 5})
    message, level = outcome_text(result, 0.0, 0.4, 0)
    assert level == Qgis.Warning and "the whole area is 'background'" in message
    assert shares_warning(result.class_pixels, CLASS_NAMES, 0, 0.4) in message


def test_a_mixed_result_lists_its_largest_shares():
    result = result_with({2: 600, 4: 400, 255: 5})
    message, level = outcome_text(result, 0.0, 0.4, 0)
    assert level == Qgis.Success and shares_text(result) == "road 60%, water 40%" and "road 60%, water 40%" in message
    nothing = result_with({255: 7})
    assert "Every pixel of the area is nodata" in outcome_text(nothing, 0.0, 0.4, 0)[0]
