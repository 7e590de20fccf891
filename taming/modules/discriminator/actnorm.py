"""Activation normalisation (Glow): a per-channel affine map initialised from the first batch.

CompVis offers it in the PatchGAN instead of BatchNorm (``use_actnorm``); keys ``loc``, ``scale``,
``initialized`` as there."""
from __future__ import annotations

import torch
from torch import nn


class ActNorm(nn.Module):
    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Data-dependent init: the first training batch comes out with zero mean, unit std per channel."""
        flat = x.transpose(0, 1).reshape(x.shape[1], -1).float()
        self.loc.copy_(-flat.mean(1).view(1, -1, 1, 1))
        self.scale.copy_(1.0 / (flat.std(1).view(1, -1, 1, 1) + 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and int(self.initialized) == 0:
            self.initialize(x)
            self.initialized.fill_(1)
        return self.scale * (x + self.loc)
