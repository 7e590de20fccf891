"""DDIM sampler against closed forms computed independently in NumPy (float64).

The sampler only needs ``apply_model``, ``alphas_cumprod``, ``num_timesteps`` and
``parameterization`` from a model, so a small analytic stand-in replaces the UNet here.
"""
import numpy as np
import pytest
import torch

from ldm.samplers.ddim import DDIMSampler

SHAPE = (2, 3, 4)


class AnalyticModel:
    """eps(x, t, c) = 0.3 x + c (t + 1) / T: depends on x, t and the condition."""

    parameterization = "eps"

    def __init__(self, T: int = 40, start: float = 0.0015, end: float = 0.0195) -> None:
        betas = np.linspace(start ** 0.5, end ** 0.5, T) ** 2
        self.num_timesteps = T
        self.alphas_cumprod = torch.tensor(np.cumprod(1 - betas), dtype=torch.float32)
        self.calls: list[int] = []

    def apply_model(self, x, t, cond):
        self.calls.append(int(t[0]))
        return 0.3 * x + cond * (t.view(-1, 1, 1, 1).float() + 1) / self.num_timesteps

    def eps(self, x: np.ndarray, t: int, c: np.ndarray) -> np.ndarray:
        return 0.3 * x + c * (t + 1) / self.num_timesteps


def abar(model: AnalyticModel) -> np.ndarray:
    return model.alphas_cumprod.double().numpy()  # the same float32 values, in float64


def ddpm_posterior(model: AnalyticModel, x: np.ndarray, t: int, c: np.ndarray) -> tuple[np.ndarray, float]:
    """Mean and variance of DDPM's ancestral step q(x_{t-1} | x_t, x0_hat) (Ho et al., Eqs. 6-7)."""
    a = abar(model)
    a_t, a_prev = a[t], (a[t - 1] if t > 0 else 1.0)
    beta = 1 - a_t / a_prev
    x0 = (x - np.sqrt(1 - a_t) * model.eps(x, t, c)) / np.sqrt(a_t)
    mean = beta * np.sqrt(a_prev) / (1 - a_t) * x0 + (1 - a_prev) * np.sqrt(1 - beta) / (1 - a_t) * x
    return mean, beta * (1 - a_prev) / (1 - a_t)


def test_one_ddim_step_equals_the_closed_form():
    model = AnalyticModel()
    sampler = DDIMSampler(model)
    sampler.make_schedule(8, ddim_eta=0.6)  # T = 40: steps 1, 6, 11, ..., 36
    np.testing.assert_array_equal(sampler.ddim_timesteps, np.arange(0, 40, 5) + 1)
    x, c = torch.randn(2, *SHAPE), torch.randn(2, *SHAPE)
    index, t = 5, 26
    g = torch.Generator().manual_seed(7)
    x_prev, x0_hat = sampler.p_sample_ddim(x, c, torch.full((2,), t), index, noise_generator=g)

    a = abar(model)
    a_t, a_s = a[26], a[21]
    xn, cn = x.double().numpy(), c.double().numpy()
    e = model.eps(xn, t, cn)
    x0 = (xn - np.sqrt(1 - a_t) * e) / np.sqrt(a_t)
    sigma = 0.6 * np.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(7)).double().numpy()
    expected = np.sqrt(a_s) * x0 + np.sqrt(1 - a_s - sigma ** 2) * e + sigma * z
    np.testing.assert_allclose(x0_hat.numpy(), x0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x_prev.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_with_s_equal_t_and_eta_1_each_step_is_ancestral_ddpm():
    model = AnalyticModel(T=30)
    sampler = DDIMSampler(model)
    sampler.make_schedule(30, ddim_eta=1.0)
    np.testing.assert_array_equal(sampler.ddim_timesteps, np.arange(30))
    c = torch.randn(3, *SHAPE)
    for index, t in enumerate(sampler.ddim_timesteps):
        x = torch.randn(3, *SHAPE)
        ts = torch.full((3,), int(t))
        mean, _ = sampler.p_sample_ddim(x, c, ts, index, temperature=0.0)  # no noise: the step's mean
        sample, _ = sampler.p_sample_ddim(x, c, ts, index, noise_generator=torch.Generator().manual_seed(int(t)))
        ref_mean, ref_var = ddpm_posterior(model, x.double().numpy(), int(t), c.double().numpy())
        np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-4, atol=1e-5, err_msg=f"t={t}")
        assert sampler.ddim_sigmas[index] ** 2 == pytest.approx(ref_var, rel=1e-6, abs=1e-12)
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(int(t))).numpy()
        np.testing.assert_allclose(sample.numpy(), ref_mean + np.sqrt(ref_var) * z, rtol=1e-4, atol=1e-5)


