"""The bridge sampler: skipped timesteps, one step against the Gaussian posterior computed here, eta, the loop."""
import math

import numpy as np
import pytest
import torch

from ldm.models.diffusion.bbdm import predict_start_from_objective
from ldm.samplers.bridge import BridgeSampler, bridge_step, make_bridge_timesteps
from ldm.modules.diffusionmodules.bridge_schedule import make_bridge_schedule


def test_skipped_timesteps_run_from_T_to_1():
    steps = make_bridge_timesteps(1000, 200)
    assert len(steps) == 200 and steps[0] == 1000 and steps[-1] == 1
    assert np.all(np.diff(steps) < 0)
    assert np.array_equal(make_bridge_timesteps(7, 7), np.arange(7, 0, -1))
    assert make_bridge_timesteps(1000, 1).tolist() == [1000]
    with pytest.raises(ValueError, match="1..1000"):
        make_bridge_timesteps(1000, 1001)


def _scalars(sched, t, s):
    return [torch.tensor(v, dtype=torch.float64) for v in (sched.m_t[t], sched.delta_t[t], sched.m_t[s],
                                                           sched.delta_t[s])]


@pytest.mark.parametrize("t,s", [(1000, 995), (600, 300), (2, 1)])
def test_step_with_eta_one_is_the_bridge_posterior(t, s):
    """x_s | x_t, x_0, y by Gaussian conditioning of the joint (x_s, x_t), written out independently:
    x_s ~ N(mu_s, d_s), x_t = a x_s + (m_t - a m_s) y + N(0, d_t - a^2 d_s), a = (1 - m_t)/(1 - m_s)
    => mean mu_s + a d_s / d_t (x_t - mu_t), variance d_s - a^2 d_s^2 / d_t."""
    sched = make_bridge_schedule(n_timestep=1000, max_var=1.0)
    m_t, d_t, m_s, d_s = _scalars(sched, t, s)
    x0, y, x_t, z = torch.randn(4, 2, 3, 4, 4, dtype=torch.float64)
    a = (1 - m_t) / (1 - m_s)
    mu_s, mu_t = (1 - m_s) * x0 + m_s * y, (1 - m_t) * x0 + m_t * y
    mean = mu_s + a * d_s / d_t * (x_t - mu_t)
    std = math.sqrt(d_s - a ** 2 * d_s ** 2 / d_t)
    torch.testing.assert_close(bridge_step(x_t, x0, y, m_t, d_t, m_s, d_s, eta=1.0, noise=z), mean + std * z)


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_every_eta_keeps_the_marginal_variance(eta):
    """x_s = mean + k (x_t - mu_t) + sigma z with Var(x_t | x0) = d_t must give Var(x_s | x0) = d_s,
    and sigma^2 = eta^2 times the posterior variance."""
    sched = make_bridge_schedule(n_timestep=1000, max_var=1.0)
    t, s = 700, 450
    m_t, d_t, m_s, d_s = _scalars(sched, t, s)
    zero = torch.zeros(1, dtype=torch.float64)
    one = torch.ones(1, dtype=torch.float64)
    # With x0 = y = 0 the step is k x_t + sigma z: read k and sigma off two probes.
    k = bridge_step(one, zero, zero, m_t, d_t, m_s, d_s, eta, noise=zero)
    sigma = bridge_step(zero, zero, zero, m_t, d_t, m_s, d_s, eta, noise=one)
    a = (1 - m_t) / (1 - m_s)
    post_var = d_s - a ** 2 * d_s ** 2 / d_t
    torch.testing.assert_close(sigma ** 2, eta ** 2 * post_var * one)
    torch.testing.assert_close(k ** 2 * d_t + sigma ** 2, d_s * one)


