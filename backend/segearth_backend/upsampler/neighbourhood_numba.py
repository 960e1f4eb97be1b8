"""numba CPU kernels for :mod:`.neighbourhood` (optional: ``AVAILABLE`` is False without numba).

Arrays are float32, C-contiguous, channels last; ``rows`` / ``cols`` map a
padded coordinate ``0 .. n + 2r - 1`` to the reflected source index. Each
output pixel accumulates its taps in order, parallel over image rows.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

try:
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only where numba is missing
    AVAILABLE = False
    log.info("numba is not installed: the upsampler uses the slower tensor kernels")
else:
    AVAILABLE = True

    @njit(parallel=True, fastmath={"contract"}, cache=True)
    def adaptive_conv(source: np.ndarray, kernel: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                      out: np.ndarray) -> None:
        batch, height, width, channels = out.shape
        diameter = rows.shape[0] - height + 1
        for line in prange(batch * height):
            b = line // height
            y = line - b * height
            for x in range(width):
                acc = out[b, y, x]
                for c in range(channels):
                    acc[c] = 0.0
                weights = kernel[b, y, x]
                for i in range(diameter):
                    source_row = source[b, rows[y + i]]
                    for j in range(diameter):
                        weight = weights[i * diameter + j]
                        neighbour = source_row[cols[x + j]]
                        for c in range(channels):
                            acc[c] += weight * neighbour[c]

    @njit(parallel=True, fastmath={"contract"}, cache=True)
    def range_logits(keys: np.ndarray, guidance: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                     temperature: float, out: np.ndarray) -> None:
        """``out[..., :T]``: ``temperature`` x each tap's key similarity; ``out[..., T:]``: the guidance.

        Output pixel ``(y, x)`` is centred on ``keys[b, rows[y + r], cols[x + r]]`` (``r`` the
        radius), so ``out`` may cover any rectangle of ``keys`` with any border handling. The
        softmax over the taps is left to :func:`.neighbourhood.normalise_range_` (vectorised ``exp``:
        numba's is a scalar call per tap without Intel's SVML, twice this kernel's time).

        The keys are first gathered channels first (``B x (height + 2r) x K x (width + 2r)``), so
        each tap's dot products run along a row of pixels, one vector lane per pixel (1.5x faster than
        one dot product of ``K`` per pixel and tap); each sums its ``K`` products in order.
        """
        batch, height, width = out.shape[0], out.shape[1], out.shape[2]
        depth = keys.shape[3]
        extra = guidance.shape[3]
        span = rows.shape[0]
        diameter = span - height + 1
        taps = diameter * diameter
        radius = diameter // 2
        padded_width = cols.shape[0]
        planes = np.empty((batch, span, depth, padded_width), np.float32)
        for line in prange(batch * span):
            b = line // span
            source = keys[b, rows[line - b * span]]
            plane = planes[b, line - b * span]
            for x in range(padded_width):
                pixel = source[cols[x]]
                for k in range(depth):
                    plane[k, x] = pixel[k]
        for line in prange(batch * height):
            b = line // height
            y = line - b * height
            centre = planes[b, y + radius]
            sums = np.empty((diameter, width), np.float32)
            for i in range(diameter):
                neighbours = planes[b, y + i]
                sums[:] = 0.0
                for k in range(depth):
                    centre_row = centre[k, radius:radius + width]
                    neighbour_row = neighbours[k]
                    for j in range(diameter):
                        row_sums = sums[j]
                        for x in range(width):
                            row_sums[x] += centre_row[x] * neighbour_row[x + j]
                for j in range(diameter):
                    tap = i * diameter + j
                    row_sums = sums[j]
                    for x in range(width):
                        out[b, y, x, tap] = row_sums[x] * temperature
            cy = rows[y + radius]
            for x in range(width):
                cx = cols[x + radius]
                for e in range(extra):
                    out[b, y, x, taps + e] = guidance[b, cy, cx, e]

    @njit(parallel=True, fastmath={"contract"}, cache=True)
    def bicubic_x2(source: np.ndarray, out: np.ndarray) -> None:
        """x2 bicubic upsampling as torch's (A = -0.75, align_corners=False, clamped borders).

        Output row ``2m`` samples source position ``m - 0.25``, row ``2m + 1``
        position ``m + 0.25``; the same along columns.
        """
        batch, height, width, channels = source.shape
        # Cubic-convolution weights for fractional offsets 0.75 (even) and 0.25 (odd).
        even = np.array([-0.03515625, 0.26171875, 0.87890625, -0.10546875], dtype=np.float32)
        odd = np.array([-0.10546875, 0.87890625, 0.26171875, -0.03515625], dtype=np.float32)
        for line in prange(batch * 2 * height):
            b = line // (2 * height)
            oy = line - b * 2 * height
            base_y = oy // 2 - 1 if oy % 2 == 0 else oy // 2
            wy = even if oy % 2 == 0 else odd
            for ox in range(2 * width):
                base_x = ox // 2 - 1 if ox % 2 == 0 else ox // 2
                wx = even if ox % 2 == 0 else odd
                acc = out[b, oy, ox]
                for c in range(channels):
                    acc[c] = 0.0
                for i in range(4):
                    sy = min(max(base_y - 1 + i, 0), height - 1)
                    for j in range(4):
                        sx = min(max(base_x - 1 + j, 0), width - 1)
                        weight = wy[i] * wx[j]
                        pixel = source[b, sy, sx]
                        for c in range(channels):
                            acc[c] += weight * pixel[c]
