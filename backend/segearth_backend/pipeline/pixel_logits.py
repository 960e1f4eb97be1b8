"""A window's logits per pixel, and the exact low-rank coordinates they are computed in (torch).

SimFeatUp's output is ``F = U(A P) + b`` with ``U`` linear and the same for every channel (see
:mod:`.features`), so the logits of unit queries need only the queries' own upsampling (:class:`QueryLogits`)
or, with more queries than coordinates, the window's exact coordinates upsampled once
(:class:`UpsampledFeatures`); bilinear upsampling (the ablation mode) is :class:`BilinearFeatures`. Each is a
:class:`PixelLogits`: ``logits(start, stop)`` gives ``(stop - start) x rows x cols`` for a chunk of queries.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Protocol

import torch
import torch.nn.functional as F

from ..upsampler.jbu import JBUOne


def exact_coordinates(mixed: torch.Tensor, bias: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """The fewest exact coordinates of ``mixed`` columns plus ``bias`` (see :func:`reduced_basis`).

    Args:
        mixed: ``B x D x h x w`` (the patch features through the fixup's linear part).
        bias: ``D``, the fixup's bias.

    Returns:
        ``coords`` ``B x r x h x w``, ``offset`` ``B x r`` and ``basis`` ``B x D x r`` (None when ``r = D``).
    """
    batch, dim, rows, cols = mixed.shape
    if dim <= rows * cols + 1:
        return mixed, bias.expand(batch, dim), None
    flat = mixed.reshape(batch, dim, rows * cols)
    basis, factors = torch.linalg.qr(torch.cat([flat, bias.reshape(1, dim, 1).expand(batch, dim, 1)], dim=2))
    rank = factors.shape[1]
    return factors[:, :, :rows * cols].reshape(batch, rank, rows, cols), factors[:, :, rows * cols], basis


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
    mixed = (weight @ patches.reshape(batch, dim, rows * cols)).reshape(batch, dim, rows, cols)
    return exact_coordinates(mixed, bias)


def reduced_coordinates(upsampler: JBUOne, patches: torch.Tensor, queries: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`reduced_basis` with the queries ``Q x D`` expressed in the same coordinates (``B x r x Q``)."""
    coords, offset, basis = reduced_basis(upsampler, patches)
    if basis is None:
        return coords, offset, queries.T.expand(patches.shape[0], *queries.T.shape)
    return coords, offset, basis.transpose(1, 2) @ queries.T


class PixelLogits(Protocol):
    """The logits of one query set over a rectangle of one window (``height x width`` pixels)."""

    @property
    def height(self) -> int: ...

    @property
    def width(self) -> int: ...

    def logits(self, start: int, stop: int) -> torch.Tensor:
        """``(stop - start) x height x width`` float32 logits of queries ``start .. stop - 1``."""
        ...

    def crop(self, rows: slice, cols: slice) -> PixelLogits:
        """A sub-rectangle, in its own memory (the original can be freed)."""
        ...


@dataclass
class QueryLogits:
    """Logits computed for the whole query set at once (the query path): ``Q x h x w`` float32."""

    values: torch.Tensor

    @property
    def height(self) -> int:
        return int(self.values.shape[1])

    @property
    def width(self) -> int:
        return int(self.values.shape[2])

    def logits(self, start: int, stop: int) -> torch.Tensor:
        return self.values[start:stop]

    def crop(self, rows: slice, cols: slice) -> QueryLogits:
        return QueryLogits(self.values[:, rows, cols].clone(memory_format=torch.contiguous_format))


@dataclass
class UpsampledFeatures:
    """SimFeatUp features of a window rectangle in exact reduced coordinates (the coordinate path).

    Attributes:
        cls_unit: ``D`` unit CLS feature of the window.
        coords: ``r x h x w`` float32 upsampled features (offset included).
        norm: ``h x w`` float32 feature norms (clamped at 1e-12).
        basis: ``D x r`` orthonormal basis of the coordinates, or None when
            they are the ``D`` channels themselves.
        queries: ``Q x D`` unit queries; bias_lambda: the global-bias weight.
    """

    cls_unit: torch.Tensor
    coords: torch.Tensor
    norm: torch.Tensor
    basis: Optional[torch.Tensor]
    queries: torch.Tensor
    bias_lambda: float

    @property
    def height(self) -> int:
        return int(self.coords.shape[1])

    @property
    def width(self) -> int:
        return int(self.coords.shape[2])

    def logits(self, start: int, stop: int) -> torch.Tensor:
        queries = self.queries[start:stop]
        directions = queries.T if self.basis is None else self.basis.T @ queries.T  # r x Q
        bias = self.bias_lambda * self.cls_unit[None] @ queries.T  # 1 x Q
        dots = torch.einsum("rhw,rq->qhw", self.coords, directions)
        return dots / self.norm + bias[0, :, None, None]

    def crop(self, rows: slice, cols: slice) -> UpsampledFeatures:
        # Channels first and contiguous: the query products then come out contiguous as well.
        return replace(self, coords=self.coords[:, rows, cols].clone(memory_format=torch.contiguous_format),
                       norm=self.norm[rows, cols].clone(memory_format=torch.contiguous_format))


@dataclass
class BilinearFeatures:
    """Low-resolution features of a window rectangle, upsampled bilinearly per query (the ablation mode).

    The logits are computed at the token grid and interpolated to the padded
    window (interpolation is linear, so this is the paper's baseline), then
    cropped to the rectangle ``top:top+rows, left:left+cols`` of the padded window.

    Attributes:
        cls_unit: ``D`` unit CLS feature; patches: ``D x h x w`` unit patch features;
        padded: the padded window size (rows, cols); queries: ``Q x D`` unit queries.
    """

    cls_unit: torch.Tensor
    patches: torch.Tensor
    padded: tuple[int, int]
    top: int
    left: int
    rows: int
    cols: int
    queries: torch.Tensor
    bias_lambda: float

    @property
    def height(self) -> int:
        return self.rows

    @property
    def width(self) -> int:
        return self.cols

    def logits(self, start: int, stop: int) -> torch.Tensor:
        queries = self.queries[start:stop]
        bias = self.bias_lambda * self.cls_unit[None] @ queries.T  # 1 x Q
        low = torch.einsum("dhw,qd->qhw", self.patches, queries) + bias[0, :, None, None]
        full = F.interpolate(low[None], size=self.padded, mode="bilinear", align_corners=False)[0]
        return full[:, self.top:self.top + self.rows, self.left:self.left + self.cols]

    def crop(self, rows: slice, cols: slice) -> BilinearFeatures:
        top, bottom, _ = rows.indices(self.rows)
        left, right, _ = cols.indices(self.cols)
        return replace(self, top=self.top + top, left=self.left + left, rows=bottom - top, cols=right - left)
