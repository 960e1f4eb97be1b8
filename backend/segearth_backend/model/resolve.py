"""The one place where an :class:`EngineConfig` becomes a model, weights and an upsampler.

``model`` may name a preset (:mod:`.presets`), an open_clip model or a JSON
config; ``clip_weights="auto"`` takes the preset's weights (``openai`` for a
plain open_clip name); ``upsampler_weights="auto"`` takes the authors'
SimFeatUp checkpoint when it fits the model and bilinear upsampling otherwise.
An explicit SimFeatUp checkpoint that cannot fit the model is an error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import EngineConfig
from ..errors import UpsamplerMismatchError, WeightsNotFoundError
from .presets import (
    DEFAULT_ATTENTION,
    DEFAULT_LAST_BLOCKS,
    SIMFEATUP,
    SIMFEATUP_FEATURE_DIM,
    SIMFEATUP_PATCH,
    ModelPreset,
    find_preset,
    preset_for,
)
from .simfeatup_weights import BILINEAR_TAGS, SIMFEATUP_TAGS

AUTO = "auto"
#: Tag used for a plain open_clip model name with ``clip_weights="auto"``.
AUTO_TAG = "openai"


@dataclass(frozen=True)
class ResolvedModel:
    """What the loader builds.

    Attributes:
        model: open_clip model name or JSON config path.
        clip_weights: open_clip pretrained tag or checkpoint path.
        preset: the preset this is (named, or matched by architecture and tag), or None.
    """

    model: str
    clip_weights: str
    preset: Optional[ModelPreset]


@dataclass(frozen=True)
class UpsamplerChoice:
    """The upsampler to load and why.

    Attributes:
        spec: ``"simfeatup"`` (the authors' checkpoint), ``"none"`` (bilinear) or a checkpoint path.
        reason: one sentence for the log, ``describe()`` and ``/health``.
    """

    spec: str
    reason: str

    @property
    def bilinear(self) -> bool:
        return self.spec.strip().lower() in BILINEAR_TAGS


def clip_cache_dir(cache_dir: Path) -> Path:
    """Where file weights of presets are looked for: ``<cache>/clip``."""
    return cache_dir / "clip"


def preset_weights_path(preset: ModelPreset, cache_dir: Path) -> Optional[Path]:
    """The path a file preset's checkpoint should have; None for tag presets."""
    if preset.weights_file is None:
        return None
    return clip_cache_dir(cache_dir) / preset.weights_file


def resolve_model(config: EngineConfig) -> ResolvedModel:
    """The model and weights ``config`` asks for (no loading, no downloads)."""
    preset = find_preset(config.model)
    weights = config.clip_weights.strip()
    auto = weights.lower() == AUTO
    if preset is not None:
        if auto:
            path = preset_weights_path(preset, config.cache_dir)
            weights = str(path) if path is not None else str(preset.pretrained_tag)
        return ResolvedModel(preset.architecture, weights, preset)
    weights = AUTO_TAG if auto else weights
    return ResolvedModel(config.model, weights, preset_for(config.model, weights))


def resolve_attention(config: EngineConfig, preset: Optional[ModelPreset]) -> tuple[str, int]:
    """``(attention mode, last blocks)``: what ``config`` sets, else the preset's, else SegEarth-OV's (SegEarth, 1)."""
    mode = preset.attention if preset is not None else DEFAULT_ATTENTION
    if config.attention.lower() != AUTO:
        mode = config.attention
    blocks = preset.last_blocks if preset is not None else DEFAULT_LAST_BLOCKS
    if config.last_blocks is not None:
        blocks = config.last_blocks
    return mode, blocks


def missing_preset_file(resolved: ResolvedModel) -> Optional[str]:
    """A message saying where to get a file preset's checkpoint when it is absent, else None."""
    preset = resolved.preset
    if preset is None or preset.weights_file is None:
        return None
    path = Path(resolved.clip_weights).expanduser()
    if path.is_file() or not str(path).endswith(preset.weights_file):
        return None  # present, or the user gave another file (the loader checks it)
    note = f" ({preset.download_note})" if preset.download_note else ""
    return (f"The {preset.family} weights of preset '{preset.name}' are not on this machine. Download "
            f"{preset.weights_url}{note} and put the checkpoint at {path}, or pass its path as the CLIP "
            "weights (SEGEARTH_CLIP_WEIGHTS or --clip-weights).")


def require_preset_file(resolved: ResolvedModel) -> None:
    """Raise :class:`WeightsNotFoundError` when a file preset's checkpoint is missing."""
    message = missing_preset_file(resolved)
    if message:
        raise WeightsNotFoundError(message)


def model_shape(model: str) -> Optional[tuple[int, int]]:
    """``(feature_dim, patch_size)`` of a preset, open_clip name or JSON config, without building it.

    None when the configuration cannot be read (the loader reports that).
    """
    preset = find_preset(model)
    if preset is not None:
        return preset.feature_dim, preset.patch_size
    if model.lower().endswith(".json") or os.path.sep in model:
        try:
            config = json.loads(Path(model).expanduser().read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
    else:
        import open_clip

        config = open_clip.get_model_config(model)
    try:
        return int(config["embed_dim"]), int(config["vision_cfg"]["patch_size"])
    except (TypeError, KeyError, ValueError):
        return None


def choose_upsampler(spec: str, feature_dim: int, patch: int,
                     preset: Optional[ModelPreset] = None) -> UpsamplerChoice:
    """Decide the feature upsampler for a model with ``feature_dim``-d features on ``patch``-pixel patches.

    Args:
        spec: the configured ``upsampler_weights`` (``auto``, ``simfeatup``, ``none`` or a path).
        preset: the model's preset, whose recorded choice ``auto`` follows.

    Raises:
        UpsamplerMismatchError: the authors' checkpoint (or any JBU-One checkpoint,
            which upsamples x16) was asked for a model it cannot fit.
    """
    text = spec.strip()
    shape = f"{feature_dim}-d features on {patch}-pixel patches"
    fits_authors = (feature_dim, patch) == (SIMFEATUP_FEATURE_DIM, SIMFEATUP_PATCH)
    if text.lower() == AUTO:
        if preset is not None:
            return UpsamplerChoice(SIMFEATUP if preset.upsampler == SIMFEATUP else "none", preset.upsampler_reason)
        if fits_authors:
            return UpsamplerChoice(SIMFEATUP, "SimFeatUp: the authors' checkpoint fits this model's "
                                   "512-d features on 16-pixel patches")
        return UpsamplerChoice("none", "the authors' SimFeatUp checkpoint fits 512-d ViT-B/16 features only; "
                               f"this model has {shape}, so features are upsampled bilinearly (the authors' "
                               "code cannot run SimFeatUp on it either)")
    if text.lower() in BILINEAR_TAGS:
        return UpsamplerChoice("none", "bilinear upsampling, as configured (the paper's ablation baseline)")
    if text.lower() in SIMFEATUP_TAGS:
        if not fits_authors:
            raise UpsamplerMismatchError(
                f"The authors' SimFeatUp checkpoint fits 512-d ViT-B/16 features; this model has {shape}. "
                "Use upsampler_weights 'auto' or 'none' (bilinear; the authors' code cannot run SimFeatUp here "
                "either), "
                "or a SimFeatUp checkpoint trained for this model.")
        reason = "SimFeatUp: the authors' checkpoint, as configured"
        if preset is not None and preset.upsampler != SIMFEATUP:
            reason += (" (it was trained on OpenAI CLIP ViT-B/16 features, not this model's; the authors' code "
                       "applies it all the same: the paper's setting)")
        return UpsamplerChoice(SIMFEATUP, reason)
    if patch != SIMFEATUP_PATCH:
        raise UpsamplerMismatchError(
            f"SimFeatUp checkpoint '{text}' cannot fit this model: JBU-One upsamples 16-pixel patches x16, "
            f"the model has {shape}. Use upsampler_weights 'auto' or 'none' (bilinear).")
    return UpsamplerChoice(text, f"SimFeatUp checkpoint {text}, as configured")

