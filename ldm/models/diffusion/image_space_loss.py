"""Lesion-aware image-space objectives of the post-training (paper Section 2.2, Eqs. 6-8).

Shared by every latent model that post-trains through a frozen VQGAN decoder: the conditional
LDM (:mod:`ldm.models.diffusion.lapt`) and the conditional Brownian bridge model. A model only has
to turn its output into an estimate of the clean latent (Eq. 5 for an eps-prediction LDM) and hand
it here together with the MRI batch; this module decodes it and computes

    S_b        = sum_{c,h,w} (x - D(z0_hat))^2_{b,c,h,w}                       (per slice b)
    S_b^lesion = sum_{c,h,w} M_lesion_{b,h,w} * (x - D(z0_hat))^2_{b,c,h,w}
    L_image    = sum_b w_b * S_b        / sum_{b: w_b > 0} sum_{h,w} M_brain_{b,h,w}     (Eq. 6)
    L_lesion   = sum_b w_b * S_b^lesion / sum_{b: w_b > 0} sum_{h,w} M_lesion_{b,h,w}    (Eq. 7)

which :func:`combine_objectives` adds to the latent loss as Eq. 8. ``c`` runs over the two MRI
channels (DWI, ADC) and ``w_b`` is an optional timestep weight (1 by default).

Why not a plain mean: this is the normalisation of the reference implementation, kept so that its
lambda values (0.01 / 0.02 in the paper) carry over. The squared error is *summed* over the two
channels (not averaged) and over every pixel of the slice, background included, but divided by the
number of *brain* pixels. So L_image = 2 * (B*H*W / N_brain) * MSE: about twice the plain mean
squared error divided by the brain fraction of the slices (a brain filling 40% of the slice makes
L_image 5x the plain MSE). L_lesion is 2x the lesion-masked mean squared error. Unlike the
reference, a batch without any lesion pixel gives L_lesion = 0 (the reference divides 0 by 0 and
gets NaN), and when a timestep restriction leaves no slice, both terms are 0.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

IMAGE_TARGETS = ("input", "reconstruction")
T_WEIGHTINGS = ("uniform", "alphas_cumprod")


class DecodesFirstStage(Protocol):
    """What a model must offer for the image-space objectives (CompVis LatentDiffusion names)."""

    first_stage_model: torch.nn.Module

    def differentiable_decode_first_stage(self, z: torch.Tensor, **kwargs: Any) -> torch.Tensor: ...

    def decode_first_stage(self, z: torch.Tensor, **kwargs: Any) -> torch.Tensor: ...

    def encode_first_stage(self, x: torch.Tensor) -> Any: ...

    def get_first_stage_encoding(self, encoder_posterior: Any) -> torch.Tensor: ...


def _check_maps(x: torch.Tensor, mask: torch.Tensor, lesion: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"image-space loss: x must be (B, C, H, W), got shape {tuple(x.shape)}")
    for name, m in (("mask", mask), ("lesion", lesion)):
        if m.dim() != 4 or m.shape[1] != 1 or m.shape[0] != x.shape[0] or m.shape[2:] != x.shape[2:]:
            raise ValueError(f"image-space loss: {name} must be (B, 1, H, W) = {(x.shape[0], 1, *x.shape[2:])} "
                             f"to match x {tuple(x.shape)}, got {tuple(m.shape)}")


def image_space_losses(x_hat: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, lesion: torch.Tensor,
                       weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """L_image and L_lesion (Eqs. 6 and 7) with the reference normalisation (see module docstring).

    ``x_hat`` and ``target`` are (B, C, H, W); ``mask`` (brain) and ``lesion`` are binary (B, 1, H, W);
    ``weight`` is an optional per-slice timestep weight (B,). Slices with weight 0 count neither in
    the numerators nor in the pixel counts. Computed in float32 whatever the autocast dtype.
    """
    if x_hat.shape != target.shape:
        raise ValueError(f"image-space loss: decoded image {tuple(x_hat.shape)} and target "
                         f"{tuple(target.shape)} differ in shape")
    _check_maps(target, mask, lesion)
    sq = (x_hat.float() - target.float()).pow(2).sum(dim=1, keepdim=True)  # summed over MRI channels
    mask, lesion = mask.float(), lesion.float()
    per_slice_image = sq.sum(dim=(1, 2, 3))
    per_slice_lesion = (sq * lesion).sum(dim=(1, 2, 3))
    n_brain, n_lesion = mask.sum(dim=(1, 2, 3)), lesion.sum(dim=(1, 2, 3))
    if weight is not None:
        weight = weight.float().reshape(-1)
        if weight.shape[0] != x_hat.shape[0]:
            raise ValueError(f"image-space loss: weight has {weight.shape[0]} entries for a batch of {x_hat.shape[0]}")
        counted = (weight > 0).float()
        per_slice_image, per_slice_lesion = weight * per_slice_image, weight * per_slice_lesion
        n_brain, n_lesion = counted * n_brain, counted * n_lesion
    # Numerators are 0 wherever the counts are: clamping the count gives 0, never 0 / 0.
    loss_image = per_slice_image.sum() / n_brain.sum().clamp(min=1.0)
    loss_lesion = per_slice_lesion.sum() / n_lesion.sum().clamp(min=1.0)
    return loss_image, loss_lesion


def combine_objectives(loss_latent: torch.Tensor, loss_image: torch.Tensor, loss_lesion: torch.Tensor,
                       lambda_image: float, lambda_lesion: float) -> torch.Tensor:
    """L_total = L_latent + lambda_image * L_image + lambda_lesion * L_lesion (Eq. 8).

    A zero lambda drops its term entirely, so that the total (and its gradient) is exactly the
    latent loss when both are 0.
    """
    total = loss_latent
    if lambda_image:
        total = total + lambda_image * loss_image
    if lambda_lesion:
        total = total + lambda_lesion * loss_lesion
    return total


@contextlib.contextmanager
def decoder_checkpointing(first_stage_model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Switch the frozen decoder's activation checkpointing on for the duration of a decode.

    Only the differentiable decode of the post-training needs it: sampling and the reconstruction
    target run without a gradient graph, where checkpointing would only cost time.
    """
    decoder = getattr(first_stage_model, "decoder", None)
    if not enabled or decoder is None:
        yield
        return
    if not hasattr(decoder, "use_checkpoint"):
        raise AttributeError(f"decoder_checkpointing: {type(decoder).__name__} has no 'use_checkpoint' switch")
    previous = decoder.use_checkpoint
    decoder.use_checkpoint = True
    try:
        yield
    finally:
        decoder.use_checkpoint = previous


