"""Stop training at the first non-finite loss, before it reaches the weights.

A NaN or inf loss makes NaN gradients, and the optimiser step after it NaN weights, which every
later checkpoint (the "best" one included) would then keep. The check runs just before the
backward pass (Lightning's ``on_before_backward``, also for manual optimisation), so the weights
are still those of the last finite step when training stops: the emergency checkpoint written on
the way out holds them, and no checkpoint holds NaN weights.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch


class NonFiniteLossError(RuntimeError):
    """Training stopped on a non-finite loss (one line: step, value and the batch's patients)."""


def _batch_patients(batch: Any, limit: int = 4) -> str:
    ids = batch.get("patient_id") if isinstance(batch, Mapping) else None
    if ids is None:
        return ""
    ids = list(dict.fromkeys(str(i) for i in ids))
    shown = ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
    slices = batch.get("slice_index") if isinstance(batch, Mapping) else None
    extra = ""
    if isinstance(slices, torch.Tensor) and len(ids) <= limit:
        extra = f" (slices {', '.join(str(int(s)) for s in slices.flatten()[:8])})"
    return f"; batch from patient(s) {shown}{extra}"


class NonFiniteLossGuard(pl.Callback):
    def __init__(self) -> None:
        super().__init__()
        self._batch: Any = None
        self._batch_idx = -1

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._batch, self._batch_idx = batch, batch_idx

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if bool(torch.isfinite(loss.detach()).all()):
            return
        raise NonFiniteLossError(
            f"training stopped: the loss is {float(loss.detach().float().flatten()[0])} at global step "
            f"{trainer.global_step} (epoch {trainer.current_epoch}, batch {self._batch_idx})"
            f"{_batch_patients(self._batch)}; the weights of the last finite step are kept "
            f"(check the data and the learning rate)")


def has_non_finite_weights(module: torch.nn.Module) -> str | None:
    """The name of the first parameter or buffer with a NaN/inf value, or None."""
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None
