"""The latent Brownian bridge diffusion model (BBDM, Li et al., CVPR 2023), conditional variant (cBBDM).

Bridge math (BBDM Sec. 3.1), with the schedule of :mod:`ldm.models.diffusion.bridge_schedule`:

    x_t = (1 - m_t) x_0 + m_t y + sqrt(delta_t) eps                                    (BBDM Eq. 3)

and the denoiser is trained to predict one of the objectives

    "grad":  m_t (y - x_0) + sqrt(delta_t) eps  ( = x_t - x_0 )                      (BBDM Eq. 11)
    "noise": eps
    "ysubx": y - x_0                                 (the reference code's third option)
"""
from __future__ import annotations

import torch

OBJECTIVES = ("grad", "noise", "ysubx")


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"bridge objective {objective!r} unknown; choose one of {OBJECTIVES}")


def bridge_marginal(x_start: torch.Tensor, y: torch.Tensor, m_t: torch.Tensor, delta_t: torch.Tensor,
                    noise: torch.Tensor) -> torch.Tensor:
    """x_t ~ q(x_t | x_0, y) (BBDM Eq. 3); ``m_t``/``delta_t`` broadcast to x_start, e.g. (B, 1, 1, 1)."""
    return (1.0 - m_t) * x_start + m_t * y + delta_t.sqrt() * noise


def objective_target(objective: str, x_start: torch.Tensor, y: torch.Tensor, noise: torch.Tensor,
                     m_t: torch.Tensor, delta_t: torch.Tensor) -> torch.Tensor:
    """What the denoiser learns to output at x_t = bridge_marginal(x_start, y, m_t, delta_t, noise)."""
    _check_objective(objective)
    if objective == "grad":
        return m_t * (y - x_start) + delta_t.sqrt() * noise
    if objective == "noise":
        return noise
    return y - x_start


def predict_start_from_objective(objective: str, x_t: torch.Tensor, y: torch.Tensor, m_t: torch.Tensor,
                                 delta_t: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
    """x0_hat from the denoiser's output: the inverse of :func:`objective_target` given x_t.

    The bridge analogue of the LDM's Eq. 5, used by the sampler and by the post-training.
    """
    _check_objective(objective)
    if objective == "grad":
        return x_t - model_output
    if objective == "noise":
        return (x_t - m_t * y - delta_t.sqrt() * model_output) / (1.0 - m_t)
    return y - model_output
