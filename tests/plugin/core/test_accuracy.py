"""The accuracy measures against a hand-computed matrix, and the class matching rules."""

import math

import numpy as np
import pytest

from segearth_qgis.core.accuracy import (
    IGNORED,
    assess,
    class_lookup,
    confusion_matrix,
    matrix_from_pairs,
    parse_mapping,
)
from segearth_qgis.core.accuracy_html import html_report
from segearth_qgis.errors import AccuracyError

MATRIX = np.array([[50, 3, 2], [5, 40, 5], [0, 5, 40]])


def test_hand_computed_measures():
    report = assess(MATRIX, ["a", "b", "c"])
    assert report.overall_accuracy == pytest.approx(130 / 150) and report.total == 150
    # p_e = (55*55 + 50*48 + 45*47) / 150^2 = 377/1125; kappa = (13/15 - 377/1125) / (1 - 377/1125) = 598/748
    assert report.kappa == pytest.approx(598 / 748)
    np.testing.assert_allclose(report.iou, [50 / 60, 40 / 58, 40 / 52])
    np.testing.assert_allclose(report.precision, [50 / 55, 40 / 48, 40 / 47])
    np.testing.assert_allclose(report.recall, [50 / 55, 40 / 50, 40 / 45])
    np.testing.assert_allclose(report.f1, [100 / 110, 80 / 98, 80 / 92])
    assert report.mean_iou == pytest.approx((50 / 60 + 40 / 58 + 40 / 52) / 3)


def test_perfect_and_degenerate_cases():
    perfect = assess(np.diag([3, 4]), ["a", "b"])
    assert perfect.overall_accuracy == 1.0 and perfect.kappa == 1.0
    one_class = assess(np.array([[5, 0], [0, 0]]), ["a", "b"])
    assert math.isnan(one_class.kappa) and math.isnan(one_class.iou[1]) and one_class.mean_iou == 1.0
    with pytest.raises(AccuracyError, match="No pixel was compared"):
        assess(np.zeros((2, 2), int), ["a", "b"])


def test_matrix_from_pixel_maps():
    rng = np.random.default_rng(5)
    reference = np.repeat(np.arange(3), MATRIX.sum(axis=1))
    prediction = np.concatenate([np.repeat(np.arange(3), row) for row in MATRIX])
    order = rng.permutation(reference.size)
    reference, prediction = reference[order].reshape(10, 15), prediction[order].reshape(10, 15)
    np.testing.assert_array_equal(confusion_matrix(reference, prediction, 3), MATRIX)
    valid = np.ones_like(reference, bool)
    valid[0] = False
    assert confusion_matrix(reference, prediction, 3, valid).sum() == 135
    with pytest.raises(AccuracyError, match="outside 0..1"):
        confusion_matrix(reference, prediction, 2)


def test_mapping_lines():
    assert parse_mapping("# codes\n3 = building\n\nclutter=ignore\n") == [("3", "building"), ("clutter", "ignore")]
    with pytest.raises(AccuracyError, match="line 2"):
        parse_mapping("1=1\nroad\n")


PREDICTION = {0: "background", 1: "building, roof", 2: "road", 3: "tree,forest"}


def test_lookup_by_name_synonym_code_and_mapping():
    reference = {10: "Background", 20: "Building", 30: "Forest", 40: "low_vegetation", 50: "Clutter"}
    lookup = class_lookup(reference, PREDICTION, 4, parse_mapping("low vegetation=tree\nclutter=ignore"))
    assert lookup == {10: 0, 20: 1, 30: 3, 40: 3, 50: IGNORED}
    assert class_lookup({0: None, 2: None}, {}, 3) == {0: 0, 2: 2}  # unnamed codes: equal codes
    assert class_lookup({1: None, 2: None}, PREDICTION, 4, [("1", "2"), ("2", "0")]) == {1: 2, 2: 0}


def test_unmatched_classes_are_listed_with_what_to_write():
    with pytest.raises(AccuracyError, match=r"Reference classes 50 \(Clutter\), 7 match no class.*'reference=ignore'"):
        class_lookup({1: "road", 50: "Clutter", 7: None}, PREDICTION, 4)
    with pytest.raises(AccuracyError, match="the classification has no class 'water'"):
        class_lookup({1: "road"}, PREDICTION, 4, [("road", "water")])
    with pytest.raises(AccuracyError, match="the reference has no class 'lake'"):
        class_lookup({1: "road"}, PREDICTION, 4, [("lake", "road")])


def test_pairs_to_matrix_and_html():
    pairs = {(10, 0): 5, (20, 1): 4, (20, 0): 1, (50, 1): 7}
    matrix, ignored = matrix_from_pairs(pairs, {10: 0, 20: 1, 50: IGNORED}, 2)
    np.testing.assert_array_equal(matrix, [[5, 0], [1, 4]])
    assert ignored == 7
    page = html_report(assess(matrix, ["<bg>", "roof & wall"]), "Accuracy", [("Reference", "r.tif")], ignored)
    assert "&lt;bg&gt;" in page and "roof &amp; wall" in page and "<td class=diagonal>5</td>" in page
    assert "Cohen's kappa" in page and "r.tif" in page
