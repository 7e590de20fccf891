"""The stage-2 configs: the reference settings, consistency with stage 1, and the demo model end to end."""
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ldm.config import apply_overrides
from ldm.util import instantiate_from_config

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs/latent-diffusion/ldm.yaml"
DEMO = ROOT / "configs/demo/ldm.yaml"


def test_paper_config_has_the_reference_settings():
    cfg = OmegaConf.load(PAPER)
    p = cfg.model.params
    assert cfg.model.target == "ldm.models.diffusion.ddpm.LatentDiffusion"
    assert cfg.model.base_learning_rate == 2e-6 and cfg.data.params.batch_size == 48
    assert (p.timesteps, p.linear_start, p.linear_end, p.beta_schedule) == (1000, 0.0015, 0.0195, "linear")
    assert (p.first_stage_key, p.cond_stage_key, p.conditioning_key) == ("mri", "ctp", "concat")
    assert list(p.image_size) == [48, 56] and p.channels == 3 and p.cond_stage_trainable
    assert p.use_ema and p.monitor == "val/loss_simple_ema"
    u = p.unet_config.params
    assert (u.in_channels, u.out_channels, u.model_channels, u.num_res_blocks) == (18, 3, 224, 2)
    assert list(u.channel_mult) == [1, 4, 8] and list(u.attention_resolutions) == [8, 4, 2]
    assert u.num_head_channels == 32
    r = p.cond_stage_config.params
    assert (r.n_stages, r.in_channels, r.out_channels, r.bias, r.method) == (2, 15, 15, False, "bilinear")
    f = p.first_stage_config
    assert f.target == "ldm.models.autoencoder.VQModelInterface" and f.params.ckpt_path
    assert (f.params.n_embed, f.params.embed_dim) == (8192, 3)
    assert f.params.lossconfig.target == "torch.nn.Identity"


def test_first_stage_architectures_match_the_stage1_configs():
    for ldm_cfg, vq_cfg in ((PAPER, ROOT / "configs/autoencoder/VQGAN.yaml"), (DEMO, ROOT / "configs/demo/vqgan.yaml")):
        if not vq_cfg.is_file():
            pytest.skip(f"{vq_cfg} not there yet")
        first = OmegaConf.load(ldm_cfg).model.params.first_stage_config.params
        stage1 = OmegaConf.load(vq_cfg).model.params
        ddconfig = {k: v for k, v in stage1.ddconfig.items() if k != "use_checkpoint"}  # a run-time switch
        assert OmegaConf.to_container(first.ddconfig) == OmegaConf.to_container(OmegaConf.create(ddconfig)), ldm_cfg
        assert (first.n_embed, first.embed_dim) == (stage1.n_embed, stage1.embed_dim), ldm_cfg


def test_rescaler_of_the_paper_config_maps_ctp_onto_the_latent_grid():
    rescaler = instantiate_from_config(OmegaConf.load(PAPER).model.params.cond_stage_config)
    assert rescaler(torch.randn(1, 15, 192, 224)).shape == (1, 15, 48, 56)


def test_demo_config_builds_and_runs_on_64x64_slices():
    cfg = OmegaConf.load(DEMO)
    # the overrides scripts/demo.sh passes must be accepted
    cfg = apply_overrides(cfg, ["model.params.first_stage_config.params.ckpt_path=null",
                                "data.params.train.params.data_root=somewhere", "lightning.trainer.max_steps=3"])
    assert cfg.model.params.unet_config.params.model_channels == 32
    model = instantiate_from_config(cfg.model)
    model.learning_rate = 1e-4
    g = torch.Generator().manual_seed(0)
    batch = {"mri": torch.rand(2, 2, 64, 64, generator=g) * 2 - 1,
             "ctp": torch.rand(2, 15, 64, 64, generator=g) * 2 - 1,
             "lesion": (torch.rand(2, 1, 64, 64, generator=g) > 0.95).float()}  # the demo's L_latent is lesion-weighted
    z, c = model.get_input(batch, "mri", force_c_encode=True)
    assert z.shape == (2, 3, 16, 16) and c.shape == (2, 15, 16, 16)
    loss, _ = model.shared_step(batch)
    loss.backward()
    assert torch.isfinite(loss) and not any(p.grad is not None for p in model.first_stage_model.parameters())


def test_train_script_uses_the_paper_config():
    script = ROOT / "scripts/train_LDM.sh"
    assert os.access(script, os.X_OK)
    text = script.read_text()
    assert "configs/latent-diffusion/ldm.yaml" in text and "main.py" in text
