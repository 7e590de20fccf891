"""Exponential moving average of a model's weights (CompVis ``LitEma``, same buffer names).

The shadow weights are buffers named after the parameters with the dots removed
(``diffusion_model.input_blocks.0.0.weight`` -> ``diffusion_modelinput_blocks00weight``), plus
``decay`` and ``num_updates``; inside a LatentDiffusion they appear as ``model_ema.*``, so
CompVis checkpoints load. The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates.
The update is one fused ``torch._foreach_lerp_`` over all weights with the decay kept on the
device, so it neither loops in Python per tensor nor waits for the GPU.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

# The state-dict prefix of a diffusion model's EMA (its attribute ``model_ema``).
EMA_PREFIX = "model_ema."


class LitEma(nn.Module):
    def __init__(self, model: nn.Module, decay: float = 0.9999, use_num_upates: bool = True) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be between 0 and 1, got {decay}")
        self.m_name2s_name: dict[str, str] = {}
        self.register_buffer("decay", torch.tensor(decay, dtype=torch.float32))
        self.register_buffer("num_updates", torch.tensor(0 if use_num_upates else -1, dtype=torch.int))
        for name, p in model.named_parameters():
            if p.requires_grad:
                s_name = name.replace(".", "")
                self.m_name2s_name[name] = s_name
                self.register_buffer(s_name, p.detach().clone())
        self.collected_params: list[torch.Tensor] = []

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        shadow = dict(self.named_buffers())
        params, shadows = [], []
        for name, p in model.named_parameters():
            if name in self.m_name2s_name:
                params.append(p)
                shadows.append(shadow[self.m_name2s_name[name]])
        if len(params) != len(self.m_name2s_name):
            raise ValueError(f"EMA tracks {len(self.m_name2s_name)} parameters but the model offers "
                             f"{len(params)} of them")
        return params, shadows

    @torch.no_grad()
    def forward(self, model: nn.Module) -> None:
        """One EMA step: shadow <- shadow + (1 - decay) * (param - shadow)."""
        # the warm-up is computed on the device: reading num_updates back would wait for the GPU
        counting = self.num_updates >= 0
        self.num_updates += counting.to(self.num_updates.dtype)
        n = self.num_updates.float()
        decay = torch.where(counting, torch.minimum(self.decay, (1 + n) / (10 + n)), self.decay)
        params, shadows = self._pairs(model)
        if shadows:
            params = [p.detach().to(s.dtype) for p, s in zip(params, shadows)]
            torch._foreach_lerp_(shadows, params, (1.0 - decay).to(shadows[0].dtype))

    def copy_to(self, model: nn.Module) -> None:
        """Write the shadow weights into ``model``'s parameters."""
        params, shadows = self._pairs(model)
        with torch.no_grad():
            for p, s in zip(params, shadows):
                p.copy_(s)

    def store(self, parameters: Iterable[torch.Tensor]) -> None:
        """Keep a copy of ``parameters`` to put back with :meth:`restore`."""
        self.collected_params = [p.detach().clone() for p in parameters]

    def restore(self, parameters: Iterable[torch.Tensor]) -> None:
        """Put back the parameters saved by :meth:`store` (after evaluating with EMA weights)."""
        with torch.no_grad():
            for saved, p in zip(self.collected_params, parameters):
                p.copy_(saved)
        self.collected_params = []

    @torch.no_grad()
    def reset_to(self, model: nn.Module) -> None:
        """Restart the average at ``model``'s current weights (e.g. after loading weights without EMA)."""
        params, shadows = self._pairs(model)
        for p, s in zip(params, shadows):
            s.copy_(p)
        self.num_updates.copy_(torch.where(self.num_updates >= 0, 0, -1).to(self.num_updates.dtype))
