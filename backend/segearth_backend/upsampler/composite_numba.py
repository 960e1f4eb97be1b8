"""numba CPU kernels of the composite x2 step (:mod:`.composite_step`); ``AVAILABLE`` is False without numba.

Arrays are float32 (indices int64), C-contiguous, channels last. A composite
kernel has ``TAPS_LOW = 81`` taps: tap ``a * 9 + b`` weighs the low-resolution
pixel ``(Y // 2 + a - 4, X // 2 + b - 4)`` for the output pixel ``(Y, X)``.
Sources are zero-padded by 4 low-resolution pixels on every side, so tap
``(a, b)`` of output ``(Y, X)`` reads ``source[Y // 2 + a, X // 2 + b]``.
"""

from __future__ import annotations

import numpy as np

try:
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only where numba is missing
    AVAILABLE = False
else:
    AVAILABLE = True

    @njit(parallel=True, fastmath={"contract"}, cache=True)
    def compose(kernel: np.ndarray, row_taps: np.ndarray, row_weights: np.ndarray, col_taps: np.ndarray,
                col_weights: np.ndarray, scratch: np.ndarray, out: np.ndarray) -> None:
        """Fold the bicubic x2 (and the border handling) into 121-tap kernels: ``out = R^T k C``.

        Args:
            kernel: ``n x m x 121`` joint-bilateral kernels (tap ``dy * 11 + dx``).
            row_taps, row_weights: ``n x 11 x 4``: for each output row and row offset ``dy``,
                the low-resolution row taps (``a`` in 0..8) and their bicubic weights.
            col_taps, col_weights: ``m x 11 x 4``, the same for the columns.
            scratch: ``n x 11 x 9`` work space.
            out: ``n x m x 81``.
        """
        rows, cols = out.shape[0], out.shape[1]
        for i in prange(rows):
            partial = scratch[i]
            for j in range(cols):
                weights = kernel[i, j]
                for dy in range(11):
                    for b in range(9):
                        partial[dy, b] = 0.0
                for dy in range(11):
                    for dx in range(11):
                        value = weights[dy * 11 + dx]
                        for q in range(4):
                            partial[dy, col_taps[j, dx, q]] += value * col_weights[j, dx, q]
                target = out[i, j]
                for t in range(81):
                    target[t] = 0.0
                for dy in range(11):
                    for q in range(4):
                        a = row_taps[i, dy, q]
                        weight = row_weights[i, dy, q]
                        for b in range(9):
                            target[a * 9 + b] += weight * partial[dy, b]

    @njit(inline="always")
    def _taps_at(y: int, x: int, height: int, width: int, stripe0: np.ndarray, stripe1: np.ndarray,
                 stripe2: np.ndarray, stripe_rows: int, first_row: int, col0: int, top: np.ndarray,
                 bottom: np.ndarray, left: np.ndarray, right: np.ndarray, frame: int) -> np.ndarray:
        """The 81 taps of output pixel ``(y, x)``: from a frame strip when one covers it, else the stripes."""
        if top.shape[0] > 0 and y < frame:
            return top[y, x]
        if bottom.shape[0] > 0 and y >= height - frame:
            return bottom[y - height + frame, x]
        if left.shape[1] > 0 and x < frame:
            return left[y, x]
        if right.shape[1] > 0 and x >= width - frame:
            return right[y, x - width + frame]
        row = first_row + y
        stripe = row // stripe_rows
        if stripe == 0:
            return stripe0[row, col0 + x]
        if stripe == 1:
            return stripe1[row - stripe_rows, col0 + x]
        return stripe2[row - 2 * stripe_rows, col0 + x]

    @njit(parallel=True, fastmath={"contract"}, cache=True)
    def upsample_x2(source: np.ndarray, stripe0: np.ndarray, stripe1: np.ndarray, stripe2: np.ndarray,
                    stripe_rows: int, first_row: int, col0: int,
                    top: np.ndarray, bottom: np.ndarray, left: np.ndarray, right: np.ndarray, frame: int,
                    offset: np.ndarray, norm_channels: int, scratch: np.ndarray, out: np.ndarray,
                    norm: np.ndarray) -> None:
        """One composite x2 step: ``out[Y, X] = sum_t K[Y, X, t] * source[Y // 2 + a_t, X // 2 + b_t]``.

        Output pixels are computed in 2 x 2 blocks, which share their 9 x 9
        low-resolution neighbourhood; each row of 9 taps is one fused update.

        Args:
            source: ``(h + 8) x (w + 8) x C`` zero-padded low-resolution source.
            stripe0, stripe1, stripe2: the kernels ``rows x cols x 81`` of up to three consecutive
                stripes of ``stripe_rows`` rows (unused ones empty); output row ``y`` reads stripe
                row ``first_row + y`` and column ``col0 + x`` (counted from ``stripe0``).
            top, bottom: ``frame x 2w x 81`` (or ``0 x 0 x 81``): kernels of the first / last
                ``frame`` output rows, which win over the stripes.
            left, right: ``2h x frame x 81`` (or ``0 x 0 x 81``): the same for columns.
            offset: ``C`` added to every output before the norm (not to ``out``).
            norm_channels: the first ``norm_channels`` channels make the norm.
            scratch: ``h x 4 x C`` work space.
            out: ``2h x 2w x K``: the last ``K`` channels (``0 x 0 x 0`` to skip writing the features).
            norm: ``2h x 2w`` (or ``0 x 0``): ``|output + offset|`` per pixel over ``norm_channels`` channels.
        """
        low_h, low_w = source.shape[0] - 8, source.shape[1] - 8
        height, width = 2 * low_h, 2 * low_w
        channels = source.shape[2]
        write_out = out.shape[0] > 0
        out_start = channels - out.shape[2]
        write_norm = norm.shape[0] > 0
        for my in prange(low_h):
            acc = scratch[my]
            acc0, acc1, acc2, acc3 = acc[0], acc[1], acc[2], acc[3]
            y = 2 * my
            for mx in range(low_w):
                x = 2 * mx
                k0 = _taps_at(y, x, height, width, stripe0, stripe1, stripe2, stripe_rows, first_row, col0,
                              top, bottom, left, right, frame)
                k1 = _taps_at(y, x + 1, height, width, stripe0, stripe1, stripe2, stripe_rows, first_row, col0,
                              top, bottom, left, right, frame)
                k2 = _taps_at(y + 1, x, height, width, stripe0, stripe1, stripe2, stripe_rows, first_row, col0,
                              top, bottom, left, right, frame)
                k3 = _taps_at(y + 1, x + 1, height, width, stripe0, stripe1, stripe2, stripe_rows, first_row, col0,
                              top, bottom, left, right, frame)
                for c in range(channels):
                    acc0[c] = 0.0
                    acc1[c] = 0.0
                    acc2[c] = 0.0
                    acc3[c] = 0.0
                for a in range(9):
                    line = source[my + a]
                    s0, s1, s2 = line[mx], line[mx + 1], line[mx + 2]
                    s3, s4, s5 = line[mx + 3], line[mx + 4], line[mx + 5]
                    s6, s7, s8 = line[mx + 6], line[mx + 7], line[mx + 8]
                    t = a * 9
                    w00, w01, w02 = k0[t], k0[t + 1], k0[t + 2]
                    w03, w04, w05 = k0[t + 3], k0[t + 4], k0[t + 5]
                    w06, w07, w08 = k0[t + 6], k0[t + 7], k0[t + 8]
                    w10, w11, w12 = k1[t], k1[t + 1], k1[t + 2]
                    w13, w14, w15 = k1[t + 3], k1[t + 4], k1[t + 5]
                    w16, w17, w18 = k1[t + 6], k1[t + 7], k1[t + 8]
                    w20, w21, w22 = k2[t], k2[t + 1], k2[t + 2]
                    w23, w24, w25 = k2[t + 3], k2[t + 4], k2[t + 5]
                    w26, w27, w28 = k2[t + 6], k2[t + 7], k2[t + 8]
                    w30, w31, w32 = k3[t], k3[t + 1], k3[t + 2]
                    w33, w34, w35 = k3[t + 3], k3[t + 4], k3[t + 5]
                    w36, w37, w38 = k3[t + 6], k3[t + 7], k3[t + 8]
                    for c in range(channels):
                        v0, v1, v2, v3, v4 = s0[c], s1[c], s2[c], s3[c], s4[c]
                        v5, v6, v7, v8 = s5[c], s6[c], s7[c], s8[c]
                        acc0[c] += (w00 * v0 + w01 * v1 + w02 * v2 + w03 * v3 + w04 * v4 + w05 * v5 + w06 * v6
                                    + w07 * v7 + w08 * v8)
                        acc1[c] += (w10 * v0 + w11 * v1 + w12 * v2 + w13 * v3 + w14 * v4 + w15 * v5 + w16 * v6
                                    + w17 * v7 + w18 * v8)
                        acc2[c] += (w20 * v0 + w21 * v1 + w22 * v2 + w23 * v3 + w24 * v4 + w25 * v5 + w26 * v6
                                    + w27 * v7 + w28 * v8)
                        acc3[c] += (w30 * v0 + w31 * v1 + w32 * v2 + w33 * v3 + w34 * v4 + w35 * v5 + w36 * v6
                                    + w37 * v7 + w38 * v8)
                for q in range(4):
                    oy, ox = y + q // 2, x + q % 2
                    block = acc[q]
                    if write_out:
                        target = out[oy, ox]
                        for c in range(out_start, channels):
                            target[c - out_start] = block[c]
                    if write_norm:
                        total = np.float32(0.0)
                        for c in range(norm_channels):
                            value = block[c] + offset[c]
                            total += value * value
                        norm[oy, ox] = np.sqrt(total)
