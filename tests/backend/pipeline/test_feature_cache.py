"""Re-querying a recently seen image: the feature cache gives the answer a fresh engine gives, in bounded memory."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segearth_backend import ConfigError, EngineConfig, load_segmenter
from segearth_backend.pipeline.feature_cache import FeatureCache, image_key, window_key
from tests.backend.helpers import call, segment_body

FIRST = ["background", "building,roof,house", "road", "tree,forest", "water"]
SECOND = ["background", "car,truck", "road,street", "grass", "tree", "river,lake"]


@pytest.fixture(scope="module")
def engine_with_cache(tiny_paths, tmp_path_factory):
    return load_segmenter(device="cpu", cache_dir=tmp_path_factory.mktemp("text"), **tiny_paths)


@pytest.fixture
def cached(engine_with_cache):
    """The engine with an empty feature cache (the seeded images of other tests may be the same pixels)."""
    engine_with_cache.feature_cache.clear()
    return engine_with_cache


@pytest.fixture(scope="module")
def fresh(tiny_paths, tmp_path_factory):
    """An engine that never keeps anything: every prediction computes everything."""
    return load_segmenter(device="cpu", cache_dir=tmp_path_factory.mktemp("text"), feature_cache_mb=0, **tiny_paths)


def assert_same_answer(got, expected):
    assert np.abs(got.probabilities - expected.probabilities).max() <= 1e-5
    np.testing.assert_array_equal(got.labels, expected.labels)


@pytest.mark.parametrize("shape, masked", [((300, 460), True), ((448, 448), False), ((95, 333), False)])
def test_a_new_class_list_reuses_the_image_work_and_equals_a_fresh_engine(cached, fresh, rng, shape, masked):
    image = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    valid = rng.random(shape) > 0.1 if masked else None
    first = cached.predict(image, FIRST, 0.2, 0, -0.3, valid)
    assert first.timings["cache_window_misses"] > 0 and first.timings["cache_kernel_hit"] == 0.0
    again = cached.predict(image, SECOND, 0.35, 2, -0.1, valid)  # another list, threshold, background, lambda
    windows = first.timings["cache_window_misses"] + first.timings["cache_window_hits"]
    assert again.timings["cache_window_hits"] == windows and again.timings["cache_kernel_hit"] == 1.0
    assert "image_tower" not in again.timings  # the image tower did not run
    assert_same_answer(again, fresh.predict(image, SECOND, 0.35, 2, -0.1, valid))
    assert fresh.feature_cache.used == 0


def test_many_queries_take_the_coordinate_path_with_the_same_answer(cached, fresh, rng):
    """More queries than a window has exact coordinates (64 for the tiny model): the coordinates are
    upsampled from the cached kernels instead of each query."""
    image = rng.integers(0, 256, size=(250, 300, 3), dtype=np.uint8)
    many = [f"class {k},thing {k}" for k in range(40)]  # 80 queries > 64
    assert cached.query_path_max == 64
    cached.predict(image, FIRST)
    again = cached.predict(image, many, 0.01, 3)
    assert again.timings["cache_window_misses"] == 0
    assert_same_answer(again, fresh.predict(image, many, 0.01, 3))


def test_bilinear_mode_reuses_windows(tiny_paths, tmp_path, rng):
    engine = load_segmenter(device="cpu", cache_dir=tmp_path, model=tiny_paths["model"],
                            clip_weights=tiny_paths["clip_weights"], upsampler_weights="none")
    image = rng.integers(0, 256, size=(200, 240, 3), dtype=np.uint8)
    engine.predict(image, FIRST)
    again = engine.predict(image, SECOND, 0.3)
    engine.feature_cache.clear()
    assert again.timings["cache_window_misses"] == 0
    assert_same_answer(again, engine.predict(image, SECOND, 0.3))


def test_overlapping_areas_on_one_grid_share_their_windows(cached, fresh, rng):
    """Two blocks cut 112 pixels apart on the same grid: the windows they have in common are reused."""
    scene = rng.integers(0, 256, size=(560, 448, 3), dtype=np.uint8)
    cached.predict(scene[:448], FIRST)
    shifted = cached.predict(scene[112:], FIRST)
    assert shifted.timings["cache_window_hits"] == 6 and shifted.timings["cache_window_misses"] == 3
    assert shifted.timings["cache_kernel_hit"] == 0.0  # another image: its kernels are computed
    assert_same_answer(shifted, fresh.predict(scene[112:], FIRST))


def test_another_mask_is_another_image(cached, rng):
    image = rng.integers(0, 256, size=(230, 230, 3), dtype=np.uint8)
    cached.predict(image, FIRST)
    valid = np.ones((230, 230), bool)
    valid[:5, :5] = False
    other = cached.predict(image, FIRST, valid=valid)
    assert other.timings["cache_window_hits"] == 0 and other.labels[0, 0] == 255


def test_the_cache_stays_within_its_size(tiny_paths, tmp_path, rng):
    engine = load_segmenter(device="cpu", cache_dir=tmp_path, feature_cache_mb=20, **tiny_paths)
    for _ in range(3):  # 448 x 448: 9 windows (~1.3 MB) and kernels (~110 MB, never kept at this size)
        image = rng.integers(0, 256, size=(448, 448, 3), dtype=np.uint8)
        pred = engine.predict(image, FIRST)
        assert engine.feature_cache.used <= 20 * 2**20
    assert pred.timings["cache_used_mb"] <= 20
    again = engine.predict(image, SECOND)
    assert again.timings["cache_window_hits"] == 9 and again.timings["cache_kernel_hit"] == 0.0
    stats = engine.describe()["feature_cache"]
    assert stats["capacity_mb"] == 20 and stats["window_hits"] >= 9 and stats["kernel_hits"] == 0


def test_an_evicted_kernel_store_is_freed_at_once_not_by_the_garbage_collector(tiny_paths, tmp_path, rng):
    """Found with a change job through a backend: a kept store referred back to the walk that made it (a cycle),
    so evicted stores (0.5 GB each for 890 x 890 blocks) piled up until Python's cycle collector ran: the
    backend reached 4.3 GB on a 2000 x 2000 pair one request at a time, 7.8 GB three at a time."""
    import gc
    import weakref

    from segearth_backend.pipeline.feature_cache import KERNELS

    engine = load_segmenter(device="cpu", cache_dir=tmp_path, **tiny_paths)
    gc.collect()
    gc.disable()
    try:
        engine.predict(rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8), FIRST)
        (entry,) = engine.feature_cache._entries[KERNELS].values()
        first_store = weakref.ref(entry.value)
        engine.feature_cache.capacity = engine.feature_cache.used + entry.nbytes // 2  # room for one store only
        del entry
        engine.predict(rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8), FIRST)
        assert engine.feature_cache.stats()["images"] == 1 and engine.feature_cache.evictions >= 1
        assert first_store() is None
    finally:
        gc.enable()


def test_kernels_go_before_windows_and_least_recently_used_first():
    cache = FeatureCache(100)
    cache.put("window:a", "A", 30)
    cache.put("kernels:x", "X", 30)
    cache.put("window:b", "B", 30)
    assert cache.get("window:a") == "A"  # a is now more recent than b
    cache.put("window:c", "C", 30)  # needs room: the kernels go first
    assert cache.get("kernels:x") is None and cache.get("window:b") == "B"
    cache.put("window:d", "D", 30)  # then the least recently used window (a: b was read after it)
    assert cache.get("window:a") is None and {cache.get(k) for k in ("window:b", "window:c", "window:d")} == {
        "B", "C", "D"}
    assert cache.used == 90 and not cache.put("kernels:y", "Y", 101) and cache.used == 90
    assert cache.stats()["evictions"] == 2
    disabled = FeatureCache(0)
    assert not disabled.put("window:a", "A", 1) and disabled.get("window:a") is None


def test_keys_follow_content_not_position(rng):
    scene = rng.integers(0, 256, size=(300, 300, 3), dtype=np.uint8)
    window = scene[50:274, 60:284]
    copy = np.array(window)
    padding = (0, 0, 0, 0)
    assert window_key("m", window, None, padding) == window_key("m", copy, None, padding)
    assert window_key("m", window, None, padding) != window_key("other weights", window, None, padding)
    mask = np.ones(window.shape[:2], bool)
    assert window_key("m", window, mask, padding) != window_key("m", window, None, padding)
    copy[0, 0, 0] ^= 1
    assert window_key("m", window, None, padding) != window_key("m", copy, None, padding)
    assert image_key("m", scene, None) != image_key("m", scene[:299], None)


def test_configuration_from_the_environment():
    assert EngineConfig.from_env({}).feature_cache_mb == 1024
    assert EngineConfig.from_env({"SEGEARTH_FEATURE_CACHE_MB": "0"}).feature_cache_mb == 0
    config = EngineConfig.from_env({"SEGEARTH_FEATURE_CACHE_MB": "300", "SEGEARTH_PRECISION": "bfloat16"},
                                   feature_cache_mb=64.5)
    assert (config.feature_cache_mb, config.precision) == (64.5, "bf16")
    for bad in ("lots", "-1", "nan"):
        with pytest.raises(ConfigError, match="SEGEARTH_FEATURE_CACHE_MB"):
            EngineConfig.from_env({"SEGEARTH_FEATURE_CACHE_MB": bad})
    with pytest.raises(ConfigError, match="bfloat16"):
        EngineConfig(precision="int8")


def test_the_service_answers_a_repeated_image_from_the_cache(backend_server, rng):
    image = rng.integers(0, 256, size=(120, 250, 3), dtype=np.uint8)
    url, token = backend_server["url"], backend_server["token"]
    timings = []
    for classes in (FIRST, SECOND):
        status, body, _ = call(url, "/segment", segment_body(image, {"classes": classes}), token)
        assert status == 200
        from segearth_backend.serve.protocol import read_bundle

        timings.append(read_bundle(body, {"meta.json", "labels.npy"})["meta.json"]["timings"])
    assert timings[0]["cache_window_misses"] == 2
    health = json.loads(call(url, "/health")[1])
    if health.get("engine") == "ray":  # one cache per replica: the second request may reach the other one
        assert timings[1]["cache_window_hits"] in (0, 2) and "feature_cache" not in health
    else:
        assert timings[1]["cache_window_hits"] == 2
        assert health["feature_cache"]["window_hits"] >= 2 and health["feature_cache"]["used_mb"] > 0
    assert health["precision"] == "float32" and "bf16_fast" in health["cpu"]


def test_the_per_window_tensor_path_gives_the_same_answer(tiny_paths, tmp_path, fresh, rng, monkeypatch):
    """Where the shared composite kernels cannot run (CUDA, no numba), each window computes the upsampler's
    own kernels: the re-query through them equals the composite engine's answer."""
    from segearth_backend.upsampler import composite_step

    monkeypatch.setattr(composite_step, "AVAILABLE", False)
    engine = load_segmenter(device="cpu", cache_dir=tmp_path, **tiny_paths)
    image = rng.integers(0, 256, size=(250, 300, 3), dtype=np.uint8)
    engine.predict(image, FIRST)
    again = engine.predict(image, SECOND, 0.3)
    assert again.timings["cache_kernel_hit"] == 1.0 and again.timings["cache_window_misses"] == 0
    monkeypatch.undo()
    assert_same_answer(again, fresh.predict(image, SECOND, 0.3))
