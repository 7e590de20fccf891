"""Conditioning encoders. The LDM here needs one: CompVis's ``SpatialRescaler``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RESCALE_METHODS = ("nearest", "linear", "bilinear", "trilinear", "bicubic", "area", "pixel_unshuffle")


class SpatialRescaler(nn.Module):
    """c~ = F(c): ``n_stages`` interpolations by ``multiplier``, then an optional 1x1 convolution.

    The paper's rescaler (Section 2.1): the 15 CTP time points at 192 x 224, bilinearly halved
    twice to the 48 x 56 latent grid, then mapped by a 1x1 convolution (15 -> 15, no bias) that is
    trained with the UNet. Interpolation is CompVis's (``F.interpolate`` with the default
    ``align_corners``, no antialiasing), so trained rescalers behave the same here. The state-dict
    key is ``channel_mapper.weight``.

    ``method: pixel_unshuffle`` (beyond the paper and CompVis) reaches the same grid without
    averaging: each f x f block (f = multiplier^-n_stages, an integer) is stacked into channels, so
    the 1x1 convolution maps in_channels x f^2 channels to ``out_channels`` and sees every pixel. The
    bilinear path averages the condition over f x f pixels: a lesion one latent pixel across keeps
    1 / f^2 of its contrast, or less where it straddles two (docs/training.md, *Conditioning at full
    resolution*). With the same ``out_channels`` the UNet's input is unchanged.
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
        self.factor = 1
        if method == "pixel_unshuffle":
            factor = (1.0 / multiplier) ** n_stages if multiplier > 0 else 0.0
            if factor < 1 or abs(factor - round(factor)) > 1e-9:
                raise ValueError(f"SpatialRescaler: pixel_unshuffle needs multiplier ** -n_stages to be an integer >= 1, "
                                 f"got {multiplier} ** -{n_stages}")
            self.factor = int(round(factor))
        self.remap_output = out_channels is not None
        if self.remap_output:
            self.channel_mapper = nn.Conv2d(in_channels * self.factor ** 2, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.factor
        if x.dim() != 4 or (self.remap_output and x.shape[1] != self.in_channels) or x.shape[-2] % f or x.shape[-1] % f:
            need = f" with H and W multiples of {f}" if f > 1 else ""
            raise ValueError(f"SpatialRescaler expects (B, {self.in_channels}, H, W){need}, got {tuple(x.shape)}")
        if self.method == "pixel_unshuffle":
            x = F.pixel_unshuffle(x, f)
        else:
            for _ in range(self.n_stages):
                x = F.interpolate(x, scale_factor=self.multiplier, mode=self.method)
        return self.channel_mapper(x) if self.remap_output else x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)
