"""What a finished run reports: class shares, the one-class warning, the short label of its classes."""

from __future__ import annotations

import pytest

from segearth_qgis.core.report import class_shares, classes_label, shares_message, shares_warning

NAMES = ["background", "building, roof", "road", "tree, forest", "water"]


def test_shares_are_of_the_valid_pixels_in_class_order():
    pixels = {0: 10, 2: 30, 4: 60, 255: 100}
    assert class_shares(pixels, NAMES) == pytest.approx([0.1, 0.0, 0.3, 0.0, 0.6])
    assert class_shares({255: 5}, NAMES) == [0.0] * 5


def test_shares_message_names_every_class_and_the_nodata_part():
    message = shares_message({0: 10, 2: 30, 4: 60, 255: 100}, NAMES)
    assert message == ("Class shares: background 10.0 %; building, roof 0.0 %; road 30.0 %; tree, forest 0.0 %; "
                       "water 60.0 % (nodata: 50.0 % of the area, not counted)")
    assert "nodata" not in shares_message({1: 3}, NAMES)


@pytest.mark.parametrize("pixels, background, fragments", [
    ({0: 50, 255: 3}, 0, ["Every pixel is 'background', the background", "Lower the threshold"]),
    ({2: 50}, 0, ["Every pixel is 'road'", "raise the probability threshold (now 0.3)", "become 'background'"]),
    ({2: 50}, None, ["Every pixel is 'road'", "or a background class"]),
    ({255: 50}, 0, ["Every pixel of the area is nodata"]),
])
def test_a_one_class_result_is_a_warning_that_says_what_to_change(pixels, background, fragments):
    warning = shares_warning(pixels, NAMES, background, 0.3)
    assert warning is not None and all(fragment in warning for fragment in fragments)


def test_no_warning_for_two_classes_or_a_single_class_list():
    assert shares_warning({0: 1, 3: 5, 255: 9}, NAMES, 0, 0.1) is None
    assert shares_warning({0: 7}, ["water"], None, 0.0) is None


def test_classes_label_leaves_out_the_background_and_keeps_first_synonyms():
    assert classes_label(NAMES, 0) == "building, road, tree +1"
    assert classes_label(NAMES, None, limit=5) == "background, building, road, tree, water"
    assert classes_label(["background"], 0) == "background"


def test_a_result_nearly_all_one_class_is_warned_about_like_one_all_one_class():
    """The dock and Processing share one rule: one class on 99.5 % of the valid pixels or more is a warning."""
    warning = shares_warning({2: 996, 4: 4, 255: 10}, NAMES, 0, 0.3)
    assert warning is not None and "99.6% of the pixels are 'road'" in warning
    assert shares_warning({2: 994, 4: 6}, NAMES, 0, 0.3) is None
