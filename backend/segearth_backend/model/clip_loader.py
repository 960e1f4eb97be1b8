"""Building the CLIP model with open_clip and loading its weights.

The model is an open_clip model name (``ViT-B-16-quickgelu``) or the path to
an open_clip JSON model config; the weights are an open_clip pretrained tag
(``openai``, downloaded into the cache on first use) or a local checkpoint
file (a state dict, an open_clip training checkpoint or a safetensors file).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..checkpoints import load_state_dict_file
from ..errors import CheckpointError, ModelConfigError, WeightsNotFoundError

log = logging.getLogger(__name__)

Tokenizer = Callable[[list[str]], torch.Tensor]


@dataclass
class LoadedClip:
    """A CLIP model in eval mode on the CPU, its tokenizer and where it came from."""

    model: Any  # an open_clip CLIP; its attributes are only known at run time
    tokenizer: Tokenizer
    model_name: str
    weights_source: str


def _is_config_path(model: str) -> bool:
    return model.lower().endswith(".json") or os.path.sep in model or Path(model).is_file()


def _build_from_config(path: Path) -> tuple[torch.nn.Module, Tokenizer]:
    import open_clip
    from open_clip.model import CLIP

    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelConfigError(f"Model config '{path}' does not exist: check the path.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelConfigError(f"Model config '{path}' is not readable JSON: {error}.") from None
    if not isinstance(config, dict) or "vision_cfg" not in config or "text_cfg" not in config:
        raise ModelConfigError(
            f"Model config '{path}' is not an open_clip model config "
            "(it needs 'embed_dim', 'vision_cfg' and 'text_cfg')."
        )
    text_cfg = config["text_cfg"]
    if isinstance(text_cfg, dict) and text_cfg.get("hf_tokenizer_name"):
        raise ModelConfigError(
            f"Model config '{path}' uses a Hugging Face tokenizer; only models with "
            "CLIP's own BPE tokenizer are supported."
        )
    try:
        model = CLIP(**config)
    except (TypeError, ValueError, KeyError) as error:
        raise ModelConfigError(f"Model config '{path}' does not build a CLIP model: {error}.") from None
    context_length = int(text_cfg.get("context_length", 77)) if isinstance(text_cfg, dict) else 77
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    return model, tokenizer


def _check_model_name(name: str) -> None:
    import open_clip

    known = open_clip.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelConfigError(
            f"Unknown model '{name}': give a model preset (default clip-vit-b16; "
            f"`segearth-backend models` lists them), an open_clip model name or the path to an "
            f"open_clip JSON config.{hint}"
        )


def download_hint(name: str, tag: str) -> str:
    """Where to get the weights of an open_clip tag by hand, as a sentence."""
    import open_clip

    cfg: dict[str, Any] = open_clip.get_pretrained_cfg(name, tag) or {}
    urls = []
    if cfg.get("hf_hub"):
        repo = str(cfg["hf_hub"]).rstrip("/")
        urls.append(f"https://huggingface.co/{repo}/resolve/main/open_clip_pytorch_model.bin")
    if cfg.get("url"):
        urls.append(str(cfg["url"]))
    if not urls:
        return ""
    return " Download " + " or ".join(urls) + " on a machine with internet"


def _build_pretrained(name: str, tag: str, cache_dir: Optional[Path]) -> torch.nn.Module:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name)
    if tag not in tags:
        raise ModelConfigError(
            f"'{tag}' is neither a file nor a pretrained tag of {name}. "
            f"Known tags: {', '.join(tags) or 'none'}; or give the path to a checkpoint file."
        )
    clip_cache = str(cache_dir / "open_clip") if cache_dir else None
    try:
        # OpenAI's weights were trained with QuickGELU; open_clip only warns otherwise.
        return open_clip.create_model(
            name, pretrained=tag, cache_dir=clip_cache, force_quick_gelu=(tag == "openai")
        )
    except RuntimeError as error:
        if "download" not in str(error).lower():
            raise
        raise WeightsNotFoundError(
            f"The CLIP weights '{tag}' of {name} are not in the cache "
            f"({clip_cache or 'the Hugging Face cache'}) and could not be downloaded "
            f"(offline?).{download_hint(name, tag)} and give its path as the CLIP "
            "weights (SEGEARTH_CLIP_WEIGHTS or --clip-weights)."
        ) from None


def load_clip(model: str, weights: str, cache_dir: Optional[Path] = None) -> LoadedClip:
    """Build the CLIP model ``model`` and load ``weights`` into it.

    Args:
        model: open_clip model name, or path to an open_clip JSON config.
        weights: open_clip pretrained tag, or path to a checkpoint file.
        cache_dir: where downloaded weights are kept (None: open_clip's default).

    Raises:
        ModelConfigError: unknown model name or tag, bad JSON config.
        WeightsNotFoundError: a tag's weights are not cached and cannot be downloaded.
        CheckpointError: the weights file is unreadable or does not fit the model.
    """
    import open_clip

    weights_path = Path(weights).expanduser()
    weights_is_file = weights_path.is_file()
    looks_like_file = os.path.sep in weights or weights.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))
    if not weights_is_file and looks_like_file:
        raise WeightsNotFoundError(
            f"CLIP weights file '{weights}' does not exist: check the path, or give an "
            "open_clip pretrained tag such as 'openai'."
        )

    if _is_config_path(model):
        config_path = Path(model).expanduser()
        built, tokenizer = _build_from_config(config_path)
        model_name = config_path.stem
        if not weights_is_file:
            raise ModelConfigError(
                f"A model built from a JSON config ('{model}') needs a weights file, "
                f"not the tag '{weights}'."
            )
    else:
        _check_model_name(model)
        model_name = model
        tokenizer = open_clip.get_tokenizer(model)
        if weights_is_file:
            built = open_clip.create_model(model, pretrained=None)
        else:
            built = _build_pretrained(model, weights, cache_dir)

    if weights_is_file:
        state = load_state_dict_file(weights_path, what="CLIP weights")
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        _load_strict(built, state, weights_path)
        source = str(weights_path)
    else:
        source = f"{weights} (open_clip pretrained tag)"

    visual = getattr(built, "visual", None)
    if visual is None or not hasattr(visual, "conv1") or not hasattr(visual, "transformer"):
        raise ModelConfigError(
            f"{model_name} does not have an open_clip ViT image tower; SegEarth-OV needs a "
            "ViT CLIP (for example ViT-B-16-quickgelu)."
        )
    built.eval()
    log.info("CLIP %s loaded from %s", model_name, source)
    return LoadedClip(built, tokenizer, model_name, source)


def check_clip_file(model: str, weights: Path) -> None:
    """Load the checkpoint ``weights`` and compare its keys and shapes with the model ``model`` (an open_clip
    name or JSON config) without loading it: what *Check* and ``check-weights`` do before any job.

    Raises:
        ModelConfigError: unknown model name, bad JSON config.
        CheckpointError: the file is unreadable or does not fit the model (which keys, which shapes).
    """
    import open_clip

    # On the meta device: the model's keys and shapes without allocating or initialising its tensors (a ViT-L/14
    # built on a busy CPU took minutes).
    with torch.device("meta"):
        if _is_config_path(model):
            built, _ = _build_from_config(Path(model).expanduser())
        else:
            _check_model_name(model)
            built = open_clip.create_model(model, pretrained=None, device="meta")
    state = load_state_dict_file(weights, what="CLIP weights")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    _raise_unless_fits(built, state, weights)


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    _raise_unless_fits(model, state, path)
    model.load_state_dict(state, strict=True)


def _raise_unless_fits(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{key} {tuple(state[key].shape)} instead of {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state))
        if tuple(state[key].shape) != tuple(expected[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} tensors of the wrong shape (e.g. {'; '.join(wrong_shape[:3])})")
    if problems:
        raise CheckpointError(
            f"CLIP weights '{path}' do not fit the model: {'; '.join(problems)}. "
            "Check that the model name or config matches the checkpoint."
        )
