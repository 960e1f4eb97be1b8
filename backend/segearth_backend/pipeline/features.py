"""The image work of SegEarth-OV: per-window features that do not depend on the class list, and their logits.

For every sliding window the image tower gives a CLS feature ``c`` and patch
features ``P`` (``D x h x w``); SimFeatUp (or, in the ablation mode, bilinear
interpolation) turns them into one feature ``F`` per pixel (:mod:`.pixel_logits`: the
exact low-rank coordinates and the per-pixel logits of a window). None of this
depends on the class queries. :class:`WindowFeatures` keeps what a window
needs to answer *any* query set (what the feature cache stores, about 0.6 MB
per 224-pixel window): the unit CLS feature, the low-resolution features and,
with SimFeatUp, the norm of ``F`` at every pixel.

SimFeatUp's output is ``F = U(A P) + b``: ``U``, the four joint-bilateral
steps, is linear and the same for every channel; ``A, b`` are the final 1x1
fixup. So for a unit query ``t`` the logit ``F . t / |F|`` needs only the
one-channel upsampling ``U(t^T A P)``: a query set of ``Q`` queries costs a
``Q``-channel upsampling (the *query path*). The norms ``|F|`` come from
upsampling the window's exact low-rank coordinates once (:func:`reduced_basis`:
``h w + 1`` channels instead of ``D``). With more queries than coordinates
those coordinates are upsampled and kept instead, and each chunk of queries
is a dot product with them (the *coordinate path*): memory never grows with
the number of queries. :mod:`.decision` turns logits into labels;
:mod:`.segmenter` walks the image and connects the two.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..device import autocast
from ..errors import PredictionCancelledError
from ..model.image_tower import image_features
from ..model.presets import DEFAULT_ATTENTION, DEFAULT_LAST_BLOCKS
from ..upsampler import kernel_store
from ..upsampler.jbu import JBUOne
from ..windows import Window
from . import feature_cache
from .feature_cache import FeatureCache
from .pixel_logits import BilinearFeatures, PixelLogits, QueryLogits, UpsampledFeatures, exact_coordinates

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


def image_guidance(image: np.ndarray, valid: Optional[np.ndarray], device: torch.device, y0: int, y1: int, x0: int,
                   x1: int) -> torch.Tensor:
    """The normalised (and masked) rectangle ``y0:y1, x0:x1`` of ``image`` (``H x W x 3`` uint8), ``1 x 3 x h x w``."""
    return normalise(image[y0:y1, x0:x1], None if valid is None else valid[y0:y1, x0:x1], device)


@dataclass
class WindowFeatures:
    """The class-independent features of one window (what the feature cache keeps).

    Attributes:
        cls_unit: ``D`` unit CLS feature.
        low: ``D x h x w`` float32: with SimFeatUp the patch features through the
            final fixup's linear part (``A P``); in bilinear mode the unit patch features.
        norm: ``H x W`` float32 norms of the upsampled features over the window's
            unpadded extent (clamped at 1e-12); None in bilinear mode.
    """

    cls_unit: torch.Tensor
    low: torch.Tensor
    norm: Optional[torch.Tensor]

    @property
    def nbytes(self) -> int:
        tensors = [self.cls_unit, self.low] + ([self.norm] if self.norm is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)


class StageTimer(Protocol):
    """Adds the time spent in a ``with timer.stage(name):`` block to that stage."""

    def stage(self, name: str) -> Any: ...


@dataclass(frozen=True)
class ImageTower:
    """What the image work needs from the engine: the models, the device, precision and batch size.

    ``dtype`` is the autocast dtype (CUDA), ``cast`` the dtype the image tower's weights were cast
    to (bfloat16 on a CPU), None for float32. ``attention`` and ``last_blocks``: the training-free
    attention of the tower's last blocks (:func:`~segearth_backend.model.image_tower.image_features`).
    """

    visual: Any
    upsampler: Optional[JBUOne]
    device: torch.device
    dtype: Optional[torch.dtype]
    batch_size: int
    cast: Optional[torch.dtype] = None
    attention: str = DEFAULT_ATTENTION
    last_blocks: int = DEFAULT_LAST_BLOCKS


@dataclass(frozen=True)
class QuerySet:
    """The queries a walk answers: ``Q x D`` unit embeddings, the global-bias weight, and the path."""

    embeddings: torch.Tensor
    bias_lambda: float
    #: True: upsample the queries themselves (the query path); False: the coordinates.
    by_query: bool


@dataclass
class CacheReport:
    """What the feature cache gave one walk (for ``Prediction.timings``)."""

    window_hits: int = 0
    window_misses: int = 0
    kernel_hit: bool = False


class WindowSource:
    """Computes (or takes from the feature cache) each window's features and their logits, in window order.

    The image tower runs ``batch_size`` uncached windows at a time (its
    outputs are small: ``D x h x w`` per window); the upsampler runs when a
    window is first asked for, one window at a time.

    ``should_stop()`` is asked before every window (raises
    :class:`~segearth_backend.errors.PredictionCancelledError`);
    ``progress(done, total)`` is told after every window's features are ready.
    """

    def __init__(self, tower: ImageTower, image: np.ndarray, valid: Optional[np.ndarray], windows: list[Window],
                 timer: StageTimer, queries: QuerySet, cache: FeatureCache, fingerprint: str,
                 should_stop: Optional[Callable[[], bool]] = None,
                 progress: Optional[Callable[[int, int], None]] = None) -> None:
        self.tower = tower
        self.image, self.valid, self.windows = image, valid, windows
        self.timer = timer
        self.queries = queries
        self.cache = cache
        self.should_stop = should_stop
        self.progress = progress
        self.report = CacheReport()
        self._tower_out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.done = 0
        self._keys: list[str] = []
        self._cached: dict[int, WindowFeatures] = {}
        if cache.enabled:  # take every hit now: later insertions cannot evict what this walk relies on
            for index, w in enumerate(windows):
                mask = None if valid is None else valid[w.y0:w.y1, w.x0:w.x1]
                key = feature_cache.window_key(fingerprint, image[w.y0:w.y1, w.x0:w.x1], mask,
                                               (w.pad.top, w.pad.bottom, w.pad.left, w.pad.right))
                self._keys.append(key)
                hit = cache.get(key)
                if hit is not None:
                    self._cached[index] = hit
            self.report.window_hits = len(self._cached)
        self.report.window_misses = len(windows) - self.report.window_hits
        self.kernels = self._kernel_store(fingerprint) if tower.upsampler is not None else None
        if tower.upsampler is not None:
            self.final_weight, self.final_bias = tower.upsampler.final_affine()

    def _kernel_store(self, fingerprint: str) -> kernel_store.KernelStore:
        """The image's kernel store: from the cache, or a new one (kept in the cache when it fits)."""
        assert self.tower.upsampler is not None
        key = feature_cache.image_key(fingerprint, self.image, self.valid) if self.cache.enabled else ""
        store = self.cache.get(key) if key else None
        if store is not None:
            self.report.kernel_hit = True
            return store
        missing = sum(w.padded_height * w.padded_width for i, w in enumerate(self.windows) if i not in self._cached)
        window_bytes = missing * 4 + len(self.windows) * 512 * 1024
        kernel_bytes = kernel_store.estimate_bytes(self.windows, self.tower.device)
        keep = key != "" and self.cache.fits(kernel_bytes + window_bytes)
        # The store holds a guidance function over the pixels only, never this walk: a kept store that held it
        # would form a reference cycle (walk -> store -> walk) that only the garbage collector frees, so evicted
        # stores (about 0.7 GB per megapixel) piled up in a long-running backend.
        guidance = functools.partial(image_guidance, self.image, self.valid, self.tower.device)
        store = kernel_store.kernel_store(self.tower.upsampler, guidance, self.windows, self.tower.device,
                                          self.tower.dtype, keep, self.tower.cast)
        if keep:
            self.cache.reserve(kernel_bytes + window_bytes)
            self.cache.put(key, store, kernel_bytes)
        return store

    # ------------------------------------------------------------ pixels
    def _guidance(self, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        return image_guidance(self.image, self.valid, self.tower.device, y0, y1, x0, x1)

    def _crop(self, index: int) -> torch.Tensor:
        """The normalised, padded window ``1 x 3 x Hp x Wp``."""
        w = self.windows[index]
        return F.pad(self._guidance(w.y0, w.y1, w.x0, w.x1), (w.pad.left, w.pad.right, w.pad.top, w.pad.bottom))

    def _check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise PredictionCancelledError(
                f"The segmentation was cancelled after {self.done} of {len(self.windows)} windows.")

    # ------------------------------------------------------------ tower
    def _run_tower(self, index: int) -> None:
        """Image tower on the next batch of uncached same-shape windows, starting at ``index``."""
        first = self.windows[index]
        shape = (first.padded_height, first.padded_width)
        batch = [index]
        while len(batch) < self.tower.batch_size and batch[-1] + 1 < len(self.windows):
            following = batch[-1] + 1
            if following in self._tower_out or following in self._cached:
                break
            if (self.windows[following].padded_height, self.windows[following].padded_width) != shape:
                break
            batch.append(following)
        crops = torch.cat([self._crop(i) for i in batch])
        with self.timer.stage("image_tower"), autocast(self.tower.device, self.tower.dtype):
            if self.tower.cast is not None:
                crops = crops.to(self.tower.cast)
            cls, patches = image_features(self.tower.visual, crops, self.tower.attention, self.tower.last_blocks)
        for position, i in enumerate(batch):
            self._tower_out[i] = (cls[position].float(), patches[position].float())

    def _window_features(self, index: int) -> tuple[WindowFeatures, Optional[torch.Tensor]]:
        """The window's features (cached or computed) and, when computed now, what the logits need upsampled:
        the queries ``H x W x Q`` (query path) or the coordinates ``r x H x W`` (coordinate path)."""
        cached = self._cached.pop(index, None)
        if cached is not None:
            return cached, None
        if index not in self._tower_out:
            self._run_tower(index)
        cls, patches = self._tower_out.pop(index)
        cls_unit = F.normalize(cls, dim=-1)
        upsampled = None
        if self.tower.upsampler is None:
            features = WindowFeatures(cls_unit, F.normalize(patches, dim=0), None)
        else:
            with self.timer.stage("upsampler"):
                dim, rows, cols = patches.shape
                low = (self.final_weight @ patches.reshape(dim, rows * cols)).reshape(dim, rows, cols)
                queries = self._project(low) if self.queries.by_query else None
                norm, upsampled = self._norms(index, low, queries)
            features = WindowFeatures(cls_unit, low, norm)
        if self._keys:
            self.cache.put(self._keys[index], features, features.nbytes)
        return features, upsampled

    # ------------------------------------------------------------ upsampling
    def _unpadded(self, index: int, tensor: torch.Tensor) -> torch.Tensor:
        """``Hp x Wp x ...`` -> the window's own ``H x W x ...`` part."""
        w = self.windows[index]
        return tensor[w.pad.top:w.pad.top + w.height, w.pad.left:w.pad.left + w.width]

    def _channels_last(self, sources: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        """``c_i x h x w`` sources side by side, channels last, each padded as the kernels want; their widths."""
        widths = [kernel_store.padded_channels(s.shape[0], self.tower.device) for s in sources]
        rows, cols = sources[0].shape[1:]
        out = torch.zeros(rows, cols, sum(widths), device=sources[0].device)
        start = 0
        for source, width in zip(sources, widths):
            out[..., start:start + source.shape[0]] = source.permute(1, 2, 0)
            start += width
        return out, widths

    def _project(self, low: torch.Tensor) -> torch.Tensor:
        """The queries' one-channel sources ``Q x h x w``: ``t^T A P`` for every query ``t``."""
        dim, rows, cols = low.shape
        return (self.queries.embeddings @ low.reshape(dim, rows * cols)).reshape(-1, rows, cols)

    def _norms(self, index: int, low: torch.Tensor, queries: Optional[torch.Tensor]
               ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Norms ``H x W`` of the window's upsampled features, and something upsampled in the same pass:
        the projected queries (``H x W x Q``) when given, else (the coordinate path) the coordinates
        ``r x H x W`` (offset included), else nothing."""
        assert self.kernels is not None
        coords, offset, _ = exact_coordinates(low[None], self.final_bias)
        sources = [coords[0]] + ([queries] if queries is not None else [])
        source, widths = self._channels_last(sources)
        shift = torch.zeros(source.shape[-1], device=source.device)
        shift[:coords.shape[1]] = offset[0]
        keep = queries is not None or not self.queries.by_query
        out, norm = self.kernels.window(index).apply(source, features=keep, offset=shift,
                                                     split=widths[0] if queries is not None else 0)
        assert norm is not None
        norm = self._unpadded(index, norm).clamp(min=1e-12)
        if out is None:
            return norm, None
        out = self._unpadded(index, out)
        if queries is not None:
            return norm, out[..., :queries.shape[0]]
        return norm, (out[..., :coords.shape[1]] + offset[0]).permute(2, 0, 1)

    def _logits(self, index: int, features: WindowFeatures, upsampled: Optional[torch.Tensor]) -> PixelLogits:
        queries, bias_lambda = self.queries.embeddings, self.queries.bias_lambda
        w = self.windows[index]
        if self.tower.upsampler is None:
            return BilinearFeatures(features.cls_unit, features.low, (w.padded_height, w.padded_width),
                                    w.pad.top, w.pad.left, w.height, w.width, queries, bias_lambda)
        assert features.norm is not None and self.kernels is not None
        if not self.queries.by_query:
            if upsampled is None:
                with self.timer.stage("upsampler"):
                    _, upsampled = self._norms(index, features.low, None)
            assert upsampled is not None
            _, _, basis = exact_coordinates(features.low[None], self.final_bias)
            return UpsampledFeatures(features.cls_unit, upsampled, features.norm,
                                     None if basis is None else basis[0], queries, bias_lambda)
        if upsampled is None:
            with self.timer.stage("upsampler"):
                source, _ = self._channels_last([self._project(features.low)])
                out, _ = self.kernels.window(index).apply(source)
            assert out is not None
            upsampled = self._unpadded(index, out)[..., :queries.shape[0]]
        with self.timer.stage("logits"):
            shift = queries @ self.final_bias
            bias = bias_lambda * (queries @ features.cls_unit)
            values = (upsampled.permute(2, 0, 1) + shift[:, None, None]) / features.norm + bias[:, None, None]
        return QueryLogits(values)

    # ------------------------------------------------------------ public
    def features(self, index: int) -> list[tuple[int, PixelLogits]]:
        """The logits of window ``index`` over its unpadded extent: ``[(index, logits)]``."""
        self._check_stop()
        features, coords_up = self._window_features(index)
        block = self._logits(index, features, coords_up)
        if self.kernels is not None:
            self.kernels.release(index)
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, len(self.windows))
        return [(index, block)]
