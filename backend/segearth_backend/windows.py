"""Sliding-window geometry (pure Python, no torch).

Coordinates are (row, column) = (y, x) in pixels of the processing image,
origin top-left, half-open intervals ``[y0, y1)``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Padding:
    """Zero padding added around a window, in pixels."""

    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0

    @property
    def any(self) -> bool:
        return bool(self.top or self.bottom or self.left or self.right)


@dataclass(frozen=True)
class Window:
    """One crop of the image plus the padding that brings it to a patch multiple.

    ``y0:y1, x0:x1`` is the crop inside the image; the network sees the crop
    padded by ``pad`` (``padded_height x padded_width``), and its output is
    cropped back by the same amounts.
    """

    y0: int
    y1: int
    x0: int
    x1: int
    pad: Padding

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def padded_height(self) -> int:
        return self.height + self.pad.top + self.pad.bottom

    @property
    def padded_width(self) -> int:
        return self.width + self.pad.left + self.pad.right


def grid_count(size: int, crop: int, stride: int) -> int:
    """Number of window positions along one axis of ``size`` pixels."""
    return max(size - crop + stride - 1, 0) // stride + 1


def patch_padding(height: int, width: int, patch: int, min_size: int = 1) -> Padding:
    """Padding that makes ``height x width`` a multiple of ``patch`` on both axes.

    Each side is padded to the next multiple of ``patch`` that is also at
    least ``min_size``. The padding is split evenly; the odd extra pixel goes
    bottom / right.
    """
    def split(size: int) -> tuple[int, int]:
        target = max(size, min_size)
        extra = target - size + (-target) % patch
        return extra // 2, extra - extra // 2

    top, bottom = split(height)
    left, right = split(width)
    return Padding(top, bottom, left, right)


def window_grid(height: int, width: int, crop: int = 224, stride: int = 112,
                patch: int = 16, min_size: int = 1) -> list[Window]:
    """The sliding windows covering a ``height x width`` image, row-major.

    Windows start every ``stride`` pixels; one that would run past the border
    is shifted back so it ends on the border; a window smaller than ``crop``
    (image smaller than the crop) is padded to a multiple of ``patch`` and to
    at least ``min_size`` (see :func:`patch_padding`).

    Raises:
        ValueError: a size, crop, stride or patch below 1, or a crop that is
            not a multiple of the patch size.
    """
    if min(height, width) < 1:
        raise ValueError(f"image size must be at least 1 x 1, got {height} x {width}")
    if min(crop, stride, patch) < 1 or crop % patch:
        raise ValueError(
            f"crop ({crop}) must be a positive multiple of the patch size ({patch}), "
            f"stride ({stride}) positive"
        )
    windows = []
    for row in range(grid_count(height, crop, stride)):
        for col in range(grid_count(width, crop, stride)):
            y1 = min(row * stride + crop, height)
            x1 = min(col * stride + crop, width)
            y0 = max(y1 - crop, 0)
            x0 = max(x1 - crop, 0)
            windows.append(Window(y0, y1, x0, x1, patch_padding(y1 - y0, x1 - x0, patch, min_size)))
    return windows


def group_by_shape(windows: list[Window]) -> dict[tuple[int, int], list[Window]]:
    """Windows grouped by padded shape (rows, cols), so each group can be batched."""
    groups: dict[tuple[int, int], list[Window]] = {}
    for window in windows:
        groups.setdefault((window.padded_height, window.padded_width), []).append(window)
    return groups
