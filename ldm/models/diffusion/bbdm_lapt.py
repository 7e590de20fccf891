"""Lesion-aware post-training of the Brownian bridge model (cBBDM-PT, paper Table 3).

:class:`LesionAwareBrownianBridge` is :class:`~ldm.models.diffusion.bbdm.LatentBrownianBridge` with
the post-training of :class:`~ldm.models.diffusion.post_training.LesionAwarePostTraining`: at the
same t, noise and denoiser output as the bridge's latent loss, the clean latent is recovered from the
output (the bridge's analogue of Eq. 5: z0_hat = x_t - output for the "grad" objective), decoded
through the frozen VQGAN decoder and scored in the image space (Eqs. 6-8), with lambda_image 0.01
and lambda_lesion 0.02 in the paper. What is the bridge's own here: validation slices are sampled
from the source y (no seeded x_T), and the abar_t weighting of the image terms does not apply.
"""
from __future__ import annotations

from typing import Any

import torch

from ldm.models.diffusion.bbdm import LatentBrownianBridge
from ldm.models.diffusion.post_training import LesionAwarePostTraining
from ldm.util import ConfigError


class LesionAwareBrownianBridge(LesionAwarePostTraining, LatentBrownianBridge):
    """cBBDM-PT: a trained cBBDM post-trained with Eq. 8.

    Parameters: those of :class:`LatentBrownianBridge` (they must match the cBBDM checkpoint: the
    bridge schedule is checked) and the post-training ones of :class:`LesionAwarePostTraining`.
    ``image_loss_t_weighting: alphas_cumprod`` has no bridge counterpart and is refused. The
    validation lesion MAE samples with the bridge sampler, deterministically (eta 0) in
    ``lesion_mae_ddim_steps`` steps.
    """

    def __init__(self, **params: Any) -> None:
        if params.get("image_loss_t_weighting", "uniform") != "uniform":
            raise ConfigError(f"image_loss_t_weighting {params['image_loss_t_weighting']!r} weights by the Gaussian "
                              f"abar_t, which a Brownian bridge does not have; use 'uniform' (optionally with "
                              f"image_loss_t_max)")
        super().__init__(**params)

    def lesion_mae_latents(self, c: torch.Tensor, first_index: int) -> torch.Tensor:
        """The bridge starts from its source y: no seeded x_T is involved."""
        return self.sample_latents(c, steps=self.lesion_mae_ddim_steps, eta=0.0)
