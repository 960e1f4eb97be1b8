"""Reading checkpoint files safely, with errors a user can act on."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, WeightsNotFoundError


def read_checkpoint(path: Path, what: str) -> Any:
    """``torch.load`` with ``weights_only=True`` (no code runs from the file).

    Raises:
        WeightsNotFoundError: the file does not exist.
        CheckpointError: truncated, not a PyTorch file, or holding objects
            that are not plain tensors and containers.
    """
    if not path.is_file():
        raise WeightsNotFoundError(f"{what} file '{path}' does not exist: check the path.")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(
                f"{what} '{path}' is a safetensors file; install the 'safetensors' package."
            ) from None
        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own untyped errors
            raise CheckpointError(f"{what} '{path}' is not a valid safetensors file: {error}.") from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error).splitlines()[0] if str(error) else "unsupported content"
        if "weights_only" in str(error) or "global" in str(error).lower():
            raise CheckpointError(
                f"{what} '{path}' holds Python objects besides tensors and cannot be loaded "
                f"safely ({message}). Re-save only its tensors, e.g. "
                "torch.save(torch.load(p, weights_only=False)['state_dict'], 'clean.ckpt'), "
                "with a file you trust."
            ) from None
        raise CheckpointError(
            f"{what} '{path}' is truncated or not a PyTorch checkpoint ({message}): download it again."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"{what} '{path}' is truncated or not a PyTorch checkpoint ({first}): download it again."
        ) from None


def load_state_dict_file(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A ``{name: tensor}`` dict from a plain state dict or a training checkpoint."""
    content = read_checkpoint(path, what)
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]
    if not isinstance(content, dict) or not content or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in content.items()
    ):
        raise CheckpointError(
            f"{what} '{path}' does not contain a state dict (a mapping of names to tensors)."
        )
    return content
