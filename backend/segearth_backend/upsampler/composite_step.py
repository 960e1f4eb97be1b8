"""One SimFeatUp step as a single 81-tap kernel from the low-resolution source (CPU, numba).

A joint-bilateral step is ``out = adaptive_conv(reflect_pad(bicubic_x2(S)), k)``
with a 121-tap kernel ``k`` per output pixel. Both parts are linear and the
same for every channel, so they fold into one kernel ``K = R^T k C`` on the
*low-resolution* source: output ``(Y, X)`` reads the 9 x 9 low-resolution
pixels ``(Y // 2 - 4 .. Y // 2 + 4, X // 2 - 4 .. X // 2 + 4)`` (the 11 taps of
``k`` reach 5 high-resolution pixels away, the bicubic 2 more low-resolution
ones). ``R`` and ``C`` hold, per output row and column, where each of the 11
offsets lands after the reflection at the border and which low-resolution
pixels its 4 bicubic weights take (clamped at the border). The composite
step does 81 instead of 121 + 16 multiply-adds per channel and never builds
the x2 image.

Coordinates are (row, column); arrays are channels last. ``K`` tap
``a * 9 + b`` is the low-resolution offset ``(a - 4, b - 4)``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence

import numpy as np
import torch

from . import composite_numba

#: Available on this machine (CPU float32 only).
AVAILABLE = composite_numba.AVAILABLE
RADIUS = 5
#: The composite kernel's taps: 9 x 9 low-resolution pixels.
SPAN = 9
TAPS_LOW = SPAN * SPAN
#: Source padding (low-resolution pixels) so every tap is inside the array.
SOURCE_PAD = SPAN // 2
#: Output pixels this close to a window edge see the edge (reflection of the
#: 121-tap kernel's neighbours, bicubic clamping): 5 + 3 on either side.
FRAME = 8

#: torch's bicubic x2 weights (A = -0.75, align_corners=False) for even and odd output pixels.
_EVEN = np.array([-0.03515625, 0.26171875, 0.87890625, -0.10546875], np.float32)
_ODD = np.array([-0.10546875, 0.87890625, 0.26171875, -0.03515625], np.float32)


@lru_cache(maxsize=256)
def _axis_maps_cached(start: int, stop: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    positions = np.arange(start, stop)
    neighbours = np.abs(positions[:, None] + np.arange(-RADIUS, RADIUS + 1)[None, :])
    neighbours = np.where(neighbours >= size, 2 * (size - 1) - neighbours, neighbours)  # torch 'reflect'
    low = neighbours // 2
    even = neighbours % 2 == 0
    first = np.where(even, low - 2, low - 1)
    taps = np.clip(first[..., None] + np.arange(4), 0, size // 2 - 1)
    taps = taps - positions[:, None, None] // 2 + SOURCE_PAD
    weights = np.where(even[..., None], _EVEN, _ODD).astype(np.float32)
    return taps.astype(np.int64), weights


def axis_maps(start: int, stop: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the 11 kernel offsets of output positions ``start..stop-1`` land on the low-resolution axis.

    Args:
        start, stop: output positions (high resolution) along one axis of a frame of ``size`` pixels
            (``size`` even; the low-resolution axis has ``size // 2`` pixels).

    Returns:
        ``taps`` ``n x 11 x 4`` int64 in ``0..8`` (the composite tap along this axis) and ``weights``
        ``n x 11 x 4`` float32 (the bicubic weights); shared between calls: do not modify them.

    Raises:
        ValueError: an odd ``size``, or one of 5 pixels or fewer (reflection needs more than the radius).
    """
    if size % 2 or size <= RADIUS:
        raise ValueError(f"a composite step needs an even output size above {RADIUS}, got {size}")
    return _axis_maps_cached(start, stop, size)


