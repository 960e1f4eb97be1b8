"""The engine's work is bounded: memory independent of the class count, cost following the pixels, cancellable."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from segearth_backend import ImageError, load_segmenter
from segearth_backend.errors import PredictionCancelledError, ShapeError
from segearth_backend.pipeline.inputs import check_shape_cost
from segearth_backend.windows import cell_grid, window_grid
from tests.backend.service_helpers import reference_predict

SYNONYM_CLASSES = ["background", "building,roof,house", "road,street", "tree,forest", "water,river,lake", "grass"]


@pytest.fixture(scope="module")
def bilinear_segmenter(tiny_paths, tmp_path_factory):
    return load_segmenter(device="cpu", cache_dir=tmp_path_factory.mktemp("cache"), model=tiny_paths["model"],
                          clip_weights=tiny_paths["clip_weights"], upsampler_weights="none")


CASES = [  # shape, threshold, background, lambda, masked
    ((300, 460), 0.25, 1, -0.3, True),
    ((224, 224), 0.0, 0, 0.0, False),
    ((95, 333), 0.4, 2, -0.3, True),
    ((17, 9), 0.0, 0, 0.5, False),
]


@pytest.mark.parametrize("chunk", [1 << 22, 3000], ids=["one chunk", "many chunks"])
@pytest.mark.parametrize("shape, threshold, background, lam, masked", CASES)
def test_streaming_equals_the_plain_algorithm(tiny_segmenter, rng, shape, threshold, background, lam, masked, chunk):
    """Cells and query chunks give what Q x H x W logits and one softmax give: <= 1e-6, identical labels."""
    image = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    valid = rng.random(shape) > 0.1 if masked else None
    expected_labels, expected_probs = reference_predict(tiny_segmenter, image, SYNONYM_CLASSES, threshold,
                                                        background, lam, valid)
    tiny_segmenter.query_chunk_elements = chunk  # 3000 logits: a chunk of one or a few queries per cell
    try:
        full = tiny_segmenter.predict(image, SYNONYM_CLASSES, threshold, background, lam, valid)
        labels_only = tiny_segmenter.predict(image, SYNONYM_CLASSES, threshold, background, lam, valid,
                                             probabilities=False)
    finally:
        tiny_segmenter.query_chunk_elements = 1 << 22
    assert np.abs(full.probabilities - expected_probs).max() <= 1e-6
    np.testing.assert_array_equal(full.labels, expected_labels)
    np.testing.assert_array_equal(labels_only.labels, expected_labels)
    assert labels_only.probabilities is None


def test_bilinear_mode_streaming_equals_the_plain_algorithm(bilinear_segmenter, rng):
    image = rng.integers(0, 256, size=(250, 340, 3), dtype=np.uint8)
    expected_labels, expected_probs = reference_predict(bilinear_segmenter, image, SYNONYM_CLASSES, 0.2)
    got = bilinear_segmenter.predict(image, SYNONYM_CLASSES, 0.2)
    assert np.abs(got.probabilities - expected_probs).max() <= 1e-6
    np.testing.assert_array_equal(got.labels, expected_labels)


@pytest.mark.parametrize("shape", [(1, 1), (224, 224), (300, 17), (448, 700), (1000, 230)])
def test_cells_tile_the_image_and_know_their_windows(shape):
    height, width = shape
    windows = window_grid(height, width)
    cover = np.zeros(shape, np.int32)
    for cell in cell_grid(height, width):
        cover[cell.y0:cell.y1, cell.x0:cell.x1] += 1
        expected = tuple(i for i, w in enumerate(windows)
                         if w.y0 <= cell.y0 and w.y1 >= cell.y1 and w.x0 <= cell.x0 and w.x1 >= cell.x1)
        assert cell.windows == expected and expected
        for i, w in enumerate(windows):  # no other window touches the cell
            if i not in expected:
                assert w.y1 <= cell.y0 or w.y0 >= cell.y1 or w.x1 <= cell.x0 or w.x0 >= cell.x1
    assert (cover == 1).all()


MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from segearth_backend import load_segmenter
    paths, cache, queries_per_class, probabilities = json.loads(sys.argv[1])
    seg = load_segmenter(device="cpu", cache_dir=cache, **paths)
    classes = [",".join(f"class {k} synonym {j}" for j in range(queries_per_class)) for k in range(254)]
    seg.embed_classes(classes)
    image = np.random.default_rng(0).integers(0, 256, size=(512, 512, 3), dtype=np.uint8)
    seg.predict(image, classes[:2], probabilities=probabilities)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pred = seg.predict(image, classes, probabilities=probabilities)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_mb": (after - before) / 1024, "labels": int(pred.labels.max())}))
""")


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("many-classes-text")


