"""Accuracy of a classification against a reference: confusion matrix and its measures (numpy only).

The confusion matrix has one row per reference class and one column per
predicted class (``matrix[r, p]`` pixels of reference class ``r`` classified
as ``p``), over the prediction's class indices ``0..K-1``. Reference codes
are first mapped onto those indices (:func:`class_lookup`): by an explicit
``reference=prediction`` line, by class name (any synonym of a prediction
class), or, when the reference has no names, by equal code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from ..errors import AccuracyError

#: Right-hand side of a mapping line that leaves a reference class out of the assessment.
IGNORE = "ignore"
#: Lookup value of ignored reference classes.
IGNORED = -1


@dataclass(frozen=True)
class AccuracyReport:
    """Measures of a confusion matrix.

    Attributes:
        matrix: ``K x K`` int64, rows reference classes, columns predicted classes.
        names: ``K`` class names (the prediction's).
        overall_accuracy: correct pixels / all pixels.
        kappa: Cohen's kappa ``(p_o - p_e) / (1 - p_e)``; NaN when ``p_e`` is 1.
        iou, precision, recall, f1: ``K`` float64 per class; NaN where undefined
            (precision: no pixel predicted as the class; recall: none in the reference).
        mean_iou: mean IoU over classes present in the reference or the prediction.
    """

    matrix: np.ndarray
    names: tuple[str, ...]
    overall_accuracy: float
    kappa: float
    iou: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    mean_iou: float

    @property
    def total(self) -> int:
        return int(self.matrix.sum())


def confusion_matrix(reference: np.ndarray, prediction: np.ndarray, num_classes: int,
                     valid: Optional[np.ndarray] = None) -> np.ndarray:
    """Count ``(reference, prediction)`` pairs into a ``K x K`` int64 matrix.

    Args:
        reference, prediction: integer class maps of one shape, values in ``0..K-1`` where valid.
        valid: optional bool mask of the pixels to count.

    Raises:
        AccuracyError: shapes differ, or a counted value is outside ``0..K-1``.
    """
    if reference.shape != prediction.shape:
        raise AccuracyError(f"reference {reference.shape} and prediction {prediction.shape} differ in shape")
    ref = reference.astype(np.int64).ravel()
    pred = prediction.astype(np.int64).ravel()
    if valid is not None:
        keep = valid.ravel()
        ref, pred = ref[keep], pred[keep]
    for values, what in ((ref, "reference"), (pred, "prediction")):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise AccuracyError(f"{what} holds values outside 0..{num_classes - 1}")
    return np.bincount(ref * num_classes + pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes).astype(np.int64)


def assess(matrix: np.ndarray, names: Sequence[str]) -> AccuracyReport:
    """Overall accuracy, Cohen's kappa and per-class IoU / precision / recall / F1 of ``matrix``.

    Raises:
        AccuracyError: an empty matrix (no pixel was compared).
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    total = matrix.sum()
    if total == 0:
        raise AccuracyError("No pixel was compared: the reference and the classification do not overlap "
                            "(check the extents, the reference's nodata and the mapping).")
    true_positive = np.diag(matrix).astype(np.float64)
    reference = matrix.sum(axis=1).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    observed = true_positive.sum() / total
    expected = float((reference * predicted).sum()) / float(total) ** 2
    kappa = (observed - expected) / (1 - expected) if expected < 1 else math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        union = reference + predicted - true_positive
        iou = np.where(union > 0, true_positive / union, np.nan)
        precision = np.where(predicted > 0, true_positive / predicted, np.nan)
        recall = np.where(reference > 0, true_positive / reference, np.nan)
        f1 = np.where(reference + predicted > 0, 2 * true_positive / (reference + predicted), np.nan)
    present = union > 0
    return AccuracyReport(matrix, tuple(names), float(observed), float(kappa), iou, precision, recall, f1,
                          float(iou[present].mean()) if present.any() else math.nan)


def parse_mapping(text: str) -> list[tuple[str, str]]:
    """``reference=prediction`` lines (codes or names; right side ``ignore`` drops a class).

    Blank lines and lines starting with ``#`` are skipped.

    Raises:
        AccuracyError: a line without exactly one ``=`` or with an empty side.
    """
    pairs = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("=")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise AccuracyError(f"Mapping line {number} ('{line}') is not 'reference=prediction', "
                                "e.g. '3=building' or 'clutter=ignore'.")
        pairs.append((parts[0].strip(), parts[1].strip()))
    return pairs


def _key(text: str) -> str:
    return " ".join(text.replace("_", " ").split()).casefold()


def _prediction_index(token: str, prediction: Mapping[int, str], num_classes: int) -> Optional[int]:
    if _key(token) == IGNORE:
        return IGNORED
    if token.lstrip("-").isdigit():
        index = int(token)
        return index if 0 <= index < num_classes else None
    wanted = _key(token)
    for index, name in prediction.items():
        if wanted == _key(name) or wanted in (_key(s) for s in name.split(",")):
            return index
    return None


def class_lookup(reference: Mapping[int, Optional[str]], prediction: Mapping[int, str], num_classes: int,
                 mapping: Sequence[tuple[str, str]] = ()) -> dict[int, int]:
    """Reference code -> prediction index (or :data:`IGNORED`) for every reference code.

    Args:
        reference: the reference's codes with their names (None when unnamed).
        prediction: the prediction's class names by index (may be empty).
        num_classes: ``K``, the prediction's number of classes.
        mapping: :func:`parse_mapping` pairs; they win over names and codes.

    Raises:
        AccuracyError: a mapping line naming an unknown class, or reference classes left unmatched
            (listed, with what to write in the mapping).
    """
    lookup: dict[int, int] = {}
    for left, right in mapping:
        by_code = left.lstrip("-").isdigit()
        codes = [code for code, name in reference.items()
                 if (by_code and code == int(left)) or (name is not None and _key(name) == _key(left))]
        if not codes:
            raise AccuracyError(f"Mapping '{left}={right}': the reference has no class '{left}' "
                                f"(it has {_describe(reference)}).")
        target = _prediction_index(right, prediction, num_classes)
        if target is None:
            raise AccuracyError(f"Mapping '{left}={right}': the classification has no class '{right}' "
                                f"(it has {_describe(dict(prediction)) or f'codes 0..{num_classes - 1}'}; "
                                f"or write '{left}={IGNORE}').")
        for code in codes:
            lookup[code] = target
    unmatched = []
    for code, name in reference.items():
        if code in lookup:
            continue
        target = _prediction_index(name, prediction, num_classes) if name else None
        if target is None and name is None and 0 <= code < num_classes:
            target = code
        if target is None:
            unmatched.append(f"{code} ({name})" if name else str(code))
        else:
            lookup[code] = target
    if unmatched:
        raise AccuracyError(f"Reference classes {', '.join(unmatched)} match no class of the classification "
                            f"({_describe(dict(prediction)) or f'codes 0..{num_classes - 1}'}). Add mapping lines "
                            f"'reference=prediction' (codes or names), or 'reference={IGNORE}' to leave one out.")
    return lookup


def _describe(classes: Mapping[int, Optional[str]]) -> str:
    return ", ".join(f"{code} {name}" if name else str(code) for code, name in sorted(classes.items()))


def matrix_from_pairs(pairs: Mapping[tuple[int, int], int], lookup: Mapping[int, int],
                      num_classes: int) -> tuple[np.ndarray, int]:
    """Confusion matrix from ``(reference code, prediction index) -> pixels`` counts.

    Returns:
        the ``K x K`` matrix and the number of pixels left out (reference classes mapped to ignore).

    Raises:
        AccuracyError: a prediction value outside ``0..K-1``.
    """
    matrix = np.zeros((num_classes, num_classes), np.int64)
    ignored = 0
    for (code, predicted), count in pairs.items():
        row = lookup[code]
        if row == IGNORED:
            ignored += count
            continue
        if not 0 <= predicted < num_classes:
            raise AccuracyError(f"The classification holds value {predicted}, outside its classes "
                                f"0..{num_classes - 1}.")
        matrix[row, predicted] += count
    return matrix, ignored
