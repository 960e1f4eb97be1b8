"""The SegEarth-OV image tower: an open_clip ViT whose last block(s) use a training-free attention.

All tensors are batch-first. ``images`` are ``B x 3 x H x W`` normalised
float tensors with H and W multiples of the patch size.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .presets import ATTENTION_MODES, CLEARCLIP, MASKCLIP, SCLIP, SEGEARTH, VANILLA


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


def _heads(attn: nn.MultiheadAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """``q, k, v`` (each ``B x heads x L x head_dim``) from the block's packed input projection, and the scale."""
    batch, length, width = x.shape
    heads = attn.num_heads
    head_dim = width // heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = (t.reshape(batch, length, heads, head_dim).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
    return q, k, v, head_dim ** -0.5


def custom_attention(attn: nn.MultiheadAttention, x: torch.Tensor, mode: str = SEGEARTH) -> torch.Tensor:
    """One training-free attention of the authors' ``custom_attn`` (no residual, no MLP).

    With ``q, k, v`` from the block's own input projection split into heads and
    ``s = head_dim ** -0.5``, the weights ``A`` applied to ``v`` are:
    ``vanilla`` softmax(q k^T s); ``MaskCLIP`` the identity (each token keeps its
    own ``v``); ``ClearCLIP`` softmax(q q^T s); ``SCLIP`` softmax(q q^T s) +
    softmax(k k^T s); ``SegEarth`` that plus softmax(v v^T s) (sums, not means).
    Then the output projection.

    Args:
        attn: the block's ``nn.MultiheadAttention`` (packed in_proj).
        x: ``B x L x C`` tokens, already through the block's ``ln_1``.
        mode: one of :data:`~.presets.ATTENTION_MODES`.

    Returns:
        ``B x L x C``.
    """
    if mode not in ATTENTION_MODES:
        raise ValueError(f"unknown attention mode {mode!r}; known: {', '.join(ATTENTION_MODES)}")
    batch, length, width = x.shape
    q, k, v, scale = _heads(attn, x)
    if mode == MASKCLIP:
        out = v
    elif mode == VANILLA:
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    else:
        pairs = {CLEARCLIP: (q,), SCLIP: (q, k), SEGEARTH: (q, k, v)}[mode]
        out = sum(F.scaled_dot_product_attention(a, a, v, scale=scale) for a in pairs)
    out = out.transpose(1, 2).reshape(batch, length, width)
    return attn.out_proj(out)


def segearth_attention(attn: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """SegEarth-OV's last-layer attention: ``custom_attention`` in the ``SegEarth`` mode."""
    return custom_attention(attn, x, SEGEARTH)


def image_features(visual: Any, images: torch.Tensor, attention: str = SEGEARTH,
                   last_blocks: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS feature and patch features of SegEarth-OV's image tower.

    The first ``N - last_blocks`` blocks run as usual. Each of the last
    ``last_blocks`` blocks contributes ``custom_attention(ln_1(x_i))``, where
    ``x_i`` is *that block's* input (the block then runs as usual to give the
    next block's input); the contributions are summed, without residual or
    MLP, and the sum goes through ``ln_post`` and the projection (the authors'
    ``ignore_residual`` path; SegEarth-OV-2's ``ssa_last_n_layers``).

    Args:
        visual: an open_clip ``VisionTransformer``.
        images: ``B x 3 x H x W`` normalised windows, H and W multiples of the patch.
        attention: one of :data:`~.presets.ATTENTION_MODES`.
        last_blocks: how many last blocks use it, 1 to the number of blocks.

    Returns:
        ``cls``: ``B x D``; ``patches``: ``B x D x (H/p) x (W/p)``, both from the
        summed custom attention, after ``ln_post`` and the projection.
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
    if not 1 <= last_blocks <= len(blocks):
        raise ValueError(f"last_blocks must be 1 to {len(blocks)} (the tower's blocks), got {last_blocks}")
    batch_first = getattr(transformer, "batch_first", False)
    if not batch_first:
        x = x.transpose(0, 1)
    first_custom = len(blocks) - last_blocks
    for block in blocks[:first_custom]:
        x = block(x)
    total: Optional[torch.Tensor] = None
    for position, block in enumerate(blocks[first_custom:]):
        tokens = x if batch_first else x.transpose(0, 1)
        term = custom_attention(block.attn, block.ln_1(tokens), attention)
        layer_scale = getattr(block, "ls_1", None)
        if layer_scale is not None:
            term = layer_scale(term)
        total = term if total is None else total + term
        if position < last_blocks - 1:  # the last block's own output is not used
            x = block(x)
    assert total is not None
    x = visual.ln_post(total)
    if visual.proj is not None:
        x = x @ visual.proj
    cls_feature = x[:, 0]
    patches = x[:, 1:].transpose(1, 2).reshape(batch, x.shape[-1], rows, cols)
    return cls_feature, patches
