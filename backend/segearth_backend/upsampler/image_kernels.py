"""The upsampler kernels of every window of one image, computed once where windows overlap (CPU, numba).

SimFeatUp's kernels at a step depend only on the guidance pooled to that
step's grid. Overlapping windows whose origins sit on the pooled grid see the
same pooled guidance, so away from their edges their kernels are the same.
Per step, the windows that qualify (unpadded, origin a multiple of twice the
pooling factor, large enough) share one *region*: the bounding box of those
windows. The region's composite kernels (:mod:`.composite_step`) are computed once,
in horizontal stripes; each window then computes only the ``FRAME``-pixel
strips along its edges that lie inside the region, where its own border
(reflection, bicubic clamping) makes its kernels differ. Windows that do not
qualify (padded, shifted off the grid, and every window at the two coarse
steps, where the strips would cover most of the window) compute their own.
The result equals per-window computation exactly (up to float rounding).

Stripes are computed when a window first needs them and freed when the last
window using them is released, unless the store is kept (for the feature
cache), so memory follows about two window rows.

Coordinates are (row, column); step ``s`` (1..4) has ``2**(4 - s)`` image pixels
per pixel of its output grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..windows import Window
from . import composite_step, neighbourhood, neighbourhood_numba
from .heap import release_free_memory
from .jbu import RADIUS, STEPS, JointBilateralStep
from .neighbourhood import _reflect_index_cpu

#: A step's output must be at least this many pixels per side for windows to share a region.
SHARE_MIN = 64
#: Image pixels between stripe edges (the window stride: a regular window spans two stripes).
STRIPE_PIXELS = 112
#: Pixels whose kernels are computed together. Bounds the work space: each buffer of a pass is under
#: 16 MB, below glibc's largest mmap threshold (32 MB), so its pages are reused from the heap pass after
#: pass instead of being mapped and zeroed anew (65536 pixels made 32.5 MB buffers: 30-50 % more page
#: faults per run).
PIXELS_PER_PASS = 32768
KERNEL_BYTES = composite_step.TAPS_LOW * 4

#: ``guidance(y0, y1, x0, x1)``: the normalised image rectangle, ``1 x 3 x (y1 - y0) x (x1 - x0)``.
GuidanceFn = Callable[[int, int, int, int], torch.Tensor]


@dataclass
class StepKernels:
    """The composite kernels of one window at one step (the arguments of :func:`composite_step.upsample_x2`).

    Attributes:
        stripes: kernel stripes ``rows x cols x 81``; output row ``y`` reads stripe row
            ``first_row + y`` (counted from the first stripe), column ``col0 + x``.
        frames: ``top`` / ``bottom`` / ``left`` / ``right`` edge strips that win over the stripes.
    """

    stripes: list[torch.Tensor]
    stripe_rows: int
    first_row: int = 0
    col0: int = 0
    frames: dict[str, torch.Tensor] = field(default_factory=dict)
    #: The stripe is the window's own (not shared with other windows).
    own: bool = False

    @property
    def own_bytes(self) -> int:
        """Bytes held by this window alone: its frames, or its own kernels."""
        own = sum(t.numel() for t in self.stripes) if self.own else 0
        return (own + sum(t.numel() for t in self.frames.values())) * 4


@dataclass
class WindowKernels:
    """The four steps' kernels of one window: a linear map ``h x w x C -> 16h x 16w x C``, the same per channel."""

    steps: list[StepKernels]
    own_bytes: int

    @torch.inference_mode()
    def apply(self, source: torch.Tensor, *, features: bool = True, offset: Optional[torch.Tensor] = None,
              split: int = 0) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Upsample ``source`` (``h x w x C`` float32, channels last) through the four steps.

        Args:
            split: when above 0, the norms take channels ``0 .. split - 1`` and the output holds channels
                ``split ..`` (two sources upsampled in one pass).

        Returns:
            ``(16h x 16w x C or None, 16h x 16w norms of output + offset, or None)``: the features when
            ``features``, the norms when ``offset`` (``C``) is given.
        """
        x, norm = source, None
        for number, step in enumerate(self.steps):
            last = number == len(self.steps) - 1
            out, norm = composite_step.upsample_x2(x, step.stripes, step.stripe_rows, step.first_row, step.col0,
                                              step.frames, features=features or not last,
                                              offset=offset if last else None, split=split if last else 0)
            if out is not None:
                x = out
        return (x if features else None), norm


@dataclass
class _Region:
    """The windows sharing kernels at one step and their bounding box (image pixels, then step pixels)."""

    factor: int
    members: set[int]
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def height(self) -> int:
        return (self.y1 - self.y0) // self.factor

    @property
    def width(self) -> int:
        return (self.x1 - self.x0) // self.factor

    @property
    def stripe_rows(self) -> int:
        return STRIPE_PIXELS // self.factor

    def stripes_of(self, window: Window) -> range:
        top = (window.y0 - self.y0) // self.factor
        bottom = top + window.height // self.factor
        return range(top // self.stripe_rows, (bottom - 1) // self.stripe_rows + 1)

    def edges_inside(self, window: Window) -> list[str]:
        """The window's edges that lie inside the region (where its own kernels differ)."""
        return [side for side, inside in (("top", window.y0 > self.y0), ("bottom", window.y1 < self.y1),
                                          ("left", window.x0 > self.x0), ("right", window.x1 < self.x1)) if inside]


