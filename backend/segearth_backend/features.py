"""The image work of SegEarth-OV: per-window features that do not depend on the class list.

For every sliding window the image tower gives a CLS feature and patch
features; SimFeatUp (or, in the ablation mode, bilinear interpolation) turns
the patch features into one feature per pixel. None of this depends on the
class queries, so a window's features can be computed once and asked for the
logits of any query set (the seam for a per-window feature cache).
:mod:`.decision` turns logits into probabilities and labels; :mod:`.segmenter`
walks the image and connects the two.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .device import autocast
from .errors import PredictionCancelledError
from .upsampler import JBUOne
from .vision import image_features
from .windows import Window

#: CLIP's normalisation constants times 255 (RGB order).
PIXEL_MEAN = (122.771, 116.746, 104.094)
PIXEL_STD = (68.501, 66.632, 70.323)


def normalise(image: np.ndarray, valid: Optional[np.ndarray], device: torch.device) -> torch.Tensor:
    """``H x W x 3`` uint8 RGB -> ``1 x 3 x H x W`` float32 ``(x - mean) / std``; invalid pixels 0."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).float().unsqueeze(0)
    mean = torch.tensor(PIXEL_MEAN, device=device).reshape(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=device).reshape(1, 3, 1, 1)
    tensor = (tensor - mean) / std
    if valid is not None:
        tensor = tensor * torch.from_numpy(np.ascontiguousarray(valid)).to(device)
    return tensor


