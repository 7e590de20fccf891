"""A checkpoint when training is interrupted: on SIGUSR1, SIGTERM, or any exception.

Lightning turns SIGTERM into an exception at the next step boundary, so ``on_exception`` covers
SIGTERM, Ctrl-C and crashes alike. SIGUSR1 (e.g. a cluster's pre-emption warning) only asks for a
checkpoint at the next batch end and training goes on.
"""
from __future__ import annotations

import signal
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info

from ldm.callbacks.nonfinite_guard import has_non_finite_weights
from ldm.io import atomic_path


class EmergencyCheckpoint(pl.Callback):
    def __init__(self, ckptdir: str, filename: str = "last.ckpt") -> None:
        super().__init__()
        self.path = Path(ckptdir) / filename
        self._requested = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and hasattr(signal, "SIGUSR1"):
            try:
                signal.signal(signal.SIGUSR1, self._request)
            except ValueError:  # not in the main thread (e.g. a notebook worker): no signal hook
                pass

    def _request(self, signum, frame) -> None:  # noqa: ANN001 - signal handler signature
        self._requested = True

    def on_train_batch_end(self, trainer: pl.Trainer, *args, **kwargs) -> None:
        if self._requested:
            self._requested = False
            self.save(trainer, reason="SIGUSR1")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.global_step == 0 and trainer.current_epoch == 0:
            return  # nothing trained yet: keep whatever checkpoint is there
        reason = "SIGTERM" if type(exception).__name__ == "SIGTERMException" else type(exception).__name__
        self.save(trainer, reason=reason)

    def save(self, trainer: pl.Trainer, reason: str) -> None:
        """Write the checkpoint atomically from rank zero only.

        ``trainer.save_checkpoint`` ends with a barrier that would hang when only one rank failed,
        so the checkpoint is dumped and written directly on rank zero.
        """
        if not trainer.is_global_zero:
            return
        bad = has_non_finite_weights(trainer.lightning_module)
        if bad is not None:  # never replace a good last.ckpt with NaN weights
            rank_zero_info(f"{reason}: not saving a checkpoint: {bad} holds NaN/inf values")
            return
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        with atomic_path(self.path) as tmp:
            trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, str(tmp))
        rank_zero_info(f"{reason}: saved checkpoint {self.path} at global step {trainer.global_step}")
