"""SimFeatUp (JBU-One): the joint-bilateral feature upsampler of SegEarth-OV.

One joint-bilateral step module (radius 5, an 11 x 11 = 121-tap kernel) is
applied four times with shared weights (x2 each: 14 -> 28 -> 56 -> 112 ->
224 for a 224 window), then ``F + 0.1 * conv1x1(F)``. Parameter names match
the authors' checkpoint (``up.*`` and ``fixup_proj.1.*``).

Every step applies the *same* spatial weights to every feature channel, so
the four steps form a linear map shared by all channels;
:mod:`segearth_backend.pipeline.features` uses that to upsample the queries
or a window's few exact coordinates instead of all ``D`` channels.

Public tensors are channels first (``B x C x H x W``); inside, the steps work
channels last (``B x H x W x C``), where the 1x1 convolutions are plain
matrix products and the per-pixel kernels are contiguous. Tap ``t`` of a
kernel is the neighbour at row offset ``t // 11 - 5`` and column offset
``t % 11 - 5``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Union, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import load_state_dict_file
from ..errors import CheckpointError
from . import neighbourhood

log = logging.getLogger(__name__)

RADIUS = 5
DIAMETER = 2 * RADIUS + 1
TAPS = DIAMETER * DIAMETER
KEY_DIM = 32
GUIDANCE_DIM = 3
STEPS = 4
#: Pixels whose kernels are finished together (bounds the hidden layer: 16384 x 121 floats).
FINISH_CHUNK = 16384


def pointwise(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run a stack of 1x1 convolutions and activations on a channels-last tensor, in ``x``'s dtype."""
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            weight = layer.weight.reshape(layer.out_channels, layer.in_channels).to(x.dtype)
            x = F.linear(x, weight, None if layer.bias is None else layer.bias.to(x.dtype))
        elif isinstance(layer, nn.Dropout2d):
            if layer.training and layer.p > 0:
                raise RuntimeError("the upsampler must be in eval mode (dropout off) for inference")
        else:
            x = layer(x)
    return x


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``B x C x H x W`` -> ``B x H x W x C`` (contiguous)."""
    return x.permute(0, 2, 3, 1).contiguous()


class JointBilateralStep(nn.Module):
    """One x2 joint-bilateral upsampling step with a learned range kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))
        self.range_proj = nn.Sequential(
            nn.Conv2d(GUIDANCE_DIM, KEY_DIM, 1), nn.GELU(), nn.Dropout2d(0.1), nn.Conv2d(KEY_DIM, KEY_DIM, 1),
        )
        self.fixup_proj = nn.Sequential(
            nn.Conv2d(TAPS + GUIDANCE_DIM, TAPS, 1), nn.GELU(), nn.Dropout2d(0.1), nn.Conv2d(TAPS, TAPS, 1),
        )

    def spatial_kernel(self) -> torch.Tensor:
        """``TAPS`` Gaussian weights ``exp(-(dx^2 + dy^2) / (2 sigma^2))``, offsets on [-1, 1]."""
        offsets = torch.linspace(-1, 1, DIAMETER, device=self.sigma_spatial.device)
        squared = (offsets[:, None] ** 2 + offsets[None, :] ** 2).reshape(TAPS)
        return torch.exp(-squared / (2 * self.sigma_spatial.float() ** 2))

    def kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """Per-pixel upsampling kernel from the pooled guidance.

        Args:
            guidance: ``B x H x W x 3``, the guidance pooled to the output size.

        Returns:
            ``B x H x W x 121``: range x spatial kernel normalised over the
            taps, plus ``0.1 * fixup([kernel, guidance])``.
        """
        keys = self.keys(guidance)
        weights = neighbourhood.range_weights(keys, guidance, self.temperature(), self.spatial_kernel(), RADIUS)
        return self.finish(weights)

    def keys(self, guidance: torch.Tensor) -> torch.Tensor:
        """The range keys ``... x 32`` of pooled guidance ``... x 3`` (channels last)."""
        return pointwise(self.range_proj, guidance)

    def temperature(self) -> torch.Tensor:
        """The range kernel's temperature ``clamp(exp(range_temp), 1e-4, 1e4)`` (a scalar tensor)."""
        return self.range_temp.exp().clamp(1e-4, 1e4)

    def finish(self, fixup_input: torch.Tensor, compute_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """``... x 124`` (normalised range x spatial weights, then the guidance) -> kernels ``... x 121``.

        The kernel plus ``0.1 * fixup([kernel, guidance])``; pixel by pixel, in chunks of
        ``FINISH_CHUNK`` pixels (the hidden layer stays small).

        Args:
            compute_dtype: the dtype of the fixup's two matrix products (None: ``fixup_input``'s). The
                engine's bfloat16 mode on the CPU passes ``torch.bfloat16`` (several times faster with
                AVX512-BF16 or AMX); the weights themselves and the result stay in ``fixup_input``'s dtype,
                so only the ``0.1 * fixup`` term is rounded.
        """
        flat = fixup_input.reshape(-1, fixup_input.shape[-1])
        dtype = compute_dtype or flat.dtype
        last = cast(nn.Conv2d, self.fixup_proj[-1])
        weight, bias = 0.1 * last.weight.reshape(TAPS, TAPS), 0.1 * cast(torch.Tensor, last.bias)
        out = torch.empty(flat.shape[0], TAPS, dtype=flat.dtype, device=flat.device)
        for start in range(0, flat.shape[0], FINISH_CHUNK):
            part = flat[start:start + FINISH_CHUNK]
            target = out[start:start + FINISH_CHUNK]
            hidden = pointwise(self.fixup_proj[:-1], part.to(dtype))
            if dtype == flat.dtype:
                torch.addmm(part[:, :TAPS], hidden, weight.T, beta=1.0, alpha=1.0, out=target)
            else:
                torch.add(part[:, :TAPS], hidden @ weight.T.to(dtype), out=target)
            target += bias
        return out.reshape(*fixup_input.shape[:-1], TAPS)


def step_guidance(guidance: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``B x 3 x H x W`` guidance average-pooled to ``height x width``, channels last."""
    return to_channels_last(F.adaptive_avg_pool2d(guidance, (height, width)))


def upsample_with_kernel(source: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Bicubic x2 of ``source`` then the per-pixel adaptive convolution.

    Args:
        source: ``B x h x w x C`` (channels last).
        kernel: ``B x 2h x 2w x 121`` from :meth:`JointBilateralStep.kernel`.

    Returns:
        ``B x 2h x 2w x C``.
    """
    if tuple(kernel.shape[1:3]) != (2 * source.shape[1], 2 * source.shape[2]):
        raise ValueError(
            f"kernel grid {tuple(kernel.shape[1:3])} is not twice the source grid {tuple(source.shape[1:3])}")
    return neighbourhood.adaptive_conv(neighbourhood.upsample_bicubic_x2(source), kernel, RADIUS)


class JBUOne(nn.Module):
    """The SimFeatUp upsampler: one shared step applied four times, then a 1x1 fixup."""

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.up = JointBilateralStep()
        self.fixup_proj = nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(feature_dim, feature_dim, 1))

    def step_kernels(self, guidance: torch.Tensor, height: int, width: int) -> list[torch.Tensor]:
        """The four steps' kernels for a ``height x width`` feature grid.

        Args:
            guidance: ``B x 3 x 16h x 16w`` (the normalised window).

        Returns:
            kernels ``B x (h 2^s) x (w 2^s) x 121`` for s = 1..4.
        """
        return [
            self.up.kernel(step_guidance(guidance, height << step, width << step))
            for step in range(1, STEPS + 1)
        ]

    def spatial(self, source: torch.Tensor, step_kernels: list[torch.Tensor]) -> torch.Tensor:
        """The four steps without the final fixup: ``B x C x h x w -> B x C x 16h x 16w``.

        Linear in ``source`` and the same for every channel. The result is a
        channels-last view (``permute`` of a ``B x 16h x 16w x C`` tensor).
        """
        x = to_channels_last(source)
        for kernel in step_kernels:
            x = upsample_with_kernel(x, kernel)
        return x.permute(0, 3, 1, 2)

    def final_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, c)`` with ``F + 0.1 * conv1x1(F) = A F + c``: ``A`` is ``D x D``, ``c`` is ``D``."""
        conv = cast(nn.Conv2d, self.fixup_proj[1])
        weight = conv.weight.reshape(self.feature_dim, self.feature_dim)
        eye = torch.eye(self.feature_dim, dtype=weight.dtype, device=weight.device)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(weight[0])
        return eye + 0.1 * weight, 0.1 * bias

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """Upsample ``source`` (``B x D x h x w``) x16 guided by ``guidance`` (``B x 3 x 16h x 16w``)."""
        height, width = source.shape[-2:]
        features = self.spatial(source, self.step_kernels(guidance, height, width))
        return features + 0.1 * self.fixup_proj(features)


def _expected_shapes(feature_dim: int) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in JBUOne(feature_dim).state_dict().items()}


def load_upsampler(path: Union[str, Path], feature_dim: int) -> JBUOne:
    """Load the authors' SimFeatUp checkpoint (or a bare state dict) into :class:`JBUOne`.

    The authors' file is a PyTorch Lightning checkpoint whose ``state_dict``
    keys start with ``upsampler.``; that prefix is stripped.

    Raises:
        WeightsNotFoundError: no such file.
        CheckpointError: unreadable or truncated file, missing / unexpected
            keys, tensor shapes that do not fit ``feature_dim``, NaN values.
    """
    path = Path(path).expanduser()
    state = load_state_dict_file(path, what="SimFeatUp checkpoint")
    prefix = "upsampler."
    if any(key.startswith(prefix) for key in state):
        state = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    expected = _expected_shapes(feature_dim)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}")
        raise CheckpointError(
            f"SimFeatUp checkpoint '{path}' is not a JBU-One upsampler ({'; '.join(parts)}). "
            "Use the authors' xclip_jbu_one_million_aid.ckpt, or 'none' for bilinear upsampling."
        )
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise CheckpointError(
                f"SimFeatUp checkpoint '{path}': {key} has shape {tuple(state[key].shape)}, expected "
                f"{shape}. The checkpoint was trained for another feature size than the CLIP "
                f"model's {feature_dim}: pick the matching model or checkpoint."
            )
        if not torch.isfinite(state[key]).all():
            raise CheckpointError(f"SimFeatUp checkpoint '{path}': {key} contains NaN or infinite values.")
    module = JBUOne(feature_dim)
    module.load_state_dict({key: value.float() for key, value in state.items()}, strict=True)
    module.eval()
    log.info("SimFeatUp (JBU-One) loaded from %s", path)
    return module