def test_step_to_the_data_end_returns_x0_hat():
    sched = make_bridge_schedule(n_timestep=1000)
    m_t, d_t, m_s, d_s = _scalars(sched, 5, 0)
    x0, y, x_t, z = torch.randn(4, 1, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(bridge_step(x_t, x0, y, m_t, d_t, m_s, d_s, eta=1.0, noise=z), x0)


class _ToyBridge:
    """A bridge 'model' whose denoiser is a fixed linear map, to drive the sampler loop by hand."""

    def __init__(self, T: int = 50, objective: str = "grad", x0_oracle: torch.Tensor | None = None):
        sched = make_bridge_schedule(n_timestep=T)
        self.num_timesteps = T
        self.m_t = torch.tensor(sched.m_t, dtype=torch.float32)
        self.delta_t = torch.tensor(sched.delta_t, dtype=torch.float32)
        self.objective = objective
        self.x0_oracle = x0_oracle
        self.calls: list[int] = []

    def get_source(self, cond):
        return cond["y"]

    def apply_model(self, x, t, cond):
        self.calls.append(int(t[0]))
        if self.x0_oracle is not None:  # the exact "grad" output when the data is known
            return x - self.x0_oracle
        return 0.5 * x + 0.1 * cond["y"] + 0.001 * t.float().reshape(-1, 1, 1, 1)

    def predict_start(self, x_t, t, out, *, y):
        m = self.m_t[t].reshape(-1, 1, 1, 1)
        d = self.delta_t[t].reshape(-1, 1, 1, 1)
        return predict_start_from_objective(self.objective, x_t, y, m, d, out)


def test_two_step_deterministic_loop_matches_hand_computation():
    model = _ToyBridge(T=50)
    y = torch.randn(2, 3, 4, 4)
    x, inter = BridgeSampler(model).sample(2, 2, (3, 4, 4), {"y": y}, eta=0.0, verbose=False)
    assert model.calls == [50, 1]
    m, d = model.m_t, model.delta_t
    # step 1: t = 50 -> s = 1, starting from x_T = y
    x_t = y
    x0_hat = x_t - (0.5 * x_t + 0.1 * y + 0.001 * 50)
    k = math.sqrt(d[1] / d[50])  # eta = 0: sqrt(delta_s / delta_t)
    x_1 = (1 - m[1]) * x0_hat + m[1] * y + k * (x_t - (1 - m[50]) * x0_hat - m[50] * y)
    # step 2: t = 1 -> 0 returns x0_hat
    expected = x_1 - (0.5 * x_1 + 0.1 * y + 0.001 * 1)
    torch.testing.assert_close(x, expected)
    assert len(inter["x_inter"]) == 2 and torch.equal(inter["x_inter"][-1], x)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_oracle_denoiser_lands_on_the_data(eta):
    x0 = torch.randn(2, 3, 4, 4)
    model = _ToyBridge(T=100, x0_oracle=x0)
    out, _ = BridgeSampler(model).sample(10, 2, (3, 4, 4), {"y": torch.randn(2, 3, 4, 4)}, eta=eta, verbose=False)
    assert len(model.calls) == 10
    torch.testing.assert_close(out, x0)


def test_noise_generator_makes_stochastic_sampling_reproducible():
    y = torch.randn(1, 3, 4, 4)
    a, _ = BridgeSampler(_ToyBridge()).sample(5, 1, None, {"y": y}, eta=1.0, verbose=False,
                                              noise_generator=torch.Generator().manual_seed(3))
    b, _ = BridgeSampler(_ToyBridge()).sample(5, 1, None, {"y": y}, eta=1.0, verbose=False,
                                              noise_generator=torch.Generator().manual_seed(3))
    c, _ = BridgeSampler(_ToyBridge()).sample(5, 1, None, {"y": y}, eta=1.0, verbose=False,
                                              noise_generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(3, 8, 8\).*\(3, 4, 4\)"):
        BridgeSampler(_ToyBridge()).sample(5, 1, (3, 8, 8), {"y": torch.randn(1, 3, 4, 4)}, verbose=False)