def compose(kernel: torch.Tensor, rows: tuple[int, int, int], cols: tuple[int, int, int],
            repeat: int = 1) -> torch.Tensor:
    """The composite kernels ``n x m x 81`` of 121-tap kernels ``n x m x 121`` (float32, CPU).

    Args:
        rows, cols: ``(start, stop, size)``: the kernels' output rows ``start..stop-1`` (columns
            likewise) within a frame (window or region) ``size`` pixels high (wide).
        repeat: ``kernel`` stacks this many frames' rows (``n = repeat * (stop - start)``).
    """
    row_taps, row_weights = axis_maps(*rows)
    if repeat > 1:
        row_taps, row_weights = np.tile(row_taps, (repeat, 1, 1)), np.tile(row_weights, (repeat, 1, 1))
    col_taps, col_weights = axis_maps(*cols)
    kernel = kernel.contiguous()
    out = torch.empty(kernel.shape[0], kernel.shape[1], TAPS_LOW)
    scratch = np.empty((kernel.shape[0], 2 * RADIUS + 1, SPAN), np.float32)
    composite_numba.compose(kernel.numpy(), row_taps, row_weights, col_taps, col_weights, scratch, out.numpy())
    return out


_EMPTY_ROWS = np.zeros((0, 0, TAPS_LOW), np.float32)


def upsample_x2(source: torch.Tensor, stripes: Sequence[torch.Tensor], stripe_rows: int, first_row: int,
                col0: int, frames: Optional[dict[str, torch.Tensor]] = None, *, features: bool = True,
                offset: Optional[torch.Tensor] = None, split: int = 0
                ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """One composite step on a window: ``h x w x C`` -> ``2h x 2w x C`` (and / or the per-pixel norms).

    Args:
        source: ``h x w x C`` float32 low-resolution source (channels last).
        stripes: composite kernels ``rows x cols x 81`` of one to three consecutive region stripes of
            ``stripe_rows`` rows;
            output ``(y, x)`` uses stripe row ``first_row + y`` (counted from the first stripe), column
            ``col0 + x``. For a window with its own kernels: one stripe, ``first_row = col0 = 0``.
        frames: ``top`` / ``bottom`` (``FRAME x 2w x 81``) and ``left`` / ``right`` (``2h x FRAME x 81``)
            kernels that replace the stripes' along the window's edges inside the region.
        features: return the ``2h x 2w x C`` output.
        offset: when given (``C``), also return the norms ``2h x 2w`` of ``output + offset``.
        split: when above 0, the norms take channels ``0 .. split - 1`` only and the output holds
            channels ``split ..`` only (two sources upsampled together).

    Returns:
        ``(output or None, norms or None)``.
    """
    frames = frames or {}
    low_h, low_w, channels = source.shape
    padded = torch.zeros(low_h + 2 * SOURCE_PAD, low_w + 2 * SOURCE_PAD, channels)
    padded[SOURCE_PAD:SOURCE_PAD + low_h, SOURCE_PAD:SOURCE_PAD + low_w] = source
    out = torch.empty(2 * low_h, 2 * low_w, channels - split) if features else torch.empty(0, 0, 0)
    norm = torch.empty(2 * low_h, 2 * low_w) if offset is not None else torch.empty(0, 0)
    bias = (offset if offset is not None else torch.zeros(channels)).contiguous().numpy()
    parts = {side: frames[side].numpy() if side in frames else _EMPTY_ROWS
             for side in ("top", "bottom", "left", "right")}
    if not 1 <= len(stripes) <= 3:
        raise ValueError(f"a window spans one to three kernel stripes, got {len(stripes)}")
    arrays = [stripe.numpy() for stripe in stripes] + [_EMPTY_ROWS] * (3 - len(stripes))
    composite_numba.upsample_x2(
        padded.numpy(), arrays[0], arrays[1], arrays[2], stripe_rows, first_row, col0, parts["top"], parts["bottom"],
        parts["left"], parts["right"], FRAME, bias, split or channels, np.empty((low_h, 4, channels), np.float32),
        out.numpy(), norm.numpy())
    return (out if features else None), (norm if offset is not None else None)
