"""The adversarial losses of pix2pix and CycleGAN (the release's ``GANLoss``).

``vanilla``: the cross-entropy of the original GAN (Goodfellow et al. 2014) on logits, as pix2pix
trains (Isola et al. 2017, Eq. 1; the generator maximises log D(G(x)), the non-saturating form).
``lsgan``: least squares (Mao et al. 2017), as CycleGAN trains (Zhu et al. 2017, Sec. 4): the
discriminator minimises (D(y) - 1)^2 + D(G(x))^2, the generator (D(G(x)) - 1)^2. Every patch of a
PatchGAN counts as one prediction; the loss is their mean.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldm.util import ConfigError

GAN_MODES = ("vanilla", "lsgan")


class AdversarialLoss(nn.Module):
    """``loss(prediction, target_is_real)``: the mean over patches of the mode's loss against 1 or 0."""

    def __init__(self, gan_mode: str = "vanilla", real_label: float = 1.0, fake_label: float = 0.0) -> None:
        super().__init__()
        if gan_mode not in GAN_MODES:
            raise ConfigError(f"gan_mode {gan_mode!r} is not one of {', '.join(GAN_MODES)}")
        self.gan_mode = gan_mode
        self.real_label, self.fake_label = float(real_label), float(fake_label)

    def forward(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        target = torch.full_like(prediction, self.real_label if target_is_real else self.fake_label)
        if self.gan_mode == "lsgan":
            return F.mse_loss(prediction, target)
        return F.binary_cross_entropy_with_logits(prediction, target)

    def discriminator(self, real_prediction: torch.Tensor, fake_prediction: torch.Tensor) -> torch.Tensor:
        """The discriminator's loss, halved as in the release "to slow down the rate at which D learns
        relative to G" (Isola et al. 2017, Sec. 3.3)."""
        return 0.5 * (self(real_prediction, True) + self(fake_prediction, False))
