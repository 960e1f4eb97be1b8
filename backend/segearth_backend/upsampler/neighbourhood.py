"""The two neighbourhood operations of the upsampler.

Both work on channels-last tensors (``B x H x W x C``), reflect the border
(PyTorch's ``reflect`` padding, without repeating the edge) and visit the
``(2r+1)^2`` neighbours of every pixel. Tap ``t`` is the offset
``(t // d - r, t % d - r)`` (row, column) with ``d = 2r + 1``, the order of
``torch.nn.Unfold``.

On the CPU, float32, the work is done by small numba kernels when numba is
installed (several times faster and O(1) extra memory); otherwise, and on
GPUs, by tensor code that loops over the taps (O(B x H x W x C) memory).
"""

from __future__ import annotations

import logging
from functools import lru_cache

import torch

from . import neighbourhood_numba

log = logging.getLogger(__name__)


@lru_cache(maxsize=64)
def _reflect_index_cpu(size: int, radius: int) -> torch.Tensor:
    if size <= radius:
        raise ValueError(f"cannot reflect-pad a size of {size} by {radius}: the grid must be larger than {radius}")
    index = torch.arange(-radius, size + radius)
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def reflect_index(size: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices ``0..size-1`` reflected at both ends, ``size + 2 radius`` long (int64)."""
    return _reflect_index_cpu(size, radius).to(device)


def _use_numba(*tensors: torch.Tensor) -> bool:
    return neighbourhood_numba.AVAILABLE and all(
        t.device.type == "cpu" and t.dtype == torch.float32 and not t.requires_grad for t in tensors
    )


def _reflect_pad(x: torch.Tensor, radius: int) -> torch.Tensor:
    rows = reflect_index(x.shape[1], radius, x.device)
    cols = reflect_index(x.shape[2], radius, x.device)
    return x.index_select(1, rows).index_select(2, cols)


def neighbour_similarity(keys: torch.Tensor, radius: int) -> torch.Tensor:
    """Dot products of every pixel's key with its neighbours' keys (tensor code; the
    numba path computes them in ``neighbourhood_numba.range_logits``).

    Args:
        keys: ``B x H x W x K``.

    Returns:
        ``B x H x W x (2r+1)^2``: ``out[b, y, x, t] = sum_k keys[b, y, x, k] *
        keys[b, y + dy_t, x + dx_t, k]`` (reflected at the border).
    """
    height, width = keys.shape[1:3]
    diameter = 2 * radius + 1
    padded = _reflect_pad(keys, radius)
    taps = [
        (padded[:, dy:dy + height, dx:dx + width] * keys).sum(dim=-1)
        for dy in range(diameter) for dx in range(diameter)
    ]
    return torch.stack(taps, dim=-1)


def adaptive_conv(source: torch.Tensor, kernel: torch.Tensor, radius: int) -> torch.Tensor:
    """Per-pixel convolution with the same kernel for every channel.

    Args:
        source: ``B x H x W x C``.
        kernel: ``B x H x W x (2r+1)^2``.

    Returns:
        ``B x H x W x C``: ``out[b, y, x, c] = sum_t kernel[b, y, x, t] *
        source[b, y + dy_t, x + dx_t, c]`` (reflected at the border).
    """
    batch, height, width, channels = source.shape
    diameter = 2 * radius + 1
    kernel = kernel.to(source.dtype)
    if _use_numba(source, kernel):
        source, kernel = source.contiguous(), kernel.contiguous()
        out = torch.empty(batch, height, width, channels)
        neighbourhood_numba.adaptive_conv(
            source.numpy(), kernel.numpy(), _reflect_index_cpu(height, radius).numpy(),
            _reflect_index_cpu(width, radius).numpy(), out.numpy())
        return out
    padded = _reflect_pad(source, radius)
    out = torch.zeros_like(source)
    for tap in range(diameter * diameter):
        dy, dx = divmod(tap, diameter)
        out.addcmul_(padded[:, dy:dy + height, dx:dx + width], kernel[..., tap:tap + 1])
    return out


def range_weights(keys: torch.Tensor, guidance: torch.Tensor, temperature: torch.Tensor,
                  spatial: torch.Tensor, radius: int) -> torch.Tensor:
    """The normalised joint-bilateral weights, with the guidance appended.

    ``softmax(temperature * similarity)`` over the taps, times the spatial
    Gaussian, divided by its sum (clamped at 1e-7).

    Args:
        keys: ``B x H x W x K`` range keys.
        guidance: ``B x H x W x G`` pooled guidance.
        temperature: scalar tensor; spatial: ``(2r+1)^2`` weights.

    Returns:
        ``B x H x W x ((2r+1)^2 + G)``: the weights, then the guidance (the
        input of the fixup layers).
    """
    batch, height, width, _ = keys.shape
    taps = spatial.shape[0]
    if _use_numba(keys, guidance, spatial):
        keys, guidance = keys.contiguous(), guidance.contiguous()
        out = torch.empty(batch, height, width, taps + guidance.shape[3])
        neighbourhood_numba.range_logits(
            keys.numpy(), guidance.numpy(), _reflect_index_cpu(height, radius).numpy(),
            _reflect_index_cpu(width, radius).numpy(), float(temperature), out.numpy())
        normalise_range_(out[..., :taps], spatial)
        return out
    weights = torch.softmax(neighbour_similarity(keys, radius) * temperature, dim=-1)
    weights = weights * spatial.to(weights.dtype)
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp(min=1e-7)
    return torch.cat([weights, guidance.to(weights.dtype)], dim=-1)


def normalise_range_(weights: torch.Tensor, spatial: torch.Tensor) -> torch.Tensor:
    """In place: ``softmax`` over the last axis, times ``spatial``, divided by its sum (clamped at 1e-7).

    Args:
        weights: ``... x T`` scaled similarities (a view; the last axis contiguous is fastest).
        spatial: ``T`` Gaussian weights.
    """
    weights.sub_(weights.amax(dim=-1, keepdim=True)).exp_()
    weights.div_(weights.sum(dim=-1, keepdim=True)).mul_(spatial.to(weights.dtype))
    return weights.div_(weights.sum(dim=-1, keepdim=True).clamp_(min=1e-7))


def upsample_bicubic_x2(source: torch.Tensor) -> torch.Tensor:
    """``B x h x w x C`` -> ``B x 2h x 2w x C``, bicubic as ``F.interpolate(align_corners=False)``."""
    if _use_numba(source):
        source = source.contiguous()
        batch, height, width, channels = source.shape
        out = torch.empty(batch, 2 * height, 2 * width, channels)
        neighbourhood_numba.bicubic_x2(source.numpy(), out.numpy())
        return out
    high = torch.nn.functional.interpolate(
        source.permute(0, 3, 1, 2), scale_factor=2, mode="bicubic", align_corners=False)
    return high.permute(0, 2, 3, 1).contiguous()
