"""The image tower's two changes against their plain formulas."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segearth_backend.model.clip_loader import load_clip
from segearth_backend.model.image_tower import (
    custom_attention,
    image_features,
    resample_positions,
    segearth_attention,
)


def cubic(x: float, a: float = -0.75) -> float:
    x = abs(x)
    if x <= 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return 0.0


def bicubic_by_scale(grid: np.ndarray, out_rows: int, out_cols: int, scale_rows: float,
                     scale_cols: float) -> np.ndarray:
    """Bicubic resampling where output pixel o samples input (o + 0.5) / scale - 0.5 (clamped taps)."""
    n_rows, n_cols, channels = grid.shape
    out = np.zeros((out_rows, out_cols, channels))
    for oy in range(out_rows):
        sy = (oy + 0.5) / scale_rows - 0.5
        for ox in range(out_cols):
            sx = (ox + 0.5) / scale_cols - 0.5
            for iy in range(math.floor(sy) - 1, math.floor(sy) + 3):
                for ix in range(math.floor(sx) - 1, math.floor(sx) + 3):
                    w = cubic(sy - iy) * cubic(sx - ix)
                    out[oy, ox] += w * grid[min(max(iy, 0), n_rows - 1), min(max(ix, 0), n_cols - 1)]
    return out


@pytest.mark.parametrize("rows, cols", [(7, 7), (3, 14), (14, 5)])
def test_position_resampling_uses_dino_scale_factors(rows, cols):
    torch.manual_seed(0)
    positions = torch.randn(1 + 14 * 14, 6)
    got = resample_positions(positions, rows, cols)
    grid = positions[1:].reshape(14, 14, 6).double().numpy()
    expected = bicubic_by_scale(grid, rows, cols, (rows + 0.1) / 14, (cols + 0.1) / 14)
    assert torch.equal(got[0], positions[0])
    np.testing.assert_allclose(got[1:].reshape(rows, cols, 6).numpy(), expected, rtol=1e-4, atol=1e-5)
    # Asking for the output size instead is a different (wrong) resampling.
    by_size = F.interpolate(positions[1:].reshape(1, 14, 14, 6).permute(0, 3, 1, 2), size=(rows, cols),
                            mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(-1, 6)
    assert not torch.allclose(by_size, got[1:], atol=1e-4)


def test_pretrained_grid_is_left_alone():
    positions = torch.randn(1 + 49, 4)
    assert resample_positions(positions, 7, 7) is positions


def test_segearth_attention_is_sum_of_three_self_attentions():
    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(12, 3, batch_first=True).eval()
    x = torch.randn(2, 5, 12)
    got = segearth_attention(attn, x)
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    heads = []
    for h in range(3):
        part = slice(4 * h, 4 * h + 4)
        qh, kh, vh = q[..., part], k[..., part], v[..., part]
        weights = sum(torch.softmax(a @ a.transpose(1, 2) * 4 ** -0.5, dim=-1) for a in (qh, kh, vh))
        heads.append(weights @ vh)
    expected = attn.out_proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@torch.inference_mode()
def test_cls_and_patches_come_from_the_modified_last_block(tiny_paths):
    clip = load_clip(tiny_paths["model"], tiny_paths["clip_weights"])
    visual = clip.model.visual
    torch.manual_seed(0)
    images = torch.randn(2, 3, 224, 224)
    cls, patches = image_features(visual, images)
    # Spelled out: embeddings, all blocks but the last, then the replaced block alone.
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(2, 1, -1), x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x)
    for block in visual.transformer.resblocks[:-1]:
        x = block(x) if visual.transformer.batch_first else block(x.transpose(0, 1)).transpose(0, 1)
    last = visual.transformer.resblocks[-1]
    y = visual.ln_post(segearth_attention(last.attn, last.ln_1(x))) @ visual.proj
    torch.testing.assert_close(cls, y[:, 0])
    torch.testing.assert_close(patches, y[:, 1:].transpose(1, 2).reshape(2, -1, 14, 14))
    # The usual CLIP image embedding differs: the last block really is replaced.
    assert not torch.allclose(visual(images), cls, atol=1e-3)


MODES = ["vanilla", "MaskCLIP", "ClearCLIP", "SCLIP", "SegEarth"]


@pytest.mark.parametrize("mode", MODES)
def test_each_attention_mode_matches_its_formula(mode):
    from tests.backend.reference import attention_weights

    torch.manual_seed(1)
    attn = torch.nn.MultiheadAttention(12, 3, batch_first=True).eval()
    x = torch.randn(2, 5, 12)
    got = custom_attention(attn, x, mode)
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    rows = []
    for b in range(2):
        heads = []
        for h in range(3):
            part = slice(4 * h, 4 * h + 4)
            qh, kh, vh = q[b, :, part], k[b, :, part], v[b, :, part]
            heads.append(attention_weights(mode, qh, kh, vh, 4 ** -0.5) @ vh)
        rows.append(torch.cat(heads, dim=-1))
    expected = attn.out_proj(torch.stack(rows))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_modes_differ_and_unknown_mode_is_refused():
    torch.manual_seed(2)
    attn = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(1, 6, 8)
    outputs = [custom_attention(attn, x, mode) for mode in MODES]
    for i in range(len(outputs)):
        for j in range(i + 1, len(outputs)):
            assert not torch.allclose(outputs[i], outputs[j], atol=1e-4), (MODES[i], MODES[j])
    with pytest.raises(ValueError, match="unknown attention mode"):
        custom_attention(attn, x, "NACLIP")


@torch.inference_mode()
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("last_blocks", [1, 2, 3])
def test_last_blocks_sum_matches_the_straightforward_tower(tiny_paths, mode, last_blocks):
    from tests.backend.reference import tower

    clip = load_clip(tiny_paths["model"], tiny_paths["clip_weights"])
    visual = clip.model.visual
    torch.manual_seed(3)
    images = torch.randn(2, 3, 112, 160)
    cls, patches = image_features(visual, images, mode, last_blocks)
    for b in range(2):
        expected_cls, expected_patches = tower(visual, images[b], mode, last_blocks)
        torch.testing.assert_close(cls[b], expected_cls, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(patches[b], expected_patches, rtol=1e-4, atol=1e-5)


def test_last_blocks_out_of_range_is_refused(tiny_paths):
    clip = load_clip(tiny_paths["model"], tiny_paths["clip_weights"])
    with pytest.raises(ValueError, match="last_blocks must be 1 to 3"):
        image_features(clip.model.visual, torch.zeros(1, 3, 32, 32), "SCLIP", 4)
    with pytest.raises(ValueError, match="last_blocks must be 1 to 3"):
        image_features(clip.model.visual, torch.zeros(1, 3, 32, 32), "SCLIP", 0)
