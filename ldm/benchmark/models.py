"""The benchmark config and the three models it describes, built without trained weights.

A benchmark config (``configs/benchmark/*.yaml``) has four sections:

- ``benchmark``: ``batch_size``, ``image_size`` [H, W], ``sample_steps`` and ``samplers`` (each timed at
  those steps, decode included), ``repeats``, ``warmup``,
  ``precision``, ``cudnn_benchmark`` (as the training configs' ``lightning.trainer.benchmark``), the
  figures the targets refer to (``test_set_slices``, ``paper_sample_steps``) and ``targets``;
- ``vqgan``: a stage-1 model node (``base_learning_rate``, ``target``, ``params``) whose loss has a
  discriminator (the benchmark times the GAN phase, both optimisers);
- ``ldm``: a stage-2 model node; its first stage is built from config, without a checkpoint;
- ``lapt``: the post-training node; its ``params`` are merged over ``ldm.params`` (same
  architecture). It is built with ``ckpt_path: null`` (which LesionAwareLatentDiffusion allows for
  everything but ``fit``): a stage-2 checkpoint only changes the weights' values, not the cost of
  a step, and writing one at paper scale would cost several GB of disk and seconds of I/O.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ldm.config import apply_overrides, load_configs, to_container
from ldm.util import ConfigError, instantiate_from_config

SECTIONS = ("benchmark", "vqgan", "ldm", "lapt")
BENCHMARK_DEFAULTS: dict[str, Any] = {
    "batch_size": 4, "image_size": [96, 112], "sample_steps": 20, "sample_batch_size": None, "repeats": 5,
    "warmup": 2, "precision": "32", "lesion_fraction": 0.5, "test_set_slices": 4015, "paper_sample_steps": 200,
    "cudnn_benchmark": True, "samplers": ["ddim", "dpmsolver++"],
}


def load_benchmark_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Read a benchmark config, fill the ``benchmark`` defaults and apply dotlist overrides."""
    config = load_configs([path])
    missing = [s for s in SECTIONS if s not in config]
    if missing:
        raise ConfigError(f"benchmark config {str(path)!r} has no {missing[0]!r} section "
                          f"(expected {', '.join(SECTIONS)})")
    config.benchmark = OmegaConf.merge(OmegaConf.create(BENCHMARK_DEFAULTS), config.benchmark)
    config = apply_overrides(config, overrides)
    size = list(config.benchmark.image_size)
    if len(size) != 2 or any(int(s) < 1 for s in size):
        raise ConfigError(f"benchmark.image_size must be [H, W], got {size}")
    return config


def _learning_rate(node: DictConfig) -> float:
    return float(node.get("base_learning_rate", 1e-4))


def build_vqgan(config: DictConfig) -> Any:
    """Stage 1 with its training loss; the discriminator is active from the first step."""
    node = OmegaConf.create(to_container(config.vqgan))
    node.params.ckpt_path = None
    model = instantiate_from_config(node)
    if getattr(model.loss, "discriminator_iter_start", 0) != 0:
        model.loss.discriminator_iter_start = 0  # the benchmark times the GAN phase
    model.learning_rate = _learning_rate(config.vqgan)
    return model


def _without_first_stage_checkpoint(params: DictConfig) -> DictConfig:
    params = OmegaConf.create(to_container(params))
    if "first_stage_config" in params and "params" in params.first_stage_config:
        params.first_stage_config.params.ckpt_path = None
    return params


def build_ldm(config: DictConfig) -> Any:
    """The stage-2 LatentDiffusion, its first stage built from config with random weights."""
    node = OmegaConf.create({"target": config.ldm.target,
                             "params": _without_first_stage_checkpoint(config.ldm.params)})
    node.params.ckpt_path = None
    model = instantiate_from_config(node)
    model.learning_rate = _learning_rate(config.ldm)
    return model


def lapt_node(config: DictConfig) -> DictConfig:
    """The post-training model node: ``lapt.params`` merged over ``ldm.params``."""
    params = OmegaConf.merge(_without_first_stage_checkpoint(config.ldm.params), config.lapt.get("params", {}))
    return OmegaConf.create({"target": config.lapt.target, "params": to_container(params)})


def build_lapt(config: DictConfig) -> Any:
    """The post-training model with random weights (no stage-2 checkpoint: see the module docstring)."""
    node = lapt_node(config)
    node.params.ckpt_path = None
    model = instantiate_from_config(node)
    model.learning_rate = _learning_rate(config.lapt)
    return model


def latent_size(config: DictConfig) -> tuple[int, int]:
    """(h, w) of the latent: the image size over the first stage's downsampling factor."""
    ddconfig = config.ldm.params.first_stage_config.params.ddconfig
    factor = 2 ** (len(ddconfig.ch_mult) - 1)
    h, w = (int(s) for s in config.benchmark.image_size)
    if h % factor or w % factor:
        raise ConfigError(f"benchmark.image_size {[h, w]} is not divisible by the first stage's factor {factor}")
    return h // factor, w // factor
