"""Clipping x0_hat (``clip_x0``): the box is the first stage's codebook, every x0_hat a sampler uses
lies in it, DDIM steps with the eps that the clipped x0_hat implies, a box that clips nothing changes
nothing, and a model without a box is refused by name."""

import re

import numpy as np
import pytest
import torch

from ldm.samplers import make_sampler, with_sampler_params
from ldm.samplers.ddim import DDIMSampler
from ldm.util import ConfigError
from tests.helpers.lapt_models import build, make_batch, stage2_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build(stage2_config(use_ema=False, scale_factor=0.8))
    g = torch.Generator().manual_seed(3)
    for p in m.model.diffusion_model.out.parameters():  # a zero-initialised output would predict eps = 0
        p.data.copy_(0.5 * torch.randn(p.shape, generator=g))
    return m.eval()


@pytest.fixture(scope="module")
def cond(model):
    return model.get_learned_conditioning(make_batch(b=2, lesion_slices=(0,))["ctp"])


def test_the_box_is_scale_factor_times_the_codebook_range(model):
    lo, hi = model.denoised_range()
    codes = model.first_stage_model.quantize.embedding.weight.detach()
    torch.testing.assert_close(lo.flatten(), 0.8 * codes.min(0).values)
    torch.testing.assert_close(hi.flatten(), 0.8 * codes.max(0).values)
    assert lo.shape == (1, codes.shape[1], 1, 1)


@pytest.mark.parametrize("name", ["ddim", "dpmsolver++"])
def test_every_x0_hat_lies_in_the_box_and_unclipped_runs_leave_it(model, cond, name):
    lo, hi = model.denoised_range()
    x_T = 3.0 * torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    outside = []
    for clip in (False, True):
        sampler = make_sampler(with_sampler_params(name, clip_x0=clip), model)
        _, inter = sampler.sample(6, 2, (3, 8, 8), cond, x_T=x_T, verbose=False, log_every_t=1)
        x0s = torch.stack(inter["pred_x0"][1:])
        outside.append(((x0s < lo - 1e-6) | (x0s > hi + 1e-6)).float().mean().item())
    assert outside[0] > 0.05 and outside[1] == 0.0  # the test model's x0_hat leaves the box; clipped, never


@pytest.mark.parametrize("name", ["ddim", "dpmsolver++"])
def test_a_box_that_clips_nothing_changes_nothing(model, cond, name, monkeypatch):
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    plain, _ = make_sampler(name, model).sample(5, 2, (3, 8, 8), cond, x_T=x_T, verbose=False)
    monkeypatch.setattr(model, "denoised_range", lambda: (torch.tensor(-1e6), torch.tensor(1e6)))
    wide, _ = make_sampler(with_sampler_params(name, clip_x0=True), model).sample(5, 2, (3, 8, 8), cond, x_T=x_T,
                                                                                   verbose=False)
    torch.testing.assert_close(wide, plain, rtol=1e-5, atol=1e-5)


def test_one_ddim_step_by_hand(model, cond):
    """x_s = sqrt(a_s) clip(x0_hat) + sqrt(1 - a_s) eps', eps' = (x_t - sqrt(a_t) clip(x0_hat)) / sqrt(1 - a_t)."""
    lo, hi = model.denoised_range()
    sampler = make_sampler(with_sampler_params("ddim", clip_x0=True), model)
    sampler.make_schedule(4)
    x = 2.0 * torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    index = 3  # the first step visited
    t = torch.full((2,), int(sampler.ddim_timesteps[index]), dtype=torch.long)
    x_prev, pred_x0 = sampler.p_sample_ddim(x, cond, t, index)
    a_t, a_s = float(sampler.ddim_alphas[index]), float(sampler.ddim_alphas_prev[index])
    eps = model.apply_model(x, t, cond)
    x0 = torch.maximum(torch.minimum((x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t), hi), lo)
    eps_clipped = (x - np.sqrt(a_t) * x0) / np.sqrt(1 - a_t)
    torch.testing.assert_close(pred_x0, x0)
    torch.testing.assert_close(x_prev, np.sqrt(a_s) * x0 + np.sqrt(1 - a_s) * eps_clipped, rtol=1e-5, atol=1e-5)


def test_a_model_without_a_box_is_refused_by_name(model, monkeypatch):
    monkeypatch.setattr(model, "denoised_range", lambda: None)
    for name in ("ddim", "dpmsolver++"):
        with pytest.raises(ConfigError, match=re.escape(f"sampler {name!r} with clip_x0: ") + ".*no range to clip x0_hat"):
            make_sampler(with_sampler_params(name, clip_x0=True), model)
    assert isinstance(make_sampler("ddim", model), DDIMSampler)  # without clip_x0, nothing is asked of the model


def test_the_command_line_flag_reaches_the_sampler_params():
    from ldm.inference.sampling_options import sampling_parser

    parser = sampling_parser()
    assert parser.parse_args(["-r", "run"]).clip_x0 is None
    assert parser.parse_args(["-r", "run", "--clip_x0"]).clip_x0 is True
    assert parser.parse_args(["-r", "run", "--no-clip_x0"]).clip_x0 is False
    node = with_sampler_params({"target": "ldm.samplers.ddim.DDIMSampler", "params": {"schedule": "linear"}},
                               clip_x0=True)
    assert node == {"target": "ldm.samplers.ddim.DDIMSampler", "params": {"schedule": "linear", "clip_x0": True}}
