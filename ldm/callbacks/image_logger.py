"""Writes the model's ``log_images`` as PNG grids to the run directory and to TensorBoard.

Medical images here have channels that are different contrasts (DWI, ADC; 15 CTP frames), not
colours, so each channel is shown as its own grey-scale column block: a grid of N rows (images)
by C columns (channels). Images come in [-1, 1] and are shown in [0, 1].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from ldm.io import atomic_path


def channel_grid(images: torch.Tensor, padding: int = 2) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N*(H+p)+p, C*(W+p)+p) uint8 grey-scale grid."""
    x = images.detach().float().cpu().clamp(-1.0, 1.0)
    x = ((x + 1.0) * 127.5).round().to(torch.uint8).numpy()
    n, c, h, w = x.shape
    grid = np.full((n * (h + padding) + padding, c * (w + padding) + padding), 255, dtype=np.uint8)
    for i in range(n):
        for j in range(c):
            top, left = padding + i * (h + padding), padding + j * (w + padding)
            grid[top:top + h, left:left + w] = x[i, j]
    return grid


class ImageLogger(pl.Callback):
    """Calls ``pl_module.log_images(batch, split=..., **log_images_kwargs)`` every few batches.

    ``batch_frequency`` sets the cadence; with ``increase_log_steps`` the first logs come at
    1, 2, 4, ... steps as in CompVis so that a run shows something early. Validation logs once per
    validation epoch (first batch). ``disabled`` turns it off. PNGs go to ``<save_dir>/images/<split>``
    (main.py sets the run directory).
    """

    def __init__(self, batch_frequency: int = 1000, max_images: int = 4, clamp: bool = True,
                 increase_log_steps: bool = True, disabled: bool = False, log_first_step: bool = False,
                 log_on_validation: bool = True, log_images_kwargs: dict | None = None,
                 save_dir: str | None = None) -> None:
        super().__init__()
        self.save_dir = save_dir
        self.batch_freq = max(1, int(batch_frequency))
        self.max_images = max_images
        self.clamp = clamp
        self.disabled = disabled
        self.log_first_step = log_first_step
        self.log_on_validation = log_on_validation
        self.log_images_kwargs = dict(log_images_kwargs or {})
        self.log_steps = [2 ** n for n in range(int(np.log2(self.batch_freq)) + 1)] if increase_log_steps else []

    def _due(self, step: int) -> bool:
        if step == 0:
            return self.log_first_step
        if step % self.batch_freq == 0:
            return True
        if step in self.log_steps:
            self.log_steps.remove(step)
            return True
        return False

    @torch.no_grad()
    def log_img(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, split: str) -> None:
        if self.disabled or not callable(getattr(pl_module, "log_images", None)):
            return
        was_training = pl_module.training
        pl_module.eval()
        try:
            images = pl_module.log_images(batch, N=self.max_images, split=split, **self.log_images_kwargs)
        finally:
            pl_module.train(was_training)
        if not trainer.is_global_zero:
            return
        # not trainer.log_dir: that property broadcasts, and only rank zero gets here
        out = Path(self.save_dir or trainer.default_root_dir) / "images" / split
        out.mkdir(parents=True, exist_ok=True)
        step, epoch = trainer.global_step, trainer.current_epoch
        experiment = getattr(trainer.logger, "experiment", None)
        for key, value in images.items():
            if not isinstance(value, torch.Tensor) or value.dim() != 4:
                continue
            value = value[: self.max_images]
            if self.clamp:
                value = value.clamp(-1.0, 1.0)
            grid = channel_grid(value)
            self._write_png(out / f"{key}_gs-{step:06}_e-{epoch:06}.png", grid)
            if experiment is not None and hasattr(experiment, "add_image"):
                experiment.add_image(f"{split}/{key}", grid[None], global_step=step, dataformats="CHW")

    @staticmethod
    def _write_png(path: Path, grid: np.ndarray) -> None:
        from PIL import Image

        with atomic_path(path) as tmp:
            Image.fromarray(grid, mode="L").save(tmp, format="PNG")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if self._due(trainer.global_step):
            self.log_img(trainer, pl_module, batch, split="train")

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.log_on_validation and batch_idx == 0 and not trainer.sanity_checking and trainer.global_step > 0:
            self.log_img(trainer, pl_module, batch, split="val")
