"""A tiny latent Brownian bridge (cBBDM) and batch for CPU tests: 16 x 16 images, latent 3 x 4 x 4, T = 20."""
from __future__ import annotations

import torch

from ldm.models.diffusion.bbdm import LatentBrownianBridge
from tests.helpers.vqgan_models import tiny_ddconfig

IMAGE, LATENT, T = 16, 4, 20


def tiny_bridge_params(**overrides) -> dict:
    """A cBBDM small enough for CPU tests: 16 x 16 images, latent 3 x 4 x 4, T = 20."""
    params = dict(
        first_stage_config={"target": "ldm.models.autoencoder.VQModelInterface",
                            "params": {"embed_dim": 3, "n_embed": 16, "ddconfig": tiny_ddconfig(resolution=IMAGE),
                                       "lossconfig": {"target": "torch.nn.Identity"}}},
        cond_stage_config={"target": "ldm.modules.encoders.modules.SpatialRescaler",
                           "params": {"n_stages": 2, "in_channels": 15, "out_channels": 15, "bias": False}},
        unet_config={"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                     "params": {"image_size": LATENT, "in_channels": 18, "out_channels": 3, "model_channels": 32,
                                "num_res_blocks": 1, "attention_resolutions": [], "channel_mult": [1, 1],
                                "num_heads": 1}},
        source_stage_config={"target": "torch.nn.Conv2d",
                             "params": {"in_channels": 15, "out_channels": 3, "kernel_size": 1}},
        timesteps=T, image_size=LATENT, sample_steps=5, log_ddim_steps=3, scale_factor=0.8,
    )
    params.update(overrides)
    return params


def tiny_bridge(cls=LatentBrownianBridge, seed: int = 0, **overrides) -> LatentBrownianBridge:
    torch.manual_seed(seed)
    model = cls(**tiny_bridge_params(**overrides))
    # the UNet's last convolution starts at zero (CompVis): give it weights so outputs are not trivially 0
    torch.nn.init.normal_(model.model.diffusion_model.out[-1].weight, std=0.1)
    model.first_stage_model.quantize.embedding.weight.data.normal_()
    if model.use_ema:
        model.model_ema.reset_to(model.model)
    return model


def tiny_batch(b: int = 2, seed: int = 1, lesion: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(b, 1, IMAGE, IMAGE)
    mask[:, :, 2:14, 3:13] = 1
    les = torch.zeros(b, 1, IMAGE, IMAGE)
    if lesion:
        les[0, :, 5:8, 6:9] = 1
    mri = (torch.rand(b, 2, IMAGE, IMAGE, generator=g) * 2 - 1) * mask + (mask - 1)
    ctp = (torch.rand(b, 15, IMAGE, IMAGE, generator=g) * 2 - 1) * mask + (mask - 1)
    return {"mri": mri, "ctp": ctp, "mask": mask, "lesion": les, "patient_id": ["p"] * b, "slice_index": list(range(b))}
