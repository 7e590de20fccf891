"""DDPM: schedule buffers, the forward process and its inverse (Eqs. 2 and 5), the loss, the EMA."""
import numpy as np
import pytest
import torch

from ldm.models.diffusion.ddpm import DDPM
from ldm.modules.ema import LitEma

T, START, END = 50, 0.0015, 0.0195
UNET = {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
        "params": dict(image_size=4, in_channels=3, out_channels=3, model_channels=32, num_res_blocks=1,
                       attention_resolutions=(), channel_mult=(1,), num_heads=1)}


def make_ddpm(**overrides) -> DDPM:
    params = dict(unet_config=UNET, timesteps=T, linear_start=START, linear_end=END, image_size=4, use_ema=True)
    params.update(overrides)
    return DDPM(**params)


def numpy_schedule():
    betas = np.linspace(START ** 0.5, END ** 0.5, T) ** 2
    abar = np.cumprod(1 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    return betas, abar, abar_prev


def test_schedule_buffers_against_numpy():
    model = make_ddpm()
    betas, abar, abar_prev = numpy_schedule()
    np.testing.assert_allclose(model.betas.numpy(), betas, rtol=1e-6)
    np.testing.assert_allclose(model.alphas_cumprod.numpy(), abar, rtol=1e-6)
    np.testing.assert_allclose(model.alphas_cumprod_prev.numpy(), abar_prev, rtol=1e-6)
    np.testing.assert_allclose(model.posterior_variance.numpy(), betas * (1 - abar_prev) / (1 - abar), rtol=1e-5)
    np.testing.assert_allclose(model.posterior_mean_coef1.numpy(), betas * np.sqrt(abar_prev) / (1 - abar), rtol=1e-5)
    np.testing.assert_allclose(model.posterior_mean_coef2.numpy(),
                               (1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar), rtol=1e-5)
    # CompVis buffer names in the state dict; lvlb_weights and logvar are not saved
    sd = model.state_dict()
    for name in ("betas", "alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_log_variance_clipped"):
        assert name in sd
    assert "lvlb_weights" not in sd and "logvar" not in sd
    assert "logvar" in make_ddpm(learn_logvar=True).state_dict()


def test_q_sample_then_predict_start_from_noise_recovers_x0():
    model = make_ddpm()
    x0, noise = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)
    t = torch.tensor([0, 1, 10, 25, 48, 49])
    x_t = model.q_sample(x0, t, noise)
    _, abar, _ = numpy_schedule()
    a = torch.tensor(abar[t.numpy()], dtype=torch.float32).view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * noise)  # Eq. 2
    # Eq. 5 inverts it; at t = T-1 the error is amplified by 1 / sqrt(abar_T) ~ 3
    torch.testing.assert_close(model.predict_start_from_noise(x_t, t, noise), x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.predict_start(x_t, t, noise), x0, rtol=1e-4, atol=1e-4)
    x0_model = make_ddpm(parameterization="x0")
    assert x0_model.predict_start(x_t, t, x0) is x0


def test_q_posterior_is_the_gaussian_product():
    """q(x_{t-1} | x_t, x_0) from Bayes' rule on Eqs. 1-2, computed by hand."""
    model = make_ddpm()
    betas, abar, abar_prev = numpy_schedule()
    x0, xt = torch.randn(1, 3, 4, 4, dtype=torch.float64), torch.randn(1, 3, 4, 4, dtype=torch.float64)
    t = 20
    # N(x_t; sqrt(1-b) x, b) N(x; sqrt(abar_prev) x0, 1 - abar_prev) as a density in x
    precision = (1 - betas[t]) / betas[t] + 1 / (1 - abar_prev[t])
    mean = (np.sqrt(1 - betas[t]) / betas[t] * xt + np.sqrt(abar_prev[t]) / (1 - abar_prev[t]) * x0) / precision
    got_mean, got_var, _ = model.q_posterior(x0.float(), xt.float(), torch.tensor([t]))
    torch.testing.assert_close(got_mean.double(), mean, rtol=1e-4, atol=1e-5)
    assert float(got_var.flatten()[0]) == pytest.approx(1 / precision, rel=1e-5)


