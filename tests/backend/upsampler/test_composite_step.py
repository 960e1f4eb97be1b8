"""Composite steps and kernels shared between windows, against the upsampler's own per-window steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segearth_backend.pipeline.features import normalise
from segearth_backend.upsampler import composite_step
from segearth_backend.upsampler.image_kernels import ImageKernels, estimate_bytes, plan_regions
from segearth_backend.upsampler.jbu import JBUOne, step_guidance, upsample_with_kernel
from segearth_backend.windows import window_grid

pytestmark = pytest.mark.skipif(not composite_step.AVAILABLE, reason="the composite kernels need numba")


@pytest.fixture(scope="module")
def upsampler():
    torch.manual_seed(3)
    module = JBUOne(8).eval()
    with torch.no_grad():  # a sharper range kernel than the initial one, so borders matter
        module.up.range_temp.fill_(2.0)
        module.up.sigma_spatial.fill_(0.7)
    return module


@torch.inference_mode()
@pytest.mark.parametrize("rows, cols", [(3, 3), (3, 5), (7, 4), (14, 14)])
def test_composite_step_equals_bicubic_then_the_121_tap_kernel(upsampler, rows, cols):
    torch.manual_seed(rows * cols)
    guidance = torch.randn(1, 3, 16 * rows, 16 * cols)
    source = torch.randn(1, rows, cols, 5)
    for step in range(1, 5):
        height, width = rows << step, cols << step
        kernel = upsampler.up.kernel(step_guidance(guidance, height, width))
        expected = upsample_with_kernel(source, kernel)[0]
        composite_kernel = composite_step.compose(kernel[0], (0, height, height), (0, width, width))
        offset = torch.randn(5)
        got, norm = composite_step.upsample_x2(source[0], [composite_kernel], height, 0, 0, offset=offset)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-6)
        torch.testing.assert_close(norm, (expected + offset).norm(dim=-1), rtol=1e-5, atol=2e-6)
        source = expected[None]


def test_axis_maps_stay_within_the_nine_taps():
    for size in (6, 8, 28, 224):
        taps, weights = composite_step.axis_maps(0, size, size)
        assert taps.min() >= 0 and taps.max() <= 8 and taps.shape == (size, 11, 4)
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)  # bicubic weights sum to one
    with pytest.raises(ValueError, match="even output size"):
        composite_step.axis_maps(0, 7, 7)


@torch.inference_mode()
@pytest.mark.parametrize("shape", [(240, 350), (300, 460), (100, 300), (230, 560)])
def test_shared_kernels_equal_each_window_computing_its_own(upsampler, rng, shape):
    """Regions, stripes, edge frames, windows shifted off the grid and padded windows: every window's four
    steps equal the upsampler run on that window alone."""
    height, width = shape
    image = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    valid = rng.random(shape) > 0.05
    full = normalise(image, valid, torch.device("cpu"))
    windows = window_grid(height, width, 224, 112, 16, 48)
    store = ImageKernels(upsampler.up, lambda y0, y1, x0, x1: full[:, :, y0:y1, x0:x1], windows, keep=False)
    for index, w in enumerate(windows):
        rows, cols = w.padded_height // 16, w.padded_width // 16
        source = torch.randn(rows, cols, 6)
        offset = torch.randn(6)
        got, norm = store.window(index).apply(source, offset=offset)
        crop = F.pad(full[:, :, w.y0:w.y1, w.x0:w.x1], (w.pad.left, w.pad.right, w.pad.top, w.pad.bottom))
        expected = upsampler.spatial(source.permute(2, 0, 1)[None], upsampler.step_kernels(crop, rows, cols))
        expected = expected[0].permute(1, 2, 0)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=3e-6)
        torch.testing.assert_close(norm, (expected + offset).norm(dim=-1), rtol=1e-5, atol=3e-6)
        store.release(index)
    assert store.nbytes == 0  # every stripe was freed once its last window was done


def test_regions_and_the_memory_estimate(upsampler):
    windows = window_grid(1000, 1000, 224, 112, 16, 48)
    regions = plan_regions(windows)
    assert sorted(regions) == [3, 4]  # steps 1 and 2: every window its own (the frames would cover them)
    assert all(len(r.members) == 64 and (r.y0, r.y1, r.x0, r.x1) == (0, 1000, 0, 1000) for r in regions.values())
    shifted = plan_regions(window_grid(451, 450, 224, 112, 16, 48))  # last rows start at 227 (odd), cols at 226
    assert len(shifted[4].members) == 12 and len(shifted[3].members) == 9
    image = torch.zeros(1, 3, 240, 350)
    small = window_grid(240, 350, 224, 112, 16, 48)
    store = ImageKernels(upsampler.up, lambda y0, y1, x0, x1: image[:, :, y0:y1, x0:x1], small, keep=True)
    for index in range(len(small)):
        store.window(index)
    assert store.nbytes == estimate_bytes(small)
