"""Class-text embeddings: 80 OpenAI ImageNet templates per query, cached.

A query's embedding is the mean of the L2-normalised embeddings of its 80
template sentences, renormalised. Embeddings depend only on the query text and
the model, so they are kept in memory and, when a cache directory is given,
on disk (one ``.npy`` per query under a folder named by the model's
fingerprint).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

#: Bumped when the way embeddings are computed changes, so old disk caches are ignored.
TEXT_CACHE_VERSION = "1"
#: Template sentences are encoded in chunks of this many (bounds memory).
TEXT_CHUNK = 128


def imagenet_templates() -> list[Callable[[str], str]]:
    """The 80 OpenAI ImageNet prompt templates, from open_clip."""
    import open_clip

    templates = list(open_clip.OPENAI_IMAGENET_TEMPLATES)
    if len(templates) != 80:
        raise RuntimeError(f"open_clip ships {len(templates)} ImageNet templates, expected 80")
    return templates


def model_fingerprint(model: nn.Module) -> str:
    """A short hash identifying the text tower's weights.

    Hashes a strided sample of every text-tower parameter plus its exact sum,
    so different checkpoints of one architecture get different cache folders
    without hashing hundreds of megabytes.
    """
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if name.startswith("visual.") or not torch.is_tensor(tensor):
            continue
        flat = tensor.detach().reshape(-1).float().cpu()
        step = max(1, flat.numel() // 4096)
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(flat[::step].numpy().tobytes())
        digest.update(np.float64(flat.double().sum().item()).tobytes())
    return digest.hexdigest()[:16]


def _is_plain_causal_clip(model: nn.Module) -> bool:
    """True when ``encode_text`` is open_clip's standard causal, argmax-pooled tower."""
    return (
        hasattr(model, "token_embedding")
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", "argmax") == "argmax"
        and hasattr(model, "ln_final")
        and hasattr(model, "transformer")
    )


@torch.inference_mode()
def encode_sentences(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Text features of tokenised sentences, ``S x L`` int64 -> ``S x D`` float32.

    For open_clip's standard causal text tower, sequences are cut after the
    longest end-of-text token: with a causal mask, later (padding) tokens
    cannot change the end-of-text feature, so the result is the same and the
    work is several times smaller.
    """
    if not _is_plain_causal_clip(model):
        return model.encode_text(tokens).float()
    length = int(tokens.argmax(dim=-1).max().item()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype() if hasattr(model.transformer, "get_cast_dtype") else torch.float32
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    projection = model.text_projection
    if projection is not None:
        x = projection(x) if isinstance(projection, nn.Linear) else x @ projection
    return x.float()


class TextEmbedder:
    """Embeds class queries with the template ensemble; caches in memory and on disk."""

    def __init__(self, model: Any, tokenizer: Callable[[list[str]], torch.Tensor],
                 device: torch.device, cache_dir: Optional[Path] = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.templates = imagenet_templates()
        self.fingerprint = model_fingerprint(model)
        self.disk_dir = (cache_dir / "text" / f"{self.fingerprint}-v{TEXT_CACHE_VERSION}") if cache_dir else None
        self._memory: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.computed = 0  # queries encoded by the network (not served from a cache)

    def _disk_path(self, query: str) -> Optional[Path]:
        if self.disk_dir is None:
            return None
        return self.disk_dir / (hashlib.sha256(query.encode("utf-8")).hexdigest() + ".npy")

    def _read_disk(self, query: str, dim: Optional[int]) -> Optional[np.ndarray]:
        path = self._disk_path(query)
        if path is None or not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            log.warning("ignoring unreadable text-cache file %s: %s", path, error)
            return None
        if array.ndim != 1 or array.dtype != np.float32 or not np.isfinite(array).all() or (
            dim is not None and array.shape[0] != dim
        ):
            log.warning("ignoring malformed text-cache file %s", path)
            return None
        return array

    def _write_disk(self, query: str, array: np.ndarray) -> None:
        path = self._disk_path(query)
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(handle, "wb") as stream:
                np.save(stream, array, allow_pickle=False)
            os.replace(tmp, path)
        except OSError as error:  # a read-only cache must not break inference
            log.warning("could not write text cache %s: %s", path, error)

    def _encode(self, queries: Sequence[str]) -> list[np.ndarray]:
        sentences = [template(query) for query in queries for template in self.templates]
        tokens = self.tokenizer(sentences)
        # Sort by length so each chunk is cut at its own end-of-text position.
        order = torch.argsort(tokens.argmax(dim=-1))
        chunks = []
        for start in range(0, len(sentences), TEXT_CHUNK):
            index = order[start:start + TEXT_CHUNK]
            chunks.append((index, encode_sentences(self.model, tokens[index].to(self.device)).cpu()))
        dim = chunks[0][1].shape[1]
        features = torch.empty(len(sentences), dim)
        for index, chunk in chunks:
            features[index] = chunk
        features = F.normalize(features, dim=-1).reshape(len(queries), len(self.templates), dim)
        means = F.normalize(features.mean(dim=1), dim=-1)
        return [row.numpy().astype(np.float32) for row in means]

    def embed(self, queries: Sequence[str]) -> torch.Tensor:
        """``Q x D`` float32 unit vectors for ``queries``, on the engine's device."""
        with self._lock:
            missing = [q for q in dict.fromkeys(queries) if q not in self._memory]
            dim = next(iter(self._memory.values())).shape[0] if self._memory else None
            still_missing = []
            for query in missing:
                array = self._read_disk(query, dim)
                if array is None:
                    still_missing.append(query)
                else:
                    self._memory[query] = array
            if still_missing:
                for query, array in zip(still_missing, self._encode(still_missing)):
                    self._memory[query] = array
                    self._write_disk(query, array)
                self.computed += len(still_missing)
            stacked = np.stack([self._memory[q] for q in queries])
        return torch.from_numpy(stacked).to(self.device)
