"""Reconstruction terms of the image-to-image GANs: pix2pix's L1 to the target and the cycle L1s.

pix2pix (Isola et al. 2017, Eq. 3): lambda_L1 E||y - G(x)||_1 with lambda_L1 = 100.
CycleGAN (Zhu et al. 2017, Eq. 2): lambda (E||F(G(x)) - x||_1 + E||G(F(y)) - y||_1) with lambda = 10
per direction (the release's lambda_A, lambda_B). PairedCycleGAN (Chang et al. 2018) names the same
two terms identity loss (x through both networks) and style loss (y through both). Each term is the
mean absolute error over every pixel and channel, as ``nn.L1Loss``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_l1(prediction: torch.Tensor, target: torch.Tensor, weight: float) -> torch.Tensor:
    """``weight`` x mean |prediction - target|; a weight of 0 costs nothing and is exactly 0."""
    if weight == 0:
        return prediction.new_zeros(())
    return weight * F.l1_loss(prediction, target)


def cycle_losses(x: torch.Tensor, x_cycled: torch.Tensor, y: torch.Tensor, y_cycled: torch.Tensor,
                 lambda_x: float, lambda_y: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(lambda_x |F(G(x)) - x|, lambda_y |G(F(y)) - y|): the forward and backward cycle terms."""
    return weighted_l1(x_cycled, x, lambda_x), weighted_l1(y_cycled, y, lambda_y)
