"""``segearth-backend eval``: one benchmark, the authors' protocol, mmseg's IoU, a report.

Per image: read it (:mod:`.dataset`), resize it to fit the config's scale
(448 x 448; 224 x 224 for most SAR sets) keeping its aspect ratio
(:mod:`.resize`), take the engine's window-averaged logits of the resized
image (:meth:`Segmenter.logits`), resize the logits bilinearly to the
label's size, then the engine's decision (x50 softmax, synonym max,
threshold, background index) with the benchmark's settings, and count the
areas (:mod:`.metrics`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np

from ..errors import DatasetError
from .benchmarks import BenchmarkPreset, DatasetLayout
from .dataset import Sample, list_samples, read_image, read_label
from .metrics import IoUAccumulator
from .resize import rescale_size, resize_image

#: ``predict(image, label_shape) -> labels``: ``H x W x 3`` uint8 RGB at its original size in,
#: ``h x w`` integer labels at ``label_shape`` out.
Predictor = Callable[[np.ndarray, tuple[int, int]], np.ndarray]


def benchmark_predictor(segmenter: Any, preset: BenchmarkPreset) -> Predictor:
    """The authors' test pipeline around ``segmenter`` (a :class:`~segearth_backend.pipeline.segmenter.Segmenter`)."""
    import torch
    import torch.nn.functional as F

    from ..pipeline.classes import parse_classes
    from ..pipeline.segmenter import decide

    class_set = parse_classes(list(preset.classes))
    scale = _layout(preset).scale

    def predict(image: np.ndarray, label_shape: tuple[int, int]) -> np.ndarray:
        resized = resize_image(image, rescale_size(image.shape[0], image.shape[1], (scale, scale)))
        logits = torch.from_numpy(segmenter.logits(resized, list(preset.classes), preset.bias_lambda))
        logits = F.interpolate(logits[None], size=label_shape, mode="bilinear", align_corners=False)[0]
        _, labels = decide(logits, class_set, preset.prob_threshold, preset.background_index)
        return labels.cpu().numpy()

    return predict


@dataclass
class EvalResult:
    """The summed areas and the numbers mmseg reports."""

    preset: BenchmarkPreset
    accumulator: IoUAccumulator
    samples: list[Sample]

    def to_json(self, extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        layout = _layout(self.preset)
        summary = self.accumulator.summary()
        acc = self.accumulator
        per_class = [
            {"class": name, "query": line, "IoU": _number(iou), "Acc": _number(cls_acc),
             "intersect": int(i), "union": int(u), "pred": int(p), "label": int(lab)}
            for name, line, iou, cls_acc, i, u, p, lab in zip(
                layout.class_names, self.preset.classes, summary["IoU"], summary["Acc"],  # type: ignore[call-overload]
                acc.intersect, acc.union, acc.pred, acc.label)
        ]
        report: dict[str, Any] = {
            "dataset": self.preset.key, "name": self.preset.name, "config": self.preset.config,
            "images": acc.images,
            "settings": {"classes": list(self.preset.classes), "prob_threshold": self.preset.prob_threshold,
                         "background_index": self.preset.background_index, "bias_lambda": self.preset.bias_lambda,
                         "resize": [layout.scale, layout.scale], "keep_ratio": True,
                         "slide_crop": 224 if layout.slide else 0, "slide_stride": 112,
                         "reduce_zero_label": layout.reduce_zero_label, "ignore_index": layout.ignore_index},
            "mIoU": _number(summary["mIoU"]), "aAcc": _number(summary["aAcc"]), "mAcc": _number(summary["mAcc"]),
            "mmseg": {key: _percent(summary[key]) for key in ("aAcc", "mIoU", "mAcc")},
            "per_class": per_class,
        }
        report.update(extra or {})
        return report


def _number(value: Any) -> Optional[float]:
    value = float(value)
    return None if math.isnan(value) else value


def _percent(value: Any) -> Optional[float]:
    number = _number(value)
    return None if number is None else round(number * 100, 2)


def _layout(preset: BenchmarkPreset) -> DatasetLayout:
    if preset.dataset is None:
        raise DatasetError(f"'{preset.key}' is a class set without a dataset; evaluate one of the benchmarks.")
    return preset.dataset


def evaluate(preset: BenchmarkPreset, root: Path, predict: Predictor, limit: Optional[int] = None,
             ann_file: Optional[Path] = None,
             progress: Callable[[Iterable[Sample], int], Iterable[Sample]] = lambda items, total: items
             ) -> EvalResult:
    """Run ``predict`` over the benchmark's samples under ``root`` and sum mmseg's areas.

    Args:
        limit: evaluate only the first ``limit`` samples (in mmseg's order).
        progress: wraps the sample iterator (e.g. a progress bar), given the total.

    Raises:
        DatasetError: layout problems, unreadable files, image and label of different sizes.
    """
    layout = _layout(preset)
    if len(layout.class_names) != len(preset.classes):
        raise DatasetError(f"{preset.key}: {len(preset.classes)} class lines for {len(layout.class_names)} "
                           "dataset classes.")
    samples = list_samples(root, layout, ann_file)
    if limit is not None:
        if limit < 1:
            raise DatasetError(f"--limit must be at least 1, got {limit}.")
        samples = samples[:limit]
    accumulator = IoUAccumulator(len(layout.class_names), layout.ignore_index)
    for sample in progress(samples, len(samples)):
        image = read_image(sample.image)
        label = read_label(sample.label, layout)
        if image.shape[:2] != label.shape:
            raise DatasetError(f"{sample.image} is {image.shape[1]} x {image.shape[0]} but its label "
                               f"{sample.label} is {label.shape[1]} x {label.shape[0]}: they must match.")
        accumulator.add(np.asarray(predict(image, (label.shape[0], label.shape[1]))), label)
    return EvalResult(preset, accumulator, samples)


def format_result(result: EvalResult) -> str:
    """mmseg's per-class table (IoU and Acc in percent, 2 decimals) and the summary line."""
    report = result.to_json()
    rows = [("Class", "IoU", "Acc")] + [
        (row["class"], _fmt(row["IoU"]), _fmt(row["Acc"])) for row in report["per_class"]]
    width = max(len(row[0]) for row in rows)
    lines = [f"{name.ljust(width)}  {iou:>6}  {acc:>6}" for name, iou, acc in rows]
    mmseg = report["mmseg"]
    lines.append(f"{result.preset.name}: {report['images']} images  aAcc {_fmt_pct(mmseg['aAcc'])}  "
                 f"mIoU {_fmt_pct(mmseg['mIoU'])}  mAcc {_fmt_pct(mmseg['mAcc'])}")
    return "\n".join(lines)


def _fmt(value: Optional[float]) -> str:
    return "nan" if value is None else f"{value * 100:.2f}"


def _fmt_pct(value: Optional[float]) -> str:
    return "nan" if value is None else f"{value:.2f}"
