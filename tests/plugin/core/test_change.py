"""The change decision and its tally, against plain per-pixel rules."""

from __future__ import annotations

import numpy as np
import pytest

from segearth_qgis.core.change import (
    FIRST_TRANSITION,
    NO_CHANGE,
    NODATA_CHANGE,
    NODATA_LABEL,
    UNCERTAIN,
    ChangeRule,
    TransitionTally,
    change_summary,
    decide_change,
    format_area,
    transition_code,
    transition_name,
    transition_of,
)
from segearth_qgis.errors import InputError

NAMES = ["background", "building", "tree, forest"]


def _probabilities(rng: np.random.Generator, classes: int, rows: int, cols: int, peak: float = 4.0) -> np.ndarray:
    logits = rng.normal(size=(classes, rows, cols)) * peak
    exp = np.exp(logits - logits.max(axis=0))
    return (exp / exp.sum(axis=0)).astype(np.float32)


def _labels(probabilities: np.ndarray, threshold: float, background: int) -> np.ndarray:
    labels = probabilities.argmax(axis=0).astype(np.uint8)
    labels[probabilities.max(axis=0) < threshold] = background
    return labels


RULE = ChangeRule(0.5, 0.2)


def _one_pixel(before: list[float], after: list[float], before_label: int, after_label: int) -> int:
    block = decide_change(np.array(before, np.float32)[:, None, None], np.array(after, np.float32)[:, None, None],
                          np.array([[before_label]], np.uint8), np.array([[after_label]], np.uint8), RULE)
    return int(block.codes[0, 0])


def test_identical_dates_give_no_change_at_all():
    rng = np.random.default_rng(0)
    probabilities = _probabilities(rng, 3, 40, 50, peak=0.3)  # mostly unconfident: still no change
    labels = _labels(probabilities, 0.4, 0)
    labels[:3] = NODATA_LABEL
    block = decide_change(probabilities, probabilities.copy(), labels, labels.copy(), ChangeRule(0.0, 0.0))
    assert set(np.unique(block.codes[3:])) == {NO_CHANGE}
    assert (block.codes[:3] == NODATA_CHANGE).all()
    assert np.isnan(block.confidence[:3]).all()
    np.testing.assert_array_equal(block.confidence[3:], probabilities[:, 3:].max(axis=0))


@pytest.mark.parametrize("before, after, labels, expected", [
    # confident on both dates, building gained 0.8: a change background -> building
    ([0.9, 0.05, 0.05], [0.05, 0.9, 0.05], (0, 1), transition_code(0, 1, 3)),
    # the after date is not confident enough
    ([0.9, 0.05, 0.05], [0.3, 0.45, 0.25], (0, 1), UNCERTAIN),
    # confident, but building gained only 0.15 (< margin 0.2)
    ([0.1, 0.6, 0.3], [0.05, 0.75, 0.2], (2, 1), UNCERTAIN),
    # the before label is the background fallback, not the model's choice
    ([0.2, 0.7, 0.1], [0.05, 0.9, 0.05], (0, 1), UNCERTAIN),
    # the same label: no change whatever the probabilities
    ([0.5, 0.3, 0.2], [0.9, 0.05, 0.05], (0, 0), NO_CHANGE),
    ([0.9, 0.05, 0.05], [0.05, 0.9, 0.05], (NODATA_LABEL, 1), NODATA_CHANGE),
])
def test_one_pixel_rules(before, after, labels, expected):
    assert _one_pixel(before, after, *labels) == expected


def test_the_block_decision_equals_the_rule_applied_pixel_by_pixel():
    rng = np.random.default_rng(3)
    classes, rows, cols = 4, 30, 20
    before, after = _probabilities(rng, classes, rows, cols), _probabilities(rng, classes, rows, cols)
    before_labels, after_labels = _labels(before, 0.3, 0), _labels(after, 0.3, 0)
    after_labels[5, :] = NODATA_LABEL
    rule = ChangeRule(0.45, 0.15)
    codes = decide_change(before, after, before_labels, after_labels, rule).codes
    for y in range(rows):
        for x in range(cols):
            a, b = int(before_labels[y, x]), int(after_labels[y, x])
            if NODATA_LABEL in (a, b):
                expected = NODATA_CHANGE
            elif a == b:
                expected = NO_CHANGE
            elif (before[:, y, x].argmax() == a and after[:, y, x].argmax() == b
                  and before[a, y, x] >= 0.45 and after[b, y, x] >= 0.45 and after[b, y, x] - before[b, y, x] >= 0.15):
                expected = FIRST_TRANSITION + a * classes + b
            else:
                expected = UNCERTAIN
            assert codes[y, x] == expected, (y, x)
    assert (codes >= FIRST_TRANSITION).sum() > 10 and (codes == UNCERTAIN).sum() > 10  # every branch was taken


