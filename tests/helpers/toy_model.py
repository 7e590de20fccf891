"""A tiny regression model and dataset for testing the launcher (main.py) end to end."""
from __future__ import annotations

import time

import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset


class ToyDataset(Dataset):
    """y = x @ w + noise, fixed by ``seed``; items are dicts as the project's datasets."""

    def __init__(self, n: int = 64, dim: int = 4, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, dim, generator=g)
        w = torch.arange(1, dim + 1, dtype=torch.float32)
        self.y = self.x @ w + 0.01 * torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


class ToyRegressor(pl.LightningModule):
    def __init__(self, dim: int = 4, hidden: int = 8, monitor: str | None = "val/loss",
                 seconds_per_step: float = 0.0, fail_at_step: int | None = None,
                 record_start_to: str | None = None, nan_at_step: int | None = None) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
        self.hidden = hidden
        self.monitor = monitor
        self.seconds_per_step = seconds_per_step
        self.fail_at_step = fail_at_step
        self.learning_rate = 1e-3
        self.record_start_to = record_start_to
        self.nan_at_step = nan_at_step

    def on_train_start(self) -> None:
        """Record where training (re)starts, so tests can check what a resume restored."""
        if self.record_start_to:
            import json

            opt = self.trainers_optimizer_state()
            with open(self.record_start_to, "w") as f:
                json.dump({"global_step": self.global_step, "learning_rate": self.learning_rate,
                           "adam_steps": opt}, f)

    def trainers_optimizer_state(self) -> list:
        optimizer = self.trainer.optimizers[0]
        return [float(s["step"]) for s in optimizer.state.values()]

    def _loss(self, batch) -> torch.Tensor:
        return torch.nn.functional.mse_loss(self.net(batch["x"]).squeeze(-1), batch["y"])

    def training_step(self, batch, batch_idx):
        if self.fail_at_step is not None and self.global_step >= self.fail_at_step:
            raise RuntimeError("toy failure for testing")
        if self.seconds_per_step:
            time.sleep(self.seconds_per_step)
        loss = self._loss(batch)
        if self.nan_at_step is not None and self.global_step >= self.nan_at_step:
            loss = loss * float("nan")  # as a NaN in the data or a diverging step would
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self._loss(batch))

    def test_step(self, batch, batch_idx):
        self.log("test/loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)

    @torch.no_grad()
    def log_images(self, batch, N: int = 4, **kwargs) -> dict:
        x = batch["x"][:N]
        return {"inputs": torch.tanh(x)[:, None, None, :].repeat(1, 2, 3, 1)}
