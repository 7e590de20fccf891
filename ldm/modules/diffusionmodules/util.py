"""Small building blocks of the diffusion UNet and models (CompVis ``diffusionmodules.util`` names).

The schedule functions live in :mod:`ldm.modules.diffusionmodules.schedules` and are re-exported
here so that CompVis-style imports (``from ldm.modules.diffusionmodules.util import
make_beta_schedule``) keep working.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _torch_checkpoint

from ldm.modules.diffusionmodules.schedules import (  # noqa: F401  (CompVis import path)
    make_beta_schedule,
    make_ddim_sampling_parameters,
    make_ddim_timesteps,
)


def extract_into_tensor(a: torch.Tensor, t: torch.Tensor, x_shape: Sequence[int]) -> torch.Tensor:
    """``a[t]`` per batch element, shaped (B, 1, ..., 1) to broadcast against ``x_shape``."""
    out = a.gather(-1, t)
    return out.reshape(t.shape[0], *((1,) * (len(x_shape) - 1)))


def checkpoint(func: Callable[..., Any], inputs: Sequence[Any], params: Any = None, flag: bool = True) -> Any:
    """Activation checkpointing of ``func(*inputs)`` when ``flag`` (CompVis signature).

    Uses ``torch.utils.checkpoint`` with ``use_reentrant=False`` instead of CompVis's custom
    autograd Function: it needs no explicit parameter list (``params`` is ignored), works with
    autocast and with inputs that do not require grad, and composes with torch.compile. Nothing
    is recomputed when no gradient is being recorded (sampling, validation).
    """
    if flag and torch.is_grad_enabled():
        return _torch_checkpoint(func, *inputs, use_reentrant=False)
    return func(*inputs)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000,
                       repeat_only: bool = False) -> torch.Tensor:
    """Sinusoidal embeddings (B, dim) of (possibly fractional) timesteps, [cos | sin] as CompVis."""
    if repeat_only:
        return timesteps[:, None].float().expand(-1, dim)
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) / half
                      * torch.arange(half, dtype=torch.float32, device=timesteps.device))
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def zero_module(module: nn.Module) -> nn.Module:
    """Zero the parameters of ``module`` and return it (residual branches start as identity)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def scale_module(module: nn.Module, scale: float) -> nn.Module:
    for p in module.parameters():
        p.detach().mul_(scale)
    return module


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch."""
    return tensor.mean(dim=list(range(1, tensor.dim())))


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (stable under fp16/bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> nn.Module:
    """The UNet's normalisation layer: 32-group GroupNorm (``channels`` must be a multiple of 32)."""
    if channels % 32:
        raise ValueError(f"GroupNorm with 32 groups needs a multiple of 32 channels, got {channels} "
                         f"(choose model_channels so that every level's width is a multiple of 32)")
    return GroupNorm32(32, channels)


def conv_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """A 1D, 2D or 3D convolution."""
    if dims in (1, 2, 3):
        return (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1](*args, **kwargs)
    raise ValueError(f"unsupported dimensions: {dims}")


def linear(*args: Any, **kwargs: Any) -> nn.Linear:
    return nn.Linear(*args, **kwargs)


def avg_pool_nd(dims: int, *args: Any, **kwargs: Any) -> nn.Module:
    """A 1D, 2D or 3D average pooling."""
    if dims in (1, 2, 3):
        return (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[dims - 1](*args, **kwargs)
    raise ValueError(f"unsupported dimensions: {dims}")


def noise_like(shape: Sequence[int], device: torch.device | str, repeat: bool = False) -> torch.Tensor:
    """Standard normal noise; with ``repeat`` one draw shared by the whole batch."""
    if repeat:
        return torch.randn((1, *shape[1:]), device=device).expand(*shape).contiguous()
    return torch.randn(tuple(shape), device=device)


INITIAL_NOISE = ("zero_mean", "gaussian")


def zero_mean_per_channel(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, H, W) minus its spatial mean per sample and channel.

    Why (docs/sampling.md): at the noisiest timesteps an eps-prediction UNet reproduces the
    per-pixel noise of x_T but hardly its spatial mean (a 1 / (H W) share of the eps loss), and
    Eq. 5 multiplies that error by 1 / sqrt(abar_t), about 80 at t = T: the mean of the sample, i.e.
    its brightness, then follows the mean of the drawn x_T. Starting DDIM from x_T without that
    mean (3 of C H W dimensions of the Gaussian) removes the leak; the per-pixel noise is unchanged.
    """
    return x - x.mean(dim=(-2, -1), keepdim=True)
