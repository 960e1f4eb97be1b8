"""The SegEarth-OV segmenter: image + class list in, labels and probabilities out.

:mod:`.features` computes each window's features (image tower, SimFeatUp), which do not depend on the classes;
:mod:`.decision` turns logits into labels a chunk of queries at a time. The segmenter walks the image cell by
cell (:func:`~segearth_backend.windows.cell_grid`), so it holds the logits of about two window rows (at most
as many channels as a window has exact coordinates, whatever the number of queries) and of one cell and one
chunk of queries: memory does not grow with the number of classes.

The class-independent work is kept in a bounded :class:`~.feature_cache.FeatureCache`
(per window: keyed by its pixels; per image: the upsampler's kernels), so
another class list, threshold, background or lambda on a recently seen image
(or an overlapping one cut on the same window grid) skips the image tower and
runs only each query's own upsampling.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from ..config import DEFAULT_FEATURE_CACHE_MB, EngineConfig
from ..device import autocast_dtype, cast_dtype, cpu_capabilities, cpu_precision, describe, resolve_device, synchronize
from ..errors import ModelConfigError
from ..model.clip_loader import LoadedClip, load_clip
from ..model.presets import ATTENTION_MODES, DEFAULT_ATTENTION, DEFAULT_LAST_BLOCKS
from ..model.resolve import choose_upsampler, require_preset_file, resolve_attention, resolve_model
from ..model.simfeatup_weights import SIMFEATUP_SHA256, resolve_upsampler_weights
from ..model.text_embedder import TextEmbedder
from ..model.weights_check import fail_fast_if_unobtainable
from ..request_rules import DEFAULT_BIAS_LAMBDA, WINDOW_SIZE, WINDOW_STRIDE
from ..upsampler.jbu import JBUOne, load_upsampler
from ..windows import cell_grid, window_grid
from .cells import CellLogits, average_logits
from .classes import NODATA_LABEL, ClassSet, parse_classes
from .decision import LOGIT_SCALE, QUERY_CHUNK_ELEMENTS, StreamingDecision, decide
from .feature_cache import FeatureCache, weights_fingerprint
from .features import PIXEL_MEAN, PIXEL_STD, ImageTower, QuerySet, WindowSource, normalise
from .inputs import (
    check_background_index,
    check_image,
    check_lambda,
    check_shape_cost,
    check_threshold,
    check_valid_mask,
)
from .pixel_logits import reduced_coordinates

__all__ = ["Segmenter", "Prediction", "load_segmenter", "decide", "normalise", "reduced_coordinates",
           "PIXEL_MEAN", "PIXEL_STD", "LOGIT_SCALE", "CROP", "STRIDE"]

log = logging.getLogger(__name__)

#: The sliding window (published in /health; the plugin plans its blocks with it).
CROP = WINDOW_SIZE
STRIDE = WINDOW_STRIDE
#: With SimFeatUp, windows are padded to at least this size: the first x2
#: step must be larger than the kernel radius for its reflect padding.
MIN_WINDOW_WITH_UPSAMPLER = 48


@dataclass
class Prediction:
    """The result of :meth:`Segmenter.predict`.

    Attributes:
        labels: ``H x W`` uint8 class indices; 255 where the input was invalid.
        probabilities: ``K x H x W`` float32 class probabilities (after the
            x50 softmax and the max over synonyms); 0 where invalid. None when
            ``predict`` was called with ``probabilities=False``.
        classes: the parsed class list (``classes.names[k]`` names label k).
        timings: seconds per stage (text, image_tower, upsampler, logits, total), then what the
            feature cache gave: ``cache_window_hits`` / ``cache_window_misses`` (windows),
            ``cache_kernel_hit`` (1.0: the upsampler kernels of this image were kept), ``cache_used_mb``.
    """

    labels: np.ndarray
    probabilities: Optional[np.ndarray]
    classes: ClassSet
    timings: dict[str, float] = field(default_factory=dict)


class _Timer:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    def stage(self, name: str) -> _Stage:
        return _Stage(self, name)


class _Stage:
    def __init__(self, timer: _Timer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        synchronize(self.timer.device)
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        synchronize(self.timer.device)
        self.timer.seconds[self.name] += time.perf_counter() - self.start


class Segmenter:
    """SegEarth-OV inference on one device. Build with :func:`load_segmenter`."""

    def __init__(self, clip: LoadedClip, upsampler: Optional[JBUOne], device: torch.device,
                 cache_dir: Optional[Path] = None, batch_size: Optional[int] = None,
                 precision: str = "auto", upsampler_source: str = "none",
                 query_chunk_elements: int = QUERY_CHUNK_ELEMENTS, model_preset: Optional[str] = None,
                 upsampler_reason: str = "", feature_cache_mb: float = DEFAULT_FEATURE_CACHE_MB,
                 attention: str = DEFAULT_ATTENTION, last_blocks: int = DEFAULT_LAST_BLOCKS,
                 owns_model: bool = False) -> None:
        """``owns_model``: ``clip`` is this engine's alone (a bfloat16 CPU tower is cast in place, not copied)."""
        self.clip = clip
        self.device = device
        model = clip.model.to(device)
        self.visual: Any = model.visual
        self.upsampler = upsampler.to(device) if upsampler is not None else None
        self.upsampler_source = upsampler_source
        self.model_preset = model_preset
        self.upsampler_reason = upsampler_reason
        self.precision_note = ""
        if device.type == "cpu":
            precision, self.precision_note = cpu_precision(precision, cpu_capabilities())
            if self.precision_note:
                log.warning(self.precision_note)
        self.dtype = autocast_dtype(device, precision)
        self.cast = cast_dtype(device, precision)
        self.batch_size = batch_size or 16
        self.query_chunk_elements = query_chunk_elements
        self.patch = int(self.visual.conv1.kernel_size[0])
        self.attention, self.last_blocks = _check_attention(attention, last_blocks, self.visual)
        self.text = TextEmbedder(model, clip.tokenizer, device, cache_dir)
        self.feature_dim = int(self.visual.output_dim)
        if self.upsampler is not None and self.upsampler.feature_dim != self.feature_dim:
            raise ValueError(f"upsampler built for {self.upsampler.feature_dim} channels, model has {self.feature_dim}")
        self.fingerprint = weights_fingerprint(self.visual, self.upsampler,
                                               extra=f"{self.dtype}/{self.cast}/{self.patch}/{self.attention}/{self.last_blocks}")
        if self.cast is not None:  # the image tower runs in this dtype on the CPU (the text tower stays float32)
            self.visual = self.visual.to(self.cast) if owns_model else _cast_copy(self.visual, self.cast)
        self.feature_cache = FeatureCache(int(feature_cache_mb * 2**20))
        #: Up to this many queries, each query is upsampled itself; beyond, a window's exact coordinates.
        self.query_path_max = min(self.feature_dim, (CROP // self.patch) ** 2 + 1)

    # ------------------------------------------------------------------ info
    def describe(self) -> dict[str, object]:
        """What is loaded where (for logs and the service's health answer)."""
        return {
            "model": self.clip.model_name,
            "model_preset": self.model_preset,
            "clip_weights": self.clip.weights_source,
            "feature_dim": self.feature_dim,
            "patch_size": self.patch,
            "upsampler": "SimFeatUp (JBU-One)" if self.upsampler is not None else "bilinear",
            "upsampler_weights": self.upsampler_source,
            "upsampler_reason": self.upsampler_reason,
            "attention": self.attention,
            "last_blocks": self.last_blocks,
            "device": describe(self.device),
            "precision": self.precision,
            "precision_note": self.precision_note,
            "cpu": cpu_capabilities(),
            "batch_size": self.batch_size,
            "feature_cache": self.feature_cache.stats(),
        }

    @property
    def precision(self) -> str:
        """The image tower's arithmetic: ``float32``, ``bfloat16`` or ``float16``."""
        dtype = self.cast or self.dtype
        return str(dtype).replace("torch.", "") if dtype else "float32"

    @property
    def min_window(self) -> int:
        """Windows are padded to at least this many pixels per side."""
        return MIN_WINDOW_WITH_UPSAMPLER if self.upsampler is not None else 1

    # ------------------------------------------------------------------ text
    def embed_classes(self, classes: Union[str, Sequence[str]]) -> ClassSet:
        """Validate ``classes`` and compute (or load) their text embeddings now."""
        class_set = parse_classes(classes)
        self.text.embed(class_set.queries)
        return class_set

    # ----------------------------------------------------------- image work
    def window_features(self, image: np.ndarray, valid: Optional[np.ndarray], queries: QuerySet,
                        should_stop: Optional[Callable[[], bool]] = None,
                        progress: Optional[Callable[[int, int], None]] = None,
                        timer: Optional[_Timer] = None) -> WindowSource:
        """The logits of ``queries`` over ``image``'s windows, computed as they are asked for.

        Class-independent work comes from the feature cache when the same pixels were seen recently.
        ``image`` and ``valid`` must already be checked (``check_image``, ``check_valid_mask``).
        """
        height, width = image.shape[:2]
        tower = ImageTower(self.visual, self.upsampler, self.device, self.dtype, self.batch_size, self.cast,
                           self.attention, self.last_blocks)
        windows = window_grid(height, width, CROP, STRIDE, self.patch, self.min_window)
        return WindowSource(tower, image, valid, windows, timer or _Timer(self.device), queries,
                            self.feature_cache, self.fingerprint, should_stop, progress)

    def _query_set(self, queries: torch.Tensor, bias_lambda: float) -> QuerySet:
        return QuerySet(queries, bias_lambda, self.upsampler is not None and queries.shape[0] <= self.query_path_max)

    # ----------------------------------------------------------- prediction
    @torch.inference_mode()
    def predict(self, image: np.ndarray, classes: Union[str, Sequence[str]], prob_threshold: float = 0.0,
                background_index: int = 0, bias_lambda: float = DEFAULT_BIAS_LAMBDA,
                valid: Optional[np.ndarray] = None, *,
                probabilities: bool = True, should_stop: Optional[Callable[[], bool]] = None,
                progress: Optional[Callable[[int, int], None]] = None) -> Prediction:
        """Segment ``image`` into ``classes``.

        The class-independent work of a recently seen image (the same pixels and mask) comes from the
        feature cache: another class list, threshold, background or lambda then costs each query's own
        upsampling only, with the same result.

        Args:
            image: ``H x W x 3`` uint8 RGB (row, column, channel), any H, W >= 1
                (very thin, long strips are refused: see ``check_shape_cost``).
            classes: class lines (synonyms comma-separated), or one string of lines.
            prob_threshold: pixels whose top probability is below it get ``background_index``.
            background_index: class index used below the threshold.
            bias_lambda: weight of the global-bias subtraction (``DEFAULT_BIAS_LAMBDA`` in the paper; 0 disables
                it).
            valid: optional ``H x W`` bool mask; False pixels are zeroed in
                normalised space and get label ``NODATA_LABEL`` (255) and probability 0.
            probabilities: also return the ``K x H x W`` probabilities (else
                they are never built: labels need ``H x W`` only).
            should_stop: asked before every window; True stops with
                :class:`~segearth_backend.errors.PredictionCancelledError`.
            progress: ``progress(windows_done, windows_total)`` after each window.

        Raises:
            InputError (a ValueError): bad image, mask, class list or parameter.
            PredictionCancelledError: ``should_stop()`` returned True.
        """
        image = check_image(image)
        height, width = image.shape[:2]
        valid = check_valid_mask(valid, height, width)
        class_set = parse_classes(classes)
        threshold = check_threshold(prob_threshold)
        background = check_background_index(background_index, class_set.num_classes)
        bias_lambda = check_lambda(bias_lambda)
        check_shape_cost(height, width, CROP, STRIDE, self.patch, self.min_window)

        timer = _Timer(self.device)
        start = time.perf_counter()
        with timer.stage("text"):
            queries = self.text.embed(class_set.queries).float()
        source = self.window_features(image, valid, self._query_set(queries, bias_lambda), should_stop, progress,
                                      timer)
        decision = StreamingDecision(queries, class_set, threshold, background, probabilities,
                                     self.query_chunk_elements)
        labels_out = np.empty((height, width), np.uint8)
        probs_out = np.empty((class_set.num_classes, height, width), np.float32) if probabilities else None
        cells = cell_grid(height, width, CROP, STRIDE)
        store = CellLogits(source, cells)
        for index, cell in enumerate(cells):
            blocks = store.take(index)
            with timer.stage("logits"):
                labels, probs = decision.decide(functools.partial(average_logits, blocks), cell.height, cell.width)
                del blocks
                if valid is not None:
                    invalid = ~torch.from_numpy(valid[cell.y0:cell.y1, cell.x0:cell.x1]).to(self.device)
                    labels[invalid] = NODATA_LABEL
                    if probs is not None:
                        probs[:, invalid] = 0.0
                labels_out[cell.y0:cell.y1, cell.x0:cell.x1] = labels.to(torch.uint8).cpu().numpy()
                if probs_out is not None and probs is not None:
                    probs_out[:, cell.y0:cell.y1, cell.x0:cell.x1] = probs.float().cpu().numpy()
        timer.seconds["total"] = time.perf_counter() - start
        timings = dict(timer.seconds)
        timings.update(_cache_timings(source, self.feature_cache))
        return Prediction(labels_out, probs_out, class_set, timings)

    @torch.inference_mode()
    def logits(self, image: np.ndarray, classes: Union[str, Sequence[str]], bias_lambda: float = DEFAULT_BIAS_LAMBDA,
               valid: Optional[np.ndarray] = None) -> np.ndarray:
        """Window-averaged logits of ``image`` before the decision (for evaluation).

        The same sliding windows, features and global-bias term as :meth:`predict`,
        stopped before the x50 softmax, the synonym max and the threshold.

        Args:
            image: ``H x W x 3`` uint8 RGB (row, column, channel).
            classes: class lines (synonyms comma-separated); one row of logits per synonym.
            bias_lambda: weight of the global-bias subtraction.
            valid: optional ``H x W`` bool mask (False pixels are zeroed in normalised space).

        Returns:
            ``Q x H x W`` float32, ``Q`` = ``parse_classes(classes).num_queries``, queries in order.

        Raises:
            InputError (a ValueError): bad image, mask, class list or lambda.
        """
        image = check_image(image)
        height, width = image.shape[:2]
        valid = check_valid_mask(valid, height, width)
        class_set = parse_classes(classes)
        bias_lambda = check_lambda(bias_lambda)
        check_shape_cost(height, width, CROP, STRIDE, self.patch, self.min_window)
        queries = self.text.embed(class_set.queries).float()
        out = np.empty((class_set.num_queries, height, width), np.float32)
        cells = cell_grid(height, width, CROP, STRIDE)
        store = CellLogits(self.window_features(image, valid, self._query_set(queries, bias_lambda)), cells)
        for index, cell in enumerate(cells):
            blocks = store.take(index)
            logits = average_logits(blocks, 0, class_set.num_queries)
            out[:, cell.y0:cell.y1, cell.x0:cell.x1] = logits.float().cpu().numpy()
        return out


def _cache_timings(source: WindowSource, cache: FeatureCache) -> dict[str, float]:
    """The feature cache's part in one prediction (added to ``Prediction.timings``)."""
    report = source.report
    return {"cache_window_hits": float(report.window_hits), "cache_window_misses": float(report.window_misses),
            "cache_kernel_hit": float(report.kernel_hit), "cache_used_mb": round(cache.used / 2**20, 1)}


def _check_attention(attention: str, last_blocks: int, visual: Any) -> tuple[str, int]:
    """The attention mode and number of last blocks, checked against the image tower.

    Raises:
        ModelConfigError: an unknown mode, or more blocks than the tower has.
    """
    if attention not in ATTENTION_MODES:
        raise ModelConfigError(f"Unknown attention mode '{attention}': use one of {', '.join(ATTENTION_MODES)}.")
    blocks = len(visual.transformer.resblocks)
    if isinstance(last_blocks, bool) or not isinstance(last_blocks, int) or not 1 <= last_blocks <= blocks:
        raise ModelConfigError(f"last_blocks must be 1 to {blocks} (the image tower's blocks), got {last_blocks}.")
    return attention, last_blocks


def _cast_copy(module: Any, dtype: torch.dtype) -> Any:
    """A copy of ``module`` with its floating-point weights in ``dtype`` (the original is left as it is)."""
    return copy.deepcopy(module).to(dtype)


def load_segmenter(model: Optional[str] = None, clip_weights: Optional[str] = None,
                   upsampler_weights: Optional[str] = None, device: Optional[str] = None,
                   cache_dir: Optional[Union[str, Path]] = None, batch_size: Optional[int] = None,
                   precision: Optional[str] = None, config: Optional[EngineConfig] = None,
                   feature_cache_mb: Optional[float] = None, attention: Optional[str] = None,
                   last_blocks: Optional[int] = None) -> Segmenter:
    """Build a :class:`Segmenter`.

    Arguments given win; those left as None come from ``config`` when given, else from the
    ``SEGEARTH_*`` environment variables, else the defaults (the
    ``clip-vit-b16`` preset: OpenAI CLIP ViT-B/16 with the authors' SimFeatUp
    checkpoint, the SegEarth attention in the last block; ``auto`` device). ``attention`` and
    ``last_blocks`` override the preset's training-free attention. ``model`` may be a preset name
    (:mod:`..model.presets`); :mod:`..model.resolve` decides weights and upsampler.
    Missing weights that cannot be downloaded now fail at once, all named.

    Raises:
        ModelConfigError (UpsamplerMismatchError: an upsampler that cannot fit the model),
        WeightsNotFoundError, CheckpointError, DeviceError.
    """
    explicit: dict[str, Any] = {"model": model, "clip_weights": clip_weights,
                                "upsampler_weights": upsampler_weights, "device": device,
                                "cache_dir": Path(cache_dir).expanduser() if cache_dir is not None else None,
                                "batch_size": batch_size, "precision": precision,
                                "feature_cache_mb": feature_cache_mb, "attention": attention,
                                "last_blocks": last_blocks}
    if config is None:
        config = EngineConfig.from_env(os.environ, **explicit)
    else:  # explicit arguments win over the given configuration, as documented
        config = replace(config, **{key: value for key, value in explicit.items() if value is not None})
    torch_device = resolve_device(config.device)
    fail_fast_if_unobtainable(config)
    resolved = resolve_model(config)
    require_preset_file(resolved)
    clip = load_clip(resolved.model, resolved.clip_weights, config.cache_dir)
    feature_dim = int(clip.model.visual.output_dim)
    choice = choose_upsampler(config.upsampler_weights, feature_dim, int(clip.model.visual.conv1.kernel_size[0]),
                              resolved.preset)
    upsampler_path = resolve_upsampler_weights(choice.spec, config.cache_dir,
                                               sha256=config.simfeatup_sha256 or SIMFEATUP_SHA256)
    upsampler = load_upsampler(upsampler_path, feature_dim) if upsampler_path is not None else None
    log.info("feature upsampling: %s", choice.reason)
    attention_mode, blocks = resolve_attention(config, resolved.preset)
    return Segmenter(clip, upsampler, torch_device, cache_dir=config.cache_dir,
                     batch_size=config.batch_size, precision=config.precision,
                     model_preset=resolved.preset.name if resolved.preset else None, upsampler_reason=choice.reason,
                     upsampler_source=str(upsampler_path) if upsampler_path else "none",
                     feature_cache_mb=config.feature_cache_mb, attention=attention_mode, last_blocks=blocks,
                     owns_model=True)