def test_tally_totals_are_the_dates_class_areas_and_changes_a_part_of_the_differences():
    rng = np.random.default_rng(7)
    tally = TransitionTally(3)
    all_before, all_after, all_codes, all_areas = [], [], [], []
    for _ in range(3):  # three blocks
        before, after = _probabilities(rng, 3, 16, 12), _probabilities(rng, 3, 16, 12)
        before_labels, after_labels = _labels(before, 0.3, 0), _labels(after, 0.3, 0)
        before_labels[0, :4] = NODATA_LABEL
        codes = decide_change(before, after, before_labels, after_labels, ChangeRule()).codes
        areas = rng.uniform(0.5, 2.0, size=16)
        tally.add(before_labels, after_labels, codes, areas)
        all_before.append(before_labels)
        all_after.append(after_labels)
        all_codes.append(codes)
        all_areas.append(np.broadcast_to(areas[:, None], codes.shape))
    before_labels, after_labels = np.concatenate(all_before), np.concatenate(all_after)
    codes, areas = np.concatenate(all_codes), np.concatenate(all_areas)
    valid = codes != NODATA_CHANGE
    for k in range(3):
        assert tally.before_totals[k] == pytest.approx(areas[valid & (before_labels == k)].sum())
        assert tally.after_totals[k] == pytest.approx(areas[valid & (after_labels == k)].sum())
    assert tally.nodata_pixels == 12
    assert tally.pixels.sum() == valid.sum()
    assert np.allclose(np.diag(tally.changed), 0)
    assert (tally.uncertain >= -1e-9).all()
    differs = valid & (before_labels != after_labels)
    assert tally.changed.sum() + tally.uncertain.sum() == pytest.approx(areas[differs].sum())
    assert tally.uncertain.sum() == pytest.approx(areas[codes == UNCERTAIN].sum())
    assert tally.net_change.sum() == pytest.approx(0.0, abs=1e-9)
    present = tally.present_codes()
    assert present and set(present) == set(np.unique(codes[(codes >= FIRST_TRANSITION) & valid]).tolist())
    changed_areas = [tally.changed[transition_of(code, 3)] for code in present]
    assert changed_areas == sorted(changed_areas, reverse=True)


def test_codes_names_and_summary():
    assert transition_of(transition_code(253, 250, 254), 254) == (253, 250)
    assert transition_code(253, 253, 254) < NODATA_CHANGE
    assert transition_of(NO_CHANGE, 3) is None and transition_of(NODATA_CHANGE, 3) is None
    assert transition_name(transition_code(2, 1, 3), NAMES) == "tree, forest → building"
    assert transition_name(UNCERTAIN, NAMES) == "uncertain"
    tally = TransitionTally(3)
    assert change_summary(tally, NAMES) == "No change found."
    tally.changed[0, 1], tally.changed_pixels[0, 1] = 124000.0, 10
    tally.changed[2, 1], tally.changed_pixels[2, 1] = 530.0, 1
    tally.crosstab[:] = tally.changed
    tally.crosstab[1, 2] = 200.0
    assert change_summary(tally, NAMES) == "12.4 ha background → building; 530 m² tree, forest → building"
    assert change_summary(tally, NAMES, limit=1) == "12.4 ha background → building, and 1 more"
    assert format_area(9999) == "9999 m²"


@pytest.mark.parametrize("confidence, margin", [(-0.1, 0.2), (0.5, 1.5), (float("nan"), 0.2), ("0.5", 0.2)])
def test_a_rule_out_of_range_is_refused(confidence, margin):
    with pytest.raises(InputError, match="between 0 and 1"):
        ChangeRule(confidence, margin)


def test_mismatched_shapes_are_refused():
    probabilities = np.zeros((3, 4, 4), np.float32)
    labels = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="alike"):
        decide_change(probabilities, probabilities[:2], labels, labels, ChangeRule())
    with pytest.raises(ValueError, match="do not match"):
        decide_change(probabilities, probabilities, labels[:3], labels, ChangeRule())


def test_changes_taken_out_by_the_minimum_mapping_unit_leave_the_tally_consistent():
    rng = np.random.default_rng(11)
    before, after = _probabilities(rng, 3, 20, 20), _probabilities(rng, 3, 20, 20)
    before_labels, after_labels = _labels(before, 0.3, 0), _labels(after, 0.3, 0)
    codes = decide_change(before, after, before_labels, after_labels, ChangeRule(0.0, 0.0)).codes
    areas = np.linspace(1.0, 2.0, 20)
    tally = TransitionTally(3)
    tally.add(before_labels, after_labels, codes, areas)
    uncertain_before = tally.uncertain.sum()
    taken = (codes >= FIRST_TRANSITION) & (np.arange(20)[:, None] < 7)  # as if those patches were too small
    pixel_areas = np.broadcast_to(areas[:, None], codes.shape)
    tally.remove_changes(codes[taken], pixel_areas[taken])
    codes = codes.copy()
    codes[taken] = UNCERTAIN
    recount = TransitionTally(3)
    recount.add(before_labels, after_labels, codes, areas)
    np.testing.assert_allclose(tally.changed, recount.changed, atol=1e-9)
    np.testing.assert_array_equal(tally.changed_pixels, recount.changed_pixels)
    assert tally.uncertain.sum() == pytest.approx(uncertain_before + pixel_areas[taken].sum())
    with pytest.raises(ValueError, match="not transition codes"):
        tally.remove_changes(np.array([UNCERTAIN]), np.array([1.0]))
