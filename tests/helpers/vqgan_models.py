"""Tiny VQGAN configs and models for CPU tests (CompVis-shaped, f = 4)."""
from __future__ import annotations

from taming.models.vqgan import VQModel

LOSS_TARGET = "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"


def tiny_ddconfig(resolution: int = 32, **overrides) -> dict:
    """A CompVis-shaped ddconfig small enough for CPU tests (f = 4)."""
    cfg = dict(double_z=False, z_channels=3, resolution=resolution, in_channels=2, out_ch=2, ch=8,
               ch_mult=[1, 2, 4], num_res_blocks=1, attn_resolutions=[], dropout=0.0, norm_groups=4)
    cfg.update(overrides)
    return cfg


def tiny_lossconfig(disc_start: int = 10_000, **overrides) -> dict:
    params = dict(disc_start=disc_start, disc_in_channels=2, perceptual_weight=0.0, disc_ndf=8,
                  disc_weight=0.2, codebook_weight=1.0)
    params.update(overrides)
    return {"target": LOSS_TARGET, "params": params}


def tiny_vqmodel(n_embed: int = 32, **kwargs) -> VQModel:
    ddconfig = kwargs.pop("ddconfig", tiny_ddconfig())
    lossconfig = kwargs.pop("lossconfig", tiny_lossconfig())
    return VQModel(ddconfig, lossconfig, n_embed=n_embed, embed_dim=3, **kwargs)
