"""A straightforward SegEarth-OV pipeline, written from DESIGN.md without the engine's helpers.

The engine is fast (low-rank upsampling, fused kernels, batched windows,
truncated text sequences); this module is slow and obvious, so a test that
compares the two catches a mistake in either. It uses only the loaded
open_clip model's layers and the upsampler's parameters, never the engine's
functions. Shapes: images ``H x W x 3`` uint8, features channels first.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

MEAN = torch.tensor([122.771, 116.746, 104.094]).reshape(3, 1, 1)
STD = torch.tensor([68.501, 66.632, 70.323]).reshape(3, 1, 1)
CROP, STRIDE, SCALE = 224, 112, 50.0
RADIUS = 5


def _shift(padded: torch.Tensor, dy: int, dx: int, height: int, width: int) -> torch.Tensor:
    """The ``height x width`` view of a tensor reflect-padded by RADIUS, moved by (dy, dx)."""
    return padded[..., RADIUS + dy:RADIUS + dy + height, RADIUS + dx:RADIUS + dx + width]


def jbu_step(step: Any, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    """One joint-bilateral x2 step, tap by tap. ``source`` C x h x w, ``guidance`` 3 x H x W -> C x 2h x 2w."""
    channels, h, w = source.shape
    height, width = 2 * h, 2 * w
    pooled = F.adaptive_avg_pool2d(guidance[None], (height, width))
    keys = step.range_proj(pooled)[0]  # 32 x H x W, dropout off (eval)
    padded_keys = F.pad(keys[None], [RADIUS] * 4, mode="reflect")[0]
    offsets = range(-RADIUS, RADIUS + 1)
    similarity = torch.stack([(keys * _shift(padded_keys, dy, dx, height, width)).sum(0)
                              for dy in offsets for dx in offsets])  # 121 x H x W
    temperature = torch.clamp(torch.exp(step.range_temp), 1e-4, 1e4)
    range_kernel = torch.softmax(similarity * temperature, dim=0)
    axis = torch.linspace(-1, 1, 2 * RADIUS + 1)
    sigma = float(step.sigma_spatial)
    spatial = torch.tensor([math.exp(-(float(axis[i]) ** 2 + float(axis[j]) ** 2) / (2 * sigma ** 2))
                            for i in range(2 * RADIUS + 1) for j in range(2 * RADIUS + 1)]).reshape(121, 1, 1)
    kernel = range_kernel * spatial
    kernel = kernel / torch.clamp(kernel.sum(0, keepdim=True), min=1e-7)
    kernel = kernel + 0.1 * step.fixup_proj(torch.cat([kernel, pooled[0]], dim=0)[None])[0]
    high = F.interpolate(source[None], (height, width), mode="bicubic", align_corners=False)
    padded_high = F.pad(high, [RADIUS] * 4, mode="reflect")[0]
    out = torch.zeros(channels, height, width)
    for tap, (dy, dx) in enumerate((dy, dx) for dy in offsets for dx in offsets):
        out += kernel[tap] * _shift(padded_high, dy, dx, height, width)
    return out


def simfeatup(upsampler: Any, features: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    """Four shared steps then ``F + 0.1 conv1x1(F)``: D x h x w -> D x 16h x 16w."""
    for _ in range(4):
        features = jbu_step(upsampler.up, features, guidance)
    conv = upsampler.fixup_proj[1]
    return features + 0.1 * F.conv2d(features[None], conv.weight, conv.bias)[0]


def attention_weights(mode: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """L x L weights of one head in the authors' training-free attention ``mode`` (their custom_attn table)."""
    def soft(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.softmax(a @ b.T * scale, dim=-1)
    if mode == "vanilla":
        return soft(q, k)
    if mode == "MaskCLIP":
        return torch.eye(q.shape[0])
    if mode == "ClearCLIP":
        return soft(q, q)
    if mode == "SCLIP":
        return soft(q, q) + soft(k, k)
    if mode == "SegEarth":
        return soft(q, q) + soft(k, k) + soft(v, v)
    raise ValueError(mode)


def custom_block_attention(block: Any, tokens: torch.Tensor, mode: str) -> torch.Tensor:
    """L x C: the block's ``mode`` attention on its own ``ln_1`` input, head by head, no residual, no MLP."""
    y = block.ln_1(tokens)
    width = y.shape[-1]
    heads = block.attn.num_heads
    head_dim = width // heads
    q, k, v = F.linear(y, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)
    outputs = []
    for head in range(heads):
        part = slice(head * head_dim, (head + 1) * head_dim)
        weights = attention_weights(mode, q[:, part], k[:, part], v[:, part], head_dim ** -0.5)
        outputs.append(weights @ v[:, part])
    return block.attn.out_proj(torch.cat(outputs, dim=-1))


def tower(visual: Any, window: torch.Tensor, mode: str = "SegEarth",
          last_blocks: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS (D) and patch features (D x rows x cols) of one normalised window ``3 x H x W``.

    The last ``last_blocks`` blocks each add ``mode`` attention of their own input; the sum is the output.
    """
    x = visual.conv1(window[None])
    width, rows, cols = x.shape[1:]
    tokens = torch.cat([visual.class_embedding.reshape(1, 1, width), x.flatten(2).transpose(1, 2)], dim=1)
    positions = visual.positional_embedding
    grid = int(round(math.sqrt(positions.shape[0] - 1)))
    patch_positions = positions[1:]
    if (rows, cols) != (grid, grid):
        square = positions[1:].reshape(1, grid, grid, width).permute(0, 3, 1, 2)
        square = F.interpolate(square, scale_factor=((rows + 0.1) / grid, (cols + 0.1) / grid), mode="bicubic",
                               align_corners=False)
        patch_positions = square.permute(0, 2, 3, 1).reshape(rows * cols, width)
    tokens = tokens + torch.cat([positions[:1], patch_positions])[None]
    tokens = visual.ln_pre(tokens)
    blocks = visual.transformer.resblocks
    sequence_first = not getattr(visual.transformer, "batch_first", False)
    total = torch.zeros(tokens.shape[1], width)
    for index, block in enumerate(blocks):
        if index >= len(blocks) - last_blocks:
            total = total + custom_block_attention(block, tokens[0], mode)
        tokens = block(tokens.transpose(0, 1)).transpose(0, 1) if sequence_first else block(tokens)
    features = visual.ln_post(total) @ visual.proj
    return features[0], features[1:].T.reshape(-1, rows, cols)


def text_embeddings(model: Any, tokenizer: Any, queries: Sequence[str]) -> torch.Tensor:
    """Q x D: per query, the renormalised mean of its 80 normalised template embeddings."""
    import open_clip

    rows = []
    for query in queries:
        sentences = [template(query) for template in open_clip.OPENAI_IMAGENET_TEMPLATES]
        features = F.normalize(model.encode_text(tokenizer(sentences)).float(), dim=-1)
        rows.append(F.normalize(features.mean(0), dim=-1))
    return torch.stack(rows)


def _axis_windows(size: int) -> list[tuple[int, int]]:
    count = max(size - CROP + STRIDE - 1, 0) // STRIDE + 1
    spans = []
    for index in range(count):
        end = min(index * STRIDE + CROP, size)
        spans.append((max(end - CROP, 0), end))
    return spans


def _padding(size: int, patch: int, minimum: int) -> tuple[int, int]:
    target = max(size, minimum)
    target += (-target) % patch
    extra = target - size
    return extra // 2, extra - extra // 2


@torch.no_grad()
def reference_predict(segmenter: Any, image: np.ndarray, classes: Sequence[str], threshold: float = 0.0,
                      background: int = 0, bias_lambda: float = -0.3, valid: Optional[np.ndarray] = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities K x H x W float32, labels H x W uint8) the slow, obvious way.

    ``segmenter`` only lends its loaded model, tokenizer and upsampler.
    """
    model, upsampler = segmenter.clip.model.cpu(), segmenter.upsampler
    visual = model.visual
    patch = visual.conv1.kernel_size[0]
    synonyms = [[part.strip() for part in line.split(",")] for line in classes]
    queries = [word for words in synonyms for word in words]
    owner = [index for index, words in enumerate(synonyms) for _ in words]
    text = text_embeddings(model, segmenter.clip.tokenizer, queries)
    height, width = image.shape[:2]
    normalised = (torch.from_numpy(image).permute(2, 0, 1).float() - MEAN) / STD
    if valid is not None:
        normalised = normalised * torch.from_numpy(valid)
    total = torch.zeros(len(queries), height, width)
    count = torch.zeros(height, width)
    minimum = 48 if upsampler is not None else 1
    for y0, y1 in _axis_windows(height):
        for x0, x1 in _axis_windows(width):
            top, bottom = _padding(y1 - y0, patch, minimum)
            left, right = _padding(x1 - x0, patch, minimum)
            window = F.pad(normalised[:, y0:y1, x0:x1], (left, right, top, bottom))
            cls, features = tower(visual, window)
            bias = bias_lambda * (F.normalize(cls, dim=0) @ text.T)  # Q
            if upsampler is not None:
                dense = F.normalize(simfeatup(upsampler, features, window), dim=0)
                logits = torch.einsum("dhw,qd->qhw", dense, text) + bias[:, None, None]
            else:
                low = torch.einsum("dhw,qd->qhw", F.normalize(features, dim=0), text) + bias[:, None, None]
                logits = F.interpolate(low[None], size=window.shape[-2:], mode="bilinear", align_corners=False)[0]
            total[:, y0:y1, x0:x1] += logits[:, top:top + y1 - y0, left:left + x1 - x0]
            count[y0:y1, x0:x1] += 1
    probabilities = torch.softmax(total / count * SCALE, dim=0)
    merged = torch.stack([probabilities[[q for q, o in enumerate(owner) if o == k]].max(0).values
                          for k in range(len(classes))])
    top_probability, labels = merged.max(0)
    labels[top_probability < threshold] = background
    if valid is not None:
        mask = torch.from_numpy(~valid)
        labels[mask] = 255
        merged[:, mask] = 0.0
    return merged.numpy().astype(np.float32), labels.numpy().astype(np.uint8)