@pytest.mark.parametrize("loss_type", ["l2", "l1"])
@pytest.mark.parametrize("parameterization", ["eps", "x0"])
def test_latent_loss_by_hand(loss_type, parameterization):
    model = make_ddpm(loss_type=loss_type, parameterization=parameterization, original_elbo_weight=0.5,
                      l_simple_weight=2.0)
    out, x0, noise = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = torch.tensor([1, 7, 30])
    model.train()
    loss, loss_dict = model.latent_loss(out, x0, noise, t)
    target = noise if parameterization == "eps" else x0
    err = (out - target).abs() if loss_type == "l1" else (out - target) ** 2
    per_sample = err.mean(dim=(1, 2, 3))
    betas, abar, abar_prev = numpy_schedule()
    var = (betas * (1 - abar_prev) / (1 - abar))[1:]  # t >= 1: the first variance is 0
    betas, abar, abar_prev = betas[1:], abar[1:], abar_prev[1:]
    if parameterization == "eps":
        w = betas ** 2 / (2 * var * (1 - betas) * (1 - abar))
    else:
        w = (betas * np.sqrt(abar_prev) / (1 - abar)) ** 2 / (2 * var)
    w = np.concatenate([[np.nan], w])
    vlb = (torch.tensor(w[t.numpy()], dtype=torch.float32) * per_sample).mean()
    torch.testing.assert_close(loss_dict["train/loss_simple"], per_sample.mean())
    torch.testing.assert_close(loss_dict["train/loss_vlb"], vlb, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss, 2.0 * per_sample.mean() + 0.5 * vlb, rtol=1e-4, atol=1e-6)
    model.eval()
    assert set(model.latent_loss(out, x0, noise, t)[1]) == {"val/loss_simple", "val/loss_vlb", "val/loss"}


def test_learned_logvar_reweights_the_loss():
    model = make_ddpm(learn_logvar=True, logvar_init=0.5)
    out, x0, noise, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([3, 9])
    loss, loss_dict = model.latent_loss(out, x0, noise, t)
    per_sample = ((out - noise) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(loss, (per_sample / np.exp(0.5) + 0.5).mean())
    loss.backward()
    assert model.logvar.grad[3] != 0 and model.logvar.grad[4] == 0


def test_ema_update_formula_and_compvis_buffer_names():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    net[1].bias.requires_grad_(False)
    ema = LitEma(net, decay=0.9)
    assert set(dict(ema.named_buffers())) == {"decay", "num_updates", "0weight", "0bias", "1weight"}
    start = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    ema(net)  # n = 1: decay = min(0.9, 2 / 11)
    d = 2 / 11
    torch.testing.assert_close(ema.get_buffer("0weight"), d * start + (1 - d) * (start + 1.0))
    ema(net)  # n = 2: decay = min(0.9, 3 / 12)
    d2 = 3 / 12
    after_first = d * start + (1 - d) * (start + 1.0)
    torch.testing.assert_close(ema.get_buffer("0weight"), d2 * after_first + (1 - d2) * (start + 1.0))
    assert int(ema.num_updates) == 2


def test_ema_swap_and_restore_leave_the_raw_weights_untouched():
    model = make_ddpm()
    with torch.no_grad():
        for p in model.model.parameters():
            p.add_(torch.randn_like(p))
    model.model_ema(model.model)  # the EMA now differs from the raw weights
    raw = {k: v.clone() for k, v in model.model.state_dict().items()}
    shadow = dict(model.model_ema.named_buffers())
    with model.ema_scope("test"):
        for name, p in model.model.named_parameters():
            torch.testing.assert_close(p, shadow[name.replace(".", "")], rtol=0, atol=0)
        assert any(not torch.equal(p, raw[n]) for n, p in model.model.named_parameters())
    for name, value in model.model.state_dict().items():
        assert torch.equal(value, raw[name]), name
    # keys as CompVis: model_ema.<parameter name without dots>
    keys = model.state_dict().keys()
    assert "model_ema.diffusion_modelinput_blocks00weight" in keys and "model_ema.num_updates" in keys


def test_ema_restored_after_an_exception():
    model = make_ddpm()
    model.model_ema(model.model)
    with torch.no_grad():
        model.model.diffusion_model.out[2].weight.add_(1.0)
    raw = model.model.diffusion_model.out[2].weight.clone()
    with pytest.raises(RuntimeError):
        with model.ema_scope():
            raise RuntimeError("boom")
    assert torch.equal(model.model.diffusion_model.out[2].weight, raw)


def test_unconditional_ddpm_trains_and_samples():
    model = make_ddpm(timesteps=8)
    loss, _ = model.shared_step({"mri": torch.randn(2, 3, 4, 4)})
    loss.backward()
    assert model.model.diffusion_model.out[2].weight.grad.abs().sum() > 0
    samples = model.sample(batch_size=2, verbose=False)
    assert samples.shape == (2, 3, 4, 4) and torch.isfinite(samples).all()
