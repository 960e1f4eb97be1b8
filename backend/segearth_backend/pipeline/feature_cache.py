"""A bounded cache of the class-independent image work: per-window features and per-image upsampler kernels.

Keys are content hashes (:func:`window_key`, :func:`image_key`): the same
pixels (and valid mask) give the same key wherever they are, so overlapping
areas cut on the same window grid share their windows. Entries are of two
kinds. ``window`` entries (CLS feature, low-resolution features, per-pixel
norms: about 0.6 MB per 224-pixel window) replace the image tower, the
costliest part of a run; ``kernels`` entries (about 0.7 GB per megapixel)
spare the upsampler's kernels. When room is needed the least recently used
``kernels`` entry goes first, then the least recently used window, so a
large area keeps its windows when its kernels no longer fit.

Memory stays below ``capacity`` bytes (0 disables the cache); the caller
asks for room with :meth:`FeatureCache.reserve` before building an entry.
All methods are thread-safe.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

WINDOW = "window"
KERNELS = "kernels"


@dataclass
class _Entry:
    value: Any
    nbytes: int


def weights_fingerprint(*modules: Any, extra: str = "") -> str:
    """A short hash of the modules' weights (a strided sample of every tensor and its exact sum) and ``extra``.

    Cache keys include it, so features never outlive the weights (or precision) they came from.
    """
    import torch

    digest = hashlib.blake2b(digest_size=16)
    digest.update(extra.encode())
    for module in modules:
        if module is None:
            digest.update(b"none")
            continue
        for name, tensor in module.state_dict().items():
            if not torch.is_tensor(tensor):
                continue
            flat = tensor.detach().reshape(-1).float().cpu()
            digest.update(name.encode() + str(tuple(tensor.shape)).encode())
            digest.update(flat[::max(1, flat.numel() // 1024)].numpy().tobytes())
            digest.update(np.float64(flat.double().sum().item()).tobytes())
    return digest.hexdigest()


def _digest(*parts: bytes) -> str:
    digest = hashlib.blake2b(digest_size=20)
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def _mask_bytes(valid: Optional[np.ndarray]) -> bytes:
    return b"all valid" if valid is None else np.packbits(np.ascontiguousarray(valid, dtype=bool)).tobytes()


def window_key(fingerprint: str, pixels: np.ndarray, valid: Optional[np.ndarray], padding: tuple[int, ...]) -> str:
    """The key of one window: the engine's fingerprint, its ``h x w x 3`` uint8 pixels, mask and padding."""
    shape = np.asarray(pixels.shape + padding, np.int64).tobytes()
    return WINDOW + ":" + _digest(fingerprint.encode(), shape, np.ascontiguousarray(pixels).tobytes(),
                                  _mask_bytes(valid))


def image_key(fingerprint: str, image: np.ndarray, valid: Optional[np.ndarray]) -> str:
    """The key of a whole image (its kernels depend on the window grid, hence on its size)."""
    shape = np.asarray(image.shape, np.int64).tobytes()
    return KERNELS + ":" + _digest(fingerprint.encode(), shape, np.ascontiguousarray(image).tobytes(),
                                   _mask_bytes(valid))


class FeatureCache:
    """LRU by kind (``kernels`` evicted before ``window`` entries), bounded in bytes.

    Args:
        capacity: bytes (0: nothing is kept).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"the feature cache capacity must be 0 or more bytes, got {capacity}")
        self.capacity = capacity
        self._entries: dict[str, OrderedDict[str, _Entry]] = {KERNELS: OrderedDict(), WINDOW: OrderedDict()}
        self._used = 0
        self._lock = threading.Lock()
        self.hits = {WINDOW: 0, KERNELS: 0}
        self.misses = {WINDOW: 0, KERNELS: 0}
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    @property
    def used(self) -> int:
        """Bytes held."""
        return self._used

    def get(self, key: str) -> Any:
        """The value stored under ``key`` (now the most recently used), or None (a miss)."""
        kind = key.split(":", 1)[0]
        with self._lock:
            entry = self._entries[kind].get(key)
            if entry is None:
                self.misses[kind] += 1
                return None
            self._entries[kind].move_to_end(key)
            self.hits[kind] += 1
            return entry.value

    def fits(self, nbytes: int) -> bool:
        """Whether an entry of ``nbytes`` can be kept at all."""
        return self.enabled and nbytes <= self.capacity

    def reserve(self, nbytes: int) -> None:
        """Evict until ``nbytes`` more would fit (kernels first, least recently used first)."""
        with self._lock:
            self._evict_for(nbytes)

    def put(self, key: str, value: Any, nbytes: int) -> bool:
        """Keep ``value`` under ``key`` if it fits (evicting as needed); returns whether it was kept."""
        kind = key.split(":", 1)[0]
        with self._lock:
            old = self._entries[kind].pop(key, None)
            if old is not None:
                self._used -= old.nbytes
            if not self.enabled or nbytes > self.capacity:
                return False
            self._evict_for(nbytes)
            self._entries[kind][key] = _Entry(value, nbytes)
            self._used += nbytes
            return True

    def clear(self) -> None:
        with self._lock:
            for entries in self._entries.values():
                entries.clear()
            self._used = 0

    def stats(self) -> dict[str, Any]:
        """Counters and memory, for ``/health`` and the logs."""
        with self._lock:
            return {
                "capacity_mb": round(self.capacity / 2**20, 1),
                "used_mb": round(self._used / 2**20, 1),
                "windows": len(self._entries[WINDOW]),
                "images": len(self._entries[KERNELS]),
                "window_hits": self.hits[WINDOW],
                "window_misses": self.misses[WINDOW],
                "kernel_hits": self.hits[KERNELS],
                "kernel_misses": self.misses[KERNELS],
                "evictions": self.evictions,
            }

    def _evict_for(self, nbytes: int) -> None:
        for kind in (KERNELS, WINDOW):
            entries = self._entries[kind]
            while entries and self._used + nbytes > self.capacity:
                _, entry = entries.popitem(last=False)
                self._used -= entry.nbytes
                self.evictions += 1
