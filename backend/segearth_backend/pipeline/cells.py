"""The logits of a walk, cell by cell: each window's logits cut into the cells it covers, and their mean.

The segmenter walks the image cell by cell (:func:`~segearth_backend.windows.cell_grid`); a cell is covered
by a fixed set of windows, whose logits are averaged (summed in window order, so every walk gives the same
float result).
"""

from __future__ import annotations

from collections import defaultdict

import torch

from ..windows import Cell
from .features import WindowSource
from .pixel_logits import PixelLogits


class CellLogits:
    """The logits of the windows being walked, cut into the cells they cover.

    A window's logits are fetched when the first cell that needs them comes
    up, cut into one block per cell (so finished cells free their memory), and
    dropped block by block as cells are finished.
    """

    def __init__(self, source: WindowSource, cells: list[Cell]) -> None:
        self.source = source
        self.cells_of: dict[int, list[int]] = defaultdict(list)
        for index, cell in enumerate(cells):
            for window in cell.windows:
                self.cells_of[window].append(index)
        self.cells = cells
        self.blocks: dict[tuple[int, int], PixelLogits] = {}
        self.fetched: set[int] = set()

    def _fetch(self, window: int) -> None:
        for index, features in self.source.features(window):
            w = self.source.windows[index]
            for cell_index in self.cells_of[index]:
                cell = self.cells[cell_index]
                rows = slice(cell.y0 - w.y0, cell.y1 - w.y0)
                cols = slice(cell.x0 - w.x0, cell.x1 - w.x0)
                self.blocks[(index, cell_index)] = features.crop(rows, cols)
            self.fetched.add(index)

    def take(self, cell_index: int) -> list[PixelLogits]:
        """The blocks of every window covering cell ``cell_index`` (in window order); forgets them."""
        blocks = []
        for window in self.cells[cell_index].windows:
            if window not in self.fetched:
                self._fetch(window)
            blocks.append(self.blocks.pop((window, cell_index)))
        return blocks


def average_logits(blocks: list[PixelLogits], start: int, stop: int) -> torch.Tensor:
    """The mean over the covering windows of their logits of queries ``start .. stop - 1`` (summed in window
    order): ``c x h x w``."""
    total = blocks[0].logits(start, stop)
    if len(blocks) > 1:
        total = total + blocks[1].logits(start, stop)  # a new tensor: blocks may hand out views
        for block in blocks[2:]:
            total += block.logits(start, stop)
    return total / len(blocks)
