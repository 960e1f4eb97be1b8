"""SimFeatUp: the implementation against the plain unfold formula, the exact low-rank path, loading."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segearth_backend.errors import CheckpointError, WeightsNotFoundError
from segearth_backend.pipeline.segmenter import reduced_coordinates
from segearth_backend.upsampler.jbu import JBUOne, load_upsampler


def unfold_step(step, source, guidance):
    """One JBU step written the straightforward way (channels first, an unfolded tensor)."""
    b, c, h, w = source.shape
    g = F.adaptive_avg_pool2d(guidance, (2 * h, 2 * w))
    keys = step.range_proj(g)
    neighbours = F.unfold(F.pad(keys, [5] * 4, mode="reflect"), 11).reshape(b, keys.shape[1], 121, 2 * h, 2 * w)
    similarity = (neighbours * keys[:, :, None]).sum(1)
    range_kernel = torch.softmax(similarity * step.range_temp.exp().clamp(1e-4, 1e4), dim=1)
    axis = torch.linspace(-1, 1, 11)
    dy, dx = torch.meshgrid(axis, axis, indexing="ij")
    spatial = torch.exp(-(dx ** 2 + dy ** 2) / (2 * step.sigma_spatial ** 2)).reshape(1, 121, 1, 1)
    kernel = range_kernel * spatial
    kernel = kernel / kernel.sum(1, keepdim=True).clamp(min=1e-7)
    kernel = kernel + 0.1 * step.fixup_proj(torch.cat([kernel, g], dim=1))
    high = F.interpolate(source, (2 * h, 2 * w), mode="bicubic", align_corners=False)
    patches = F.unfold(F.pad(high, [5] * 4, mode="reflect"), 11).reshape(b, c, 121, 2 * h, 2 * w)
    return torch.einsum("bthw,bcthw->bchw", kernel, patches)


def unfold_forward(module, source, guidance):
    for _ in range(4):
        source = unfold_step(module.up, source, guidance)
    return source + 0.1 * module.fixup_proj(source)


@pytest.fixture(scope="module")
def tiny_upsampler(parity_dir):
    return load_upsampler(parity_dir / "tiny-simfeatup.ckpt", 64)


@torch.inference_mode()
def test_forward_matches_unfold_formula(tiny_upsampler):
    torch.manual_seed(0)
    source = torch.randn(2, 64, 3, 4)
    guidance = torch.randn(2, 3, 48, 64)
    got = tiny_upsampler(source, guidance)
    expected = unfold_forward(tiny_upsampler, source, guidance)
    assert got.shape == (2, 64, 48, 64)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@torch.inference_mode()
def test_low_rank_coordinates_give_the_same_logits(tiny_upsampler):
    """With D > h*w + 1 the upsampler runs on h*w + 1 channels; norms and dot products are unchanged."""
    torch.manual_seed(1)
    source = torch.randn(1, 64, 3, 3)  # 9 tokens + 1 < 64 channels
    guidance = torch.randn(1, 3, 48, 48)
    queries = F.normalize(torch.randn(5, 64), dim=-1)
    full = tiny_upsampler(source, guidance)
    expected = torch.einsum("bdhw,qd->bqhw", F.normalize(full, dim=1), queries)

    coords, offset, directions = reduced_coordinates(tiny_upsampler, source, queries)
    assert coords.shape[1] == 10
    kernels = tiny_upsampler.step_kernels(guidance, 3, 3)
    reduced = tiny_upsampler.spatial(coords, kernels) + offset[:, :, None, None]
    got = torch.einsum("brhw,brq->bqhw", reduced, directions) / reduced.norm(dim=1, keepdim=True)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_training_mode_is_refused():
    module = JBUOne(8).train()
    with pytest.raises(RuntimeError, match="eval mode"):
        module(torch.randn(1, 8, 3, 3), torch.randn(1, 3, 48, 48))


def test_loads_authors_format_and_bare_state_dict(tmp_path, tiny_upsampler):
    bare = tmp_path / "bare.pt"
    torch.save(tiny_upsampler.state_dict(), bare)
    loaded = load_upsampler(bare, 64)
    assert not loaded.training
    for key, value in tiny_upsampler.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_wrong_keys_are_named(tmp_path, tiny_upsampler):
    state = {"upsampler." + k: v for k, v in tiny_upsampler.state_dict().items()}
    del state["upsampler.up.range_temp"]
    state["upsampler.extra.weight"] = torch.zeros(1)
    path = tmp_path / "keys.ckpt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"missing up\.range_temp; unexpected extra\.weight"):
        load_upsampler(path, 64)


def test_feature_size_mismatch_is_explained(parity_dir):
    with pytest.raises(CheckpointError, match="another feature size than the CLIP model's 512"):
        load_upsampler(parity_dir / "tiny-simfeatup.ckpt", 512)


def test_truncated_file_is_reported(tmp_path, parity_dir):
    data = (parity_dir / "tiny-simfeatup.ckpt").read_bytes()
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a PyTorch checkpoint"):
        load_upsampler(path, 64)


def test_pickled_objects_are_not_executed(tmp_path):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as stream:
        pickle.dump({"state_dict": {"x": Path("/")}}, stream)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_upsampler(path, 64)


def test_nan_weights_are_refused(tmp_path, tiny_upsampler):
    state = dict(tiny_upsampler.state_dict())
    state["up.sigma_spatial"] = torch.tensor(float("nan"))
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="NaN"):
        load_upsampler(path, 64)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_upsampler(tmp_path / "nope.ckpt", 64)


def test_final_affine_equals_the_fixup_layer(tiny_upsampler):
    features = torch.randn(2, 64, 5, 5)
    weight, bias = tiny_upsampler.final_affine()
    direct = features + 0.1 * tiny_upsampler.fixup_proj(features)
    via_affine = torch.einsum("ed,bdhw->behw", weight, features) + bias[None, :, None, None]
    torch.testing.assert_close(via_affine, direct, rtol=1e-5, atol=1e-5)
    assert np.isfinite(weight.detach().numpy()).all()


@torch.inference_mode()
def test_the_bfloat16_fixup_rounds_only_the_fixup_term(tiny_upsampler):
    """The CPU's bfloat16 mode runs the kernels' two fixup matrix products in bfloat16: the result stays
    float32, and it differs from float32 by bfloat16 rounding of the ``0.1 * fixup`` term only."""
    torch.manual_seed(2)
    step = tiny_upsampler.up
    weights = torch.softmax(torch.randn(3, 40, 50, 121), dim=-1)
    fixup_input = torch.cat([weights, torch.randn(3, 40, 50, 3)], dim=-1)
    exact = step.finish(fixup_input)
    rounded = step.finish(fixup_input, torch.bfloat16)
    fixup_term = (exact - weights).abs().max()
    assert rounded.dtype == torch.float32 and rounded.shape == exact.shape
    difference = (rounded - exact).abs().max()
    assert 0 < difference <= 2 ** -6 * fixup_term  # a few bfloat16 roundings (2^-8 each) of that term
