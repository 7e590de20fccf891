"""The benchmark configs hold the benchmark sizes, and paper.yaml stays the training configs' architecture."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ldm.benchmark.models import lapt_node, latent_size, load_benchmark_config

ROOT = Path(__file__).resolve().parents[1]
# what decides cost; switches (checkpointing, attention implementation, ...) may differ
ARCHITECTURE_UNET = ("in_channels", "out_channels", "model_channels", "attention_resolutions", "num_res_blocks",
                     "channel_mult", "num_head_channels")
ARCHITECTURE_AE = ("z_channels", "in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks", "attn_resolutions",
                   "resolution")


def _load(name: str):
    return load_benchmark_config(ROOT / "configs" / "benchmark" / name)


def test_small_config_has_the_issue_sizes():
    c = _load("small.yaml")
    assert c.benchmark.batch_size == 4 and list(c.benchmark.image_size) == [96, 112]
    assert latent_size(c) == (24, 28)
    dd = c.vqgan.params.ddconfig
    assert (dd.ch, list(dd.ch_mult), dd.num_res_blocks, list(dd.attn_resolutions)) == (32, [1, 2, 4], 1, [])
    assert (c.vqgan.params.n_embed, c.vqgan.params.embed_dim) == (8192, 3)
    unet = c.ldm.params.unet_config.params
    assert (unet.model_channels, list(unet.channel_mult), unet.num_res_blocks, list(unet.attention_resolutions),
            unet.num_head_channels, unet.in_channels, unet.out_channels) == (32, [1, 2, 4], 1, [2, 4], 8, 18, 3)
    rescaler = c.ldm.params.cond_stage_config.params
    assert (rescaler.n_stages, rescaler.in_channels, rescaler.out_channels) == (2, 15, 15)
    assert OmegaConf.to_container(c.ldm.params.first_stage_config.params.ddconfig) == OmegaConf.to_container(dd)
    assert c.benchmark.targets.max_lapt_over_ldm == 2.5


@pytest.mark.parametrize("name", ["small.yaml", "paper.yaml"])
def test_post_training_shares_the_stage2_architecture(name):
    c = _load(name)
    lapt = lapt_node(c).params
    assert OmegaConf.to_container(lapt.unet_config) == OmegaConf.to_container(c.ldm.params.unet_config)
    assert lapt.first_stage_config.params.ckpt_path is None
    assert (lapt.lambda_image, lapt.lambda_lesion) == (0.01, 0.02)


def test_paper_config_is_the_training_configs_architecture():
    c = _load("paper.yaml")
    ldm = OmegaConf.load(ROOT / "configs" / "latent-diffusion" / "ldm.yaml").model.params
    lapt = OmegaConf.load(ROOT / "configs" / "latent-diffusion" / "ldm_lapt.yaml").model.params
    vqgan = OmegaConf.load(ROOT / "configs" / "autoencoder" / "VQGAN.yaml").model.params
    for training in (ldm, lapt):
        for key in ARCHITECTURE_UNET:
            assert c.ldm.params.unet_config.params[key] == training.unet_config.params[key], key
        for key in ARCHITECTURE_AE:
            assert c.ldm.params.first_stage_config.params.ddconfig[key] == \
                training.first_stage_config.params.ddconfig[key], key
        for key in ("timesteps", "linear_start", "linear_end", "image_size", "cond_stage_config"):
            assert OmegaConf.to_container(OmegaConf.create({"v": c.ldm.params[key]})) == \
                OmegaConf.to_container(OmegaConf.create({"v": training[key]})), key
    for key in ARCHITECTURE_AE:
        assert c.vqgan.params.ddconfig[key] == vqgan.ddconfig[key], key
    assert (c.vqgan.params.n_embed, c.vqgan.params.embed_dim) == (vqgan.n_embed, vqgan.embed_dim)
    assert c.benchmark.batch_size == 48 and latent_size(c) == (48, 56)
