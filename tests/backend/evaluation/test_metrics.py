"""mmseg's IoU metric against hand-computed areas and a plain confusion matrix."""

import numpy as np
import pytest

from segearth_backend.evaluation.metrics import IoUAccumulator, intersect_and_union


def test_hand_computed_areas_with_ignored_and_out_of_range_labels():
    label = np.array([[0, 0, 1], [1, 2, 255], [2, 2, 7]])
    pred = np.array([[0, 1, 1], [1, 2, 0], [0, 2, 2]])
    intersect, union, area_pred, area_label = intersect_and_union(pred, label, 3, 255)
    # kept pixels (label != 255): labels 0,0,1,1,2,2,2,7 ; preds 0,1,1,1,2,0,2,2
    np.testing.assert_array_equal(area_label, [2, 2, 3])  # 7 is outside 0..2: not counted (torch.histc)
    np.testing.assert_array_equal(area_pred, [2, 3, 3])  # its prediction (2) still is
    np.testing.assert_array_equal(intersect, [1, 2, 2])
    np.testing.assert_array_equal(union, [3, 3, 4])


def test_summary_is_over_the_whole_set_not_a_mean_of_images():
    acc = IoUAccumulator(2)
    acc.add(np.array([[0, 0, 1, 1]]), np.array([[0, 0, 0, 1]]))  # I=[2,1] U=[3,2]
    acc.add(np.array([[1, 1]]), np.array([[1, 1]]))  # I=[0,2] U=[0,2]
    summary = acc.summary()
    assert summary["IoU"] == pytest.approx([2 / 3, 3 / 4])
    assert summary["Acc"] == pytest.approx([2 / 3, 3 / 3])
    assert summary["aAcc"] == pytest.approx(5 / 6) and summary["mIoU"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert acc.images == 2


def test_absent_class_is_nan_and_left_out_of_the_mean():
    acc = IoUAccumulator(3)
    acc.add(np.array([[0, 1]]), np.array([[0, 1]]))
    summary = acc.summary()
    assert np.isnan(summary["IoU"][2]) and summary["mIoU"] == 1.0


def test_matches_a_plain_confusion_matrix(rng):
    classes, acc = 6, IoUAccumulator(6, ignore_index=255)
    matrix = np.zeros((classes, classes), np.int64)
    for _ in range(5):
        shape = tuple(rng.integers(5, 40, size=2))
        label = rng.integers(0, classes, size=shape)
        label[rng.random(shape) < 0.1] = 255
        pred = rng.integers(0, classes, size=shape)
        acc.add(pred, label)
        keep = label != 255
        np.add.at(matrix, (label[keep], pred[keep]), 1)
    tp = np.diag(matrix)
    np.testing.assert_array_equal(acc.intersect, tp)
    np.testing.assert_array_equal(acc.label, matrix.sum(axis=1))
    np.testing.assert_array_equal(acc.pred, matrix.sum(axis=0))
    np.testing.assert_array_equal(acc.union, matrix.sum(axis=0) + matrix.sum(axis=1) - tp)
    assert acc.summary()["aAcc"] == tp.sum() / matrix.sum()
