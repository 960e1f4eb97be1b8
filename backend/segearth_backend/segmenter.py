"""The SegEarth-OV segmenter: image + class list in, labels and probabilities out."""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .classes import NODATA_LABEL, ClassSet, parse_classes
from .clip_loader import LoadedClip, load_clip
from .config import EngineConfig
from .device import autocast, autocast_dtype, describe, resolve_device, synchronize
from .inputs import check_background_index, check_image, check_lambda, check_threshold, check_valid_mask
from .resolution import choose_upsampler, require_preset_file, resolve_model
from .text import TextEmbedder
from .upsampler import JBUOne, load_upsampler
from .vision import image_features
from .weights import resolve_upsampler_weights
from .weights_check import fail_fast_if_unobtainable
from .windows import Window, group_by_shape, window_grid

log = logging.getLogger(__name__)

#: CLIP's normalisation constants times 255 (RGB order).
PIXEL_MEAN = (122.771, 116.746, 104.094)
PIXEL_STD = (68.501, 66.632, 70.323)
CROP = 224
STRIDE = 112
LOGIT_SCALE = 50.0
#: With SimFeatUp, windows are padded to at least this size: the first x2
#: step must be larger than the kernel radius for its reflect padding.
MIN_WINDOW_WITH_UPSAMPLER = 48


@dataclass
class Prediction:
    """The result of :meth:`Segmenter.predict`.

    Attributes:
        labels: ``H x W`` uint8 class indices; 255 where the input was invalid.
        probabilities: ``K x H x W`` float32 class probabilities (after the
            x50 softmax and the max over synonyms); 0 where invalid.
        classes: the parsed class list (``classes.names[k]`` names label k).
        timings: seconds per stage (text, image_tower, upsampler, logits, total).
    """

    labels: np.ndarray
    probabilities: np.ndarray
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


def normalise(image: np.ndarray, valid: Optional[np.ndarray], device: torch.device) -> torch.Tensor:
    """``H x W x 3`` uint8 RGB -> ``1 x 3 x H x W`` float32 ``(x - mean) / std``; invalid pixels 0."""
    tensor = torch.from_numpy(image).to(device).permute(2, 0, 1).float().unsqueeze(0)
    mean = torch.tensor(PIXEL_MEAN, device=device).reshape(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=device).reshape(1, 3, 1, 1)
    tensor = (tensor - mean) / std
    if valid is not None:
        tensor = tensor * torch.from_numpy(valid).to(device)
    return tensor


