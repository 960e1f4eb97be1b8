"""The benchmark resize: mmseg ``Resize(scale=(448, 448), keep_ratio=True)`` (pure numpy / torch).

mmcv's ``rescale_size`` takes ``s = min(max(scale) / max(h, w), min(scale) / min(h, w))``
and the new size ``(int(w * s + 0.5), int(h * s + 0.5))``; for a square scale
that fits the longer side to 448 (upscaling small images too). The pixels are
then resampled bilinearly with half-pixel centres and no antialiasing, as
OpenCV's ``INTER_LINEAR`` does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .benchmarks import DEFAULT_SCALE

#: The resize scale of every optical benchmark config of the paper.
BENCHMARK_SCALE = (DEFAULT_SCALE, DEFAULT_SCALE)


def rescale_size(height: int, width: int, scale: tuple[int, int] = BENCHMARK_SCALE) -> tuple[int, int]:
    """``(new_height, new_width)`` by mmcv's keep-ratio rule (``rescale_size`` + ``_scale_size``)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    # At least one pixel: mmcv would hand OpenCV an empty size for a 1-pixel-thin strip and fail.
    return max(1, int(height * float(factor) + 0.5)), max(1, int(width * float(factor) + 0.5))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an ``H x W x 3`` uint8 image to ``size`` = (rows, cols), uint8 out.

    Half-pixel centres, no antialiasing, values rounded half up (OpenCV's
    ``INTER_LINEAR`` arithmetic up to its 11-bit fixed-point weights: results
    may differ from OpenCV by one grey level on some pixels).
    """
    if tuple(image.shape[:2]) == tuple(size):
        return image.copy()
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].double()
    resized = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=False)
    rounded = torch.floor(resized + 0.5).clamp(0, 255)
    return rounded[0].permute(1, 2, 0).to(torch.uint8).numpy()
