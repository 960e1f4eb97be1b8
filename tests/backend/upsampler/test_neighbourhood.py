"""The neighbourhood kernels against loops that spell out their definitions."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segearth_backend.upsampler import neighbourhood, neighbourhood_numba


def reflect(i: int, n: int) -> int:
    """PyTorch 'reflect' padding index (edge not repeated)."""
    if i < 0:
        return -i
    if i >= n:
        return 2 * (n - 1) - i
    return i


def loop_adaptive_conv(source: np.ndarray, kernel: np.ndarray, r: int) -> np.ndarray:
    b, h, w, c = source.shape
    d = 2 * r + 1
    out = np.zeros((b, h, w, c), np.float64)
    for bi in range(b):
        for y in range(h):
            for x in range(w):
                for t in range(d * d):
                    dy, dx = divmod(t, d)
                    out[bi, y, x] += kernel[bi, y, x, t] * source[bi, reflect(y + dy - r, h), reflect(x + dx - r, w)]
    return out


def loop_similarity(keys: np.ndarray, r: int) -> np.ndarray:
    b, h, w, _ = keys.shape
    d = 2 * r + 1
    out = np.zeros((b, h, w, d * d), np.float64)
    for bi in range(b):
        for y in range(h):
            for x in range(w):
                for t in range(d * d):
                    dy, dx = divmod(t, d)
                    out[bi, y, x, t] = keys[bi, y, x] @ keys[bi, reflect(y + dy - r, h), reflect(x + dx - r, w)]
    return out


@pytest.fixture(params=["numba", "torch"])
def path(request, monkeypatch):
    if request.param == "numba":
        if not neighbourhood_numba.AVAILABLE:
            pytest.skip("numba not installed")
    else:
        monkeypatch.setattr(neighbourhood_numba, "AVAILABLE", False)
    return request.param


def test_reflect_index_matches_torch_reflect_padding():
    x = torch.arange(7.0).reshape(1, 1, 1, 7)
    padded = F.pad(x, [5, 5, 0, 0], mode="reflect")[0, 0, 0]
    assert neighbourhood.reflect_index(7, 5, torch.device("cpu")).tolist() == padded.long().tolist()
    with pytest.raises(ValueError, match="larger than 5"):
        neighbourhood.reflect_index(5, 5, torch.device("cpu"))


@pytest.mark.parametrize("radius", [1, 5])
def test_adaptive_conv_matches_definition(path, rng, radius):
    source = rng.standard_normal((2, 7, 9, 3)).astype(np.float32)
    kernel = rng.standard_normal((2, 7, 9, (2 * radius + 1) ** 2)).astype(np.float32)
    got = neighbourhood.adaptive_conv(torch.from_numpy(source), torch.from_numpy(kernel), radius)
    np.testing.assert_allclose(got.numpy(), loop_adaptive_conv(source, kernel, radius), rtol=1e-5, atol=1e-4)


def test_similarity_matches_definition(rng):
    keys = rng.standard_normal((1, 8, 6, 4)).astype(np.float32)
    got = neighbourhood.neighbour_similarity(torch.from_numpy(keys), 5)
    np.testing.assert_allclose(got.numpy(), loop_similarity(keys, 5), rtol=1e-5, atol=1e-4)


def test_range_weights_match_formula(path, rng):
    keys = torch.from_numpy(rng.standard_normal((1, 6, 7, 4)).astype(np.float32))
    guidance = torch.from_numpy(rng.standard_normal((1, 6, 7, 3)).astype(np.float32))
    spatial = torch.rand(121) + 0.01
    temperature = torch.tensor(0.7)
    got = neighbourhood.range_weights(keys, guidance, temperature, spatial, 5)
    sims = torch.from_numpy(loop_similarity(keys.numpy(), 5)).float()
    weights = torch.softmax(sims * temperature, dim=-1) * spatial
    weights = weights / weights.sum(-1, keepdim=True).clamp(min=1e-7)
    torch.testing.assert_close(got[..., :121], weights, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[..., 121:], guidance)


def test_bicubic_x2_matches_torch_interpolate(path, rng):
    source = torch.from_numpy(rng.standard_normal((2, 5, 7, 6)).astype(np.float32))
    got = neighbourhood.upsample_bicubic_x2(source)
    expected = F.interpolate(source.permute(0, 3, 1, 2), size=(10, 14), mode="bicubic", align_corners=False)
    torch.testing.assert_close(got, expected.permute(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
