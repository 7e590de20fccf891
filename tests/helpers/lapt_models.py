"""Tiny stage-2 / post-training models and batches shared by the LAPT tests (real classes, CPU-sized)."""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from ldm.util import instantiate_from_config

IMAGE = 32          # slices 32 x 32 -> latents 3 x 8 x 8 (f = 4)
T = 50
LINEAR = (0.0015, 0.0195)


def stage2_config(use_ema: bool = True, scale_factor: float = 0.8) -> dict:
    return {
        "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
        "params": {
            "timesteps": T, "linear_start": LINEAR[0], "linear_end": LINEAR[1], "image_size": [8, 8],
            "channels": 3, "cond_stage_trainable": True, "conditioning_key": "concat", "use_ema": use_ema,
            "first_stage_key": "mri", "cond_stage_key": "ctp", "scale_factor": scale_factor,
            "monitor": "val/loss_simple",
            "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
                "image_size": [8, 8], "in_channels": 18, "out_channels": 3, "model_channels": 32,
                "attention_resolutions": [2], "num_res_blocks": 1, "channel_mult": [1, 1],
                "num_head_channels": 32}},
            "first_stage_config": {"target": "ldm.models.autoencoder.VQModelInterface", "params": {
                "embed_dim": 3, "n_embed": 32, "image_key": "mri",
                "ddconfig": {"double_z": False, "z_channels": 3, "resolution": IMAGE, "in_channels": 2,
                             "out_ch": 2, "ch": 8, "ch_mult": [1, 2, 2], "num_res_blocks": 1,
                             "attn_resolutions": [], "dropout": 0.0, "norm_groups": 4},
                "lossconfig": {"target": "torch.nn.Identity"}}},
            "cond_stage_config": {"target": "ldm.modules.encoders.modules.SpatialRescaler", "params": {
                "n_stages": 2, "in_channels": 15, "out_channels": 15, "bias": False}},
        },
    }


def lapt_config(ckpt_path: str | None = None, **params) -> dict:
    cfg = stage2_config(use_ema=False)
    cfg["target"] = "ldm.models.diffusion.lapt.LesionAwareLatentDiffusion"
    cfg["params"].update({"ckpt_path": ckpt_path, "lambda_image": 0.01, "lambda_lesion": 0.02})
    cfg["params"].update(params)
    return cfg


def build(cfg: dict):
    model = instantiate_from_config(copy.deepcopy(cfg))
    # a spread-out codebook, as after training, so that quantisation matters
    g = torch.Generator().manual_seed(7)
    model.first_stage_model.quantize.embedding.weight.data.copy_(torch.randn(32, 3, generator=g))
    return model


def make_batch(b: int = 3, lesion_slices: tuple[int, ...] = (0, 2), seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(IMAGE), torch.arange(IMAGE), indexing="ij")
    brain = (((yy - 15.5) / 13) ** 2 + ((xx - 15.5) / 11) ** 2 <= 1).float()[None, None].repeat(b, 1, 1, 1)
    mri = (torch.rand(b, 2, IMAGE, IMAGE, generator=g) * 1.6 - 0.8) * brain + (brain - 1)
    ctp = (torch.rand(b, 15, IMAGE, IMAGE, generator=g) * 2 - 1) * brain + (brain - 1)
    lesion = torch.zeros(b, 1, IMAGE, IMAGE)
    for i in lesion_slices:
        lesion[i, 0, 10:16, 12 + i:17 + i] = 1.0
    return {"ctp": ctp, "mri": mri, "mask": brain, "lesion": lesion * brain,
            "patient_id": [f"p{i}" for i in range(b)], "slice_index": torch.arange(b)}


def save_stage2_checkpoint(path: Path, with_ema: bool = True) -> tuple[Path, dict]:
    """A stage-2 checkpoint whose EMA weights differ visibly from its raw weights."""
    torch.manual_seed(11)
    model = build(stage2_config(use_ema=True))
    with torch.no_grad():
        for p in model.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        model.cond_stage_model.channel_mapper.weight.mul_(1.5)
        for name, buf in model.model_ema.named_buffers():
            if name not in ("decay", "num_updates"):
                buf.add_(0.5)  # EMA = something else than the raw weights
    sd = model.state_dict()
    if not with_ema:
        sd = {k: v for k, v in sd.items() if not k.startswith("model_ema.")}
    torch.save({"state_dict": sd, "global_step": 100}, path)
    return path, sd
