"""Splitting a large processing grid into blocks whose stitched results equal a single run.

The backend averages the logits of its sliding windows (224 pixels placed every
112 pixels: it says which in ``/health``, :func:`window_geometry`). A block whose
origin and interior edges sit on the stride's grid sees, for every pixel of its
*core*, exactly the windows a run over the whole area would place there,
provided the core stays a stride away from the block's interior edges and the
pixels of the last, border-shifted window all lie in the last block. So each
block is its core plus a one-stride margin on every side that is not the area's
border; cores tile the area without overlap.

When the processing grid is cut from its raster's anchor grid
(:class:`~segearth_qgis.core.grid.Anchor`), the windows are those a run over
the whole anchor grid would place: :func:`plan_grid_blocks` plans the blocks
over the *context* of the area (every pixel the windows covering the area
read, :func:`context_span`) and keeps only the cores' parts inside the area, so
reads may start before the area's first row or column (negative coordinates)
and end after its last.

Coordinates are (row, column) pixels of the processing grid, half-open.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from .request_rules import WINDOW_SIZE, WINDOW_STRIDE

if TYPE_CHECKING:
    from .grid import Grid

#: The backend's sliding window unless it says otherwise (a backend from before it published it).
STRIDE = WINDOW_STRIDE
CROP = WINDOW_SIZE


def window_geometry(health: Mapping[str, Any]) -> tuple[int, int]:
    """``(size, stride)`` of the backend's sliding window, from its ``/health`` document (``window``).

    A backend that does not publish it uses the defaults (:data:`CROP`, :data:`STRIDE`).

    Raises:
        ValueError: ``window`` is there but not two whole numbers with ``0 < stride <= size``.
    """
    window = health.get("window")
    if window is None:
        return CROP, STRIDE
    size = window.get("size") if isinstance(window, dict) else None
    stride = window.get("stride") if isinstance(window, dict) else None
    if not (type(size) is int and type(stride) is int and 0 < stride <= size):
        raise ValueError(f"the backend's window {str(window)[:80]} is not {{'size': n, 'stride': m}} with 0 < m <= n")
    return size, stride


@dataclass(frozen=True)
class Span:
    """One axis of a block: read ``[start, stop)``, keep ``[core_start, core_stop)``."""

    start: int
    stop: int
    core_start: int
    core_stop: int


@dataclass(frozen=True)
class Block:
    """A rectangle to send to the backend and the part of its answer to keep."""

    rows: Span
    cols: Span

    @property
    def height(self) -> int:
        return self.rows.stop - self.rows.start

    @property
    def width(self) -> int:
        return self.cols.stop - self.cols.start

    def core_in_block(self) -> tuple[slice, slice]:
        """Slices of the block's own array that hold its core."""
        return (slice(self.rows.core_start - self.rows.start, self.rows.core_stop - self.rows.start),
                slice(self.cols.core_start - self.cols.start, self.cols.core_stop - self.cols.start))


def plan_axis(size: int, block: int, stride: int = STRIDE, crop: int = CROP) -> list[Span]:
    """Spans covering ``size`` pixels with blocks of at most about ``block`` pixels.

    ``block`` is rounded down to a multiple of ``stride`` (at least ``crop +
    stride``). The last core holds every pixel of the border-shifted last
    window (``size - crop`` onwards), so the last block may exceed ``block``
    by less than ``crop``.

    Raises:
        ValueError: ``size`` below 1.
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    block = max(block // stride * stride, crop + stride)
    if size <= block:
        return [Span(0, size, 0, size)]
    cores = []
    core_start = 0
    while True:
        margin_before = stride if core_start else 0
        core_stop = core_start + block - margin_before - stride
        # The last window is shifted back to end on the border (it starts at
        # size - crop): every pixel it covers must belong to the last block.
        if core_stop > size - crop:
            cores.append((core_start, size))
            break
        cores.append((core_start, core_stop))
        core_start = core_stop
    return [Span(max(c0 - stride, 0), min(c1 + stride, size), c0, c1) for c0, c1 in cores]


def plan_blocks(height: int, width: int, block: int = 1024, crop: int = CROP, stride: int = STRIDE) -> list[Block]:
    """Row-major blocks tiling a ``height x width`` grid (see :func:`plan_axis`)."""
    return [Block(rows, cols) for rows in plan_axis(height, block, stride, crop)
            for cols in plan_axis(width, block, stride, crop)]


def context_span(start: int, stop: int, size: int, crop: int = CROP, stride: int = STRIDE) -> tuple[int, int]:
    """The pixels that the windows covering ``[start, stop)`` read, on an axis of ``size`` pixels.

    Windows are placed as one run over the whole axis places them (every
    ``stride`` pixels from 0, the last shifted back to end on the border), so
    the result starts and ends on window edges of that run.

    Raises:
        ValueError: an empty or out-of-range ``[start, stop)``.
    """
    if not 0 <= start < stop <= size:
        raise ValueError(f"[{start}, {stop}) is not a non-empty part of an axis of {size} pixels")
    count = max(size - crop + stride - 1, 0) // stride + 1
    begin, end = size, 0
    for index in range(max(0, (start - crop) // stride), count):
        window_stop = min(index * stride + crop, size)
        window_start = max(window_stop - crop, 0)
        if window_start >= stop:  # window starts only grow along the axis
            break
        if window_stop > start:
            begin, end = min(begin, window_start), max(end, window_stop)
    return begin, end


def plan_area_axis(start: int, stop: int, size: int, block: int, crop: int = CROP, stride: int = STRIDE) -> list[Span]:
    """Spans for the area ``[start, stop)`` of an anchor axis of ``size`` pixels, in area coordinates.

    Blocks are planned over the area's context (:func:`context_span`); a span's read may begin
    before 0 and end after ``stop - start``; its core is the part of the context block's core
    inside the area (spans whose core misses the area are left out).
    """
    begin, end = context_span(start, stop, size, crop, stride)
    shift = begin - start
    spans = []
    for span in plan_axis(end - begin, block, stride, crop):
        core_start, core_stop = max(span.core_start + shift, 0), min(span.core_stop + shift, stop - start)
        if core_start < core_stop:
            spans.append(Span(span.start + shift, span.stop + shift, core_start, core_stop))
    return spans


def plan_grid_blocks(grid: Grid, block: int = 1024, crop: int = CROP, stride: int = STRIDE) -> list[Block]:
    """Row-major blocks of a processing grid: on its anchor grid when it has one (see :func:`plan_area_axis`);
    ``crop`` and ``stride`` are the backend's sliding window (:func:`window_geometry`)."""
    anchor = grid.anchor
    if anchor is None:
        return plan_blocks(grid.height, grid.width, block, crop, stride)
    rows = plan_area_axis(anchor.row, anchor.row + grid.height, anchor.height, block, crop, stride)
    cols = plan_area_axis(anchor.col, anchor.col + grid.width, anchor.width, block, crop, stride)
    return [Block(r, c) for r in rows for c in cols]
