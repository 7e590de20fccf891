"""Lesion-aware post-training of the conditional LDM (LAPT, the paper's cLDM-PT): stage 3.

:class:`LesionAwareLatentDiffusion` is :class:`~ldm.models.diffusion.ddpm.LatentDiffusion` with
the post-training of :class:`~ldm.models.diffusion.post_training.LesionAwarePostTraining`
(Section 2.2, Eqs. 5-8): z0_hat = (z_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t) (Eq. 5) from
the same prediction as L_latent (Eq. 4), decoded by the frozen first stage. What is the LDM's own
here is how a validation slice is sampled for the lesion MAE: the configured sampler (DDIM by
default) from fixed noise.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ldm.models.diffusion.latent_diffusion import LatentDiffusion
from ldm.models.diffusion.post_training import INIT_WEIGHTS, LesionAwarePostTraining
from ldm.modules.diffusionmodules.util import zero_mean_per_channel

__all__ = ["INIT_WEIGHTS", "LesionAwareLatentDiffusion"]


class LesionAwareLatentDiffusion(LesionAwarePostTraining, LatentDiffusion):
    """The conditional LDM post-trained with L_latent + lambda_image L_image + lambda_lesion L_lesion
    (Eq. 8). Parameters: :class:`LesionAwarePostTraining`'s, and every other is LatentDiffusion's.
    The validation lesion MAE samples with the configured sampler (DDIM by default; eta 0,
    ``lesion_mae_ddim_steps`` steps) from noise
    seeded by ``lesion_mae_seed`` and each slice's position in the subset."""

    def lesion_mae_latents(self, c: torch.Tensor, first_index: int) -> torch.Tensor:
        n = c.shape[0]
        x_T = self.lesion_mae_noise((int(self.channels), *c.shape[-2:]), first_index, n).to(c.device)
        return self.sample_log(c, n, ddim_steps=self.lesion_mae_ddim_steps, eta=0.0, x_T=x_T,
                               return_intermediates=False)

    def lesion_mae_noise(self, shape: Sequence[int], first_index: int, n: int) -> torch.Tensor:
        """x_T for slices first_index .. first_index + n - 1 of the subset: the same every validation
        run (and on CPU or GPU), so that val/lesion_mae changes only when the model does; zero-mean
        per channel, as sample_LDM.py samples by default."""
        noise = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(
            self.lesion_mae_seed * 100_003 + first_index + b)) for b in range(n)]
        return zero_mean_per_channel(torch.stack(noise))
