"""PairedCycleGAN (Chang et al., "PairedCycleGAN: Asymmetric Style Transfer for Applying and Removing
Makeup", CVPR 2018), ported from makeup transfer to CTP -> MRI with the paired slices used.

The paper couples two asymmetric networks: a forward network G(x, y) that applies the style of a
reference y to a source x, and a backward network F(y) that removes the style, and trains them
with (as we read the paper):
  - adversarial losses for both: D_Y judges G's outputs against real styled images, D_X judges F's
    outputs against real unstyled ones;
  - identity loss |F(G(x, y)) - x|_1: the source comes back through both networks;
  - style loss |G(F(y), G(x, y)) - y|_1: removing y's style and applying the result's must give y;
  - a style discriminator D_S of *pairs* (reference, result): real pairs share one style (the paper
    builds them synthetically by warping a reference onto the source face), fake pairs are
    (reference, G(x, y)). This is where pairing enters.

What applies to CTP -> MRI, and how:
  - G: CTP -> MRI, the "applying" direction, and F: MRI -> CTP, the "removing" one, are asymmetric:
    different architectures and capacities (the configs: a 9-block ResNet for G, a 6-block one for
    F) and 15 -> 2 against 2 -> 15 channels. There is no style reference at test time (only the
    CTP), so G takes the CTP alone.
  - adversarial losses: D_MRI on G(CTP), D_CTP on F(MRI) (least squares, as the CycleGAN it builds
    on, with image pools of 50).
  - identity loss: |F(G(ctp)) - ctp|_1 (``lambda_identity``).
  - style loss: with no reference input, G(F(y), G(x, y)) becomes G(F(mri)), so |G(F(mri)) - mri|_1
    (``lambda_style``).
  - pair discriminator D_S (``pair_discriminator_config``, a PatchGAN on 17 channels): real pairs
    are the true, co-registered (CTP, MRI) slices (no warping needed: the data are paired), fake
    pairs (CTP, G(CTP)) (``lambda_pair``). Unlike CycleGAN the batches are paired.
  - ``lambda_paired_l1`` (default 0, not in the paper): an optional direct |G(ctp) - mri|_1.
The paper's makeup-specific parts (per-region networks for eyes, lips, skin; face warping; the
weights it chose for faces) do not carry over; the weights here are CycleGAN's (10 for each
reconstruction term, 1 for each adversarial one). docs/baselines.md lists these choices.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ldm.models.gan.cycle_loss import weighted_l1
from ldm.models.gan.patchgan import judge
from ldm.models.gan.cycle_training import CycleTraining
from ldm.models.gan.translation_gan import MRI_CHANNELS, TranslationGAN
from ldm.util import ConfigError


class PairedCycleGAN(CycleTraining, TranslationGAN):
    """generator_config: G (CTP -> MRI); inverse_generator_config: F (MRI -> CTP); discriminator_config:
    D_MRI; inverse_discriminator_config: D_CTP; pair_discriminator_config: D_S on (CTP, MRI)."""

    def __init__(self, generator_config: Mapping, inverse_generator_config: Mapping, discriminator_config: Mapping,
                 inverse_discriminator_config: Mapping, pair_discriminator_config: Mapping,
                 lambda_identity: float = 10.0, lambda_style: float = 10.0, lambda_pair: float = 1.0,
                 lambda_paired_l1: float = 0.0, pool_size: int = 50, gan_mode: str = "lsgan", **kwargs: Any) -> None:
        super().__init__(generator_config=generator_config, **kwargs)
        ctp_channels = self._build_cycle_players(inverse_generator_config, discriminator_config,
                                                 inverse_discriminator_config, pool_size, gan_mode)
        self.pair_discriminator = self._build("pair_discriminator_config", pair_discriminator_config,
                                              in_channels=None if ctp_channels is None else ctp_channels + MRI_CHANNELS)
        weights = {"lambda_identity": lambda_identity, "lambda_style": lambda_style, "lambda_pair": lambda_pair,
                   "lambda_paired_l1": lambda_paired_l1}
        for name, value in weights.items():
            if value < 0:
                raise ConfigError(f"model.params.{name} must be >= 0, got {value}")
        self.lambda_identity, self.lambda_style = float(lambda_identity), float(lambda_style)
        self.lambda_pair, self.lambda_paired_l1 = float(lambda_pair), float(lambda_paired_l1)

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [*super().discriminator_parameters(), *self.pair_discriminator.parameters()]

    def generator_loss(self, ctp: torch.Tensor, mri: torch.Tensor
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """(the generators' loss, log, (G(ctp), F(mri))) for a paired batch."""
        fake_mri, fake_ctp, gan_g, gan_f, identity, style = self.cycle_terms(
            ctp, mri, self.lambda_identity, self.lambda_style)
        pair = self.lambda_pair * self.adversarial(judge(self.pair_discriminator, ctp, fake_mri), True)
        paired_l1 = weighted_l1(fake_mri, mri, self.lambda_paired_l1)
        loss = gan_g + gan_f + pair + identity + style + paired_l1
        log = {"train/loss_g": loss, "train/g_gan": gan_g, "train/f_gan": gan_f, "train/g_pair": pair,
               "train/identity": identity, "train/style": style, "train/paired_l1": paired_l1}
        return loss, log, (fake_mri, fake_ctp)

    def discriminator_loss(self, ctp: torch.Tensor, mri: torch.Tensor, fake_mri: torch.Tensor,
                           fake_ctp: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """D_MRI and D_CTP on pooled fakes; D_S on the true pair against (CTP, G(CTP)) (no pool: a pair
        from the pool would not belong to this batch's CTP)."""
        loss_mri, loss_ctp = self.domain_discriminator_losses(ctp, mri, fake_mri, fake_ctp)
        loss_pair = self.adversarial.discriminator(judge(self.pair_discriminator, ctp, mri),
                                                   judge(self.pair_discriminator, ctp, fake_mri.detach()))
        loss = loss_mri + loss_ctp + loss_pair
        return loss, {"train/loss_d": loss, "train/d_mri": loss_mri, "train/d_ctp": loss_ctp, "train/d_pair": loss_pair}
