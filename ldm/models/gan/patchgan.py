"""The 70 x 70 PatchGAN discriminator (Isola et al., CVPR 2017, Sec. 3.2.2; Zhu et al., ICCV 2017).

C64-C128-C256-C512 and a 1-channel convolution, 4 x 4 kernels, LeakyReLU 0.2 (``n_layers = 3``):
one real/fake score per 70 x 70 patch. This is the network of taming's
:class:`~taming.modules.discriminator.model.NLayerDiscriminator` (the VQGAN's discriminator is
pix2pix's), so it is used from there, not copied: with BatchNorm it is pix2pix's discriminator
as it stands. CycleGAN's uses InstanceNorm: :class:`InstanceNormPatchGAN` builds taming's network
and replaces its BatchNorm layers (the release's convolutions before InstanceNorm also carry a
bias, which the per-channel mean removal cancels: the networks compute the same functions).
"""
from __future__ import annotations

import torch
from torch import nn

from ldm.models.gan.init import init_weights
from ldm.util import ConfigError
from taming.modules.discriminator.model import NLayerDiscriminator


class PatchGAN(NLayerDiscriminator):
    """pix2pix's PatchGAN (BatchNorm) with the release's initialisation; ``in_channels`` are the
    channels it judges (17 for pix2pix's (CTP, MRI) pairs, 2 for MRI, 15 for CTP)."""

    def __init__(self, in_channels: int = 17, ndf: int = 64, n_layers: int = 3) -> None:
        if n_layers < 1:
            raise ConfigError(f"n_layers must be >= 1, got {n_layers}")
        super().__init__(input_nc=in_channels, ndf=ndf, n_layers=n_layers, use_actnorm=False)
        self.in_channels, self.n_layers = int(in_channels), int(n_layers)
        self.apply(init_weights)

    def patch_grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (h, w) of the score map for an input of ``size`` (<= 0 where the network cannot run)."""
        h, w = size
        for layer in self.main:
            if isinstance(layer, nn.Conv2d):
                k, s, p = layer.kernel_size[0], layer.stride[0], layer.padding[0]
                h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        return h, w

    def min_size(self) -> int:
        """The smallest square input that gives a score map of at least 1 x 1 (24 for n_layers 3)."""
        size = 1
        while min(self.patch_grid((size, size))) < 1:
            size += 1
        return size


class InstanceNormPatchGAN(PatchGAN):
    """CycleGAN's PatchGAN: the same layers with InstanceNorm (no affine, no running statistics)."""

    def __init__(self, in_channels: int = 2, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__(in_channels=in_channels, ndf=ndf, n_layers=n_layers)
        for i, layer in enumerate(self.main):
            if isinstance(layer, nn.BatchNorm2d):
                self.main[i] = nn.InstanceNorm2d(layer.num_features, affine=False, track_running_stats=False)

    def min_size(self) -> int:
        """InstanceNorm needs more than one value per channel: every normed map at least 2 pixels."""
        size = super().min_size()
        while not self._normed_maps_have_two_values(size):
            size += 1
        return size

    def _normed_maps_have_two_values(self, size: int) -> bool:
        h = w = size
        for layer in self.main:
            if isinstance(layer, nn.Conv2d):
                k, s, p = layer.kernel_size[0], layer.stride[0], layer.padding[0]
                h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            elif isinstance(layer, nn.InstanceNorm2d) and h * w < 2:
                return False
        return True


def judge(discriminator: nn.Module, *images: torch.Tensor) -> torch.Tensor:
    """The discriminator's scores of the channel concatenation of ``images`` (a conditional
    discriminator sees (CTP, MRI) as one 17-channel image, pix2pix's conditioning)."""
    return discriminator(images[0] if len(images) == 1 else torch.cat(images, dim=1))
