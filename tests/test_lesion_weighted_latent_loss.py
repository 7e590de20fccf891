"""A lesion-weighted stage 2 (``lesion_weight``): L_latent = sum(w e) / sum(w) per sample with
w = 1 + lesion_weight x the lesion share of each latent pixel, checked by hand; 0 is the paper's
Eq. 4 exactly; the post-training's L_latent is weighted the same way; bad settings are refused."""
import copy

import pytest
import torch

from ldm.util import ConfigError
from tests.helpers.lapt_models import build, lapt_config, make_batch, stage2_config


def with_weight(cfg: dict, w: float) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["params"]["lesion_weight"] = w
    return cfg


def loss_at(model, batch, seed=0):
    torch.manual_seed(seed)
    z, c = model.get_input(batch, model.first_stage_key)
    t = torch.tensor([5, 20, 40])
    noise = torch.randn_like(z)
    c = model.get_learned_conditioning(c)
    kwargs = model.get_loss_kwargs(batch)
    return model.p_losses(z, c, t, noise=noise, **kwargs), (z, c, t, noise)


def test_the_weight_map_is_one_plus_w_times_the_lesion_share_by_hand():
    model = build(with_weight(stage2_config(use_ema=False), 20.0))
    lesion = torch.zeros(1, 1, 32, 32)
    lesion[0, 0, 0:4, 0:2] = 1.0  # half of latent pixel (0, 0) (f = 4)
    lesion[0, 0, 4:8, 4:8] = 1.0  # all of latent pixel (1, 1)
    w = model.latent_weight(lesion, torch.zeros(1, 3, 8, 8))
    expected = torch.ones(1, 1, 8, 8)
    expected[0, 0, 0, 0], expected[0, 0, 1, 1] = 11.0, 21.0
    torch.testing.assert_close(w, expected)
    assert build(stage2_config(use_ema=False)).latent_weight(lesion, torch.zeros(1, 3, 8, 8)) is None


def test_the_loss_is_the_weighted_mean_of_the_squared_error_by_hand():
    torch.manual_seed(0)
    weighted = build(with_weight(stage2_config(use_ema=False), 20.0))
    batch = make_batch(b=3, lesion_slices=(0, 2))
    (loss, logs), (z, c, t, noise) = loss_at(weighted, batch)
    with torch.no_grad():
        x_t = weighted.q_sample(z, t, noise)
        err = (weighted.apply_model(x_t, t, c) - noise).pow(2)
    w = 1.0 + 20.0 * torch.nn.functional.adaptive_avg_pool2d(batch["lesion"], (8, 8))
    per_sample = (err * w).sum(dim=(1, 2, 3)) / w.expand_as(err).sum(dim=(1, 2, 3))
    torch.testing.assert_close(loss, per_sample.mean(), rtol=1e-5, atol=1e-7)
    # the slice without lesion keeps the plain mean
    torch.testing.assert_close(per_sample[1], err[1].mean(), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(per_sample[0], err[0].mean(), rtol=1e-3)


def test_weight_zero_is_the_paper_loss_and_a_lesion_free_batch_is_unchanged():
    plain_cfg = stage2_config(use_ema=False)
    torch.manual_seed(1)
    plain = build(plain_cfg)
    weighted = build(with_weight(plain_cfg, 20.0))
    weighted.load_state_dict(plain.state_dict())
    assert plain.get_loss_kwargs(make_batch()) == {}
    no_lesion = make_batch(b=3, lesion_slices=())
    (a, _), _ = loss_at(plain, no_lesion)
    (b, _), _ = loss_at(weighted, no_lesion)
    torch.testing.assert_close(a, b)
    with_lesion = make_batch(b=3, lesion_slices=(0, 2))
    (a, _), _ = loss_at(plain, with_lesion)
    (b, _), _ = loss_at(weighted, with_lesion)
    assert abs(a.item() - b.item()) > 1e-4 * abs(a.item())


def test_post_training_weights_its_latent_term_the_same_way():
    torch.manual_seed(2)
    stage2 = build(with_weight(stage2_config(use_ema=False), 20.0))
    pt = build(with_weight(lapt_config(lambda_image=0.0, lambda_lesion=0.0), 20.0))
    pt.load_state_dict(stage2.state_dict(), strict=False)
    batch = make_batch(b=3, lesion_slices=(0, 2))
    (a, _), _ = loss_at(stage2, batch)
    (b, logs), _ = loss_at(pt, batch)
    torch.testing.assert_close(b, a)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="lesion_weight must be >= 0"):
        build(with_weight(stage2_config(use_ema=False), -1.0))
    model = build(with_weight(stage2_config(use_ema=False), 5.0))
    batch = make_batch()
    del batch["lesion"]
    with pytest.raises(ValueError, match=r"lesion_weight 5.0 needs batch\['lesion'\]"):
        model.get_loss_kwargs(batch)
