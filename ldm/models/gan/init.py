"""The weight initialisation of the pix2pix / CycleGAN release ("normal", gain 0.02)."""
from __future__ import annotations

from torch import nn


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """Convolutions N(0, gain) with zero bias; BatchNorm scale N(1, gain), shift 0. Apply with
    ``network.apply(init_weights)``; InstanceNorm without affine parameters has nothing to set."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, gain)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, gain)
        nn.init.zeros_(module.bias)
