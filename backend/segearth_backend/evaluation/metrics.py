"""mmseg's ``IoUMetric``: intersection / union areas per class, summed over the whole set (numpy).

Per image, pixels whose label is the ignore index are dropped; the
intersection, prediction and label areas are histograms over ``0..K-1`` (values
outside that range are not counted, as ``torch.histc`` does); union = pred +
label - intersection. Over the set the areas are summed, then IoU = I / U and
Acc = I / label per class, aAcc = sum(I) / sum(label), mIoU = nanmean(IoU).
Areas are exact int64 counts (mmseg sums float32 histograms, which rounds
beyond 2**24 pixels per class; the difference is far below its 0.01 rounding).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _histogram(values: np.ndarray, num_classes: int) -> np.ndarray:
    inside = values[(values >= 0) & (values < num_classes)]
    return np.bincount(inside.astype(np.int64), minlength=num_classes)[:num_classes].astype(np.int64)


def intersect_and_union(pred: np.ndarray, label: np.ndarray, num_classes: int,
                        ignore_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Areas of one image: (intersection, union, prediction, label), each ``K`` int64.

    Args:
        pred, label: ``H x W`` integer class maps of the same shape.
    """
    if pred.shape != label.shape:
        raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in shape")
    keep = label != ignore_index
    pred = pred[keep].astype(np.int64)
    label = label[keep].astype(np.int64)
    area_intersect = _histogram(pred[pred == label], num_classes)
    area_pred = _histogram(pred, num_classes)
    area_label = _histogram(label, num_classes)
    return area_intersect, area_pred + area_label - area_intersect, area_pred, area_label


@dataclass
class IoUAccumulator:
    """Areas summed over a dataset; :meth:`summary` gives mmseg's numbers."""

    num_classes: int
    ignore_index: int = 255
    intersect: np.ndarray = field(init=False)
    union: np.ndarray = field(init=False)
    pred: np.ndarray = field(init=False)
    label: np.ndarray = field(init=False)
    images: int = 0

    def __post_init__(self) -> None:
        for name in ("intersect", "union", "pred", "label"):
            setattr(self, name, np.zeros(self.num_classes, np.int64))

    def add(self, pred: np.ndarray, label: np.ndarray) -> None:
        """Count one image (``H x W`` prediction and label)."""
        areas = intersect_and_union(pred, label, self.num_classes, self.ignore_index)
        for name, area in zip(("intersect", "union", "pred", "label"), areas):
            setattr(self, name, getattr(self, name) + area)
        self.images += 1

    def summary(self) -> dict[str, object]:
        """Per-class IoU and Acc (NaN where undefined), aAcc, mIoU, mAcc, as fractions (not percent)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = self.intersect / self.union
            acc = self.intersect / self.label
            all_acc = float(self.intersect.sum() / self.label.sum()) if self.label.sum() else float("nan")
        return {
            "IoU": iou.tolist(), "Acc": acc.tolist(), "aAcc": all_acc,
            "mIoU": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
            "mAcc": float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
        }
