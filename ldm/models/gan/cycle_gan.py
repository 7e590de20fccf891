"""CycleGAN (Zhu et al., "Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial
Networks", ICCV 2017), trained without the pairing, as the paper's Table 1 baseline.

G: CTP (15) -> MRI (2) and F: MRI (2) -> CTP (15), ResNet generators (``resnet_generator.py``);
D_MRI and D_CTP: PatchGANs with InstanceNorm (``patchgan.py``) on one domain each. Objective (Eq. 3):
L_GAN(G, D_MRI) + L_GAN(F, D_CTP) + lambda (|F(G(x)) - x|_1 + |G(F(y)) - y|_1), least-squares GAN
loss (``gan_mode: lsgan``), lambda = 10 each way, discriminators trained on a pool of the last 50
fakes (``image_pool.py``), loss halved. One generator update (both generators, one Adam), then one
discriminator update (both discriminators, one Adam) per batch, as the release.

Identity loss (Sec. 5.2, the release's lambda_identity = 0.5): |G(y) - y| needs G to take images of
its output domain, i.e. equal input and output channels. CTP has 15 channels and MRI 2, so neither
generator can take the other's target; the term is off (``lambda_identity: 0``) and a config that
sets it is refused rather than fed zero-padded or truncated channels that mean nothing.

Unpaired: the training data (``ldm.data.training.unpaired.UnpairedCTPMRISlices``) pairs each CTP
slice with the MRI of an independently drawn slice, so the pairing never enters the loss.
Validation scores G(CTP) against the true MRI of the same slice.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ldm.models.gan.cycle_training import CycleTraining
from ldm.models.gan.translation_gan import MRI_CHANNELS, TranslationGAN
from ldm.util import ConfigError


class CycleGAN(CycleTraining, TranslationGAN):
    """generator_config: G (CTP -> MRI); inverse_generator_config: F (MRI -> CTP);
    discriminator_config: D_MRI (2 channels); inverse_discriminator_config: D_CTP (15 channels);
    lambda_cycle_ctp / lambda_cycle_mri: the release's lambda_A / lambda_B (10); pool_size: 50."""

    def __init__(self, generator_config: Mapping, inverse_generator_config: Mapping, discriminator_config: Mapping,
                 inverse_discriminator_config: Mapping, lambda_cycle_ctp: float = 10.0, lambda_cycle_mri: float = 10.0,
                 lambda_identity: float = 0.0, pool_size: int = 50, gan_mode: str = "lsgan", **kwargs: Any) -> None:
        super().__init__(generator_config=generator_config, **kwargs)
        ctp_channels = self._build_cycle_players(inverse_generator_config, discriminator_config,
                                                 inverse_discriminator_config, pool_size, gan_mode)
        for name, value in (("lambda_cycle_ctp", lambda_cycle_ctp), ("lambda_cycle_mri", lambda_cycle_mri)):
            if value < 0:
                raise ConfigError(f"model.params.{name} must be >= 0, got {value}")
        if lambda_identity != 0:
            raise ConfigError(f"model.params.lambda_identity is {lambda_identity}: the identity term |G(y) - y| "
                              f"needs a generator whose input and output channels agree, and CTP -> MRI is "
                              f"{ctp_channels} -> {MRI_CHANNELS} (and MRI -> CTP the reverse); set it to 0")
        self.lambda_cycle_ctp, self.lambda_cycle_mri = float(lambda_cycle_ctp), float(lambda_cycle_mri)

    def generator_loss(self, ctp: torch.Tensor, mri: torch.Tensor
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """(L_GAN(G) + L_GAN(F) + cycle terms, log, (G(x), F(y))); ``mri`` need not be ``ctp``'s pair."""
        fake_mri, fake_ctp, gan_g, gan_f, cycle_ctp, cycle_mri = self.cycle_terms(
            ctp, mri, self.lambda_cycle_ctp, self.lambda_cycle_mri)
        loss = gan_g + gan_f + cycle_ctp + cycle_mri
        log = {"train/loss_g": loss, "train/g_gan": gan_g, "train/f_gan": gan_f, "train/cycle_ctp": cycle_ctp,
               "train/cycle_mri": cycle_mri}
        return loss, log, (fake_mri, fake_ctp)

    def discriminator_loss(self, ctp: torch.Tensor, mri: torch.Tensor, fake_mri: torch.Tensor,
                           fake_ctp: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Both discriminators' halved losses on real images and pooled (detached) fakes."""
        loss_mri, loss_ctp = self.domain_discriminator_losses(ctp, mri, fake_mri, fake_ctp)
        return loss_mri + loss_ctp, {"train/loss_d": loss_mri + loss_ctp, "train/d_mri": loss_mri,
                                     "train/d_ctp": loss_ctp}
