"""The normalisation layers of the pix2pix / CycleGAN release, by name."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ldm.util import ConfigError

NORMS = ("batch", "instance")


def norm_layer(name: str) -> Callable[[int], nn.Module]:
    """``batch``: BatchNorm with learned scale and running statistics (pix2pix); ``instance``:
    InstanceNorm without affine parameters or running statistics (CycleGAN), as the release sets them."""
    if name == "batch":
        return lambda c: nn.BatchNorm2d(c, affine=True, track_running_stats=True)
    if name == "instance":
        return lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False)
    raise ConfigError(f"norm {name!r} is not one of {', '.join(NORMS)}")


def conv_bias(name: str) -> bool:
    """Convolutions before BatchNorm have no bias (its shift replaces it); before InstanceNorm they
    keep one, as in the release (the per-channel mean removal cancels it, so it changes nothing)."""
    return name == "instance"
