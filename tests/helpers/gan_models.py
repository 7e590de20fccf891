"""Tiny GAN baselines (a few thousand weights) and their configs for the GAN tests."""
from __future__ import annotations

import copy

import torch

from ldm.util import instantiate_from_config

UNET = {"target": "ldm.models.gan.unet_generator.UNetGenerator",
        "params": {"in_channels": 15, "out_channels": 2, "ngf": 4, "num_downs": 5, "norm": "batch", "dropout": 0.5}}
RESNET = {"target": "ldm.models.gan.resnet_generator.ResnetGenerator",
          "params": {"in_channels": 15, "out_channels": 2, "ngf": 4, "n_blocks": 2}}
INVERSE_RESNET = {"target": "ldm.models.gan.resnet_generator.ResnetGenerator",
                  "params": {"in_channels": 2, "out_channels": 15, "ngf": 4, "n_blocks": 1}}


def patchgan(in_channels: int, instance: bool = False) -> dict:
    target = "InstanceNormPatchGAN" if instance else "PatchGAN"
    return {"target": f"ldm.models.gan.patchgan.{target}", "params": {"in_channels": in_channels, "ndf": 4, "n_layers": 3}}


def model_config(kind: str, image_size=(32, 32), **params) -> dict:
    """``{target, params}`` of a tiny ``pix2pix``, ``cyclegan`` or ``paired_cyclegan``."""
    if kind == "pix2pix":
        cfg = {"target": "ldm.models.gan.pix2pix.Pix2Pix",
               "params": {"generator_config": UNET, "discriminator_config": patchgan(17)}}
    elif kind in ("cyclegan", "paired_cyclegan"):
        cfg = {"target": "ldm.models.gan.cycle_gan.CycleGAN",
               "params": {"generator_config": RESNET, "inverse_generator_config": INVERSE_RESNET,
                          "discriminator_config": patchgan(2, True), "inverse_discriminator_config": patchgan(15, True)}}
        if kind == "paired_cyclegan":
            cfg["target"] = "ldm.models.gan.paired_cycle_gan.PairedCycleGAN"
            cfg["params"]["pair_discriminator_config"] = patchgan(17, True)
    else:
        raise ValueError(kind)
    cfg = copy.deepcopy(cfg)
    cfg["params"].update(image_size=list(image_size), **params)
    return cfg


def build(kind: str, seed: int = 0, **params):
    torch.manual_seed(seed)
    return instantiate_from_config(model_config(kind, **params))


def batch(b: int = 2, size=(32, 32), seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"ctp": torch.rand(b, 15, *size, generator=g) * 2 - 1, "mri": torch.rand(b, 2, *size, generator=g) * 2 - 1,
            "has_mri": torch.ones(b, dtype=torch.bool)}