def _factor(step: int) -> int:
    return 1 << (STEPS - step)


def _shares(window: Window, factor: int) -> bool:
    return (not window.pad.any and window.y0 % (2 * factor) == 0 and window.x0 % (2 * factor) == 0
            and min(window.height, window.width) // factor >= SHARE_MIN)


def plan_regions(windows: list[Window]) -> dict[int, _Region]:
    """Per step (1..4), the region of the windows that share kernels (steps where fewer than two do: none)."""
    regions = {}
    for step in range(1, STEPS + 1):
        factor = _factor(step)
        members = {i for i, w in enumerate(windows) if _shares(w, factor)}
        if len(members) < 2:
            continue
        chosen = [windows[i] for i in members]
        regions[step] = _Region(factor, members, min(w.y0 for w in chosen), max(w.y1 for w in chosen),
                                min(w.x0 for w in chosen), max(w.x1 for w in chosen))
    return regions


def estimate_bytes(windows: list[Window]) -> int:
    """Bytes of all the composite kernels of ``windows`` (what a kept store holds once complete)."""
    regions = plan_regions(windows)
    total = 0
    for step in range(1, STEPS + 1):
        factor, region = _factor(step), regions.get(step)
        if region is not None:
            total += region.height * region.width
        for index, window in enumerate(windows):
            height, width = window.padded_height // factor, window.padded_width // factor
            if region is None or index not in region.members:
                total += height * width
                continue
            for side in region.edges_inside(window):
                total += composite_step.FRAME * (width if side in ("top", "bottom") else height)
    return total * KERNEL_BYTES


class ImageKernels:
    """The composite kernels of one image's windows, computed on demand.

    Work is batched: the stripes of a region step, and for the windows of one
    window row (same rows, same shape) their own kernels and edge frames
    together, so the CPU runs few, large parallel loops.

    Args:
        step: the upsampler's joint-bilateral step.
        guidance: ``guidance(y0, y1, x0, x1)``, the normalised (and masked) image rectangle.
        windows: the image's sliding windows.
        keep: keep everything computed (the store goes into the feature cache); otherwise stripes are
            freed when the last window using them is released, a window's own parts when it is.
        matmul_dtype: the dtype of the kernels' fixup matrix products (:meth:`JointBilateralStep.finish`):
            None (float32), or ``torch.bfloat16`` in the engine's bfloat16 mode.
    """

    def __init__(self, step: JointBilateralStep, guidance: GuidanceFn, windows: list[Window], keep: bool,
                 matmul_dtype: Optional[torch.dtype] = None) -> None:
        self.step = step
        self.matmul_dtype = matmul_dtype
        self.guidance = guidance
        self.windows = windows
        self.keep = keep
        self.regions = plan_regions(windows)
        self._stripes: dict[tuple[int, int], torch.Tensor] = {}
        self._users: dict[tuple[int, int], int] = {}
        for number, region in self.regions.items():
            for index in region.members:
                for stripe in region.stripes_of(windows[index]):
                    self._users[(number, stripe)] = self._users.get((number, stripe), 0) + 1
        self._groups: dict[tuple[int, int, int], list[int]] = {}
        for index, w in enumerate(windows):
            self._groups.setdefault((w.y0, w.padded_height, w.padded_width), []).append(index)
        #: Per window and step: its own kernels, or its frames (prepared a window row at a time).
        self._parts: dict[int, dict[int, StepKernels]] = {}
        self._windows: dict[int, WindowKernels] = {}
        self._released: set[int] = set()
        self.temperature = float(step.temperature().detach())
        self.spatial = step.spatial_kernel().contiguous()

    @property
    def nbytes(self) -> int:
        """Bytes of kernels held now."""
        stripes = sum(t.numel() for t in self._stripes.values())
        parts = sum(sum(t.numel() for t in p.frames.values()) + (sum(t.numel() for t in p.stripes) if p.own else 0)
                    for steps in self._parts.values() for p in steps.values())
        return (stripes + parts) * 4

    # ------------------------------------------------------------ public
    @torch.inference_mode()
    def window(self, index: int) -> WindowKernels:
        """The kernels of window ``index`` (computed now if needed)."""
        if index in self._windows:
            return self._windows[index]
        if index not in self._parts:
            self._prepare_group(index)
        parts = self._parts[index]
        steps = []
        for number in range(1, STEPS + 1):
            part = parts[number]
            if part.own:
                steps.append(part)
                continue
            region, window = self.regions[number], self.windows[index]
            stripes = region.stripes_of(window)
            top = (window.y0 - region.y0) // region.factor
            steps.append(StepKernels([self._stripe(number, region, j) for j in stripes], region.stripe_rows,
                                     top - stripes[0] * region.stripe_rows, (window.x0 - region.x0) // region.factor,
                                     part.frames))
        kernels = WindowKernels(steps, sum(s.own_bytes for s in steps))
        if self.keep:
            self._windows[index] = kernels
        return kernels

    def release(self, index: int) -> None:
        """Window ``index`` is done: free its own parts and the stripes nobody needs any more (unless kept)."""
        if self.keep or index in self._released:
            return
        self._released.add(index)
        self._parts.pop(index, None)
        for number, region in self.regions.items():
            if index not in region.members:
                continue
            for stripe in region.stripes_of(self.windows[index]):
                key = (number, stripe)
                self._users[key] -= 1
                if self._users[key] == 0:
                    self._stripes.pop(key, None)

    # ------------------------------------------------------------ kernels
    def _kernels(self, keys: torch.Tensor, guidance: torch.Tensor, rows: np.ndarray, cols: np.ndarray,
                 row_frame: tuple[int, int], col_frame: tuple[int, int]) -> torch.Tensor:
        """Composite kernels ``B x n x m x 81`` for output rows / columns given by reflect maps into ``keys``.

        Args:
            keys, guidance: ``B x h x w x 32`` and ``B x h x w x 3`` (a batch of same-shape frames).
            rows: maps the padded output rows (``n + 2r``) to rows of ``keys``; ``row_frame`` is
                ``(first output row, frame height)`` in the frame whose border the maps reflect at;
                ``cols`` and ``col_frame`` likewise.
        """
        batch = keys.shape[0]
        height, width = rows.shape[0] - 2 * RADIUS, cols.shape[0] - 2 * RADIUS
        out = torch.empty(batch, height, width, composite_step.TAPS_LOW)
        per_pass = max(1, PIXELS_PER_PASS // (width * batch))
        keys_np, guidance_np = keys.contiguous().numpy(), guidance.contiguous().numpy()
        for start in range(0, height, per_pass):
            stop = min(start + per_pass, height)
            weights = np.empty((batch, stop - start, width, self.spatial.shape[0] + guidance.shape[-1]), np.float32)
            neighbourhood_numba.range_logits(keys_np, guidance_np, rows[start:stop + 2 * RADIUS], cols,
                                       self.temperature, weights)
            neighbourhood.normalise_range_(torch.from_numpy(weights)[..., :self.spatial.shape[0]], self.spatial)
            kernel = self.step.finish(torch.from_numpy(weights), self.matmul_dtype)
            kernel = kernel.reshape(batch * (stop - start), width, -1)
            out[:, start:stop] = composite_step.compose(
                kernel, (row_frame[0] + start, row_frame[0] + stop, row_frame[1]),
                (col_frame[0], col_frame[0] + width, col_frame[1]), repeat=batch).reshape(batch, stop - start,
                                                                                          width, -1)
        return out

    def _pooled(self, y0: int, y1: int, x0: int, x1: int, factor: int) -> torch.Tensor:
        """The guidance of image rectangle ``y0:y1, x0:x1`` pooled by ``factor``, channels last."""
        image = self.guidance(y0, y1, x0, x1)
        pooled = F.avg_pool2d(image, factor) if factor > 1 else image
        return pooled[0].permute(1, 2, 0).contiguous()

    def _stripe(self, number: int, region: _Region, stripe: int) -> torch.Tensor:
        key = (number, stripe)
        if key in self._stripes:
            return self._stripes[key]
        factor, rows = region.factor, region.stripe_rows
        r0, r1 = stripe * rows, min((stripe + 1) * rows, region.height)
        p0, p1 = max(r0 - RADIUS, 0), min(r1 + RADIUS, region.height)
        guidance = self._pooled(region.y0 + p0 * factor, region.y0 + p1 * factor, region.x0, region.x1, factor)
        keys = self.step.keys(guidance)
        row_map = _reflect_index_cpu(region.height, RADIUS).numpy()[r0:r1 + 2 * RADIUS] - p0
        col_map = _reflect_index_cpu(region.width, RADIUS).numpy()
        tensor = self._kernels(keys[None], guidance[None], row_map, col_map, (r0, region.height),
                               (0, region.width))[0]
        self._stripes[key] = tensor
        return tensor

    def _prepare_group(self, index: int) -> None:
        """Own kernels and edge frames of every window in ``index``'s window row (same rows and shape)."""
        release_free_memory()  # the previous row's transient buffers (see heap.py)
        w = self.windows[index]
        group = [i for i in self._groups[(w.y0, w.padded_height, w.padded_width)]
                 if i not in self._parts and i not in self._released]
        parts: dict[int, dict[int, StepKernels]] = {i: {} for i in group}
        for number in range(1, STEPS + 1):
            region = self.regions.get(number)
            own = [i for i in group if region is None or i not in region.members]
            if own:
                for i, part in zip(own, self._own_kernels(own, number)):
                    parts[i][number] = part
            shared = [i for i in group if i not in own]
            if shared and region is not None:
                for i, frames in zip(shared, self._frames(shared, region)):
                    parts[i][number] = StepKernels([], 0, frames=frames)
        self._parts.update(parts)

    def _window_guidance(self, indices: list[int], factor: int, padded: bool) -> torch.Tensor:
        """The pooled guidance ``B x h x w x 3`` of same-shape windows (padded windows pooled adaptively)."""
        crops = []
        for index in indices:
            w = self.windows[index]
            image = self.guidance(w.y0, w.y1, w.x0, w.x1)
            if padded:
                image = F.pad(image, (w.pad.left, w.pad.right, w.pad.top, w.pad.bottom))
                image = F.adaptive_avg_pool2d(image, (w.padded_height // factor, w.padded_width // factor))
            elif factor > 1:
                image = F.avg_pool2d(image, factor)
            crops.append(image)
        return torch.cat(crops).permute(0, 2, 3, 1).contiguous()

    def _frames(self, indices: list[int], region: _Region) -> list[dict[str, torch.Tensor]]:
        """The edge strips of same-shape windows sharing a region (each side computed for all that need it)."""
        sides = [region.edges_inside(self.windows[i]) for i in indices]
        frames: list[dict[str, torch.Tensor]] = [{} for _ in indices]
        if not any(sides):
            return frames
        guidance = self._window_guidance(indices, region.factor, padded=False)
        height, width = guidance.shape[1:3]
        rows = _reflect_index_cpu(height, RADIUS).numpy()
        cols = _reflect_index_cpu(width, RADIUS).numpy()
        edge = composite_step.FRAME
        for side in ("top", "bottom", "left", "right"):
            batch = [position for position, found in enumerate(sides) if side in found]
            if not batch:
                continue
            first = 0 if side in ("top", "left") else (height if side == "bottom" else width) - edge
            # The keys of the band the strip reads only (its rows or columns and their reflections).
            if side in ("top", "bottom"):
                band = rows[first:first + edge + 2 * RADIUS]
                lo, hi = int(band.min()), int(band.max()) + 1
                part = guidance[batch, lo:hi]
                strips = self._kernels(self.step.keys(part), part, band - lo, cols, (first, height), (0, width))
            else:
                band = cols[first:first + edge + 2 * RADIUS]
                lo, hi = int(band.min()), int(band.max()) + 1
                part = guidance[batch, :, lo:hi]
                strips = self._kernels(self.step.keys(part), part, rows, band - lo, (0, height), (first, width))
            for position, strip in zip(batch, strips):
                frames[position][side] = strip
        return frames

    def _own_kernels(self, indices: list[int], number: int) -> list[StepKernels]:
        """The own kernels at one step of same-shape windows (computed together)."""
        w = self.windows[indices[0]]
        factor = _factor(number)
        guidance = self._window_guidance(indices, factor, padded=True)
        keys = self.step.keys(guidance)
        height, width = w.padded_height // factor, w.padded_width // factor
        tensors = self._kernels(keys, guidance, _reflect_index_cpu(height, RADIUS).numpy(),
                                _reflect_index_cpu(width, RADIUS).numpy(), (0, height), (0, width))
        return [StepKernels([tensor], height, own=True) for tensor in tensors]
