"""Which weight files are missing, and where each should go (for offline set-up and `make demo`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .config import EngineConfig
from .weights import BILINEAR_TAGS, SIMFEATUP_TAGS, SIMFEATUP_URL, simfeatup_cache_path

HF_FILENAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class MissingWeight:
    what: str
    url: str
    where: str


def _clip_missing(config: EngineConfig) -> Optional[MissingWeight]:
    weights = Path(config.clip_weights).expanduser()
    if weights.is_file():
        return None
    if weights.suffix or "/" in config.clip_weights:
        return MissingWeight(f"CLIP weights file {weights}", "(your own checkpoint)", str(weights))
    import open_clip

    cfg = open_clip.get_pretrained_cfg(config.model, config.clip_weights) or {}
    repo = str(cfg.get("hf_hub", "")).rstrip("/")
    cache = config.cache_dir / "open_clip"
    if repo:
        from huggingface_hub import try_to_load_from_cache

        for name in HF_FILENAMES:
            found = try_to_load_from_cache(repo, name, cache_dir=str(cache))
            if isinstance(found, str) and Path(found).is_file():
                return None
        url = f"https://huggingface.co/{repo}/resolve/main/{HF_FILENAMES[1]}"
    else:
        url = str(cfg.get("url", "(no download address known)"))
    return MissingWeight(f"CLIP weights {config.model} / {config.clip_weights}", url,
                         f"anywhere, then SEGEARTH_CLIP_WEIGHTS=/path/to/{url.rsplit('/', 1)[-1]}")


def _simfeatup_missing(config: EngineConfig) -> Optional[MissingWeight]:
    spec = config.upsampler_weights.strip()
    if spec.lower() in BILINEAR_TAGS:
        return None
    if spec.lower() in SIMFEATUP_TAGS:
        target = simfeatup_cache_path(config.cache_dir)
        return None if target.is_file() else MissingWeight("SimFeatUp checkpoint", SIMFEATUP_URL, str(target))
    path = Path(spec).expanduser()
    return None if path.is_file() else MissingWeight(f"SimFeatUp checkpoint {path}", SIMFEATUP_URL, str(path))


def missing_weights(config: EngineConfig) -> list[MissingWeight]:
    """The weight files ``config`` needs that are not on this machine."""
    return [item for item in (_clip_missing(config), _simfeatup_missing(config)) if item is not None]


def describe_missing(items: list[MissingWeight]) -> str:
    lines = ["These weight files are missing (download them on a machine with internet):"]
    for item in items:
        lines.append(f"  - {item.what}\n      download: {item.url}\n      put it:   {item.where}")
    return "\n".join(lines)
