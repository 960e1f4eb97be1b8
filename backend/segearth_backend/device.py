"""Choosing the compute device and the precision used on it."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import sys
from typing import Any, ContextManager, Mapping, Optional

import torch

from .errors import DeviceError

log = logging.getLogger(__name__)


def mps_available() -> bool:
    """True on Apple Silicon with a PyTorch build that has the Metal (MPS) backend."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA, else Apple's MPS, else the CPU; ``"cpu"``; ``"mps"``; ``"cuda"`` or ``"cuda:N"``.

    On MPS, operations PyTorch does not implement there run on the CPU
    (``PYTORCH_ENABLE_MPS_FALLBACK``, set by the command line before torch loads).

    Raises:
        DeviceError: a device asked for but not available, or an unknown name.
    """
    text = (name or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "mps":
        if not mps_available():
            raise DeviceError(f"Device 'mps' was asked for but PyTorch {torch.__version__} sees no Apple GPU (MPS). "
                              "Use 'cpu' or 'auto'.")
        log.info("MPS: operations PyTorch lacks on Apple GPUs run on the CPU (PYTORCH_ENABLE_MPS_FALLBACK=%s)",
                 os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK", "unset"))
        return torch.device("mps")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"Device '{name}' was asked for but PyTorch sees no CUDA GPU "
                f"(torch {torch.__version__}). Use device 'cpu' or 'auto', or install a "
                "CUDA build of PyTorch and the NVIDIA driver."
            )
        device = torch.device(text)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"Device '{name}' does not exist: {torch.cuda.device_count()} CUDA device(s) found."
            )
        return device
    raise DeviceError(f"Unknown device '{name}': use 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'.")


def autocast_dtype(device: torch.device, precision: str = "auto") -> Optional[torch.dtype]:
    """The autocast dtype for ``device`` (None = no autocast).

    The CPU never autocasts (measured slower than float32 there; see :func:`cast_dtype`). On CUDA
    ``auto`` picks bfloat16 where the GPU supports it, else float16.
    """
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def cast_dtype(device: torch.device, precision: str = "auto") -> Optional[torch.dtype]:
    """The dtype the image tower's weights and inputs are cast to on the CPU (None: float32).

    ``bf16`` on the CPU: casting weights and input to bfloat16 is several times faster than float32
    on CPUs with AVX512-BF16 or AMX, while ``torch.autocast("cpu", bfloat16)`` (which casts on every
    call) was slower than float32. ``auto`` stays float32 on the CPU, so results match the reference.
    ``fp16`` on the CPU means float32 (half precision is slow there).
    """
    if device.type == "cpu" and precision == "bf16":
        return torch.bfloat16
    return None


def cpu_precision(precision: str, capabilities: Mapping[str, object]) -> tuple[str, str]:
    """The precision the CPU really runs for the requested ``precision``, and why it differs (else "").

    ``bf16`` pays only on CPUs with AVX512-BF16 or AMX-BF16; elsewhere PyTorch emulates it and a
    first run was measured 2.3x *slower* than float32 (Intel Xeon with AVX-512 but neither), so it
    falls back to ``fp32``. When the CPU's flags are unknown (no ``/proc/cpuinfo``) the request stands.

    Args:
        precision: a normalised precision name (``auto``, ``fp32``, ``fp16``, ``bf16``).
        capabilities: :func:`cpu_capabilities`'s answer.
    """
    if precision != "bf16" or capabilities.get("bf16_fast") or not capabilities.get("flags_known"):
        return precision, ""
    return "fp32", (f"bfloat16 was asked for, but this CPU ({capabilities.get('model')}) has neither "
                    "AVX512-BF16 nor AMX-BF16, where bfloat16 is slower than float32: running float32.")


def cpu_capabilities(cpuinfo: str = "/proc/cpuinfo") -> dict[str, object]:
    """The CPU's model and the instruction sets that matter for bfloat16 (Linux ``/proc/cpuinfo`` flags).

    Returns:
        ``{"model", "bf16_instructions": [...], "bf16_fast": bool, "flags_known": bool}``;
        ``bf16_fast`` is True with AVX512-BF16 or AMX-BF16. On other systems the model is
        ``platform.processor()`` and the flags are unknown (an empty list, ``flags_known`` False).
    """
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as stream:
            for line in stream:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    wanted = [name for name in ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2") if name in flags]
    return {"model": model, "bf16_instructions": wanted,
            "bf16_fast": "avx512_bf16" in flags or "amx_bf16" in flags, "flags_known": bool(flags)}


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager[object]:
    """An autocast context for ``dtype``, or a no-op for float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def describe(device: torch.device) -> dict[str, object]:
    """Device facts for logs and health checks (name, memory for CUDA)."""
    info: dict[str, object] = {"type": device.type, "name": "CPU", "threads": torch.get_num_threads()}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        free, total = torch.cuda.mem_get_info(index)
        info.update(name=torch.cuda.get_device_name(index), index=index,
                    memory_free_mb=free // 2**20, memory_total_mb=total // 2**20)
    elif device.type == "mps":
        info.update(name="Apple GPU (MPS)")
    return info


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (so timings measure it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment_report() -> dict[str, Any]:
    """Python, PyTorch and device facts, without loading a model (``segearth-backend info --environment``)."""
    from . import __version__

    cuda = torch.cuda.is_available()
    return {
        "backend_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "mps_available": mps_available(),
        "auto_device": resolve_device("auto").type,
    }
