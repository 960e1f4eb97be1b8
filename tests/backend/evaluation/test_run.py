"""`eval` end to end: known answers with a fixed predictor, and the real engine against a NumPy reference."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segearth_backend.errors import DatasetError
from segearth_backend.evaluation.benchmarks import find_benchmark
from segearth_backend.evaluation.dataset import read_image
from segearth_backend.evaluation.resize import rescale_size, resize_image
from segearth_backend.evaluation.run import evaluate, format_result
from segearth_backend.pipeline.classes import parse_classes
from segearth_backend.pipeline.segmenter import decide
from tests.backend.helpers import blocky_label, write_sample


def test_known_answer_with_zero_label_reduction(tmp_path):
    preset = find_benchmark("loveda")  # 7 classes; stored 0 = no data (ignored), 1..7 = classes 0..6
    stored_a = np.array([[1, 1, 2, 2, 0, 0], [1, 1, 2, 2, 0, 0], [3] * 6, [3] * 6], np.uint8)
    stored_b = np.full((2, 2), 4, np.uint8)
    write_sample(tmp_path, preset.dataset, "a", np.zeros((4, 6, 3), np.uint8), stored_a)
    write_sample(tmp_path, preset.dataset, "b", np.zeros((2, 2, 3), np.uint8), stored_b)
    answers = {
        (4, 6): np.array([[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1], [2, 2, 2, 2, 2, 1], [2, 2, 2, 2, 2, 1]]),
        (2, 2): np.array([[3, 3], [0, 3]]),
    }
    result = evaluate(preset, tmp_path, lambda image, shape: answers[tuple(shape)])
    acc = result.accumulator
    np.testing.assert_array_equal(acc.intersect, [4, 0, 10, 3, 0, 0, 0])
    np.testing.assert_array_equal(acc.pred, [9, 2, 10, 3, 0, 0, 0])
    np.testing.assert_array_equal(acc.label, [4, 4, 12, 4, 0, 0, 0])
    np.testing.assert_array_equal(acc.union, [9, 6, 12, 4, 0, 0, 0])
    report = result.to_json()
    assert report["mIoU"] == pytest.approx((4 / 9 + 0 + 10 / 12 + 3 / 4) / 4)
    assert report["aAcc"] == pytest.approx(17 / 24) and report["mmseg"]["mIoU"] == 50.69
    assert [row["IoU"] for row in report["per_class"]][4:] == [None, None, None]
    assert report["per_class"][1]["class"] == "building" and report["per_class"][1]["query"] == "building,roof,house"
    assert "mIoU 50.69" in format_result(result)
    assert evaluate(preset, tmp_path, lambda image, shape: answers[tuple(shape)], limit=1).accumulator.images == 1


def test_image_and_label_of_different_sizes_is_an_error(tmp_path):
    preset = find_benchmark("whu_aerial")
    write_sample(tmp_path, preset.dataset, "x", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9), np.uint8))
    with pytest.raises(DatasetError, match="must match"):
        evaluate(preset, tmp_path, lambda image, shape: np.zeros(shape, int))


def _reference_labels(segmenter, preset, image, label_shape):
    """The protocol written out: resize, window logits, bilinear back, the engine's decision."""
    resized = resize_image(image, rescale_size(*image.shape[:2]))
    logits = torch.from_numpy(segmenter.logits(resized, list(preset.classes), preset.bias_lambda))
    logits = F.interpolate(logits[None], size=label_shape, mode="bilinear", align_corners=False)[0]
    return decide(logits, parse_classes(list(preset.classes)), preset.prob_threshold,
                  preset.background_index)[1].numpy()


def test_eval_command_matches_a_numpy_reference(tiny_paths, tiny_segmenter, tmp_path, rng):
    preset = find_benchmark("openearthmap")  # .tif images and labels, no zero-label reduction
    root = tmp_path / "OpenEarthMap"
    sizes = {"koeln_1": (448, 300), "koeln_2": (200, 300), "koeln_3": (90, 120)}
    for stem, (rows, cols) in sizes.items():
        image = np.clip(np.kron(rng.integers(0, 256, (rows // 16 + 1, cols // 16 + 1, 3)), np.ones((16, 16, 1)))
                        [:rows, :cols] + rng.normal(0, 10, (rows, cols, 3)), 0, 255).astype(np.uint8)
        label = blocky_label(rng, rows, cols, 9, block=24)
        label[:5] = 255  # ignored
        write_sample(root, preset.dataset, stem, image, label)
    out = tmp_path / "report.json"
    env = dict(os.environ, SEGEARTH_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-m", "segearth_backend", "eval", "--dataset", "OpenEarthMap", "--root", str(root),
         "--model", tiny_paths["model"], "--clip-weights", tiny_paths["clip_weights"], "--upsampler-weights",
         tiny_paths["upsampler_weights"], "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
         "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["images"] == 3 and "mIoU" in result.stdout and "3/3" in result.stderr  # the progress bar

    matrix = np.zeros((9, 9), np.int64)
    for stem in sorted(sizes):
        image = read_image(root / "img_dir/val" / f"{stem}.tif")
        label = np.array(__import__("PIL.Image", fromlist=["Image"]).open(root / "ann_dir/val" / f"{stem}.tif"))
        if max(image.shape[:2]) == 448:  # no resize either way: exactly the engine's own prediction
            pred = tiny_segmenter.predict(image, list(preset.classes), prob_threshold=0.1, background_index=0,
                                          bias_lambda=-0.3).labels
            np.testing.assert_array_equal(pred, _reference_labels(tiny_segmenter, preset, image, label.shape))
        else:
            pred = _reference_labels(tiny_segmenter, preset, image, label.shape)
        keep = label != 255
        np.add.at(matrix, (label[keep].astype(int), pred[keep].astype(int)), 1)
    tp = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - tp
    assert [row["intersect"] for row in report["per_class"]] == tp.tolist()
    assert [row["union"] for row in report["per_class"]] == union.tolist()
    assert [row["label"] for row in report["per_class"]] == matrix.sum(1).tolist()
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / union
    assert report["mIoU"] == pytest.approx(np.nanmean(iou), abs=1e-12)
    assert report["aAcc"] == pytest.approx(tp.sum() / matrix.sum(), abs=1e-12)
    assert report["model"]["model"] == "tiny-clip" and report["settings"]["prob_threshold"] == 0.1
