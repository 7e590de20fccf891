"""``DataModuleFromConfig``: train / validation / test datasets built from config, as in CompVis."""
from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ldm.util import instantiate_from_config


def _seed_numpy_worker(worker_id: int) -> None:
    """Give every DataLoader worker its own NumPy stream (torch seeds workers, NumPy it does not)."""
    np.random.seed(torch.initial_seed() % 2**32)


class DataModuleFromConfig(pl.LightningDataModule):
    """Datasets are ``{target, params}`` nodes; loaders take batch size, workers and pinning.

    ``num_workers`` defaults to min(2 x batch_size, CPU count) as CompVis; ``pin_memory`` defaults
    to whether CUDA is available; workers persist between epochs when there are any.
    """

    def __init__(self, batch_size: int, train: Mapping | None = None, validation: Mapping | None = None,
                 test: Mapping | None = None, predict: Mapping | None = None, num_workers: int | None = None,
                 val_batch_size: int | None = None, persistent_workers: bool = True,
                 pin_memory: bool | None = None, shuffle_val_dataloader: bool = False,
                 drop_last: bool = False) -> None:
        super().__init__()
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.num_workers = min(2 * self.batch_size, os.cpu_count() or 1) if num_workers is None else int(num_workers)
        self.persistent_workers = bool(persistent_workers) and self.num_workers > 0
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.shuffle_val = shuffle_val_dataloader
        self.drop_last = drop_last
        self.dataset_configs = {k: v for k, v in
                                dict(train=train, validation=validation, test=test, predict=predict).items()
                                if v is not None}
        self.datasets: dict[str, Dataset] = {}
        # Lightning looks these hooks up by name: only offer the loaders that are configured.
        if train is None:
            self.train_dataloader = None  # type: ignore[assignment]
        if validation is None:
            self.val_dataloader = None  # type: ignore[assignment]
        if test is None:
            self.test_dataloader = None  # type: ignore[assignment]
        if predict is None:
            self.predict_dataloader = None  # type: ignore[assignment]

    @property
    def has_test(self) -> bool:
        return "test" in self.dataset_configs

    def setup(self, stage: str | None = None) -> None:
        for name, cfg in self.dataset_configs.items():
            if name not in self.datasets:
                self.datasets[name] = instantiate_from_config(cfg)

    def _loader(self, name: str, batch_size: int, shuffle: bool, drop_last: bool = False) -> DataLoader:
        if name not in self.datasets:
            self.setup()
        return DataLoader(self.datasets[name], batch_size=batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, persistent_workers=self.persistent_workers,
                          pin_memory=self.pin_memory, drop_last=drop_last,
                          worker_init_fn=_seed_numpy_worker if self.num_workers > 0 else None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True, drop_last=self.drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", self.val_batch_size, shuffle=self.shuffle_val)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.val_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.val_batch_size, shuffle=False)
