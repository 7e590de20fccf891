"""``DiffusionWrapper``: CompVis's holder of the UNet (``model.diffusion_model``), which feeds it
[z_t, c~] when the model is conditioned by channel concatenation (paper Section 2.1)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ldm.util import ConfigError, instantiate_from_config

CONDITIONING_KEYS = (None, "concat")


class DiffusionWrapper(nn.Module):
    """Holds the UNet as ``diffusion_model`` and feeds it [z_t, c~] for concat conditioning."""

    def __init__(self, diff_model_config: Mapping, conditioning_key: str | None) -> None:
        super().__init__()
        if conditioning_key not in CONDITIONING_KEYS:
            raise ConfigError(f"conditioning_key {conditioning_key!r} is not supported here; use 'concat' "
                              f"(or null for an unconditional model)")
        self.diffusion_model = instantiate_from_config(diff_model_config)
        self.conditioning_key = conditioning_key

    def forward(self, x: torch.Tensor, t: torch.Tensor, c_concat: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        if self.conditioning_key == "concat":
            x = torch.cat([x, *c_concat], dim=1)
        return self.diffusion_model(x, t)
