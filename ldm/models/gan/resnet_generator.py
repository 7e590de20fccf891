"""The CycleGAN generator: a ResNet (Zhu et al., ICCV 2017, appendix 7.2, after Johnson et al. 2016;
``resnet_9blocks`` / ``resnet_6blocks`` of the release).

c7s1-64, d128, d256, R256 x n_blocks, u128, u64, c7s1-out: a 7 x 7 convolution with reflection
padding, two stride-2 3 x 3 convolutions, residual blocks of two reflection-padded 3 x 3
convolutions, two stride-1/2 transposed convolutions, a 7 x 7 convolution and tanh; InstanceNorm
and ReLU after every convolution but the last. 9 blocks at 256 x 256, 6 at 128 x 128 (the paper).

The two stride-2 stages need a multiple of 4 (192 x 224 is one); another size is padded with
background and cropped back (:mod:`ldm.models.gan.sizing`).
"""
from __future__ import annotations

import torch
from torch import nn

from ldm.models.gan.init import init_weights
from ldm.models.gan.norm import conv_bias, norm_layer
from ldm.models.gan.sizing import crop_to, pad_to_multiple
from ldm.util import ConfigError

N_DOWNSAMPLING = 2  # the release's


class ResnetBlock(nn.Module):
    """x + conv-norm-ReLU-(dropout)-conv-norm(x), reflection padded."""

    def __init__(self, channels: int, norm: str, dropout: float) -> None:
        super().__init__()
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias),
                                   make_norm(channels), nn.ReLU(True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias), make_norm(channels)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """``(B, in_channels, H, W) -> (B, out_channels, H, W)`` in [-1, 1] (tanh).

    ngf: filters of the first convolution (64); n_blocks: residual blocks at 4 x ngf (9 or 6);
    dropout: inside the residual blocks (0 in CycleGAN, the release's ``--no_dropout``).
    """

    #: smallest input: padded to 8, its bottleneck (1/4) is 2 x 2, the least InstanceNorm and the
    #: reflection padding take
    min_size = 5

    def __init__(self, in_channels: int = 15, out_channels: int = 2, ngf: int = 64, n_blocks: int = 9,
                 norm: str = "instance", dropout: float = 0.0) -> None:
        super().__init__()
        if n_blocks < 0:
            raise ConfigError(f"n_blocks must be >= 0, got {n_blocks}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7, bias=bias),
                                   make_norm(ngf), nn.ReLU(True)]
        for i in range(N_DOWNSAMPLING):
            c = ngf * 2 ** i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=bias), make_norm(2 * c), nn.ReLU(True)]
        width = ngf * 2 ** N_DOWNSAMPLING
        layers += [ResnetBlock(width, norm, dropout) for _ in range(n_blocks)]
        for i in range(N_DOWNSAMPLING):
            c = ngf * 2 ** (N_DOWNSAMPLING - i)
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                       make_norm(c // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.apply(init_weights)

    multiple = 2 ** N_DOWNSAMPLING

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, self.multiple)
        return crop_to(self.model(x), size)
