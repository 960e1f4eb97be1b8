"""The two neighbourhood operations of the upsampler, as plain tensor code.

Both loop over the 121 offsets of an 11 x 11 neighbourhood and touch
``O(C x H x W)`` memory per offset, never a ``C*121 x H*W`` unfolded tensor.
Tap ``t`` is the offset ``(t // d - r, t % d - r)`` with ``d = 2r + 1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def neighbour_similarity(keys: torch.Tensor, radius: int) -> torch.Tensor:
    """Dot products of every pixel's key with its neighbours' keys.

    Args:
        keys: ``B x K x H x W``.
        radius: neighbourhood radius ``r``; the border is reflect-padded.

    Returns:
        ``B x (2r+1)^2 x H x W``: ``out[b, t, y, x] = sum_k keys[b, k, y, x] *
        keys[b, k, y + dy_t, x + dx_t]``.
    """
    height, width = keys.shape[-2:]
    diameter = 2 * radius + 1
    padded = F.pad(keys, [radius] * 4, mode="reflect")
    out = keys.new_empty(keys.shape[0], diameter * diameter, height, width)
    for tap in range(diameter * diameter):
        dy, dx = divmod(tap, diameter)
        torch.sum(padded[:, :, dy:dy + height, dx:dx + width] * keys, dim=1, out=out[:, tap])
    return out


def adaptive_conv(padded: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Per-pixel convolution with the same kernel for every channel.

    Args:
        padded: ``B x C x (H+2r) x (W+2r)`` source, already padded by ``r``.
        kernel: ``B x (2r+1)^2 x H x W``.

    Returns:
        ``B x C x H x W``: ``out[b, c, y, x] = sum_t kernel[b, t, y, x] *
        padded[b, c, y + dy_t + r, x + dx_t + r]``.
    """
    taps, height, width = kernel.shape[1:]
    diameter = int(round(taps ** 0.5))
    out = padded.new_zeros(padded.shape[0], padded.shape[1], height, width)
    for tap in range(taps):
        dy, dx = divmod(tap, diameter)
        out.addcmul_(padded[:, :, dy:dy + height, dx:dx + width], kernel[:, tap:tap + 1])
    return out
