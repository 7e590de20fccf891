"""Lesion-aware post-training of the Brownian bridge model (cBBDM-PT, paper Table 3).

The paper's post-training (Section 2.2, Eqs. 6-8) carried over to the bridge: at the same t, noise
and denoiser output as the bridge's latent loss, the clean latent is recovered from the output
(the bridge's analogue of Eq. 5: x0_hat = x_t - output for the "grad" objective), decoded through
the frozen VQGAN decoder and scored in the image space overall (L_image, Eq. 6) and inside the
lesion mask (L_lesion, Eq. 7); L_total = L_latent + lambda_image L_image + lambda_lesion L_lesion
(Eq. 8), with lambda_image 0.01 and lambda_lesion 0.02 in the paper.

Nothing of the post-training is re-implemented here. :class:`LesionAwareLatentDiffusion` brings the
start from a checkpoint with the EMA/raw choice, the batch entries of the loss, the image-space
objectives (:mod:`ldm.models.diffusion.image_space_loss`, with its normalisation, image target,
quantisation, timestep restriction and decoder checkpointing) and the validation lesion MAE;
:class:`LatentBrownianBridge` brings the bridge. This class only joins the two where the bridge
differs: the loss needs the source y, and the validation samples start from y.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

from ldm.models.diffusion.bbdm import LatentBrownianBridge
from ldm.models.diffusion.ddpm import LatentDiffusion
from ldm.models.diffusion.image_space_loss import combine_objectives
from ldm.models.diffusion.lapt import LesionAwareLatentDiffusion
from ldm.util import ConfigError, default

_BRIDGE_PARAMS = {name: p for name, p in inspect.signature(LatentBrownianBridge.__init__).parameters.items()
                  if name != "self"}
_POST_TRAINING_PARAMS = {name: p for name, p in inspect.signature(LesionAwareLatentDiffusion.__init__).parameters.items()
                         if p.kind is p.KEYWORD_ONLY}
_LDM_PARAMS = frozenset(inspect.signature(LatentDiffusion.__init__).parameters)


def _split_parameters(params: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """(positional, keyword) arguments for LesionAwareLatentDiffusion.__init__, which passes its
    ``*args`` on to LatentBrownianBridge but accepts only LatentDiffusion's keyword names: the
    bridge's own parameters travel positionally, in LatentBrownianBridge's order."""
    unknown = sorted(set(params) - set(_BRIDGE_PARAMS) - set(_POST_TRAINING_PARAMS))
    if unknown:
        raise ConfigError(f"LesionAwareBrownianBridge takes no parameter {unknown[0]!r}")
    names = list(_BRIDGE_PARAMS)
    last_bridge_only = max(i for i, n in enumerate(names) if n not in _LDM_PARAMS)
    positional = []
    for name in names[: last_bridge_only + 1]:
        if name in params:
            positional.append(params.pop(name))
        elif _BRIDGE_PARAMS[name].default is inspect.Parameter.empty:
            raise ConfigError(f"LesionAwareBrownianBridge needs the parameter {name!r}")
        else:
            positional.append(_BRIDGE_PARAMS[name].default)
    return positional, params


class LesionAwareBrownianBridge(LesionAwareLatentDiffusion, LatentBrownianBridge):
    """cBBDM-PT: a trained cBBDM post-trained with Eq. 8.

    Parameters: those of :class:`LatentBrownianBridge` (they must match the cBBDM checkpoint: the
    bridge schedule is checked) and the post-training ones of :class:`LesionAwareLatentDiffusion`
    (``ckpt_path`` of the cBBDM checkpoint, ``init_weights`` ema/raw, ``lambda_image``,
    ``lambda_lesion``, ``image_target``, ``quantize_x0_hat``, ``image_loss_t_max``,
    ``decoder_checkpointing``, ``lesion_mae_*``). ``image_loss_t_weighting: alphas_cumprod`` has no
    bridge counterpart and is refused. The validation lesion MAE samples with the bridge sampler,
    deterministically (eta 0) in ``lesion_mae_ddim_steps`` steps.
    """

    def __init__(self, **params: Any) -> None:
        if params.get("image_loss_t_weighting", "uniform") != "uniform":
            raise ConfigError(f"image_loss_t_weighting {params['image_loss_t_weighting']!r} weights by the Gaussian "
                              f"abar_t, which a Brownian bridge does not have; use 'uniform' (optionally with "
                              f"image_loss_t_max)")
        positional, keywords = _split_parameters(dict(params))
        super().__init__(*positional, **keywords)

    def p_losses(self, x_start: torch.Tensor, cond: Any, t: torch.Tensor, noise: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None, lesion: torch.Tensor | None = None,
                 x: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_total (Eq. 8) with the bridge's latent loss and x0_hat from the same output at the same t.

        With both lambdas 0 the loss is cBBDM's and the image terms are logged in validation only.
        """
        noise = default(noise, lambda: torch.randn_like(x_start))
        y, x_noisy, model_output = self.bridge_outputs(x_start, cond, t, noise)
        loss_latent, loss_dict = self.latent_loss(model_output, x_start, noise, t, y=y)
        prefix = "train" if self.training else "val"
        loss_dict[f"{prefix}/loss_latent"] = loss_latent.detach()
        if x is None or mask is None or lesion is None:
            if self.image_terms_weighted:
                raise ValueError("lesion-aware post-training needs mask, lesion and x (the MRI batch) in p_losses")
            return loss_latent, loss_dict
        if self.training and not self.image_terms_weighted:
            return loss_latent, loss_dict  # the control run: the image terms are logged in validation only
        x0_hat = self.predict_start(x_noisy, t, model_output, y=y)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.image_terms_weighted):
            loss_image, loss_lesion, _ = self.image_objective(self, x0_hat, x, mask, lesion, t, z_start=x_start)
        loss = combine_objectives(loss_latent, loss_image, loss_lesion, self.lambda_image, self.lambda_lesion)
        loss_dict.update({f"{prefix}/loss_image": loss_image.detach(), f"{prefix}/loss_lesion": loss_lesion.detach(),
                          f"{prefix}/loss": loss.detach()})
        return loss, loss_dict

    @torch.no_grad()
    def lesion_mae(self, ctp: torch.Tensor, mri: torch.Tensor, lesion: torch.Tensor,
                   first_index: int = 0) -> torch.Tensor:
        """Per-slice lesion MAE (B, C) on [0, 1] images of a deterministic bridge sample (EMA weights).

        The bridge starts from its source y, so unlike the LDM's no seeded x_T is involved.
        """
        c = self.get_learned_conditioning(ctp)
        with self.ema_scope():
            latents = self.sample_latents(c, steps=self.lesion_mae_ddim_steps, eta=0.0)
        x_hat = self.decode_first_stage(latents).float()
        to_unit = lambda v: (v.clamp(-1.0, 1.0) + 1.0) / 2.0  # noqa: E731
        m = lesion.float()
        return (m * (to_unit(mri) - to_unit(x_hat)).abs()).sum(dim=(2, 3)) / m.sum(dim=(2, 3)).clamp(min=1.0)

    def _log_lesion_mae(self) -> None:
        # LesionAwareLatentDiffusion._log_lesion_mae reads its device from ``self.betas``, a Gaussian
        # schedule buffer that the bridge does not have: lend it the bridge's schedule for the call.
        # Remove once lapt.py uses ``self.device``.
        if "betas" in self.__dict__ or hasattr(type(self), "betas"):
            return super()._log_lesion_mae()
        object.__setattr__(self, "betas", self.m_t)
        try:
            super()._log_lesion_mae()
        finally:
            object.__delattr__(self, "betas")
