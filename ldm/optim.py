"""Adam and AdamW with torch's fused implementation where the parameters are on a GPU.

The fused kernel updates every tensor in one pass; the default (per-tensor) implementation loops over
the UNet's ~190 parameters with several small kernels each, which a GPU pays for in launches. On the
CPU the fused kernel exists too, but it is not chosen: on the project's 2-core CPU (torch 2.13.0,
configs/benchmark/small.yaml's UNet, 2.8 M parameters in 186 tensors, nothing else running) one AdamW
step takes 12.4 ms per tensor and 3.2 ms fused, about 5% of a 190 ms stage-2 step, and fusing changes
the float rounding of every update, so that CPU training runs would no longer give the figures that
README and docs/results.md report. Parameters off a GPU, or not floating point, keep torch's default.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

FUSED_DEVICE_TYPES = ("cuda",)


def can_fuse(params: Iterable[torch.Tensor]) -> bool:
    """Whether :func:`adam` fuses the update of ``params``: all floating point, all on one device type
    of :data:`FUSED_DEVICE_TYPES`."""
    params = list(params)
    if not params:
        return False
    device_type = params[0].device.type
    return device_type in FUSED_DEVICE_TYPES and all(
        p.device.type == device_type and torch.is_floating_point(p) for p in params)


def adam(params: Iterable[torch.nn.Parameter], *, decoupled_weight_decay: bool = False,
         **kwargs: Any) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` (``decoupled_weight_decay``) or ``torch.optim.Adam`` over ``params``,
    fused where :func:`can_fuse` says so; ``kwargs`` are the optimiser's (lr, betas, ...)."""
    params = list(params)
    cls = torch.optim.AdamW if decoupled_weight_decay else torch.optim.Adam
    return cls(params, fused=True if can_fuse(params) else None, **kwargs)
