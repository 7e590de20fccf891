"""The cBBDM / cBBDM-PT configs: the paper-scale settings (paper Table 3), and the demo configs build and train."""
from __future__ import annotations

import inspect

import pytest
import torch
from omegaconf import OmegaConf

from ldm.models.diffusion.bbdm import LatentBrownianBridge
from ldm.models.diffusion.bbdm_lapt import LesionAwareBrownianBridge
from ldm.util import accepted_keywords
from ldm.util import instantiate_from_config


def _load(repo_root, name):
    return OmegaConf.to_container(OmegaConf.load(repo_root / name), resolve=True)


def test_paper_scale_cbbdm_settings(repo_root):
    cfg = _load(repo_root, "configs/bbdm/cbbdm.yaml")
    ldm = _load(repo_root, "configs/latent-diffusion/ldm.yaml")
    assert cfg["model"]["target"] == "ldm.models.diffusion.bbdm.LatentBrownianBridge"
    p = cfg["model"]["params"]
    assert (p["timesteps"], p["mt_schedule"], p["m_min"], p["m_max"], p["max_var"]) == (1000, "linear", 0.001, 0.999, 1.0)
    assert (p["objective"], p["sample_steps"], p["concat_condition"]) == ("grad", 200, True)
    # the cLDM's UNet widths (in_channels 3 + 15), rescaler and first stage
    assert p["unet_config"] == ldm["model"]["params"]["unet_config"]
    assert p["unet_config"]["params"]["in_channels"] == 3 + 15
    assert p["cond_stage_config"] == ldm["model"]["params"]["cond_stage_config"]
    assert p["first_stage_config"] == ldm["model"]["params"]["first_stage_config"]
    assert p["source_stage_config"]["params"] == {"in_channels": 15, "out_channels": 3, "kernel_size": 1}
    inspect.signature(LatentBrownianBridge).bind(**p)  # every key is a parameter of the model


def test_paper_scale_cbbdm_pt_settings(repo_root):
    cfg = _load(repo_root, "configs/bbdm/cbbdm_pt.yaml")
    base = _load(repo_root, "configs/bbdm/cbbdm.yaml")["model"]["params"]
    assert cfg["model"]["target"] == "ldm.models.diffusion.bbdm_lapt.LesionAwareBrownianBridge"
    p = cfg["model"]["params"]
    assert (p["lambda_image"], p["lambda_lesion"], p["use_ema"]) == (0.01, 0.02, False)
    assert p["ckpt_path"] and p["first_stage_config"]["params"]["ckpt_path"] is None
    for key in ("timesteps", "mt_schedule", "m_min", "m_max", "max_var", "objective", "unet_config",
                "cond_stage_config", "source_stage_config", "scale_factor"):
        assert p[key] == base[key], key
    assert p["first_stage_config"]["params"]["ddconfig"] == base["first_stage_config"]["params"]["ddconfig"]
    assert set(p) <= accepted_keywords(LesionAwareBrownianBridge)  # every key is a parameter of the model
    assert cfg["data"]["params"]["batch_size"] == 6
    assert cfg["lightning"]["callbacks"]["early_stopping"]["params"]["patience"] == 50


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cfg = _load(root, "configs/demo/cbbdm.yaml")["model"]
    cfg["params"]["first_stage_config"]["params"]["ckpt_path"] = None
    torch.manual_seed(0)
    bridge = instantiate_from_config(cfg)
    path = tmp_path_factory.mktemp("demo") / "cbbdm.ckpt"
    torch.save({"state_dict": bridge.state_dict()}, path)
    pt_cfg = _load(root, "configs/demo/cbbdm_pt.yaml")["model"]
    pt_cfg["params"]["ckpt_path"] = str(path)
    return bridge, instantiate_from_config(pt_cfg)


def test_demo_configs_build_and_post_training_starts_from_the_bridge(demo_models):
    bridge, pt = demo_models
    # the reference's post-training: the bridge's training (raw) weights, the reconstruction as target
    assert pt.lambda_image == 0.01 and pt.lambda_lesion == 0.02 and pt.init_weights_used == "raw"
    assert pt.image_objective.image_target == "reconstruction"
    for name, p in bridge.model.named_parameters():
        assert torch.equal(dict(pt.model.named_parameters())[name], p)
    b = 1
    mask = torch.zeros(b, 1, 64, 64)
    mask[..., 8:56, 12:52] = 1
    lesion = torch.zeros_like(mask)
    lesion[..., 20:26, 20:30] = 1
    batch = {"mri": torch.rand(b, 2, 64, 64) * 2 * mask - 1, "ctp": torch.rand(b, 15, 64, 64) * 2 * mask - 1,
             "mask": mask, "lesion": lesion}
    z, ctp = pt.get_input(batch, "mri")
    assert z.shape == (1, 3, 16, 16)
    loss, loss_dict = pt(z, ctp, **pt.get_loss_kwargs(batch))
    assert torch.isfinite(loss) and loss_dict["train/loss_lesion"] > 0
    assert pt.sample_latents(pt.get_learned_conditioning(ctp), steps=2).shape == (1, 3, 16, 16)
