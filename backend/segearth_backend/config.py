"""Engine configuration: one frozen dataclass, filled from arguments or the environment."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Optional

from .errors import ConfigError
from .model.presets import ATTENTION_MODES

#: A model preset name (see :mod:`.model.presets`): OpenAI CLIP ViT-B/16.
DEFAULT_MODEL = "clip-vit-b16"
#: The preset's weights; ``openai`` for a plain open_clip model name.
DEFAULT_CLIP_WEIGHTS = "auto"
#: The authors' SimFeatUp checkpoint when it fits the model (512-d ViT-B/16), else bilinear.
DEFAULT_UPSAMPLER = "auto"

ENV_MODEL = "SEGEARTH_MODEL"
ENV_CLIP_WEIGHTS = "SEGEARTH_CLIP_WEIGHTS"
ENV_UPSAMPLER = "SEGEARTH_UPSAMPLER_WEIGHTS"
ENV_DEVICE = "SEGEARTH_DEVICE"
ENV_CACHE_DIR = "SEGEARTH_CACHE_DIR"
ENV_OFFLINE = "SEGEARTH_OFFLINE"
ENV_SIMFEATUP_SHA256 = "SEGEARTH_SIMFEATUP_SHA256"
ENV_FEATURE_CACHE_MB = "SEGEARTH_FEATURE_CACHE_MB"
ENV_PRECISION = "SEGEARTH_PRECISION"
ENV_ATTENTION = "SEGEARTH_ATTENTION"
ENV_LAST_BLOCKS = "SEGEARTH_LAST_BLOCKS"
#: The preset's attention mode and number of last blocks (SegEarth, 1 for a model that is not a preset).
DEFAULT_ATTENTION = "auto"

#: Class-independent image work kept for re-queries: about 1.4 megapixels with SimFeatUp's kernels
#: (~0.7 GB per megapixel), or the windows of about 25 megapixels without them (~40 MB per megapixel).
DEFAULT_FEATURE_CACHE_MB = 1024.0
#: Accepted precision names and what they mean.
PRECISIONS = {"auto": "auto", "fp32": "fp32", "float32": "fp32", "fp16": "fp16", "float16": "fp16",
              "bf16": "bf16", "bfloat16": "bf16"}


def default_cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """``$SEGEARTH_CACHE_DIR``, else the platform's user cache folder + ``segearth-ov``."""
    if env.get(ENV_CACHE_DIR):
        return Path(env[ENV_CACHE_DIR]).expanduser()
    if sys.platform == "win32" and env.get("LOCALAPPDATA"):
        return Path(env["LOCALAPPDATA"]) / "segearth-ov"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "segearth-ov"
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "segearth-ov"


