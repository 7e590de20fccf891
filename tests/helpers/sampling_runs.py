"""A tiny conditional LatentDiffusion run on disk (config, checkpoint) for the sampling tests."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ldm.util import instantiate_from_config
from tests.helpers.raw_patients import SIZE


def tiny_config(data_root: Path) -> dict:
    return {
        "model": {
            "base_learning_rate": 1e-4,
            "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
            "params": {
                "timesteps": 20, "linear_start": 0.0015, "linear_end": 0.0195, "image_size": [8, 8],
                "channels": 3, "cond_stage_trainable": True, "conditioning_key": "concat", "use_ema": True,
                "first_stage_key": "mri", "cond_stage_key": "ctp", "monitor": "val/loss_simple_ema",
                "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
                    "image_size": [8, 8], "in_channels": 18, "out_channels": 3, "model_channels": 32,
                    "attention_resolutions": [2], "num_res_blocks": 1, "channel_mult": [1, 2],
                    "num_head_channels": 16}},
                "first_stage_config": {"target": "ldm.models.autoencoder.VQModelInterface", "params": {
                    "embed_dim": 3, "n_embed": 16,
                    "ckpt_path": "/nonexistent/stage1/last.ckpt",  # the LDM checkpoint has these weights
                    "ddconfig": {"double_z": False, "z_channels": 3, "resolution": SIZE[0], "in_channels": 2,
                                 "out_ch": 2, "ch": 32, "ch_mult": [1, 1, 1], "num_res_blocks": 1,
                                 "attn_resolutions": [], "dropout": 0.0},
                    "lossconfig": {"target": "torch.nn.Identity"}}},
                "cond_stage_config": {"target": "ldm.modules.encoders.modules.SpatialRescaler", "params": {
                    "n_stages": 2, "in_channels": 15, "out_channels": 15, "bias": False}},
            },
        },
        "data": {"target": "ldm.data.training.datamodule.DataModuleFromConfig", "params": {
            "batch_size": 2, "num_workers": 0,
            "train": {"target": "ldm.data.training.datasets.CTPMRISlices", "params": {"data_root": str(data_root)}},
            "test": {"target": "ldm.data.training.datasets.CTPMRISlices", "params": {"data_root": str(data_root)}}}},
    }


def build_model(config: dict):
    model_cfg = copy.deepcopy(config["model"])
    model_cfg["params"]["first_stage_config"]["params"]["ckpt_path"] = None
    return instantiate_from_config(model_cfg)


def save_run(run_dir: Path, config: dict, state_dict: dict) -> Path:
    (run_dir / "configs").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    OmegaConf.save(OmegaConf.create(config), run_dir / "configs" / "2025-01-01T00-00-00-project.yaml")
    torch.save({"state_dict": state_dict, "global_step": 0}, run_dir / "checkpoints" / "last.ckpt")
    return run_dir
