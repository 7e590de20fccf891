"""Pix2Pix (Isola et al., "Image-to-Image Translation with Conditional Adversarial Networks", CVPR 2017).

G: the U-Net of ``unet_generator.py``, CTP (15) -> [DWI, ADC] (2). D: the 70 x 70 PatchGAN of
``patchgan.py`` on the channel concatenation (CTP, MRI) (17 channels), the conditional
discriminator of the paper's Eq. 1. Objective (Eq. 4): G* = arg min_G max_D L_cGAN(G, D) +
lambda_L1 L_L1(G), lambda_L1 = 100, with the cross-entropy GAN loss (``gan_mode: vanilla``); the
discriminator's loss is halved (Sec. 3.3). One discriminator update, then one generator update per
batch, as the release's ``optimize_parameters``. The noise z of the paper is the generator's dropout.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ldm.models.gan.adversarial_loss import AdversarialLoss
from ldm.models.gan.cycle_loss import weighted_l1
from ldm.models.gan.patchgan import judge
from ldm.models.gan.translation_gan import MRI_CHANNELS, TranslationGAN
from ldm.util import ConfigError


class Pix2Pix(TranslationGAN):
    """generator_config: the U-Net (or any CTP -> 2-channel generator); discriminator_config: the
    PatchGAN, whose in_channels must be CTP + MRI channels; lambda_l1: the weight of Eq. 3 (100)."""

    def __init__(self, generator_config: Mapping, discriminator_config: Mapping, lambda_l1: float = 100.0,
                 gan_mode: str = "vanilla", **kwargs: Any) -> None:
        super().__init__(generator_config=generator_config, **kwargs)
        if lambda_l1 < 0:
            raise ConfigError(f"model.params.lambda_l1 must be >= 0, got {lambda_l1}")
        ctp_channels = getattr(self.generator, "in_channels", None)
        self.discriminator = self._build("discriminator_config", discriminator_config,
                                         in_channels=None if ctp_channels is None else ctp_channels + MRI_CHANNELS)
        self.lambda_l1 = float(lambda_l1)
        self.adversarial = AdversarialLoss(gan_mode)

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.generator.parameters())

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return list(self.discriminator.parameters())

    def discriminator_loss(self, ctp: torch.Tensor, mri: torch.Tensor, fake: torch.Tensor
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """0.5 (L(D(x, y), real) + L(D(x, G(x)), fake)); ``fake`` is detached: G gets no gradient."""
        real_score = judge(self.discriminator, ctp, mri)
        fake_score = judge(self.discriminator, ctp, fake.detach())
        loss = self.adversarial.discriminator(real_score, fake_score)
        return loss, {"train/loss_d": loss, "train/d_real": real_score.mean(), "train/d_fake": fake_score.mean()}

    def generator_loss(self, ctp: torch.Tensor, mri: torch.Tensor, fake: torch.Tensor
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L(D(x, G(x)), real) + lambda_L1 |y - G(x)| (Eq. 4)."""
        gan = self.adversarial(judge(self.discriminator, ctp, fake), True)
        l1 = weighted_l1(fake, mri, self.lambda_l1)
        return gan + l1, {"train/loss_g": gan + l1, "train/g_gan": gan, "train/g_l1": l1}

    def training_step(self, batch, batch_idx: int) -> None:
        ctp, mri = self.get_input(batch)
        opt_g, opt_d = self.optimizers()
        step = self._begin_batch()
        fake = self.generator(ctp)

        self.toggle_optimizer(opt_d)
        loss_d, log = self.discriminator_loss(ctp, mri, fake)
        self._update(opt_d, loss_d, step)
        self.untoggle_optimizer(opt_d)

        self.toggle_optimizer(opt_g)  # D's weights get no gradient from the generator's loss
        loss_g, log_g = self.generator_loss(ctp, mri, fake)
        self._update(opt_g, loss_g, step)
        self.untoggle_optimizer(opt_g)

        self._end_batch(step)
        self._log_train({**log, **log_g}, ctp.shape[0])
