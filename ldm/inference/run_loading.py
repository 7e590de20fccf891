"""Loading a trained model from a run directory or a checkpoint, for inference.

A run directory is what main.py writes: ``<run>/configs/*.yaml`` (merged in name order, as CompVis
does) and ``<run>/checkpoints/last.ckpt``. A checkpoint file inside ``<run>/checkpoints/`` takes
its configs from that run; a checkpoint elsewhere needs configs given with ``--base``. Weights
are read with ``weights_only=True`` (a checkpoint cannot run code) and must fit the model exactly.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ldm.config import apply_overrides, load_configs
from ldm.modules.ema import EMA_PREFIX
from ldm.util import ConfigError, accepts_keyword, instantiate_from_config, load_state_dict



@dataclass
class RunFiles:
    """Where a run's weights and configs are."""

    checkpoint: Path
    configs: list[Path] = field(default_factory=list)
    logdir: Path | None = None


def resolve_run(resume: str | Path, base: Sequence[str | Path] = ()) -> RunFiles:
    """Find the checkpoint and the configs of ``resume`` (a run directory or a checkpoint file)."""
    path = Path(resume)
    if not path.exists():
        raise ConfigError(f"-r {str(resume)!r} does not exist (give a run directory or a checkpoint)")
    if path.is_file():
        checkpoint = path
        logdir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    else:
        logdir, checkpoint = path, path / "checkpoints" / "last.ckpt"
        if not checkpoint.is_file():
            raise ConfigError(f"run directory {str(path)!r} has no checkpoints/last.ckpt (name a checkpoint file)")
    configs = sorted((logdir / "configs").glob("*.yaml")) + [Path(b) for b in base]
    if not configs:
        raise ConfigError(f"no config for {str(checkpoint)!r}: {str(logdir / 'configs')!r} holds no *.yaml "
                          f"and no --base was given")
    return RunFiles(checkpoint, configs, logdir)


def load_run_config(run: RunFiles, overrides: Sequence[str] = ()) -> DictConfig:
    """The run's configs merged in order, then ``key=value`` overrides (checked like main.py's)."""
    config = apply_overrides(load_configs(run.configs), overrides)
    if "model" not in config or "target" not in config.model:
        raise ConfigError(f"the configs {[str(c) for c in run.configs]} have no model.target")
    return config


def inference_model_config(model_config: DictConfig, has_ema: bool) -> DictConfig:
    """The model config to build for inference from a full checkpoint.

    ``ckpt_path`` entries (the LDM's own, and the first stage's pointer to the stage-1 checkpoint)
    are dropped: the LDM checkpoint already holds every weight, and the stage-1 file need not exist
    where one samples. ``use_ema`` follows the checkpoint, so EMA weights are used when present.
    """
    cfg = copy.deepcopy(model_config)
    params = cfg.setdefault("params", {})
    for node in (params, OmegaConf.select(cfg, "params.first_stage_config.params")):
        if isinstance(node, DictConfig) and "ckpt_path" in node:
            node.ckpt_path = None
    if accepts_keyword(cfg.target, "use_ema"):
        params.use_ema = has_ema
    return cfg


def load_model(config: DictConfig, checkpoint: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build ``config.model`` and load ``checkpoint`` into it (strictly), in eval mode on ``device``."""
    state_dict = load_state_dict(str(checkpoint), map_location="cpu")
    has_ema = any(k.startswith(EMA_PREFIX) for k in state_dict)
    model = instantiate_from_config(inference_model_config(config.model, has_ema))
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]!r}")
        raise ConfigError(f"checkpoint {str(checkpoint)!r} does not fit the config's model "
                          f"{config.model.target}: {'; '.join(parts)}")
    model.eval().requires_grad_(False)
    return model.to(device)


def choose_device(requested: str | None = None) -> torch.device:
    """``requested`` if given, else CUDA when available, else the CPU."""
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {requested}: CUDA is not available on this machine")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
