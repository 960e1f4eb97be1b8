"""Sliding-window geometry (pure Python, no torch).

Coordinates are (row, column) = (y, x) in pixels of the processing image,
origin top-left, half-open intervals ``[y0, y1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .request_rules import WINDOW_SIZE, WINDOW_STRIDE


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


def axis_spans(size: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the window positions along one axis of ``size`` pixels.

    Windows start every ``stride`` pixels; one that would run past the border
    is shifted back so it ends on the border.
    """
    spans = []
    for index in range(grid_count(size, crop, stride)):
        stop = min(index * stride + crop, size)
        spans.append((max(stop - crop, 0), stop))
    return spans


def window_grid(height: int, width: int, crop: int = WINDOW_SIZE, stride: int = WINDOW_STRIDE,
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
    return [Window(y0, y1, x0, x1, patch_padding(y1 - y0, x1 - x0, patch, min_size))
            for y0, y1 in axis_spans(height, crop, stride) for x0, x1 in axis_spans(width, crop, stride)]


def padded_size(size: int, patch: int, min_size: int = 1) -> int:
    """The size a window side of ``size`` pixels is padded to (see :func:`patch_padding`)."""
    target = max(size, min_size)
    return target + (-target) % patch


def padded_area(height: int, width: int, crop: int = WINDOW_SIZE, stride: int = WINDOW_STRIDE, patch: int = 16,
                min_size: int = 1) -> int:
    """Sum of the padded window areas of :func:`window_grid`: the pixels the network processes."""
    rows = sum(padded_size(y1 - y0, patch, min_size) for y0, y1 in axis_spans(height, crop, stride))
    cols = sum(padded_size(x1 - x0, patch, min_size) for x0, x1 in axis_spans(width, crop, stride))
    return rows * cols


@dataclass(frozen=True)
class Cell:
    """A rectangle of the image covered by one fixed set of windows.

    ``windows`` are indices into the :func:`window_grid` list, in increasing
    order (the order in which their logits are summed).
    """

    y0: int
    y1: int
    x0: int
    x1: int
    windows: tuple[int, ...]

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0


def _bands(spans: list[tuple[int, int]]) -> list[tuple[int, int, list[int]]]:
    """The intervals between consecutive window edges, each with the positions covering it."""
    edges = sorted({edge for span in spans for edge in span})
    return [(a, b, [i for i, (start, stop) in enumerate(spans) if start <= a and stop >= b])
            for a, b in zip(edges, edges[1:])]


def cell_grid(height: int, width: int, crop: int = WINDOW_SIZE, stride: int = WINDOW_STRIDE) -> list[Cell]:
    """The image cut along every window edge, row-major; every pixel is in exactly one cell.

    The windows covering a cell are the same for all its pixels, and a cell
    is complete once its last window is known, so a walk over the cells in
    this order needs only the windows of about two window rows at a time.
    """
    columns = len(axis_spans(width, crop, stride))
    row_bands = _bands(axis_spans(height, crop, stride))
    col_bands = _bands(axis_spans(width, crop, stride))
    return [Cell(y0, y1, x0, x1, tuple(r * columns + c for r in rows for c in cols))
            for y0, y1, rows in row_bands for x0, x1, cols in col_bands]


def group_by_shape(windows: list[Window]) -> dict[tuple[int, int], list[Window]]:
    """Windows grouped by padded shape (rows, cols), so each group can be batched."""
    groups: dict[tuple[int, int], list[Window]] = {}
    for window in windows:
        groups.setdefault((window.padded_height, window.padded_width), []).append(window)
    return groups
