"""The latent Brownian bridge model (cBBDM) on a tiny first stage and UNet: loss by hand, marginals
through the model, gradients, sampling interface, checkpoints, images."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ldm.models.diffusion.bbdm import LatentBrownianBridge
from ldm.inference.slice_sampler import make_slice_sampler
from ldm.samplers.bridge import BridgeSampler
from ldm.util import ConfigError
from tests.helpers.bridge_models import IMAGE, LATENT, T, tiny_batch, tiny_bridge, tiny_bridge_params  # noqa: F401

def test_state_dict_keys_are_compvis_like():
    keys = tiny_bridge().state_dict().keys()
    for prefix in ("model.diffusion_model.", "first_stage_model.encoder.", "first_stage_model.decoder.",
                   "model_ema.", "cond_stage_model.channel_mapper.weight", "source_stage_model.weight"):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert "m_t" in keys and "delta_t" in keys and "betas" not in keys


def test_schedule_buffers_and_marginals_through_the_model():
    model = tiny_bridge()
    m = np.linspace(0.001, 0.999, T)
    assert model.num_timesteps == T
    torch.testing.assert_close(model.m_t, torch.tensor([0.0, *m], dtype=torch.float32))
    x0, y, eps = torch.randn(3, 2, 3, LATENT, LATENT)
    assert torch.equal(model.q_sample(x0, torch.zeros(2, dtype=torch.long), eps, y=y), x0)
    x_T = model.q_sample(x0, torch.full((2,), T), eps, y=y)
    torch.testing.assert_close(x_T, 0.001 * x0 + 0.999 * y + math.sqrt(2 * (0.999 - 0.999 ** 2)) * eps)


@pytest.mark.parametrize("objective,loss_type", [("grad", "l1"), ("noise", "l2")])
def test_loss_equals_hand_computation(objective, loss_type):
    model = tiny_bridge(objective=objective, loss_type=loss_type)
    batch = tiny_batch()
    z, ctp = model.get_input(batch, "mri")  # cond stage trainable: the raw CTP comes back
    assert torch.equal(ctp, batch["ctp"])
    t = torch.tensor([3, 17])
    noise = torch.randn_like(z)
    loss, loss_dict = model(z, ctp, t=t, noise=noise)

    with torch.no_grad():
        x0 = 0.8 * model.first_stage_model.quant_conv(model.first_stage_model.encoder(batch["mri"]))
        c = F.conv2d(F.interpolate(F.interpolate(batch["ctp"], scale_factor=0.5, mode="bilinear"), scale_factor=0.5,
                                   mode="bilinear"), model.cond_stage_model.channel_mapper.weight)
        y = F.conv2d(c, model.source_stage_model.weight, model.source_stage_model.bias)
        m = torch.tensor(np.linspace(0.001, 0.999, T)[t.numpy() - 1], dtype=torch.float32).reshape(-1, 1, 1, 1)
        d = 2 * (m - m ** 2)
        x_t = (1 - m) * x0 + m * y + d.sqrt() * noise
        out = model.model.diffusion_model(torch.cat([x_t, c], dim=1), t)
        target = m * (y - x0) + d.sqrt() * noise if objective == "grad" else noise
        expected = (out - target).abs().mean() if loss_type == "l1" else (out - target).pow(2).mean()
    torch.testing.assert_close(z, x0)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert set(loss_dict) == {"train/loss_simple", "train/loss"}


def test_source_loss_adds_weighted_regression_of_y():
    model = tiny_bridge(source_loss_weight=0.5)
    z, ctp = model.get_input(tiny_batch(), "mri")
    t, noise = torch.tensor([4, 9]), torch.randn_like(z)
    loss, loss_dict = model(z, ctp, t=t, noise=noise)
    y = model.get_source(model.get_learned_conditioning(ctp))
    torch.testing.assert_close(loss_dict["train/loss_source"], (y - z).pow(2).mean())
    torch.testing.assert_close(loss, loss_dict["train/loss_simple"] + 0.5 * loss_dict["train/loss_source"])


def test_gradients_reach_unet_rescaler_and_source_but_not_the_first_stage():
    model = tiny_bridge()
    model.train()
    assert not model.first_stage_model.training
    loss, _ = model.shared_step(tiny_batch())
    loss.backward()
    for name, module in (("unet", model.model), ("rescaler", model.cond_stage_model),
                         ("source", model.source_stage_model)):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), name
    assert all(p.grad is None for p in model.first_stage_model.parameters())
    trainable = {id(p) for p in model.trainable_parameters()}
    assert all(id(p) in trainable for p in model.source_stage_model.parameters())


def test_timesteps_are_drawn_from_1_to_T():
    model = tiny_bridge()
    t = model.sample_timesteps(4000, generator=torch.Generator().manual_seed(0))
    assert t.min() == 1 and t.max() == T


def test_plain_bbdm_denoiser_sees_only_the_latent():
    unet = tiny_bridge_params()["unet_config"]
    unet = {**unet, "params": {**unet["params"], "in_channels": 3}}
    model = tiny_bridge(concat_condition=False, unet_config=unet)
    z, ctp = model.get_input(tiny_batch(), "mri")
    loss, _ = model(z, ctp)
    assert torch.isfinite(loss)


def test_sample_latents_is_the_bridge_sampler_from_y():
    model = tiny_bridge()
    c = model.get_learned_conditioning(tiny_batch()["ctp"])
    out = model.sample_latents(c, shape=(3, LATENT, LATENT), steps=4, eta=0.0)
    ref, _ = BridgeSampler(model).sample(4, 2, (3, LATENT, LATENT), c, eta=0.0, verbose=False)
    assert out.shape == (2, 3, LATENT, LATENT)
    torch.testing.assert_close(out, ref)
    # eta from the config (1.0) with a seeded generator is reproducible
    a = model.sample_latents(c, generator=torch.Generator().manual_seed(5))
    b = model.sample_latents(c, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, out)
    with pytest.raises(ValueError, match=r"\(3, 8, 8\)"):
        model.sample_latents(c, shape=(3, 8, 8))


def test_bad_source_map_names_the_shapes():
    model = tiny_bridge(source_stage_config={"target": "torch.nn.Conv2d",
                                             "params": {"in_channels": 15, "out_channels": 4, "kernel_size": 1}})
    z, ctp = model.get_input(tiny_batch(), "mri")
    with pytest.raises(ValueError, match=r"\(2, 4, 4, 4\).*\(2, 3, 4, 4\)"):
        model(z, ctp)


def test_config_errors():
    with pytest.raises(ConfigError, match="objective"):
        tiny_bridge(objective="eps")
    with pytest.raises(ConfigError, match="sample_steps"):
        tiny_bridge(sample_steps=T + 1)
    with pytest.raises(ConfigError, match="m_max"):
        tiny_bridge(m_max=1.0)


def test_checkpoint_round_trip_and_schedule_check(tmp_path):
    model = tiny_bridge(seed=3)
    path = tmp_path / "bridge.ckpt"
    torch.save({"state_dict": model.state_dict()}, path)
    torch.manual_seed(4)
    loaded = LatentBrownianBridge(**tiny_bridge_params(ckpt_path=str(path)))
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    with pytest.raises(ConfigError, match="another bridge schedule"):
        tiny_bridge(ckpt_path=str(path), m_max=0.99)
    ldm_path = tmp_path / "ldm.ckpt"
    torch.save({"state_dict": {**model.state_dict(), "betas": torch.ones(T)}}, ldm_path)
    with pytest.raises(ConfigError, match="load_only_unet"):
        tiny_bridge(ckpt_path=str(ldm_path))


def test_validation_uses_fixed_timesteps_in_range():
    model = tiny_bridge()
    t, _ = model._validation_noise(0, torch.zeros(64, 3, LATENT, LATENT))
    assert t.min() >= 1 and t.max() <= T


def test_log_images():
    model = tiny_bridge()
    log = model.log_images(tiny_batch(b=3), N=2)
    assert set(log) == {"ctp_mean", "inputs", "reconstruction", "source", "samples"}
    for k, v in log.items():
        assert v.shape[0] == 2 and v.shape[-2:] == (IMAGE, IMAGE), k
    for k in ("source", "samples"):
        assert log[k].min() >= -1 and log[k].max() <= 1, k
    assert log["samples"].shape[1] == 2


def test_a_few_steps_on_a_fixed_batch_lower_the_loss():
    model = tiny_bridge(use_ema=False)
    model.train()
    batch = tiny_batch()
    z, ctp = model.get_input(batch, "mri")
    t, noise = torch.tensor([5, 15]), torch.randn_like(z)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        loss, _ = model(z, ctp, t=t, noise=noise)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


def test_slice_sampler_for_sample_LDM_is_independent_of_the_batching():
    model = tiny_bridge()
    ctp = tiny_batch(b=3)["ctp"]

    def noise_for(indices):
        def noise(shape):
            return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(100 + i))
                                for i in indices])
        return noise

    sampler = make_slice_sampler(model, steps=4, eta=1.0)
    assert sampler.steps == 4 and sampler.name == "bridge"
    assert make_slice_sampler(model, steps=4, eta=None).eta == model.sample_eta
    together = sampler(ctp, noise_for([0, 1, 2]))
    alone = sampler(ctp[2:], noise_for([2]))
    assert together.shape == (3, 2, IMAGE, IMAGE) and together.abs().max() <= 1
    torch.testing.assert_close(together[2:], alone, atol=1e-5, rtol=1e-4)
    # the same per-step noise, handed to the sampler directly, gives the same latents
    c = model.get_learned_conditioning(ctp[2:])
    step_noise = noise_for([2])((4, 3, LATENT, LATENT)).transpose(0, 1)
    latents, _ = BridgeSampler(model).sample(4, 1, None, c, eta=1.0, step_noise=step_noise, verbose=False)
    torch.testing.assert_close(model.decode_first_stage(latents).clamp(-1, 1), alone)
    with pytest.raises(ValueError, match="1..20"):
        make_slice_sampler(model, steps=21, eta=None)
