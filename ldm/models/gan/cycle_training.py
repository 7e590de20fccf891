"""One batch of a cycle-consistent GAN (CycleGAN, PairedCycleGAN), in the order of the CycleGAN
release's ``optimize_parameters``: the generators' update, then the discriminators' on the fakes that
update made (pooled by the model's ``discriminator_loss``). Each player's loss reaches only its own
weights: ``toggle_optimizer`` switches the other player's gradients off.

The model provides ``generator_loss(ctp, mri) -> (loss, log, (fake_mri, fake_ctp))`` and
``discriminator_loss(ctp, mri, fake_mri, fake_ctp) -> (loss, log)``; :class:`TranslationGAN` the rest.
"""
from __future__ import annotations

from typing import Any


class CycleTraining:
    """``training_step`` of a two-generator, cycle-consistent GAN (mixed in before TranslationGAN)."""

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
