"""Class-text embeddings: 80 OpenAI ImageNet templates per query, cached.

A query's embedding is the mean of the L2-normalised embeddings of its 80
template sentences, renormalised. Embeddings depend only on the query text and
the model, so they are kept in memory (the most recently used
``MEMORY_CACHE_ENTRIES``) and, when a cache directory is given, on disk (one
``.npy`` per query under a folder named by the model's fingerprint; the
least recently used files go once ``text/`` holds more than
``DISK_CACHE_BYTES``). Queries are tokenised and encoded
``QUERY_CHUNK`` at a time, so the work of a long class list stays bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
from collections import OrderedDict
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
#: Queries tokenised and encoded together (x 80 template sentences).
QUERY_CHUNK = 16
#: Embeddings kept in memory (about 2 KB each for ViT-B/16).
MEMORY_CACHE_ENTRIES = 8192
#: Size of the disk cache (all models together) before the oldest files are removed.
DISK_CACHE_BYTES = 64 * 2**20


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
    """Embeds class queries with the template ensemble; caches in memory and on disk (both bounded)."""

    def __init__(self, model: Any, tokenizer: Callable[[list[str]], torch.Tensor],
                 device: torch.device, cache_dir: Optional[Path] = None,
                 memory_entries: int = MEMORY_CACHE_ENTRIES, disk_bytes: int = DISK_CACHE_BYTES) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.templates = imagenet_templates()
        self.fingerprint = model_fingerprint(model)
        self.cache_root = cache_dir / "text" if cache_dir else None
        self.disk_dir = self.cache_root / f"{self.fingerprint}-v{TEXT_CACHE_VERSION}" if self.cache_root else None
        self.memory_entries = memory_entries
        self.disk_bytes = disk_bytes
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._disk_used: Optional[int] = None  # bytes under cache_root, measured on first write
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
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: evicted last
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
            if self._disk_used is not None:
                self._disk_used += path.stat().st_size
        except OSError as error:  # a read-only cache must not break inference
            log.warning("could not write text cache %s: %s", path, error)

    def _trim_disk(self) -> None:
        """Remove the least recently used cache files while ``text/`` holds more than ``disk_bytes``."""
        if self.cache_root is None or (self._disk_used is not None and self._disk_used <= self.disk_bytes):
            return
        files = []
        for path in self.cache_root.rglob("*.npy"):
            try:
                stat = path.stat()
            except OSError:
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        used = sum(size for _, size, _ in files)
        if used > self.disk_bytes:
            files.sort()
            target = int(self.disk_bytes * 0.9)
            for _, size, path in files:
                if used <= target:
                    break
                try:
                    path.unlink()
                    used -= size
                except OSError as error:
                    log.warning("could not remove old text-cache file %s: %s", path, error)
                    break
            log.info("text cache trimmed to %.1f MB", used / 2**20)
        self._disk_used = used

    def _remember(self, query: str, array: np.ndarray) -> None:
        self._memory[query] = array
        self._memory.move_to_end(query)
        while len(self._memory) > self.memory_entries:
            self._memory.popitem(last=False)

    def _encode_chunk(self, queries: Sequence[str]) -> list[np.ndarray]:
        """Embeddings of a few queries. Each query's sentences are encoded as their own batch, so an
        embedding never depends on which other queries were encoded with it (bit for bit)."""
        per_query = len(self.templates)
        tokens = self.tokenizer([template(query) for query in queries for template in self.templates])
        means = []
        for start in range(0, tokens.shape[0], per_query):
            rows = tokens[start:start + per_query]
            # Sort by length so each chunk is cut at its own end-of-text position.
            order = torch.argsort(rows.argmax(dim=-1))
            features = torch.empty(rows.shape[0], 0)
            for first in range(0, rows.shape[0], TEXT_CHUNK):
                index = order[first:first + TEXT_CHUNK]
                encoded = encode_sentences(self.model, rows[index].to(self.device)).cpu()
                if features.shape[1] == 0:
                    features = torch.empty(rows.shape[0], encoded.shape[1])
                features[index] = encoded
            means.append(F.normalize(F.normalize(features, dim=-1).mean(dim=0), dim=-1))
        return [row.numpy().astype(np.float32) for row in means]

    def _encode(self, queries: Sequence[str]) -> list[np.ndarray]:
        """Embeddings of ``queries``, ``QUERY_CHUNK`` queries (x 80 sentences) at a time."""
        arrays: list[np.ndarray] = []
        for start in range(0, len(queries), QUERY_CHUNK):
            arrays.extend(self._encode_chunk(queries[start:start + QUERY_CHUNK]))
        return arrays

    def embed(self, queries: Sequence[str]) -> torch.Tensor:
        """``Q x D`` float32 unit vectors for ``queries``, on the engine's device."""
        with self._lock:
            found: dict[str, np.ndarray] = {}
            missing = []
            for query in dict.fromkeys(queries):
                if query in self._memory:
                    self._memory.move_to_end(query)
                    found[query] = self._memory[query]
                else:
                    missing.append(query)
            dim = next(iter(self._memory.values())).shape[0] if self._memory else None
            still_missing = []
            for query in missing:
                array = self._read_disk(query, dim)
                if array is None:
                    still_missing.append(query)
                else:
                    found[query] = array
            if still_missing:
                for query, array in zip(still_missing, self._encode(still_missing)):
                    found[query] = array
                    self._write_disk(query, array)
                self.computed += len(still_missing)
                self._trim_disk()
            for query in missing:
                self._remember(query, found[query])
            stacked = np.stack([found[q] for q in queries])
        return torch.from_numpy(stacked).to(self.device)