def _megabytes(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ConfigError(f"{ENV_FEATURE_CACHE_MB} must be a number of megabytes (0 disables the feature cache), "
                          f"got {text[:40]!r}.") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{ENV_FEATURE_CACHE_MB} must be a finite number of megabytes, got {text[:40]!r}.")
    return value


def _attention(text: str) -> str:
    """``auto`` or the canonical spelling of an attention mode."""
    wanted = text.strip().casefold()
    if wanted == DEFAULT_ATTENTION:
        return DEFAULT_ATTENTION
    for mode in ATTENTION_MODES:
        if mode.casefold() == wanted:
            return mode
    raise ConfigError(f"attention ({ENV_ATTENTION}, --attention) must be auto or one of "
                      f"{', '.join(ATTENTION_MODES)}, got {text[:40]!r}.")


def _whole_number(name: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {text[:40]!r}.") from None


def offline(env: Mapping[str, str] = os.environ) -> bool:
    """True when downloads must not be attempted (``SEGEARTH_OFFLINE`` or ``HF_HUB_OFFLINE``)."""
    return any(env.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in (ENV_OFFLINE, "HF_HUB_OFFLINE"))


@dataclass(frozen=True)
class EngineConfig:
    """Everything needed to build a :class:`~segearth_backend.pipeline.segmenter.Segmenter`.

    Attributes:
        model: a model preset name (``clip-vit-b16``, see ``segearth-backend models``),
            an open_clip model name, or the path to an open_clip JSON config.
        clip_weights: ``"auto"`` (the preset's weights; ``openai`` for an open_clip
            name), an open_clip pretrained tag, or the path to a checkpoint file.
        upsampler_weights: ``"auto"`` (the authors' SimFeatUp checkpoint when it
            fits the model, else bilinear), ``"simfeatup"`` (that checkpoint,
            downloaded on first use), a path to a SimFeatUp checkpoint, or
            ``"none"`` (bilinear upsampling, the paper's ablation baseline).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        cache_dir: downloads and the text-embedding cache.
        batch_size: windows per image-tower pass (None: 16).
        precision: ``"auto"``, ``"fp32"`` (``float32``), ``"fp16"`` (``float16``) or ``"bf16"``
            (``bfloat16``). On CUDA ``auto`` is bfloat16 (float16 where the GPU lacks it) autocast. On
            the CPU ``auto`` is float32; ``bf16`` runs the image tower with its weights cast to bfloat16
            (fast where the CPU has AVX512-BF16 or AMX; the upsampler and the text stay float32).
        simfeatup_sha256: expected sha256 (hex) of the downloaded SimFeatUp
            checkpoint; None: the pinned constant of :mod:`.model.simfeatup_weights`.
        feature_cache_mb: memory for the class-independent work of recent images (0: none kept).
        attention: ``"auto"`` (the preset's; SegEarth for other models) or one of the authors'
            training-free attentions (vanilla, MaskCLIP, ClearCLIP, SCLIP, SegEarth; case-insensitive).
        last_blocks: how many last blocks use that attention, summed (None: the preset's; 1 otherwise).
    """

    model: str = DEFAULT_MODEL
    clip_weights: str = DEFAULT_CLIP_WEIGHTS
    upsampler_weights: str = DEFAULT_UPSAMPLER
    device: str = "auto"
    cache_dir: Path = field(default_factory=default_cache_dir)
    batch_size: Optional[int] = None
    precision: str = "auto"
    simfeatup_sha256: Optional[str] = None
    feature_cache_mb: float = DEFAULT_FEATURE_CACHE_MB
    attention: str = DEFAULT_ATTENTION
    last_blocks: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("model", "clip_weights", "upsampler_weights"):
            if not str(getattr(self, name)).strip():
                raise ValueError(f"{name} must not be empty (use 'auto' for the default)")
        if self.simfeatup_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.simfeatup_sha256):
            raise ConfigError(f"{ENV_SIMFEATUP_SHA256} must be 64 lower-case hexadecimal digits, "
                             f"got {self.simfeatup_sha256[:80]!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if str(self.precision).lower() not in PRECISIONS:
            raise ConfigError(f"precision must be auto, float32, float16 or bfloat16 (fp32, fp16, bf16), "
                              f"got {str(self.precision)[:40]!r}.")
        object.__setattr__(self, "precision", PRECISIONS[str(self.precision).lower()])
        object.__setattr__(self, "attention", _attention(str(self.attention)))
        if self.last_blocks is not None and (isinstance(self.last_blocks, bool) or
                                             not isinstance(self.last_blocks, int) or self.last_blocks < 1):
            raise ConfigError(f"last_blocks ({ENV_LAST_BLOCKS}, --last-blocks) must be a whole number of blocks, "
                              f"at least 1, got {str(self.last_blocks)[:40]!r}.")
        if not isinstance(self.feature_cache_mb, (int, float)) or not 0 <= self.feature_cache_mb < 2**24:
            raise ConfigError(f"{ENV_FEATURE_CACHE_MB} (the feature cache size) must be a number of megabytes, "
                              f"0 to disable it, got {str(self.feature_cache_mb)[:40]!r}.")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, **overrides: object) -> EngineConfig:
        """Defaults, then ``SEGEARTH_*`` variables, then explicit ``overrides`` (None = not given)."""
        values: dict[str, object] = {}
        for key, name in (("model", ENV_MODEL), ("clip_weights", ENV_CLIP_WEIGHTS),
                          ("upsampler_weights", ENV_UPSAMPLER), ("device", ENV_DEVICE)):
            if env.get(name):
                values[key] = env[name]
        values["cache_dir"] = default_cache_dir(env)
        if env.get(ENV_SIMFEATUP_SHA256):
            values["simfeatup_sha256"] = env[ENV_SIMFEATUP_SHA256].strip().lower()
        if env.get(ENV_PRECISION):
            values["precision"] = env[ENV_PRECISION].strip()
        if env.get(ENV_ATTENTION, "").strip():
            values["attention"] = env[ENV_ATTENTION].strip()
        if env.get(ENV_LAST_BLOCKS, "").strip():
            values["last_blocks"] = _whole_number(ENV_LAST_BLOCKS, env[ENV_LAST_BLOCKS])
        if env.get(ENV_FEATURE_CACHE_MB, "").strip():
            values["feature_cache_mb"] = _megabytes(env[ENV_FEATURE_CACHE_MB])
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values.get("cache_dir"), str):
            values["cache_dir"] = Path(str(values["cache_dir"])).expanduser()
        return replace(cls(), **values)  # type: ignore[arg-type]
