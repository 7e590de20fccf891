"""One batch of a cycle-consistent GAN (CycleGAN, PairedCycleGAN), in the order of the CycleGAN
release's ``optimize_parameters``: the generators' update, then the discriminators' on the fakes that
update made (pooled by the model's ``discriminator_loss``). Each player's loss reaches only its own
weights: ``toggle_optimizer`` switches the other player's gradients off.

The mixin also builds what both models share besides G (TranslationGAN's ``generator``): F (MRI ->
CTP), the two domain discriminators D_MRI and D_CTP, the adversarial loss and the two image pools, and
scores the discriminators on real images against pooled fakes. The model provides
``generator_loss(ctp, mri) -> (loss, log, (fake_mri, fake_ctp))`` and
``discriminator_loss(ctp, mri, fake_mri, fake_ctp) -> (loss, log)``; :class:`TranslationGAN` the rest.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ldm.models.gan.adversarial_loss import AdversarialLoss
from ldm.models.gan.cycle_loss import cycle_losses
from ldm.models.gan.image_pool import ImagePool
from ldm.models.gan.patchgan import judge
from ldm.models.gan.translation_gan import MRI_CHANNELS
from ldm.util import ConfigError


class CycleTraining:
    """``training_step`` of a two-generator, cycle-consistent GAN and the parts both such models build
    (mixed in before TranslationGAN)."""

    def _build_cycle_players(self, inverse_generator_config: Mapping, discriminator_config: Mapping,
                             inverse_discriminator_config: Mapping, pool_size: int, gan_mode: str) -> int | None:
        """F, D_MRI, D_CTP, the adversarial loss and the pools of 50 (``pool_size``); returns the CTP
        channels G takes (None when the generator does not say)."""
        if pool_size < 0:
            raise ConfigError(f"model.params.pool_size must be >= 0, got {pool_size}")
        ctp_channels = getattr(self.generator, "in_channels", None)
        self.inverse_generator = self._build("inverse_generator_config", inverse_generator_config,
                                             out_channels=ctp_channels, in_channels=MRI_CHANNELS)
        self.discriminator = self._build("discriminator_config", discriminator_config, in_channels=MRI_CHANNELS)
        self.inverse_discriminator = self._build("inverse_discriminator_config", inverse_discriminator_config,
                                                 in_channels=ctp_channels)
        self.adversarial = AdversarialLoss(gan_mode)
        self.fake_mri_pool, self.fake_ctp_pool = ImagePool(pool_size), ImagePool(pool_size)
        return ctp_channels

    def generator_parameters(self) -> list[nn.Parameter]:
        return [*self.generator.parameters(), *self.inverse_generator.parameters()]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [*self.discriminator.parameters(), *self.inverse_discriminator.parameters()]

    def cycle_terms(self, ctp: torch.Tensor, mri: torch.Tensor, weight_ctp: float, weight_mri: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(G(ctp), F(mri), L_GAN(G), L_GAN(F), w_ctp |F(G(ctp)) - ctp|, w_mri |G(F(mri)) - mri|): the
        generators' terms both models share (CycleGAN's cycle terms; PairedCycleGAN's identity and style)."""
        fake_mri = self.generator(ctp)
        fake_ctp = self.inverse_generator(mri)
        gan_g = self.adversarial(judge(self.discriminator, fake_mri), True)
        gan_f = self.adversarial(judge(self.inverse_discriminator, fake_ctp), True)
        back_ctp, back_mri = cycle_losses(ctp, self.inverse_generator(fake_mri), mri, self.generator(fake_ctp),
                                          weight_ctp, weight_mri)
        return fake_mri, fake_ctp, gan_g, gan_f, back_ctp, back_mri

    def domain_discriminator_losses(self, ctp: torch.Tensor, mri: torch.Tensor, fake_mri: torch.Tensor,
                                    fake_ctp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """D_MRI's and D_CTP's halved losses on real images against pooled (detached) fakes."""
        loss_mri = self.adversarial.discriminator(judge(self.discriminator, mri),
                                                  judge(self.discriminator, self.fake_mri_pool.query(fake_mri)))
        loss_ctp = self.adversarial.discriminator(judge(self.inverse_discriminator, ctp),
                                                  judge(self.inverse_discriminator, self.fake_ctp_pool.query(fake_ctp)))
        return loss_mri, loss_ctp

    def training_step(self, batch: Any, batch_idx: int) -> None:
        ctp, mri = self.get_input(batch)
        opt_g, opt_d = self.optimizers()
        step = self._begin_batch()

        self.toggle_optimizer(opt_g)  # the discriminators' weights get no gradient from the generators' loss
        loss_g, log, (fake_mri, fake_ctp) = self.generator_loss(ctp, mri)
        self._update(opt_g, loss_g, step)
        self.untoggle_optimizer(opt_g)

        self.toggle_optimizer(opt_d)
        loss_d, log_d = self.discriminator_loss(ctp, mri, fake_mri, fake_ctp)
        self._update(opt_d, loss_d, step)
        self.untoggle_optimizer(opt_d)

        self._end_batch(step)
        self._log_train({**log, **log_d}, ctp.shape[0])
