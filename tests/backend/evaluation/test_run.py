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


def _independent_iou(labels, preds, classes, reduce_zero_label=False):
    """Confusion matrix over every (label, prediction) pair, written without the engine's metric code."""
    matrix = np.zeros((classes, classes), np.int64)
    for label, pred in zip(labels, preds):
        label = label.astype(int)
        if reduce_zero_label:
            label = np.where(label == 0, 255, label - 1)
        keep = label != 255
        np.add.at(matrix, (label[keep], pred[keep].astype(int)), 1)
    tp = np.diag(matrix)
    return tp, matrix.sum(0) + matrix.sum(1) - tp, matrix


def _sar_reference(segmenter, preset, grey, label_shape):
    """The SAR protocol written out: grey -> R = G = B, resize to fit 224, window logits, bilinear back, decide."""
    image = np.repeat(grey[..., None], 3, axis=2)
    assert preset.dataset.scale == 224
    resized = resize_image(image, rescale_size(*image.shape[:2], (224, 224)))
    assert max(resized.shape[:2]) == 224  # one window: the authors' whole-image pass
    logits = torch.from_numpy(segmenter.logits(resized, list(preset.classes), preset.bias_lambda))
    logits = F.interpolate(logits[None], size=label_shape, mode="bilinear", align_corners=False)[0]
    return decide(logits, parse_classes(list(preset.classes)), preset.prob_threshold,
                  preset.background_index)[1].numpy()


def _grey_scene(rng, rows, cols):
    return np.clip(np.kron(rng.integers(0, 256, (rows // 16 + 1, cols // 16 + 1)), np.ones((16, 16)))[:rows, :cols]
                   + rng.normal(0, 20, (rows, cols)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def sar_segmenter(parity_dir, tmp_path_factory):
    from segearth_backend import load_segmenter
    from tests.helpers import DATA

    return load_segmenter(model=str(DATA / "parity_sar" / "tiny-alignearth.json"),
                          clip_weights=str(parity_dir / "tiny-clip.pt"),
                          upsampler_weights=str(parity_dir / "tiny-simfeatup.ckpt"), device="cpu",
                          cache_dir=tmp_path_factory.mktemp("sar-eval"), attention="SCLIP", last_blocks=2)


def test_eval_command_on_a_miniature_whu_sar(parity_dir, sar_segmenter, tmp_path, rng):
    """WHU-SAR's layout: grey .tif, labels 1..7 (0 ignored), 224 resize, whole-image pass, background 6."""
    from tests.helpers import DATA

    preset = find_benchmark("whu_sar")
    root = tmp_path / "crop512"
    sizes = {"a": (256, 256), "b": (300, 200)}
    for stem, (rows, cols) in sizes.items():
        label = blocky_label(rng, rows, cols, 8, block=32)  # 0 = no data, 1..7 = classes 0..6
        write_sample(root, preset.dataset, stem, _grey_scene(rng, rows, cols), label)
    out = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "segearth_backend", "eval", "--dataset", "whu_sar", "--root", str(root),
         "--model", str(DATA / "parity_sar" / "tiny-alignearth.json"), "--clip-weights",
         str(parity_dir / "tiny-clip.pt"), "--upsampler-weights", str(parity_dir / "tiny-simfeatup.ckpt"),
         "--attention", "SCLIP", "--last-blocks", "2", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
         "--out", str(out)], capture_output=True, text=True, env=dict(os.environ, SEGEARTH_OFFLINE="1"), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["settings"]["resize"] == [224, 224] and report["settings"]["slide_crop"] == 0
    assert report["model"]["attention"] == "SCLIP" and report["model"]["last_blocks"] == 2
    labels, preds = [], []
    for stem in sorted(sizes):
        grey = np.array(__import__("PIL.Image", fromlist=["Image"]).open(root / "test/sar_dir" / f"{stem}.tif"))
        label = np.array(__import__("PIL.Image", fromlist=["Image"]).open(root / "test/ann_dir" / f"{stem}.tif"))
        labels.append(label)
        preds.append(_sar_reference(sar_segmenter, preset, grey, label.shape))
    tp, union, matrix = _independent_iou(labels, preds, 7, reduce_zero_label=True)
    assert [row["intersect"] for row in report["per_class"]] == tp.tolist()
    assert [row["union"] for row in report["per_class"]] == union.tolist()
    with np.errstate(invalid="ignore", divide="ignore"):
        assert report["mIoU"] == pytest.approx(np.nanmean(tp / union), abs=1e-12)
    assert report["aAcc"] == pytest.approx(tp.sum() / matrix.sum(), abs=1e-12)


@pytest.mark.parametrize("key, suffix_image", [("yeseg_sar", ".png"), ("ddhrnet_korea_sar", ".jpg")])
def test_sar_layouts_with_split_files_against_an_independent_iou(sar_segmenter, tmp_path, rng, key, suffix_image):
    from segearth_backend.evaluation.run import benchmark_predictor

    preset = find_benchmark(key)
    assert preset.dataset.img_suffix == suffix_image
    stems = ["s1", "s2", "s3"]
    classes = len(preset.classes)
    for stem in stems:
        label = blocky_label(rng, 224, 224, classes, block=28)
        label[:4] = 255
        write_sample(tmp_path, preset.dataset, stem, _grey_scene(rng, 224, 224), label)
    (tmp_path / preset.dataset.ann_file).write_text("s3\ns1\n")  # the split decides which images, in its order
    result = evaluate(preset, tmp_path, benchmark_predictor(sar_segmenter, preset))
    assert result.accumulator.images == 2 and [s.image.stem for s in result.samples] == ["s3", "s1"]
    labels, preds = [], []
    for stem in ("s3", "s1"):
        grey = read_image(tmp_path / preset.dataset.img_dir / f"{stem}{suffix_image}")[..., 0]
        label = np.array(__import__("PIL.Image", fromlist=["Image"]).open(
            tmp_path / preset.dataset.ann_dir / f"{stem}{preset.dataset.seg_map_suffix}"))
        labels.append(label)
        preds.append(_sar_reference(sar_segmenter, preset, grey, label.shape))
    tp, union, _ = _independent_iou(labels, preds, classes)
    np.testing.assert_array_equal(result.accumulator.intersect, tp)
    np.testing.assert_array_equal(result.accumulator.union, union)


def test_eval_of_a_sar_set_uses_the_sar_model_unless_told_otherwise(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SEGEARTH_MODEL"}
    result = subprocess.run(
        [sys.executable, "-m", "segearth_backend", "eval", "--dataset", "fusar", "--root", str(tmp_path),
         "--device", "cpu", "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True,
        env=dict(env, SEGEARTH_OFFLINE="1"), timeout=300)
    assert result.returncode != 0 and "AlignEarth-SAR-ViT-B-16.pt" in result.stderr + result.stdout
