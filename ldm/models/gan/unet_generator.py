"""The pix2pix generator: a U-Net with skip connections and dropout (Isola et al., CVPR 2017, Sec. 3.1
and appendix 6.1.1; ``unet_256`` of the release).

Encoder C64-C128-C256-C512-C512-C512-C512-C512 (4 x 4 convolutions, stride 2, LeakyReLU 0.2, no
norm on the first); decoder CD512-CD512-CD512-C512-C256-C128-C64 (ReLU, 4 x 4 transposed
convolutions, dropout 0.5 on the three innermost 512-filter decoder blocks), each decoder block
fed the concatenation of the block below and the mirrored encoder output (the skips), and a final
transposed convolution to ``out_channels`` with tanh. ``num_downs`` halvings (8 for 256 x 256).

A size that is not a multiple of 2^num_downs (the paper's 192 x 224) is padded with background
and cropped back (:mod:`ldm.models.gan.sizing`).
"""
from __future__ import annotations

import torch
from torch import nn

from ldm.models.gan.init import init_weights
from ldm.models.gan.norm import conv_bias, norm_layer
from ldm.models.gan.sizing import crop_to, pad_to_multiple
from ldm.util import ConfigError


class UNetGenerator(nn.Module):
    """``(B, in_channels, H, W) -> (B, out_channels, H, W)`` in [-1, 1] (tanh) for any H, W >= 1.

    ngf: filters of the outermost level (64 in pix2pix); the widths double per level up to 8 x ngf.
    num_downs: halvings; the bottleneck is 1 x 1 at 2^num_downs (>= 5, the release's minimum).
    dropout: the rate of those decoder blocks (0.5; 0 switches it off).
    """

    def __init__(self, in_channels: int = 15, out_channels: int = 2, ngf: int = 64, num_downs: int = 8,
                 norm: str = "batch", dropout: float = 0.5) -> None:
        super().__init__()
        if num_downs < 5:
            raise ConfigError(f"num_downs {num_downs}: the pix2pix U-Net has at least 5 levels (64, 128, 256, 512, 512 "
                              f"filters x ngf / 64)")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels, self.out_channels, self.num_downs = int(in_channels), int(out_channels), int(num_downs)
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        # widths of the encoder outputs, outermost first: ngf, 2 ngf, 4 ngf, then 8 ngf down to the bottleneck
        widths = [ngf * min(2 ** i, 8) for i in range(num_downs)]
        self.down = nn.ModuleList()
        for i, width in enumerate(widths):
            if i == 0:
                self.down.append(nn.Conv2d(in_channels, width, 4, 2, 1, bias=bias))
                continue
            layers: list[nn.Module] = [nn.LeakyReLU(0.2, True), nn.Conv2d(widths[i - 1], width, 4, 2, 1, bias=bias)]
            if i < num_downs - 1:  # the innermost (1 x 1) level has no norm, as in the release
                layers.append(make_norm(width))
            self.down.append(nn.Sequential(*layers))
        self.up = nn.ModuleList()
        # decoder block i maps level i+1 back to level i's width; inputs are concatenations except innermost
        for i in reversed(range(num_downs)):
            inner = i == num_downs - 1
            c_in = widths[i] if inner else 2 * widths[i]
            if i == 0:
                self.up.append(nn.Sequential(nn.ReLU(True), nn.ConvTranspose2d(c_in, out_channels, 4, 2, 1),
                                             nn.Tanh()))
                continue
            layers = [nn.ReLU(True), nn.ConvTranspose2d(c_in, widths[i - 1], 4, 2, 1, bias=bias), make_norm(widths[i - 1])]
            # the release's dropout blocks: the num_downs - 5 levels of 8 ngf filters between the innermost
            # one and the 4 ngf level (CD512 x 3 for num_downs 8; none for 5)
            if dropout > 0 and 4 <= i <= num_downs - 2:
                layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))
        self.apply(init_weights)

    @property
    def multiple(self) -> int:
        return 2 ** self.num_downs

    #: the smallest input it takes (any: the input is padded to a multiple of 2^num_downs)
    min_size = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, self.multiple)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        # As in the release, the next level's LeakyReLU (in place) also applies to the stored skip: the
        # decoder sees the activated encoder features. The bottleneck feeds the innermost block directly.
        skips.pop()
        for block in self.up:
            if block is not self.up[0]:
                x = torch.cat([skips.pop(), x], dim=1)
            x = block(x)
        return crop_to(x, size)
