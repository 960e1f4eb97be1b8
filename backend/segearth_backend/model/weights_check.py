"""Which weight files are missing, and where each should go (for offline set-up and `make demo`)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional
from urllib.parse import urlparse

from ..config import EngineConfig, offline
from .presets import SIMFEATUP
from .resolve import ResolvedModel, choose_upsampler, model_shape, resolve_model
from .simfeatup_weights import BILINEAR_TAGS, SIMFEATUP_TAGS, SIMFEATUP_URL, simfeatup_cache_path

HF_FILENAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class MissingWeight:
    what: str
    url: str
    where: str


def tag_download_url(model: str, tag: str) -> str:
    """Where open_clip downloads the weights of ``model`` / ``tag`` from."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag) or {}
    repo = str(cfg.get("hf_hub", "")).rstrip("/")
    if repo:
        return f"https://huggingface.co/{repo}/resolve/main/{HF_FILENAMES[1]}"
    return str(cfg.get("url") or "(no download address known)")


def tag_is_cached(model: str, tag: str, cache_dir: Path) -> bool:
    """True when open_clip's download of ``model`` / ``tag`` is in ``<cache>/open_clip``."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag) or {}
    repo = str(cfg.get("hf_hub", "")).rstrip("/")
    cache = cache_dir / "open_clip"
    if repo:
        from huggingface_hub import try_to_load_from_cache

        for name in HF_FILENAMES:
            found = try_to_load_from_cache(repo, name, cache_dir=str(cache))
            if isinstance(found, str) and Path(found).is_file():
                return True
        return False
    url = str(cfg.get("url") or "")
    return bool(url) and (cache / url.rsplit("/", 1)[-1]).is_file()


def _clip_missing(resolved: ResolvedModel, cache_dir: Path) -> Optional[MissingWeight]:
    weights = Path(resolved.clip_weights).expanduser()
    if weights.is_file():
        return None
    preset = resolved.preset
    if preset is not None and preset.weights_file is not None and str(weights).endswith(preset.weights_file):
        note = f" ({preset.download_note})" if preset.download_note else ""
        size = f", {preset.download_size}" if preset.download_size else ""
        return MissingWeight(f"CLIP weights of preset {preset.name} ({preset.family}{size}){note}",
                             str(preset.weights_url), str(weights))
    if weights.suffix or "/" in resolved.clip_weights:
        return MissingWeight(f"CLIP weights file {weights}", "(your own checkpoint)", str(weights))
    if tag_is_cached(resolved.model, resolved.clip_weights, cache_dir):
        return None
    url = tag_download_url(resolved.model, resolved.clip_weights)
    return MissingWeight(f"CLIP weights {resolved.model} / {resolved.clip_weights}", url,
                         f"anywhere, then SEGEARTH_CLIP_WEIGHTS=/path/to/{url.rsplit('/', 1)[-1]}")


def _upsampler_spec(config: EngineConfig, resolved: ResolvedModel) -> str:
    """The upsampler ``config`` ends up with (``auto`` decided from the model's shape when known).

    Raises:
        UpsamplerMismatchError: an explicit upsampler that cannot fit the model.
    """
    shape = model_shape(config.model) or model_shape(resolved.model)
    if shape is None:
        return config.upsampler_weights
    return choose_upsampler(config.upsampler_weights, *shape, preset=resolved.preset).spec


def _simfeatup_missing(spec: str, cache_dir: Path) -> Optional[MissingWeight]:
    spec = spec.strip()
    if spec.lower() in BILINEAR_TAGS or spec.lower() == "auto":
        return None
    if spec.lower() in SIMFEATUP_TAGS or spec == SIMFEATUP:
        target = simfeatup_cache_path(cache_dir)
        return None if target.is_file() else MissingWeight("SimFeatUp checkpoint", SIMFEATUP_URL, str(target))
    path = Path(spec).expanduser()
    return None if path.is_file() else MissingWeight(f"SimFeatUp checkpoint {path}", SIMFEATUP_URL, str(path))


def missing_weights(config: EngineConfig) -> list[MissingWeight]:
    """The weight files ``config`` needs that are not on this machine.

    Raises:
        UpsamplerMismatchError: the configured upsampler cannot fit the model.
    """
    resolved = resolve_model(config)
    items = (_clip_missing(resolved, config.cache_dir),
             _simfeatup_missing(_upsampler_spec(config, resolved), config.cache_dir))
    return [item for item in items if item is not None]


def clip_file_problem(config: EngineConfig) -> Optional[str]:
    """Why the CLIP weights file of ``config`` does not fit its model (its keys and shapes loaded and compared
    with the model's), or None: it fits, or the weights are an open_clip tag (made for their model)."""
    from ..errors import CheckpointError, ModelConfigError
    from .clip_loader import check_clip_file

    resolved = resolve_model(config)
    path = Path(resolved.clip_weights).expanduser()
    if not path.is_file():
        return None
    try:
        check_clip_file(resolved.model, path)
    except (CheckpointError, ModelConfigError) as error:
        return f"{error} The model is {config.model or resolved.model}: choose the weights of that model, or " \
               "the model these weights belong to (SegEarth-OV panel, Backend, Model)."
    return None


def describe_missing(items: list[MissingWeight]) -> str:
    lines = ["These weight files are missing (download them on a machine with internet):"]
    for item in items:
        lines.append(f"  - {item.what}\n      download: {item.url}\n      put it:   {item.where}")
    return "\n".join(lines)


#: One short connection attempt per host decides whether downloads are worth trying.
PROBE_TIMEOUT = 3.0


def hosts_reachable(urls: Iterable[str], timeout: float = PROBE_TIMEOUT) -> bool:
    """True when a TCP connection to each URL's host opens within ``timeout`` seconds (no retries)."""
    hosts = {(parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80))
             for parsed in (urlparse(url) for url in urls) if parsed.hostname}
    for host, port in hosts:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError:
            return False
    return True


def fail_fast_if_unobtainable(config: EngineConfig) -> None:
    """Raise at once, naming every missing file, when some are missing and cannot be downloaded now.

    Offline mode (``SEGEARTH_OFFLINE`` / ``HF_HUB_OFFLINE``) or an unreachable
    download host means downloads would only fail after minutes of retries.

    Raises:
        WeightsNotFoundError: the list of missing files with where to get them and where to put them.
    """
    missing = missing_weights(config)
    if not missing:
        return
    downloadable = [item.url for item in missing if item.url.startswith(("http://", "https://"))]
    reason = None
    if len(downloadable) < len(missing):
        reason = "a file given by its path does not exist (check the path)"
    elif offline():
        reason = "downloads are switched off (offline mode: SEGEARTH_OFFLINE or HF_HUB_OFFLINE)"
    elif not hosts_reachable(downloadable):
        reason = "the download servers cannot be reached (no internet connection?)"
    if reason is not None:
        from ..errors import WeightsNotFoundError

        raise WeightsNotFoundError(
            f"{describe_missing(missing)}\nThey cannot be fetched now: {reason}. Give the files' paths as the CLIP "
            "weights and upsampler weights (in QGIS: SegEarth-OV panel, Backend, Weights…; on the command line: "
            "--clip-weights / --upsampler-weights or SEGEARTH_CLIP_WEIGHTS / SEGEARTH_UPSAMPLER_WEIGHTS).")
