"""Conditioning encoders: CompVis's ``SpatialRescaler`` (the paper's) and ``SpaceToDepth``, which
brings the condition to the latent grid without averaging it (beyond the paper)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RESCALE_METHODS = ("nearest", "linear", "bilinear", "trilinear", "bicubic", "area")


class SpatialRescaler(nn.Module):
    """c~ = F(c): ``n_stages`` interpolations by ``multiplier``, then an optional 1x1 convolution.

    The paper's rescaler (Section 2.1): the 15 CTP time points at 192 x 224, bilinearly halved
    twice to the 48 x 56 latent grid, then mapped by a 1x1 convolution (15 -> 15, no bias) that is
    trained with the UNet. Interpolation is CompVis's (``F.interpolate`` with the default
    ``align_corners``, no antialiasing), so trained rescalers behave the same here. The state-dict
    key is ``channel_mapper.weight``.
    """

    def __init__(self, n_stages: int = 1, method: str = "bilinear", multiplier: float = 0.5, in_channels: int = 3,
                 out_channels: int | None = None, bias: bool = False) -> None:
        super().__init__()
        if n_stages < 0:
            raise ValueError(f"SpatialRescaler: n_stages must be >= 0, got {n_stages}")
        if method not in RESCALE_METHODS:
            raise ValueError(f"SpatialRescaler: method {method!r} is not one of {RESCALE_METHODS}")
        self.n_stages, self.method, self.multiplier = n_stages, method, multiplier
        self.in_channels = in_channels
        self.remap_output = out_channels is not None
        if self.remap_output:
            self.channel_mapper = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or (self.remap_output and x.shape[1] != self.in_channels):
            raise ValueError(f"SpatialRescaler expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        for _ in range(self.n_stages):
            x = F.interpolate(x, scale_factor=self.multiplier, mode=self.method)
        return self.channel_mapper(x) if self.remap_output else x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)


class SpaceToDepth(nn.Module):
    """c~ = W * unshuffle_f(c): each f x f block of the condition stacked into channels, then an
    optional 1x1 convolution (``out_channels``; trained with the UNet when the cond stage is).

    Beyond the paper, whose rescaler averages the CTP over f x f pixels before the UNet sees it: a
    lesion one latent pixel across keeps 1 / f^2 of its contrast there, or less where it straddles
    two. Here every CTP pixel reaches the UNet's first convolution (docs/training.md, *Conditioning
    at full resolution*). Without ``out_channels`` c~ has in_channels x f^2 channels.
    """

    def __init__(self, factor: int = 4, in_channels: int = 15, out_channels: int | None = None,
                 bias: bool = False) -> None:
        super().__init__()
        if factor < 1:
            raise ValueError(f"SpaceToDepth: factor must be >= 1, got {factor}")
        self.factor, self.in_channels = int(factor), int(in_channels)
        self.remap_output = out_channels is not None
        if self.remap_output:
            self.channel_mapper = nn.Conv2d(in_channels * factor ** 2, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.factor
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(f"SpaceToDepth expects (B, {self.in_channels}, H, W) with H and W multiples of {f}, "
                             f"got {tuple(x.shape)}")
        x = F.pixel_unshuffle(x, f)
        return self.channel_mapper(x) if self.remap_output else x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)
