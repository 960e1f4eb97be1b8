"""End-to-end behaviour of Segmenter.predict on the tiny model: masks, sizes, decisions, bad input."""

import numpy as np
import pytest
import torch

from segearth_backend import ClassListError, ImageError, ParameterError
from segearth_backend.pipeline.classes import parse_classes
from segearth_backend.pipeline.segmenter import decide, normalise
from tests.backend.reference import reference_predict

CLASSES = ["background", "building,roof", "road", "tree,forest", "water"]


def test_invalid_pixels_get_nodata_and_zero_probability(tiny_segmenter, rng):
    image = rng.integers(0, 256, size=(96, 130, 3), dtype=np.uint8)
    valid = np.ones((96, 130), dtype=bool)
    valid[10:40, 20:90] = False
    pred = tiny_segmenter.predict(image, CLASSES, valid=valid)
    assert (pred.labels[~valid] == 255).all()
    assert (pred.labels[valid] < len(CLASSES)).all()
    assert (pred.probabilities[:, ~valid] == 0).all()
    np.testing.assert_allclose(pred.probabilities[:, valid].sum(axis=0) <= 1 + 1e-5, True)


def test_normalisation_and_invalid_pixels_zero_in_normalised_space(rng):
    image = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    valid = np.ones((64, 64), dtype=bool)
    valid[:, :20] = False
    masked = normalise(image, valid, torch.device("cpu"))
    plain = normalise(image, None, torch.device("cpu"))
    assert torch.count_nonzero(masked[0, :, :, :20]) == 0
    assert torch.equal(masked[0, :, :, 20:], plain[0, :, :, 20:])
    mean = torch.tensor([122.771, 116.746, 104.094]).reshape(3, 1, 1)
    std = torch.tensor([68.501, 66.632, 70.323]).reshape(3, 1, 1)
    expected = (torch.from_numpy(image).permute(2, 0, 1).float() - mean) / std
    torch.testing.assert_close(plain[0], expected)


@pytest.mark.parametrize("shape", [(1, 1), (5, 300), (20, 20), (223, 225), (300, 17)])
def test_any_size_from_one_pixel_works(tiny_segmenter, rng, shape):
    image = rng.integers(0, 256, size=shape + (3,), dtype=np.uint8)
    pred = tiny_segmenter.predict(image, CLASSES)
    assert pred.labels.shape == shape and pred.labels.dtype == np.uint8
    assert pred.probabilities.shape == (len(CLASSES),) + shape and pred.probabilities.dtype == np.float32
    expected_probs, expected_labels = reference_predict(tiny_segmenter, image, CLASSES)
    np.testing.assert_allclose(pred.probabilities, expected_probs, atol=2e-5)
    assert (pred.labels == expected_labels).mean() > 0.99
    assert set(pred.timings) >= {"text", "image_tower", "upsampler", "logits", "total"}


def test_threshold_sends_uncertain_pixels_to_background(tiny_segmenter, rng):
    image = rng.integers(0, 256, size=(64, 80, 3), dtype=np.uint8)
    loose = tiny_segmenter.predict(image, CLASSES, prob_threshold=0.0, background_index=2)
    strict = tiny_segmenter.predict(image, CLASSES, prob_threshold=1.0, background_index=2)
    assert (strict.labels == 2).all()
    np.testing.assert_array_equal(loose.probabilities, strict.probabilities)
    np.testing.assert_array_equal(loose.labels, loose.probabilities.argmax(axis=0))


def test_decide_softmax_synonym_max_and_threshold():
    logits = torch.tensor([[0.30, 0.10], [0.25, 0.12], [0.10, 0.11]]).reshape(3, 1, 2)
    class_set = parse_classes(["a,b", "c"])
    probs, labels = decide(logits, class_set, threshold=0.6, background=1)
    expected = torch.softmax(logits * 50, dim=0)
    torch.testing.assert_close(probs[0], torch.maximum(expected[0], expected[1]))
    torch.testing.assert_close(probs[1], expected[2])
    # pixel 0: class 0 wins with p > 0.6; pixel 1: top probability below 0.6 -> background 1
    assert probs[0, 0, 0] > 0.6 and probs.max(dim=0).values[0, 1] < 0.6
    assert labels.tolist() == [[0, 1]]