def test_full_chain_with_s_equal_t_and_eta_1_is_the_ddpm_chain():
    model = AnalyticModel(T=20)
    c = torch.randn(2, *SHAPE)
    g = torch.Generator().manual_seed(3)
    latents, inter = DDIMSampler(model).sample(S=20, batch_size=2, shape=SHAPE, conditioning=c, eta=1.0,
                                               verbose=False, noise_generator=g, log_every_t=5)
    # the same random stream drives the reference: x_T first, then one draw per step with variance > 0
    g.manual_seed(3)
    x = torch.randn(2, *SHAPE, generator=g).double().numpy()
    for t in reversed(range(20)):
        mean, var = ddpm_posterior(model, x, t, c.double().numpy())
        x = mean + (np.sqrt(var) * torch.randn(2, *SHAPE, generator=g).double().numpy() if var > 0 else 0.0)
    np.testing.assert_allclose(latents.numpy(), x, rtol=1e-4, atol=1e-4)
    assert model.calls == list(range(19, -1, -1))
    assert len(inter["x_inter"]) == 1 + 5 and torch.equal(inter["x_inter"][-1], latents)


def test_eta_zero_is_deterministic_and_starts_from_x_T():
    model = AnalyticModel()
    c, x_T = torch.randn(2, *SHAPE), torch.randn(2, *SHAPE)
    sampler = DDIMSampler(model)
    a, _ = sampler.sample(S=5, batch_size=2, shape=SHAPE, conditioning=c, x_T=x_T, verbose=False)
    b, inter = sampler.sample(S=5, batch_size=2, shape=SHAPE, conditioning=c, x_T=x_T, verbose=False)
    assert torch.equal(a, b) and torch.equal(inter["x_inter"][0], x_T)
    assert not torch.equal(a, x_T) and torch.isfinite(a).all()
    # eta = 0: x_s = sqrt(a_s) x0_hat + sqrt(1 - a_s) eps, iterated independently
    x, al = x_T.double().numpy(), abar(model)
    steps = np.arange(0, 40, 8) + 1
    for i in reversed(range(len(steps))):
        t = steps[i]
        a_s = al[steps[i - 1]] if i > 0 else al[0]
        e = model.eps(x, t, c.double().numpy())
        x0 = (x - np.sqrt(1 - al[t]) * e) / np.sqrt(al[t])
        x = np.sqrt(a_s) * x0 + np.sqrt(1 - a_s) * e
    np.testing.assert_allclose(a.numpy(), x, rtol=1e-4, atol=1e-5)


def test_sampler_does_not_touch_x_T_and_checks_shapes():
    model = AnalyticModel()
    c, x_T = torch.randn(2, *SHAPE), torch.randn(2, *SHAPE)
    keep = x_T.clone()
    DDIMSampler(model).sample(S=4, batch_size=2, shape=SHAPE, conditioning=c, x_T=x_T, eta=1.0, verbose=False)
    assert torch.equal(x_T, keep)
    with pytest.raises(ValueError, match="batch"):
        DDIMSampler(model).sample(S=4, batch_size=3, shape=SHAPE, conditioning=c, verbose=False)
    with pytest.raises(ValueError, match="x_T"):
        DDIMSampler(model).sample(S=4, batch_size=2, shape=SHAPE, conditioning=c, x_T=x_T[:, :1], verbose=False)


def test_sampler_runs_in_place_under_inference_mode_on_the_models_device():
    model = AnalyticModel()
    seen = []
    original = model.apply_model
    model.apply_model = lambda x, t, c: (seen.append((torch.is_inference_mode_enabled(), x.device, x.data_ptr(),
                                                      t.data_ptr())), original(x, t, c))[1]
    out, _ = DDIMSampler(model).sample(S=4, batch_size=2, shape=SHAPE, conditioning=torch.zeros(2, *SHAPE),
                                       eta=1.0, verbose=False)
    assert len(seen) == 4 and all(flag and dev == model.alphas_cumprod.device for flag, dev, _, _ in seen)
    # x and the timestep tensor are one buffer each, updated in place at every step
    assert len({ptr for *_, ptr, _ in seen}) == 1 and len({ptr for *_, ptr in seen}) == 1
    assert out.device == model.alphas_cumprod.device and out.data_ptr() == seen[0][2]