def reduced_basis(upsampler: JBUOne, patches: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Express the upsampled features in the fewest exact coordinates.

    The upsampler output is ``F = A U(P) + c = U(A P) + c`` (``U``, the four
    joint-bilateral steps, is linear and shared by all channels; ``A, c``
    the final 1x1 fixup). Every pixel of ``F`` is thus a combination of the
    ``h*w`` columns of ``A P`` plus ``c``. When that is fewer than ``D``
    vectors, an orthonormal basis ``V`` of their span (``[A P | c] = V T``,
    thin QR) lets ``U`` run on ``r = h*w + 1`` channels instead of ``D``:
    norms and dot products with queries are the same in those coordinates.

    Args:
        patches: ``B x D x h x w`` float32 patch features.

    Returns:
        ``coords`` ``B x r x h x w`` (to upsample), ``offset`` ``B x r``
        (added after upsampling) and ``basis`` ``B x D x r`` (None when
        ``r = D`` and the coordinates are the channels themselves).
    """
    weight, bias = upsampler.final_affine()
    batch, dim, rows, cols = patches.shape
    mixed = weight @ patches.reshape(batch, dim, rows * cols)  # B x D x hw
    if dim <= rows * cols + 1:
        return mixed.reshape(batch, dim, rows, cols), bias.expand(batch, dim), None
    basis, factors = torch.linalg.qr(torch.cat([mixed, bias.reshape(1, dim, 1).expand(batch, dim, 1)], dim=2))
    rank = factors.shape[1]
    coords = factors[:, :, :rows * cols].reshape(batch, rank, rows, cols)
    return coords, factors[:, :, rows * cols], basis


def reduced_coordinates(upsampler: JBUOne, patches: torch.Tensor, queries: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`reduced_basis` with the queries ``Q x D`` expressed in the same coordinates (``B x r x Q``)."""
    coords, offset, basis = reduced_basis(upsampler, patches)
    if basis is None:
        return coords, offset, queries.T.expand(patches.shape[0], *queries.T.shape)
    return coords, offset, basis.transpose(1, 2) @ queries.T


class PixelFeatures(Protocol):
    """Query-independent features of a rectangle of one window (``height x width`` pixels)."""

    @property
    def height(self) -> int: ...

    @property
    def width(self) -> int: ...

    def logits(self, queries: torch.Tensor, bias_lambda: float) -> torch.Tensor:
        """``Q x height x width`` float32 logits ``f . t + bias_lambda * (c / |c|) . t`` for unit queries ``Q x D``."""
        ...

    def crop(self, rows: slice, cols: slice) -> PixelFeatures:
        """The features of a sub-rectangle, in their own memory (the original can be freed)."""
        ...


@dataclass
class UpsampledFeatures:
    """SimFeatUp features of a window rectangle, in the exact reduced coordinates of :func:`reduced_basis`.

    Attributes:
        cls_unit: ``D`` unit CLS feature of the window.
        coords: ``r x h x w`` float32 upsampled features (offset included).
        norm: ``1 x h x w`` float32 feature norms (clamped at 1e-12).
        basis: ``D x r`` orthonormal basis of the coordinates, or None when
            they are the ``D`` channels themselves.
    """

    cls_unit: torch.Tensor
    coords: torch.Tensor
    norm: torch.Tensor
    basis: Optional[torch.Tensor]

    @property
    def height(self) -> int:
        return int(self.coords.shape[1])

    @property
    def width(self) -> int:
        return int(self.coords.shape[2])

    def logits(self, queries: torch.Tensor, bias_lambda: float) -> torch.Tensor:
        directions = queries.T if self.basis is None else self.basis.T @ queries.T  # r x Q
        bias = bias_lambda * self.cls_unit[None] @ queries.T  # 1 x Q
        dots = torch.einsum("rhw,rq->qhw", self.coords, directions)
        return dots / self.norm + bias[0, :, None, None]

    def crop(self, rows: slice, cols: slice) -> UpsampledFeatures:
        # Channels first and contiguous: the query products then come out contiguous as well.
        return replace(self, coords=self.coords[:, rows, cols].clone(memory_format=torch.contiguous_format),
                       norm=self.norm[:, rows, cols].clone(memory_format=torch.contiguous_format))


@dataclass
class BilinearFeatures:
    """Low-resolution features of a window rectangle, upsampled bilinearly per query (the ablation mode).

    The logits are computed at the token grid and interpolated to the padded
    window (interpolation is linear, so this is the paper's baseline), then
    cropped to the rectangle ``top:top+height, left:left+width`` of the padded window.

    Attributes:
        cls_unit: ``D`` unit CLS feature; patches: ``D x h x w`` unit patch features;
        padded: the padded window size (rows, cols).
    """

    cls_unit: torch.Tensor
    patches: torch.Tensor
    padded: tuple[int, int]
    top: int
    left: int
    rows: int
    cols: int

    @property
    def height(self) -> int:
        return self.rows

    @property
    def width(self) -> int:
        return self.cols

    def logits(self, queries: torch.Tensor, bias_lambda: float) -> torch.Tensor:
        bias = bias_lambda * self.cls_unit[None] @ queries.T  # 1 x Q
        low = torch.einsum("dhw,qd->qhw", self.patches, queries) + bias[0, :, None, None]
        full = F.interpolate(low[None], size=self.padded, mode="bilinear", align_corners=False)[0]
        return full[:, self.top:self.top + self.rows, self.left:self.left + self.cols]

    def crop(self, rows: slice, cols: slice) -> BilinearFeatures:
        top, bottom, _ = rows.indices(self.rows)
        left, right, _ = cols.indices(self.cols)
        return replace(self, top=self.top + top, left=self.left + left, rows=bottom - top, cols=right - left)


class StageTimer(Protocol):
    """Adds the time spent in a ``with timer.stage(name):`` block to that stage."""

    def stage(self, name: str) -> Any: ...


@dataclass(frozen=True)
class ImageTower:
    """What the image work needs from the engine: the models, the device and the batch sizes."""

    visual: Any
    upsampler: Optional[JBUOne]
    device: torch.device
    dtype: Optional[torch.dtype]
    batch_size: int


class WindowFeatureSource:
    """Computes the features of one image's windows on demand, in batches, in window order.

    The image tower runs ``batch_size`` windows at a time (its outputs are
    small: ``D x h x w`` per window); the upsampler, whose output is large,
    runs when a window is first asked for (one window at a time on the CPU,
    where that stays in cache; a batch of the next windows on a GPU).

    ``should_stop()`` is asked before every batch (raises
    :class:`~segearth_backend.errors.PredictionCancelledError`);
    ``progress(done, total)`` is told after every window's features are ready.
    """

    def __init__(self, tower: ImageTower, image: np.ndarray, valid: Optional[np.ndarray], windows: list[Window],
                 timer: StageTimer, should_stop: Optional[Callable[[], bool]] = None,
                 progress: Optional[Callable[[int, int], None]] = None) -> None:
        self.tower = tower
        self.image, self.valid, self.windows = image, valid, windows
        self.timer = timer
        self.should_stop = should_stop
        self.progress = progress
        self._tower_out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._next_tower = 0
        self.done = 0

    def _check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise PredictionCancelledError(
                f"The segmentation was cancelled after {self.done} of {len(self.windows)} windows.")

    def _crop(self, index: int) -> torch.Tensor:
        """The normalised, padded window ``1 x 3 x Hp x Wp``."""
        w = self.windows[index]
        valid = None if self.valid is None else self.valid[w.y0:w.y1, w.x0:w.x1]
        crop = normalise(self.image[w.y0:w.y1, w.x0:w.x1], valid, self.tower.device)
        return F.pad(crop, (w.pad.left, w.pad.right, w.pad.top, w.pad.bottom))

    def _run_tower(self, index: int) -> None:
        """Image tower on the next batch of same-shape windows, starting at ``index``."""
        self._check_stop()
        first = self.windows[index]
        shape = (first.padded_height, first.padded_width)
        batch = [index]
        while (len(batch) < self.tower.batch_size and batch[-1] + 1 < len(self.windows)
               and batch[-1] + 1 not in self._tower_out):
            following = self.windows[batch[-1] + 1]
            if (following.padded_height, following.padded_width) != shape:
                break
            batch.append(batch[-1] + 1)
        crops = torch.cat([self._crop(i) for i in batch])
        with self.timer.stage("image_tower"), autocast(self.tower.device, self.tower.dtype):
            cls, patches = image_features(self.tower.visual, crops)
        for position, i in enumerate(batch):
            self._tower_out[i] = (cls[position].float(), patches[position].float())
        self._next_tower = max(self._next_tower, batch[-1] + 1)

    def _tower_features(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index not in self._tower_out:
            self._run_tower(index)
        return self._tower_out.pop(index)

    def features(self, index: int) -> list[tuple[int, PixelFeatures]]:
        """The features of window ``index`` (and, on a GPU, of a few windows after it).

        Returns:
            ``(window index, features of its unpadded extent)`` pairs, ``index`` first.
        """
        indices = [index]
        if self.tower.device.type == "cuda":  # the upsampler takes a whole batch at once on a GPU
            while (len(indices) < self.tower.batch_size and indices[-1] + 1 < len(self.windows)
                   and (indices[-1] + 1 in self._tower_out or indices[-1] + 1 >= self._next_tower)):
                indices.append(indices[-1] + 1)
        outputs = [self._tower_features(i) for i in indices]
        self._check_stop()
        cls = torch.stack([c for c, _ in outputs])
        patches = torch.stack([p for _, p in outputs])
        cls_unit = F.normalize(cls, dim=-1)
        result: list[tuple[int, PixelFeatures]] = []
        if self.tower.upsampler is None:
            with self.timer.stage("logits"):
                units = F.normalize(patches, dim=1)
            for position, i in enumerate(indices):
                w = self.windows[i]
                result.append((i, BilinearFeatures(cls_unit[position], units[position],
                                                   (w.padded_height, w.padded_width), w.pad.top, w.pad.left,
                                                   w.height, w.width)))
        else:
            guidance = torch.cat([self._crop(i) for i in indices])
            with self.timer.stage("upsampler"):
                coords, offset, basis = reduced_basis(self.tower.upsampler, patches)
                with autocast(self.tower.device, self.tower.dtype):
                    kernels = self.tower.upsampler.step_kernels(guidance, *patches.shape[-2:])
                    upsampled = self.tower.upsampler.spatial(coords, kernels)
                upsampled = upsampled.float() + offset[:, :, None, None]
            with self.timer.stage("logits"):
                for position, i in enumerate(indices):
                    w = self.windows[i]
                    rows = slice(w.pad.top, w.pad.top + w.height)
                    cols = slice(w.pad.left, w.pad.left + w.width)
                    window = upsampled[position, :, rows, cols]
                    norm = window.norm(dim=0, keepdim=True).clamp(min=1e-12)
                    result.append((i, UpsampledFeatures(cls_unit[position], window, norm,
                                                        None if basis is None else basis[position])))
        self.done += len(indices)
        if self.progress is not None:
            self.progress(self.done, len(self.windows))
        return result