@pytest.mark.parametrize("probabilities, limit_mb", [(False, 150), (True, 450)])
def test_many_classes_in_bounded_memory(tiny_paths, text_cache, probabilities, limit_mb):
    """512 x 512 with 254 classes x 2 synonyms: the peak grows by far less than one Q x H x W float tensor (533 MB).

    Labels only: a few cells of logits. With probabilities: the 254 x 512 x 512 float32 output (266 MB) itself.
    (The stress tool measures 254 x 4 synonyms on the full-size image tower.)
    """
    argument = json.dumps([tiny_paths, str(text_cache), 2, probabilities])
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, argument], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["growth_mb"] < limit_mb, report


def test_probabilities_are_only_built_when_asked_for(tiny_segmenter, rng):
    image = rng.integers(0, 256, size=(64, 80, 3), dtype=np.uint8)
    assert tiny_segmenter.predict(image, SYNONYM_CLASSES, probabilities=False).probabilities is None
    assert tiny_segmenter.predict(image, SYNONYM_CLASSES).probabilities.shape == (6, 64, 80)


# ------------------------------------------------------------------ pathological shapes

@pytest.mark.parametrize("shape", [(100000, 1), (1, 20000), (3, 12000)])
def test_thin_long_strips_are_refused_at_once(tiny_segmenter, shape):
    image = np.zeros((*shape, 3), np.uint8)
    start = time.monotonic()
    with pytest.raises(ShapeError, match=r"times its pixel count .* at least \d+ pixels thick") as caught:
        tiny_segmenter.predict(image, SYNONYM_CLASSES)
    assert time.monotonic() - start < 2
    assert isinstance(caught.value, ImageError) and caught.value.code == "bad_shape"


@pytest.mark.parametrize("shape", [(1, 1), (5, 300), (1, 4000), (20, 3000), (300, 17), (48, 2000)])
def test_thin_shapes_that_cost_about_their_pixels_still_run(tiny_segmenter, shape):
    pred = tiny_segmenter.predict(np.zeros((*shape, 3), np.uint8), SYNONYM_CLASSES)
    assert pred.labels.shape == shape


def test_refusal_names_a_shape_that_is_accepted(tiny_segmenter):
    with pytest.raises(ShapeError) as caught:
        tiny_segmenter.predict(np.zeros((1, 20000, 3), np.uint8), SYNONYM_CLASSES)
    message = str(caught.value)
    thick = int(message.split("at least ")[2].split(" pixels thick")[0])
    longest = int(message.split("at most ")[2].split(" pixels long")[0])
    check = functools.partial(check_shape_cost, crop=224, stride=112, patch=16, min_size=48)
    check(thick, 20000)
    check(1, longest)
    with pytest.raises(ShapeError):
        check(thick - 1, 20000)
    with pytest.raises(ShapeError):
        check(1, longest + 112)


# ------------------------------------------------------------------ cancellation and progress

def test_should_stop_ends_the_work_between_batches(tiny_paths, tmp_path, rng):
    segmenter = load_segmenter(device="cpu", cache_dir=tmp_path, batch_size=2, **tiny_paths)
    image = rng.integers(0, 256, size=(700, 700, 3), dtype=np.uint8)  # 36 windows
    seen: list[tuple[int, int]] = []
    with pytest.raises(PredictionCancelledError, match="cancelled after 3 of 36 windows"):
        segmenter.predict(image, SYNONYM_CLASSES, progress=lambda d, t: seen.append((d, t)),
                          should_stop=lambda: len(seen) >= 3)
    assert seen == [(1, 36), (2, 36), (3, 36)]


def test_progress_counts_every_window_once(tiny_segmenter, rng):
    seen: list[tuple[int, int]] = []
    tiny_segmenter.predict(rng.integers(0, 256, size=(300, 500, 3), dtype=np.uint8), ["a", "b"],
                           progress=lambda d, t: seen.append((d, t)))
    total = len(window_grid(300, 500))
    assert seen == [(i, total) for i in range(1, total + 1)]
