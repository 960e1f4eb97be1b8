"""The engine against the slow, obvious pipeline of tests/backend/reference.py.

The public parity cases are at least 224 px on each side; these cover the
padded small-window paths (one or both sides below a window) and the bilinear
mode, where the engine's own shortcuts could hide a mistake.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.backend.reference import reference_predict

CLASSES = ["background", "building,roof", "road", "tree,forest", "water"]


def _compare(pred, expected_probs, expected_labels):
    assert pred.probabilities.shape == expected_probs.shape
    np.testing.assert_allclose(pred.probabilities, expected_probs, atol=2e-5)
    # Labels agree except where two classes are tied to float precision.
    top2 = np.sort(expected_probs, axis=0)[-2:]
    decided = (top2[1] - top2[0]) > 1e-4
    np.testing.assert_array_equal(pred.labels[decided], expected_labels[decided])
    valid = expected_labels != 255
    np.testing.assert_array_equal(pred.labels[~valid], 255)
    assert decided[valid].mean() > 0.95


@pytest.fixture(scope="module")
def bilinear_segmenter(tiny_paths, tmp_path_factory):
    from segearth_backend import load_segmenter

    return load_segmenter(device="cpu", cache_dir=tmp_path_factory.mktemp("bilinear"), model=tiny_paths["model"],
                          clip_weights=tiny_paths["clip_weights"], upsampler_weights="none")


@pytest.mark.parametrize("shape", [(60, 60), (5, 300), (200, 260), (230, 31)])
def test_simfeatup_small_and_odd_images_match_the_reference(tiny_segmenter, shape):
    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 256, size=shape + (3,), dtype=np.uint8)
    pred = tiny_segmenter.predict(image, CLASSES, prob_threshold=0.3, background_index=2, bias_lambda=-0.3)
    _compare(pred, *reference_predict(tiny_segmenter, image, CLASSES, 0.3, 2, -0.3))


@pytest.mark.parametrize("shape", [(60, 60), (5, 300), (200, 260), (300, 350)])
def test_bilinear_mode_matches_the_reference(bilinear_segmenter, shape):
    rng = np.random.default_rng(7 + sum(shape))
    image = rng.integers(0, 256, size=shape + (3,), dtype=np.uint8)
    pred = bilinear_segmenter.predict(image, CLASSES, bias_lambda=-0.5)
    _compare(pred, *reference_predict(bilinear_segmenter, image, CLASSES, 0.0, 0, -0.5))


def test_valid_mask_on_a_padded_window_matches_the_reference(tiny_segmenter):
    rng = np.random.default_rng(11)
    image = rng.integers(0, 256, size=(90, 140, 3), dtype=np.uint8)
    valid = np.ones((90, 140), bool)
    valid[:30, 100:] = False
    pred = tiny_segmenter.predict(image, CLASSES, valid=valid)
    _compare(pred, *reference_predict(tiny_segmenter, image, CLASSES, valid=valid))
    assert (pred.labels[~valid] == 255).all()
