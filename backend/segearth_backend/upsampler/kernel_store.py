"""Where a window's upsampler kernels come from: shared composite kernels (CPU) or per-window kernels (GPU).

Both give a :class:`KernelStore`: ``window(i)`` returns an object whose
``apply(source, features=..., offset=...)`` runs SimFeatUp's four steps on an
``h x w x C`` channels-last source (the same linear map for every channel) and
returns the ``16h x 16w x C`` output and / or the norms of ``output + offset``;
``release(i)`` says a window is done. On the CPU with numba the kernels are
:mod:`.image_kernels`' composite ones, shared between overlapping windows;
elsewhere (CUDA, or no numba) each window computes the upsampler's own step
kernels and runs its tap-loop steps.
"""

from __future__ import annotations

from typing import Optional, Protocol

import torch
import torch.nn.functional as F

from ..device import autocast
from ..windows import Window
from . import composite_step, image_kernels
from .jbu import JBUOne

#: Channels are padded to a multiple of this for the CPU kernels (one AVX-512 register of float32).
CHANNEL_MULTIPLE = 16


class WindowOperator(Protocol):
    def apply(self, source: torch.Tensor, *, features: bool = True, offset: Optional[torch.Tensor] = None,
              split: int = 0) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]: ...


class KernelStore(Protocol):
    """The upsampling operators of one image's windows."""

    keep: bool

    @property
    def nbytes(self) -> int: ...

    def window(self, index: int) -> WindowOperator: ...

    def release(self, index: int) -> None: ...


class _TensorWindow:
    """One window's four steps with the upsampler's own 121-tap kernels (tensor code, any device)."""

    def __init__(self, upsampler: JBUOne, kernels: list[torch.Tensor], device: torch.device,
                 dtype: Optional[torch.dtype]) -> None:
        self.upsampler, self.kernels, self.device, self.dtype = upsampler, kernels, device, dtype

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() for k in self.kernels)

    @torch.inference_mode()
    def apply(self, source: torch.Tensor, *, features: bool = True, offset: Optional[torch.Tensor] = None,
              split: int = 0) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        with autocast(self.device, self.dtype):
            out = self.upsampler.spatial(source.permute(2, 0, 1)[None], self.kernels)
        out = out[0].permute(1, 2, 0).float()
        norm = None
        if offset is not None:
            norm = (out[..., :split or None] + offset[:split or None]).norm(dim=-1)
        return (out[..., split:] if features else None), norm


class TensorKernels:
    """Per-window kernels from :meth:`JBUOne.step_kernels` (CUDA, or a CPU without numba)."""

    def __init__(self, upsampler: JBUOne, guidance: image_kernels.GuidanceFn, windows: list[Window],
                 device: torch.device, dtype: Optional[torch.dtype], keep: bool) -> None:
        self.upsampler, self.guidance, self.windows = upsampler, guidance, windows
        self.device, self.dtype, self.keep = device, dtype, keep
        self._windows: dict[int, _TensorWindow] = {}

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes for w in self._windows.values())

    @torch.inference_mode()
    def window(self, index: int) -> _TensorWindow:
        if index in self._windows:
            return self._windows[index]
        w = self.windows[index]
        crop = F.pad(self.guidance(w.y0, w.y1, w.x0, w.x1), (w.pad.left, w.pad.right, w.pad.top, w.pad.bottom))
        with autocast(self.device, self.dtype):
            kernels = self.upsampler.step_kernels(crop, w.padded_height // 16, w.padded_width // 16)
        window = _TensorWindow(self.upsampler, kernels, self.device, self.dtype)
        if self.keep:
            self._windows[index] = window
        return window

    def release(self, index: int) -> None:
        if not self.keep:
            self._windows.pop(index, None)


def uses_composite(device: torch.device) -> bool:
    """True when the shared composite kernels run here (CPU with numba)."""
    return device.type == "cpu" and composite_step.AVAILABLE


def kernel_store(upsampler: JBUOne, guidance: image_kernels.GuidanceFn, windows: list[Window],
                 device: torch.device, dtype: Optional[torch.dtype], keep: bool,
                 cast: Optional[torch.dtype] = None) -> KernelStore:
    """The kernel store for one image's windows on ``device``.

    ``dtype``: the autocast dtype (CUDA); ``cast``: the CPU's reduced precision (bfloat16 mode), in which
    the composite kernels' fixup matrix products run.
    """
    if uses_composite(device):
        return image_kernels.ImageKernels(upsampler.up, guidance, windows, keep, matmul_dtype=cast)
    return TensorKernels(upsampler, guidance, windows, device, dtype, keep)


def estimate_bytes(windows: list[Window], device: torch.device) -> int:
    """Bytes a kept store of ``windows`` holds once complete."""
    if uses_composite(device):
        return image_kernels.estimate_bytes(windows)
    taps = 121 * 4
    return sum(taps * sum((w.padded_height >> (4 - s)) * (w.padded_width >> (4 - s)) for s in range(1, 5))
               for w in windows)


def padded_channels(channels: int, device: torch.device) -> int:
    """The channel count the kernels run on (a multiple of ``CHANNEL_MULTIPLE`` on the CPU)."""
    if not uses_composite(device):
        return channels
    return -(-channels // CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE

