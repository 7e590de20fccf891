"""Checkpoints of earlier versions keep loading: the state-dict names, shapes and dtypes of every
shipped config's model are pinned.

The fingerprints below were computed with the code of commit 8c56172 (before the post-training
was merged into one mixin and the constructors into one way of passing arguments); a change that
renames, reshapes or adds a weight changes them, and checkpoints saved before it would no longer
load with ``strict=True``. If such a change is intended, it needs a conversion for old checkpoints
and a new fingerprint here. The models are built on the meta device (no memory, no init cost).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ldm.util import instantiate_from_config

ROOT = Path(__file__).resolve().parents[1]

# config -> (number of state-dict entries, sha256 prefix of the sorted "name shape dtype" lines)
PINNED = {
    "demo/vqgan": (179, "063eb33543eb7de5"),
    # the demo's stage 2 moved to pixel_unshuffle conditioning (a 15 x 240 rescaler): its own
    # fingerprints; with the paper's bilinear rescaler the old ones hold (below)
    "demo/ldm": (544, "3afd85a738f71e96"),
    "demo/ldm_lapt": (356, "8629e41d7daadb37"),
    "demo/cbbdm": (536, "18eaa7485cb6eb29"),
    "demo/cbbdm_pt": (348, "43c3ba1581385601"),
    "autoencoder/VQGAN": (227, "379ea95e737eb35e"),
    "latent-diffusion/ldm": (772, "86370c7c6aa91ca1"),
    "latent-diffusion/ldm_lapt": (494, "3b3a8439991ab26d"),
    "bbdm/cbbdm": (764, "9c354ff716ad9b2f"),
    "bbdm/cbbdm_pt": (486, "a468c4267aeacef1"),
}


def state_dict_fingerprint(model: torch.nn.Module) -> tuple[int, str]:
    lines = sorted(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in model.state_dict().items())
    return len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


# the demo configs before the move to pixel_unshuffle, as every demo checkpoint of that time was trained
BILINEAR_DEMO = {"demo/ldm": (544, "ef3073e587df6c66"), "demo/ldm_lapt": (356, "57dfd5706d3688c9")}


def build_on_meta(name: str, rescale_method: str | None = None) -> torch.nn.Module:
    cfg = OmegaConf.load(ROOT / "configs" / f"{name}.yaml").model
    if rescale_method is not None:
        cfg.params.cond_stage_config.params.method = rescale_method
    if "ckpt_path" in cfg.params:  # no weights to read: only the names and shapes matter
        cfg.params.ckpt_path = None
    if "first_stage_config" in cfg.params:
        cfg.params.first_stage_config.params.ckpt_path = None
    with torch.device("meta"):
        return instantiate_from_config(cfg)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_state_dict_names_shapes_and_dtypes_are_those_of_earlier_checkpoints(name):
    assert state_dict_fingerprint(build_on_meta(name)) == PINNED[name]


@pytest.mark.parametrize("name", sorted(BILINEAR_DEMO))
def test_demo_checkpoints_of_the_bilinear_rescaler_keep_their_names_and_shapes(name):
    """Runs keep their own config, so an older demo run (bilinear, eps) still loads with it; the code
    must build that model with the same state dict as before."""
    assert state_dict_fingerprint(build_on_meta(name, rescale_method="bilinear")) == BILINEAR_DEMO[name]


def test_fingerprint_notices_a_renamed_weight():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3))
    before = state_dict_fingerprint(model)
    renamed = torch.nn.Sequential()
    renamed.add_module("layer", model[0])
    assert state_dict_fingerprint(renamed)[0] == before[0]
    assert state_dict_fingerprint(renamed) != before
