"""The SegEarth-OV image tower: an open_clip ViT with a replaced last block.

All tensors are batch-first. ``images`` are ``B x 3 x H x W`` normalised
float tensors with H and W multiples of the patch size.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def resample_positions(positions: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Positional embedding for a ``rows x cols`` token grid.

    Args:
        positions: ``(1 + N*N) x C`` pretrained embedding (class position first).
        rows, cols: the token grid wanted.

    Returns:
        ``(1 + rows*cols) x C``: the class position unchanged, the patch part
        resampled bicubically with scale factors ``((rows + 0.1) / N,
        (cols + 0.1) / N)`` (the DINO convention, not an output size).
    """
    grid = int(round(math.sqrt(positions.shape[0] - 1)))
    if grid * grid != positions.shape[0] - 1:
        raise ValueError(f"positional embedding of {positions.shape[0] - 1} patches is not a square grid")
    if (rows, cols) == (grid, grid):
        return positions
    channels = positions.shape[1]
    patch = positions[1:].reshape(1, grid, grid, channels).permute(0, 3, 1, 2)
    resized = F.interpolate(
        patch.float(), scale_factor=((rows + 0.1) / grid, (cols + 0.1) / grid),
        mode="bicubic", align_corners=False,
    )
    if tuple(resized.shape[-2:]) != (rows, cols):
        raise RuntimeError(f"positional embedding resampled to {tuple(resized.shape[-2:])}, wanted {(rows, cols)}")
    resized = resized.to(positions.dtype).permute(0, 2, 3, 1).reshape(rows * cols, channels)
    return torch.cat([positions[:1], resized], dim=0)


def segearth_attention(attn: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """SegEarth-OV's last-layer attention (no residual, no MLP).

    With ``q, k, v`` from the layer's own input projection split into heads,
    the weights are ``softmax(q q^T s) + softmax(k k^T s) + softmax(v v^T s)``
    (a sum), applied to ``v``, then the output projection.

    Args:
        attn: the block's ``nn.MultiheadAttention`` (packed in_proj).
        x: ``B x L x C`` tokens, already through the block's ``ln_1``.

    Returns:
        ``B x L x C``.
    """
    batch, length, width = x.shape
    heads = attn.num_heads
    head_dim = width // heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = (t.reshape(batch, length, heads, head_dim).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    scale = head_dim ** -0.5
    # softmax(a a^T s) @ v for a in (q, k, v): three fused attention calls.
    out = (
        F.scaled_dot_product_attention(q, q, v, scale=scale)
        + F.scaled_dot_product_attention(k, k, v, scale=scale)
        + F.scaled_dot_product_attention(v, v, v, scale=scale)
    )
    out = out.transpose(1, 2).reshape(batch, length, width)
    return attn.out_proj(out)


def image_features(visual: Any, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS feature and patch features of SegEarth-OV's image tower.

    Args:
        visual: an open_clip ``VisionTransformer``.
        images: ``B x 3 x H x W`` normalised windows, H and W multiples of the patch.

    Returns:
        ``cls``: ``B x D``; ``patches``: ``B x D x (H/p) x (W/p)``, both from the
        modified last block, after ``ln_post`` and the projection.
    """
    x = visual.conv1(images)
    batch, width, rows, cols = x.shape
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).reshape(1, 1, width).expand(batch, 1, width)
    x = torch.cat([cls, x], dim=1)
    x = x + resample_positions(visual.positional_embedding, rows, cols).to(x.dtype)
    x = visual.patch_dropout(x)
    x = visual.ln_pre(x)

    transformer = visual.transformer
    blocks = transformer.resblocks
    batch_first = getattr(transformer, "batch_first", False)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in blocks[:-1]:
        x = block(x)
    if not batch_first:
        x = x.transpose(0, 1)

    last = blocks[-1]
    x = segearth_attention(last.attn, last.ln_1(x))
    layer_scale = getattr(last, "ls_1", None)
    if layer_scale is not None:
        x = layer_scale(x)
    x = visual.ln_post(x)
    if visual.proj is not None:
        x = x @ visual.proj
    cls_feature = x[:, 0]
    patches = x[:, 1:].transpose(1, 2).reshape(batch, x.shape[-1], rows, cols)
    return cls_feature, patches