@dataclass
class ImageSpaceObjective:
    """Decode an x0 latent estimate through the frozen first stage and score it (Eqs. 6-7).

    image_target: "reconstruction" (default) compares with the VQGAN reconstruction
        D(quantise(E(x))), what the reference code compares against (computed without a gradient
        graph); "input" with x itself, as the paper's Eq. 6 is written.
    quantize: decode z0_hat through the codebook with the straight-through estimator (the
        reference's behaviour); False decodes the continuous latent.
    t_max: only slices with t < t_max get the image terms (None: all); the other slices are not
        decoded at all, which also saves their decoder cost.
    t_weighting: "uniform" (reference) or "alphas_cumprod" (w_b = abar_t, which down-weights the
        noisy timesteps where the one-step estimate of Eq. 5 is blurry).
    decoder_checkpointing: recompute decoder activations in the backward pass (memory for time).
    """

    image_target: str = "reconstruction"
    quantize: bool = True
    t_max: int | None = None
    t_weighting: str = "uniform"
    decoder_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.image_target not in IMAGE_TARGETS:
            raise ValueError(f"image_target must be one of {IMAGE_TARGETS}, got {self.image_target!r}")
        if self.t_weighting not in T_WEIGHTINGS:
            raise ValueError(f"t_weighting must be one of {T_WEIGHTINGS}, got {self.t_weighting!r}")
        if self.t_max is not None and int(self.t_max) <= 0:
            raise ValueError(f"t_max must be a positive number of timesteps or None, got {self.t_max!r}")

    def timestep_weight(self, t: torch.Tensor, alphas_cumprod: torch.Tensor | None = None) -> torch.Tensor | None:
        """Per-slice weight w_b, or None when every slice has weight 1 (the default)."""
        if self.t_max is None and self.t_weighting == "uniform":
            return None
        weight = torch.ones(t.shape[0], device=t.device, dtype=torch.float32)
        if self.t_weighting == "alphas_cumprod":
            if alphas_cumprod is None:
                raise ValueError("t_weighting 'alphas_cumprod' needs the model's alphas_cumprod")
            weight = alphas_cumprod.to(t.device).float()[t]
        if self.t_max is not None:
            weight = weight * (t < int(self.t_max)).float()
        return weight

    @torch.no_grad()
    def target(self, model: DecodesFirstStage, x: torch.Tensor, z_start: torch.Tensor | None = None) -> torch.Tensor:
        """The image x_hat is compared with: x, or the VQGAN reconstruction of x (no graph).

        ``z_start`` is the (scaled) latent of x when the caller already has it, which saves encoding.
        """
        if self.image_target == "input":
            return x
        if z_start is None:
            z_start = model.get_first_stage_encoding(model.encode_first_stage(x))
        return model.decode_first_stage(z_start)

    def decode(self, model: DecodesFirstStage, z0_hat: torch.Tensor) -> torch.Tensor:
        """x_hat = D(z0_hat) through the frozen first stage, gradients flowing into z0_hat."""
        with decoder_checkpointing(model.first_stage_model, self.decoder_checkpointing):
            return model.differentiable_decode_first_stage(z0_hat, force_not_quantize=not self.quantize)

    def __call__(self, model: DecodesFirstStage, z0_hat: torch.Tensor, x: torch.Tensor,
                 mask: torch.Tensor, lesion: torch.Tensor, t: torch.Tensor,
                 z_start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Return (L_image, L_lesion, extras) for a batch.

        ``z0_hat`` is the model's estimate of the clean scaled latent (Eq. 5), ``x`` the MRI
        batch (B, 2, H, W) in [-1, 1], ``mask``/``lesion`` binary (B, 1, H, W), ``t`` the timesteps
        (B,) at which z0_hat was estimated. ``extras`` holds the decoded images ``x_hat`` and
        their ``target`` (detached, only the slices that were decoded), their batch indices
        ``index``, the weights ``weight`` and the pixel counts ``n_brain``/``n_lesion``.
        """
        _check_maps(x, mask, lesion)
        if z0_hat.shape[0] != x.shape[0] or t.shape[0] != x.shape[0]:
            raise ValueError(f"image-space loss: latent {tuple(z0_hat.shape)}, timesteps {tuple(t.shape)} "
                             f"and images {tuple(x.shape)} disagree on the batch size")
        weight = self.timestep_weight(t, getattr(model, "alphas_cumprod", None))
        index = torch.arange(x.shape[0], device=x.device)
        if weight is not None:
            keep = weight > 0
            index, weight = index[keep], weight[keep]
            z0_hat, x, mask, lesion = z0_hat[keep], x[keep], mask[keep], lesion[keep]
            z_start = z_start[keep] if z_start is not None else None
        if index.numel() == 0:
            zero = torch.zeros((), device=x.device)
            return zero, zero.clone(), {"index": index, "weight": weight, "n_brain": zero, "n_lesion": zero}
        target = self.target(model, x, z_start)
        x_hat = self.decode(model, z0_hat)
        loss_image, loss_lesion = image_space_losses(x_hat, target, mask, lesion, weight)
        extras = {"x_hat": x_hat.detach(), "target": target.detach(), "index": index, "weight": weight,
                  "n_brain": mask.sum().detach(), "n_lesion": lesion.sum().detach()}
        return loss_image, loss_lesion, extras
