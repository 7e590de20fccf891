"""Creates the run directory and saves the merged configs when training starts (rank zero), with
the training data's contract and cohort reference (ldm/data/preprocessing/contract.py)."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_warn

from ldm.data.preprocessing.contract import write_run_contract
from ldm.io import atomic_write_text


class SetupCallback(pl.Callback):
    """Writes ``<logdir>/configs/<now>-project.yaml`` and ``<now>-lightning.yaml`` as CompVis does.

    The project file holds everything but the ``lightning`` section, so that ``-r RUN_DIR`` can
    merge ``configs/*.yaml`` in sorted order and get the run back.
    """

    def __init__(self, now: str, logdir: str, ckptdir: str, cfgdir: str, config: DictConfig,
                 lightning_config: DictConfig) -> None:
        super().__init__()
        self.now = now
        self.logdir = Path(logdir)
        self.ckptdir = Path(ckptdir)
        self.cfgdir = Path(cfgdir)
        self.config = config
        self.lightning_config = lightning_config

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        for d in (self.logdir, self.ckptdir, self.cfgdir):
            d.mkdir(parents=True, exist_ok=True)
        project = OmegaConf.masked_copy(self.config, [k for k in self.config if k != "lightning"])
        atomic_write_text(self.cfgdir / f"{self.now}-project.yaml", OmegaConf.to_yaml(project))
        lightning = OmegaConf.create({"lightning": self.lightning_config})
        atomic_write_text(self.cfgdir / f"{self.now}-lightning.yaml", OmegaConf.to_yaml(lightning))
        # what inference needs without the training data: spacing, size, frames, cohort reference
        try:
            write_run_contract(self.logdir, self.config)
        except (OSError, ValueError) as e:  # e.g. an old index: the data module reports it itself
            rank_zero_warn(f"no data_contract.json in {self.logdir}: {e}")
