"""The VQGAN objective (Esser et al. 2021), CompVis ``VQLPIPSWithDiscriminator``.

Autoencoder (``optimizer_idx=0``):
    L = mean(w_pix * (1 + w_les * M) * |x - x_rec| [+ w_p * LPIPS(x, x_rec)]) + lambda * f_disc * L_G + w_cb * L_VQ
with the hinge generator loss L_G = -mean(D(x_rec)), f_disc = 0 before ``disc_start``, and the
adaptive weight lambda = disc_weight * ||grad_last L_rec|| / (||grad_last L_G|| + 1e-4) computed on
the decoder's last layer (clamped to [0, 1e4]).
Discriminator (``optimizer_idx=1``): f_disc * hinge (or vanilla) loss on detached images.

Differences from CompVis: ``pixelloss_weight`` is applied (CompVis stores and ignores it; the
default 1.0 gives the same result); ``pixel_loss: l2`` is offered; before ``disc_start`` the
discriminator is not run at all in the autoencoder step (CompVis runs it and multiplies by 0);
``rec_loss`` in the logs is the pixel term alone, without the perceptual term.

Beyond the paper: ``lesion_weight`` (w_les) weights the pixel term by 1 + w_les inside the lesion
mask M (the batch's ``lesion``), so that a small lesion is not averaged away by the rest of the
image; 0 (the default) is the reference's loss. ``rec_loss`` stays the unweighted mean, so runs
with and without it compare.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldm.util import ConfigError
from taming.modules.discriminator.model import NLayerDiscriminator, weights_init


def adopt_weight(weight: float, global_step: int, threshold: int = 0, value: float = 0.0) -> float:
    """``value`` (0) before ``threshold`` steps, ``weight`` from then on."""
    return value if global_step < threshold else weight


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.mean(F.relu(1.0 - logits_real)) + torch.mean(F.relu(1.0 + logits_fake)))


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.mean(F.softplus(-logits_real)) + torch.mean(F.softplus(logits_fake)))


def calculate_adaptive_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                              disc_weight: float = 1.0) -> torch.Tensor:
    """disc_weight * ||d nll / d last|| / (||d g / d last|| + 1e-4), clamped to [0, 1e4], no gradient.

    The 1e-4 and the clamp keep it finite when the generator gradient vanishes."""
    nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    d_weight = torch.linalg.vector_norm(nll_grads.float()) / (torch.linalg.vector_norm(g_grads.float()) + 1e-4)
    d_weight = torch.nan_to_num(d_weight, nan=0.0, posinf=1e4)
    return torch.clamp(d_weight, 0.0, 1e4).detach() * disc_weight


class VQLPIPSWithDiscriminator(nn.Module):
    def __init__(self, disc_start: int, codebook_weight: float = 1.0, pixelloss_weight: float = 1.0,
                 disc_num_layers: int = 3, disc_in_channels: int = 3, disc_factor: float = 1.0,
                 disc_weight: float = 1.0, perceptual_weight: float = 1.0, use_actnorm: bool = False,
                 disc_conditional: bool = False, disc_ndf: int = 64, disc_loss: str = "hinge",
                 pixel_loss: str = "l1", vgg16_weights: str | None = None,
                 lpips_weights: str | None = None, lesion_weight: float = 0.0) -> None:
        super().__init__()
        if disc_loss not in ("hinge", "vanilla"):
            raise ConfigError(f"lossconfig disc_loss {disc_loss!r} is not 'hinge' or 'vanilla'")
        if pixel_loss not in ("l1", "l2"):
            raise ConfigError(f"lossconfig pixel_loss {pixel_loss!r} is not 'l1' or 'l2'")
        if disc_conditional:
            raise ConfigError("lossconfig disc_conditional: a conditional discriminator is not supported")
        if not lesion_weight >= 0:
            raise ConfigError(f"lossconfig lesion_weight must be >= 0, got {lesion_weight}")
        self.lesion_weight = float(lesion_weight)
        self.codebook_weight = float(codebook_weight)
        self.pixel_weight = float(pixelloss_weight)
        self.perceptual_weight = float(perceptual_weight)
        self.pixel_loss = pixel_loss
        if self.perceptual_weight > 0:
            from taming.modules.losses.lpips import LPIPS

            self.perceptual_loss = LPIPS(vgg16_weights, lpips_weights)
        self.discriminator = NLayerDiscriminator(input_nc=disc_in_channels, n_layers=disc_num_layers,
                                                 use_actnorm=use_actnorm, ndf=disc_ndf).apply(weights_init)
        self.discriminator_iter_start = int(disc_start)
        self.disc_loss = hinge_d_loss if disc_loss == "hinge" else vanilla_d_loss
        self.disc_factor = float(disc_factor)
        self.discriminator_weight = float(disc_weight)
        self.disc_conditional = False

    def discriminator_active(self, global_step: int) -> bool:
        return adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start) > 0

    def pixel_error(self, inputs: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        diff = inputs.contiguous() - reconstructions.contiguous()
        return diff.abs() if self.pixel_loss == "l1" else diff ** 2

    def forward(self, codebook_loss: torch.Tensor, inputs: torch.Tensor, reconstructions: torch.Tensor,
                optimizer_idx: int, global_step: int, last_layer: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, split: str = "train",
                predicted_indices: torch.Tensor | None = None,
                lesion: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``lesion`` (B, 1, H, W) in {0, 1}: needed when ``lesion_weight`` > 0."""
        if inputs.shape != reconstructions.shape:
            raise ValueError(f"VQ loss: inputs {tuple(inputs.shape)} and reconstructions "
                             f"{tuple(reconstructions.shape)} differ in shape")
        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
        if optimizer_idx == 0:
            return self._autoencoder_loss(codebook_loss, inputs, reconstructions, disc_factor, last_layer, split,
                                          lesion)
        if optimizer_idx == 1:
            logits_real = self.discriminator(inputs.contiguous().detach())
            logits_fake = self.discriminator(reconstructions.contiguous().detach())
            d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)
            log = {f"{split}/disc_loss": d_loss.detach().mean(),
                   f"{split}/logits_real": logits_real.detach().mean(),
                   f"{split}/logits_fake": logits_fake.detach().mean()}
            return d_loss, log
        raise ValueError(f"optimizer_idx must be 0 (autoencoder) or 1 (discriminator), got {optimizer_idx}")

    def pixel_weights(self, lesion: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | float:
        """1 + lesion_weight x the lesion mask (broadcast over channels), or 1 without lesion weighting."""
        if self.lesion_weight == 0:
            return 1.0
        if lesion is None:
            raise ValueError("lossconfig lesion_weight > 0 needs the lesion mask in the batch (key 'lesion', "
                             "which ldm.data.training.datasets.MRISlices yields)")
        if lesion.dim() != 4 or lesion.shape[1] != 1 or lesion.shape[-2:] != like.shape[-2:]:
            raise ValueError(f"lesion mask must be (B, 1, H, W) like the images {tuple(like.shape)}, "
                             f"got {tuple(lesion.shape)}")
        return 1.0 + self.lesion_weight * lesion.to(like.dtype)

    def _autoencoder_loss(self, codebook_loss, inputs, reconstructions, disc_factor, last_layer, split, lesion=None):
        pixel = self.pixel_error(inputs, reconstructions)
        nll = self.pixel_weight * self.pixel_weights(lesion, pixel) * pixel
        if self.perceptual_weight > 0:
            p_loss = self.perceptual_loss(inputs.contiguous(), reconstructions.contiguous())
            nll = nll + self.perceptual_weight * p_loss
        else:
            p_loss = torch.zeros((), device=inputs.device)
        nll_loss = torch.mean(nll)
        zero = torch.zeros((), device=inputs.device)
        if disc_factor > 0:
            g_loss = -torch.mean(self.discriminator(reconstructions.contiguous()))
            can_differentiate = (torch.is_grad_enabled() and last_layer is not None and last_layer.requires_grad
                                 and g_loss.requires_grad and nll_loss.requires_grad)
            # no graph in validation: CompVis also uses a weight of 0 there
            d_weight = (calculate_adaptive_weight(nll_loss, g_loss, last_layer, self.discriminator_weight)
                        if can_differentiate else zero)
        else:
            g_loss, d_weight = zero, zero
        loss = nll_loss + d_weight * disc_factor * g_loss + self.codebook_weight * codebook_loss.mean()
        log = {f"{split}/total_loss": loss.detach().mean(),
               f"{split}/quant_loss": codebook_loss.detach().mean(),
               f"{split}/nll_loss": nll_loss.detach(),
               f"{split}/rec_loss": pixel.detach().mean(),
               f"{split}/p_loss": p_loss.detach().mean(),
               f"{split}/d_weight": d_weight.detach(),
               f"{split}/disc_factor": torch.tensor(float(disc_factor), device=inputs.device),
               f"{split}/g_loss": g_loss.detach().mean()}
        return loss, log