def decide(logits: torch.Tensor, class_set: ClassSet, threshold: float,
           background: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits -> (probabilities ``K x H x W``, labels ``H x W`` int64).

    ``softmax(50 * logits)`` over all queries, max over each class's synonyms,
    argmax over classes, and the background index where the top probability
    is below ``threshold``.
    """
    probs = torch.softmax(logits * LOGIT_SCALE, dim=0)
    if class_set.num_queries != class_set.num_classes:
        members: list[list[int]] = [[] for _ in range(class_set.num_classes)]
        for query, owner in enumerate(class_set.query_class):
            members[owner].append(query)
        probs = torch.stack([probs[rows].amax(dim=0) for rows in members])
    top, labels = probs.max(dim=0)
    labels = torch.where(top < threshold, torch.full_like(labels, background), labels)
    return probs, labels


def reduced_coordinates(upsampler: JBUOne, patches: torch.Tensor, queries: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Express the upsampled features in the fewest exact coordinates.

    The upsampler output is ``F = A U(P) + c = U(A P) + c`` (``U``, the four
    joint-bilateral steps, is linear and shared by all channels; ``A, c``
    the final 1x1 fixup). Every pixel of ``F`` is thus a combination of the
    ``h*w`` columns of ``A P`` plus ``c``. When that is fewer than ``D``
    vectors, an orthonormal basis ``V`` of their span (``[A P | c] = V T``,
    thin QR) lets ``U`` run on ``r = h*w + 1`` channels instead of ``D``:
    norms and dot products with queries are the same in those coordinates.

    Returns:
        ``coords`` ``B x r x h x w`` (to upsample), ``offset`` ``B x r``
        (added after upsampling) and ``directions`` ``B x r x Q`` (the
        queries in the same coordinates).
    """
    weight, bias = upsampler.final_affine()
    batch, dim, rows, cols = patches.shape
    mixed = weight @ patches.reshape(batch, dim, rows * cols)  # B x D x hw
    if dim <= rows * cols + 1:
        return (mixed.reshape(batch, dim, rows, cols), bias.expand(batch, dim),
                queries.T.expand(batch, dim, queries.shape[0]))
    basis, factors = torch.linalg.qr(torch.cat([mixed, bias.reshape(1, dim, 1).expand(batch, dim, 1)], dim=2))
    rank = factors.shape[1]
    coords = factors[:, :, :rows * cols].reshape(batch, rank, rows, cols)
    return coords, factors[:, :, rows * cols], basis.transpose(1, 2) @ queries.T


class Segmenter:
    """SegEarth-OV inference on one device. Build with :func:`load_segmenter`."""

    def __init__(self, clip: LoadedClip, upsampler: Optional[JBUOne], device: torch.device,
                 cache_dir: Optional[Path] = None, batch_size: Optional[int] = None,
                 precision: str = "auto", upsampler_source: str = "none", model_preset: Optional[str] = None,
                 upsampler_reason: str = "") -> None:
        self.clip = clip
        self.device = device
        model = clip.model.to(device)
        self.visual: Any = model.visual
        self.upsampler = upsampler.to(device) if upsampler is not None else None
        self.upsampler_source = upsampler_source
        self.model_preset = model_preset
        self.upsampler_reason = upsampler_reason
        self.dtype = autocast_dtype(device, precision)
        self.batch_size = batch_size or 16
        self.patch = int(self.visual.conv1.kernel_size[0])
        self.text = TextEmbedder(model, clip.tokenizer, device, cache_dir)
        self.feature_dim = int(self.visual.output_dim)
        if self.upsampler is not None and self.upsampler.feature_dim != self.feature_dim:
            raise ValueError(f"upsampler built for {self.upsampler.feature_dim} channels, model has {self.feature_dim}")

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
            "device": describe(self.device),
            "precision": str(self.dtype).replace("torch.", "") if self.dtype else "float32",
            "batch_size": self.batch_size,
        }

    # ------------------------------------------------------------------ text
    def embed_classes(self, classes: Union[str, Sequence[str]]) -> ClassSet:
        """Validate ``classes`` and compute (or load) their text embeddings now."""
        class_set = parse_classes(classes)
        self.text.embed(class_set.queries)
        return class_set

    # ----------------------------------------------------------- prediction
    @torch.inference_mode()
    def predict(self, image: np.ndarray, classes: Union[str, Sequence[str]], prob_threshold: float = 0.0,
                background_index: int = 0, bias_lambda: float = -0.3,
                valid: Optional[np.ndarray] = None) -> Prediction:
        """Segment ``image`` into ``classes``.

        Args:
            image: ``H x W x 3`` uint8 RGB (row, column, channel), any H, W >= 1.
            classes: class lines (synonyms comma-separated), or one string of lines.
            prob_threshold: pixels whose top probability is below it get ``background_index``.
            background_index: class index used below the threshold.
            bias_lambda: weight of the global-bias subtraction (-0.3 in the paper; 0 disables it).
            valid: optional ``H x W`` bool mask; False pixels are zeroed in
                normalised space and get label 255 and probability 0.

        Raises:
            InputError (a ValueError): bad image, mask, class list or parameter.
        """
        image = check_image(image)
        height, width = image.shape[:2]
        valid = check_valid_mask(valid, height, width)
        class_set = parse_classes(classes)
        threshold = check_threshold(prob_threshold)
        background = check_background_index(background_index, class_set.num_classes)
        bias_lambda = check_lambda(bias_lambda)

        timer = _Timer(self.device)
        start = time.perf_counter()
        with timer.stage("text"):
            queries = self.text.embed(class_set.queries).float()
        logits = self._image_logits(normalise(image, valid, self.device), queries, bias_lambda, timer)
        with timer.stage("logits"):
            probs, labels = decide(logits, class_set, threshold, background)
            if valid is not None:
                invalid = ~torch.from_numpy(valid).to(self.device)
                labels[invalid] = NODATA_LABEL
                probs[:, invalid] = 0.0
            labels_np = labels.to(torch.uint8).cpu().numpy()
            probs_np = probs.float().cpu().numpy()
        timer.seconds["total"] = time.perf_counter() - start
        return Prediction(labels_np, probs_np, class_set, dict(timer.seconds))

    @torch.inference_mode()
    def logits(self, image: np.ndarray, classes: Union[str, Sequence[str]], bias_lambda: float = -0.3,
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
        valid = check_valid_mask(valid, *image.shape[:2])
        class_set = parse_classes(classes)
        bias_lambda = check_lambda(bias_lambda)
        timer = _Timer(self.device)
        queries = self.text.embed(class_set.queries).float()
        logits = self._image_logits(normalise(image, valid, self.device), queries, bias_lambda, timer)
        return logits.float().cpu().numpy()

    def _batches(self, windows: list[Window]) -> Iterator[list[Window]]:
        for group in group_by_shape(windows).values():
            for start in range(0, len(group), self.batch_size):
                yield group[start:start + self.batch_size]

    def _image_logits(self, image: torch.Tensor, queries: torch.Tensor, bias_lambda: float,
                      timer: _Timer) -> torch.Tensor:
        """Window-averaged logits ``Q x H x W`` for a normalised ``1 x 3 x H x W`` image."""
        height, width = image.shape[-2:]
        min_size = MIN_WINDOW_WITH_UPSAMPLER if self.upsampler is not None else 1
        windows = window_grid(height, width, CROP, STRIDE, self.patch, min_size)
        total = torch.zeros(queries.shape[0], height, width, device=self.device)
        count = torch.zeros(1, height, width, device=self.device)
        for batch in self._batches(windows):
            crops = torch.cat([
                F.pad(image[:, :, w.y0:w.y1, w.x0:w.x1], (w.pad.left, w.pad.right, w.pad.top, w.pad.bottom))
                for w in batch
            ])
            logits = self._window_logits(crops, queries, bias_lambda, timer)
            with timer.stage("logits"):
                for w, window_logits in zip(batch, logits):
                    total[:, w.y0:w.y1, w.x0:w.x1] += window_logits[
                        :, w.pad.top:w.pad.top + w.height, w.pad.left:w.pad.left + w.width]
                    count[:, w.y0:w.y1, w.x0:w.x1] += 1
        return total / count

    def _window_logits(self, crops: torch.Tensor, queries: torch.Tensor, bias_lambda: float,
                       timer: _Timer) -> torch.Tensor:
        """Logits ``B x Q x H x W`` for ``B`` normalised windows ``B x 3 x H x W``."""
        with timer.stage("image_tower"), autocast(self.device, self.dtype):
            cls, patches = image_features(self.visual, crops)
        cls, patches = cls.float(), patches.float()
        bias = bias_lambda * F.normalize(cls, dim=-1) @ queries.T  # B x Q
        if self.upsampler is None:
            with timer.stage("logits"):
                low = torch.einsum("bdhw,qd->bqhw", F.normalize(patches, dim=1), queries)
                low = low + bias[:, :, None, None]
                return F.interpolate(low, size=crops.shape[-2:], mode="bilinear", align_corners=False)
        # The upsampler's working set is large: on the CPU one window at a time
        # stays in cache and is fastest; on a GPU the whole batch at once.
        step = crops.shape[0] if self.device.type == "cuda" else 1
        parts = []
        for start in range(0, crops.shape[0], step):
            part = slice(start, start + step)
            with timer.stage("upsampler"):
                coords, offset, directions = reduced_coordinates(self.upsampler, patches[part], queries)
                with autocast(self.device, self.dtype):
                    kernels = self.upsampler.step_kernels(crops[part], *patches.shape[-2:])
                    upsampled = self.upsampler.spatial(coords, kernels)
                upsampled = upsampled.float() + offset[:, :, None, None]
            with timer.stage("logits"):
                norm = upsampled.norm(dim=1, keepdim=True).clamp(min=1e-12)
                dots = torch.einsum("brhw,brq->bqhw", upsampled, directions)
                parts.append(dots / norm + bias[part, :, None, None])
        return torch.cat(parts)


def load_segmenter(model: Optional[str] = None, clip_weights: Optional[str] = None,
                   upsampler_weights: Optional[str] = None, device: Optional[str] = None,
                   cache_dir: Optional[Union[str, Path]] = None, batch_size: Optional[int] = None,
                   precision: Optional[str] = None, config: Optional[EngineConfig] = None) -> Segmenter:
    """Build a :class:`Segmenter`.

    Arguments given win; those left as None come from ``config`` when given, else from the
    ``SEGEARTH_*`` environment variables, else the defaults (the
    ``clip-vit-b16`` preset: OpenAI CLIP ViT-B/16 with the authors' SimFeatUp
    checkpoint; ``auto`` device). ``model`` may be a preset name
    (:mod:`.presets`); :mod:`.resolution` decides weights and upsampler.

    Raises:
        ModelConfigError (UpsamplerMismatchError: an upsampler that cannot fit the model),
        WeightsNotFoundError, CheckpointError, DeviceError.
    """
    explicit: dict[str, Any] = {"model": model, "clip_weights": clip_weights, "upsampler_weights": upsampler_weights,
                "device": device, "cache_dir": Path(cache_dir).expanduser() if cache_dir is not None else None,
                "batch_size": batch_size, "precision": precision}
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
    upsampler_path = resolve_upsampler_weights(choice.spec, config.cache_dir)
    upsampler = load_upsampler(upsampler_path, feature_dim) if upsampler_path is not None else None
    log.info("feature upsampling: %s", choice.reason)
    return Segmenter(clip, upsampler, torch_device, cache_dir=config.cache_dir,
                     batch_size=config.batch_size, precision=config.precision,
                     model_preset=resolved.preset.name if resolved.preset else None, upsampler_reason=choice.reason,
                     upsampler_source=str(upsampler_path) if upsampler_path else "none")