def test_bilinear_mode_runs_and_differs_from_simfeatup(tiny_paths, tiny_segmenter, rng, tmp_path):
    from segearth_backend import load_segmenter

    bilinear = load_segmenter(device="cpu", cache_dir=tmp_path, model=tiny_paths["model"],
                              clip_weights=tiny_paths["clip_weights"], upsampler_weights="none")
    assert bilinear.describe()["upsampler"] == "bilinear"
    image = rng.integers(0, 256, size=(120, 100, 3), dtype=np.uint8)
    pred = bilinear.predict(image, CLASSES)
    assert pred.labels.shape == (120, 100) and "upsampler" not in pred.timings
    expected_probs, _ = reference_predict(bilinear, image, CLASSES)
    np.testing.assert_allclose(pred.probabilities, expected_probs, atol=2e-5)
    upsampled = tiny_segmenter.predict(image, CLASSES).probabilities
    assert np.abs(upsampled - pred.probabilities).max() > 1e-3  # SimFeatUp changes the answer


def test_threshold_boundary_keeps_the_label():
    """A pixel whose top probability equals the threshold keeps its class (the reference's ``<``)."""
    logits = torch.zeros(2, 1, 3)
    logits[0, 0, 1] = 1.0  # pixel 1: class 0 certain; pixels 0 and 2: an exact 0.5 / 0.5 tie
    class_set = parse_classes(["a", "b"])
    probs, labels = decide(logits, class_set, threshold=0.5, background=1)
    assert probs[0, 0, 0].item() == 0.5
    assert labels.tolist() == [[0, 0, 0]]
    _, strict = decide(logits, class_set, threshold=0.5 + 1e-6, background=1)
    assert strict.tolist() == [[1, 0, 1]]


@pytest.mark.parametrize("image, fragment", [
    (np.zeros((10, 10, 3), np.uint16), "uint8"),
    (np.full((10, 10, 3), np.nan, np.float32), "NaN"),
    (np.zeros((10, 10, 3), np.float32), "Stretch float"),
    (np.zeros((10, 10), np.uint8), "H x W x 3"),
    (np.zeros((10, 10, 1), np.uint8), "H x W x 3"),
    (np.zeros((10, 10, 4), np.uint8), "drop alpha"),
    (np.zeros((0, 0, 3), np.uint8), "at least 1 x 1"),
    ([[1, 2, 3]], "numpy array"),
])
def test_bad_images_are_refused(tiny_segmenter, image, fragment):
    with pytest.raises(ImageError, match=fragment):
        tiny_segmenter.predict(image, CLASSES)


def test_bad_valid_mask_is_refused(tiny_segmenter):
    image = np.zeros((10, 12, 3), np.uint8)
    with pytest.raises(ImageError, match="image's size"):
        tiny_segmenter.predict(image, CLASSES, valid=np.ones((12, 10), bool))
    with pytest.raises(ImageError, match="boolean"):
        tiny_segmenter.predict(image, CLASSES, valid=np.ones((10, 12), np.float32))


@pytest.mark.parametrize("kwargs, fragment", [
    ({"background_index": 5}, "out of range"),
    ({"background_index": -1}, "out of range"),
    ({"background_index": 1.5}, "integer"),
    ({"prob_threshold": 1.5}, "between 0 and 1"),
    ({"prob_threshold": float("nan")}, "finite"),
    ({"bias_lambda": float("inf")}, "finite"),
    ({"bias_lambda": "x"}, "number"),
])
def test_bad_parameters_are_refused(tiny_segmenter, kwargs, fragment):
    with pytest.raises(ParameterError, match=fragment):
        tiny_segmenter.predict(np.zeros((8, 8, 3), np.uint8), CLASSES, **kwargs)


@pytest.mark.parametrize("classes, fragment", [([], "empty"), (["road", ""], "blank"), (["road", "road"], "unique"),
                                               ([f"c{i}" for i in range(255)], "at most 254")])
def test_bad_class_lists_are_refused(tiny_segmenter, classes, fragment):
    with pytest.raises(ClassListError, match=fragment):
        tiny_segmenter.predict(np.zeros((8, 8, 3), np.uint8), classes)


def test_describe_reports_what_is_loaded(tiny_segmenter):
    info = tiny_segmenter.describe()
    assert info["model"] == "tiny-clip"
    assert info["upsampler"] == "SimFeatUp (JBU-One)"
    assert info["device"]["type"] == "cpu" and info["precision"] == "float32"


def test_explicit_arguments_win_over_a_given_config(tiny_paths, tmp_path):
    """load_segmenter(config=..., device=...) used to ignore the explicit argument, against its docstring."""
    from segearth_backend import EngineConfig, load_segmenter

    config = EngineConfig(model=tiny_paths["model"], clip_weights=tiny_paths["clip_weights"],
                          upsampler_weights=tiny_paths["upsampler_weights"], device="cpu", cache_dir=tmp_path)
    segmenter = load_segmenter(config=config, upsampler_weights="none", batch_size=3)
    assert segmenter.describe()["upsampler"] == "bilinear" and segmenter.batch_size == 3
    assert load_segmenter(config=config).describe()["upsampler"] == "SimFeatUp (JBU-One)"
