"""Brownian bridge math on plain tensors: schedule, marginals at both ends, objectives (BBDM Eqs. 3-4, 11)."""
import math

import numpy as np
import pytest
import torch

from ldm.models.diffusion.bbdm import (OBJECTIVES, bridge_marginal, objective_target,
                                       predict_start_from_objective)
from ldm.modules.diffusionmodules.bridge_schedule import make_bridge_schedule, posterior_variance


def _coef(values: np.ndarray, t: int) -> torch.Tensor:
    return torch.tensor(values[t], dtype=torch.float64).reshape(1, 1, 1, 1)


def test_linear_schedule_values():
    sched = make_bridge_schedule("linear", n_timestep=1000, m_min=0.001, m_max=0.999, max_var=2.0)
    assert sched.num_timesteps == 1000 and sched.m_t.shape == (1001,)
    assert sched.m_t[0] == 0.0 and sched.delta_t[0] == 0.0
    assert sched.m_t[1] == pytest.approx(0.001) and sched.m_t[1000] == pytest.approx(0.999)
    assert np.allclose(np.diff(sched.m_t[1:]), 0.998 / 999)
    t = 437
    assert sched.delta_t[t] == pytest.approx(2 * 2.0 * (sched.m_t[t] - sched.m_t[t] ** 2))
    # the variance peaks at s / 2 in the middle of the bridge
    assert sched.delta_t.max() == pytest.approx(1.0, abs=1e-5)


def test_schedule_rejects_bad_settings():
    with pytest.raises(ValueError, match="m_min"):
        make_bridge_schedule(m_min=0.0)
    with pytest.raises(ValueError, match="m_max"):
        make_bridge_schedule(m_max=1.0)
    with pytest.raises(ValueError, match="max_var"):
        make_bridge_schedule(max_var=0.0)
    with pytest.raises(ValueError, match="unknown"):
        make_bridge_schedule("cosine")


def test_sin_schedule_ends_at_m_max_and_increases():
    sched = make_bridge_schedule("sin", n_timestep=50, m_max=0.999)
    assert sched.m_t[-1] == pytest.approx(0.999) and np.all(np.diff(sched.m_t) > 0)


def test_marginal_at_data_end_is_x0_exactly():
    sched = make_bridge_schedule(n_timestep=1000)
    x0, y, eps = torch.randn(3, 2, 3, 4, 4, dtype=torch.float64)
    x_t = bridge_marginal(x0, y, _coef(sched.m_t, 0), _coef(sched.delta_t, 0), eps)
    assert torch.equal(x_t, x0)


def test_marginal_at_source_end_matches_formula():
    T, m_max, s = 1000, 0.999, 1.0
    sched = make_bridge_schedule(n_timestep=T, m_max=m_max, max_var=s)
    x0, y, eps = torch.randn(3, 2, 3, 4, 4, dtype=torch.float64)
    x_T = bridge_marginal(x0, y, _coef(sched.m_t, T), _coef(sched.delta_t, T), eps)
    expected = (1 - m_max) * x0 + m_max * y + math.sqrt(2 * s * (m_max - m_max ** 2)) * eps
    torch.testing.assert_close(x_T, expected, rtol=1e-12, atol=1e-12)
    # and it is within the small configured distance of the source y
    assert (x_T - y).abs().max() < 0.05 * (x0.abs().max() + eps.abs().max() + y.abs().max())


def test_forward_chain_of_transitions_reproduces_the_marginal():
    """Stepping q(x_t | x_s, y) = N(a x_s + (m_t - a m_s) y, delta_{t|s}), a = (1-m_t)/(1-m_s), from the data
    through several states gives the marginal mean and variance of Eq. 3 (Monte Carlo, scalar)."""
    sched = make_bridge_schedule(n_timestep=100, max_var=1.0)
    gen = torch.Generator().manual_seed(1)
    x0, y, n = 0.7, -0.4, 200_000
    x = torch.full((n,), x0, dtype=torch.float64)
    path = [0, 10, 35, 60, 90]
    for s, t in zip(path, path[1:]):
        m_s, m_t, d_s, d_t = sched.m_t[s], sched.m_t[t], sched.delta_t[s], sched.delta_t[t]
        a = (1 - m_t) / (1 - m_s)
        d_ts = d_t - d_s * a ** 2
        x = a * x + (m_t - a * m_s) * y + math.sqrt(d_ts) * torch.randn(n, generator=gen, dtype=torch.float64)
    t = path[-1]
    assert x.mean().item() == pytest.approx((1 - sched.m_t[t]) * x0 + sched.m_t[t] * y, abs=4e-3)
    assert x.var().item() == pytest.approx(sched.delta_t[t], rel=1e-2)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_objective_round_trip_recovers_x0(objective):
    sched = make_bridge_schedule(n_timestep=1000)
    x0, y, eps = torch.randn(3, 4, 3, 5, 5, dtype=torch.float64)
    t = torch.tensor([1, 250, 777, 1000])
    m = torch.tensor(sched.m_t, dtype=torch.float64)[t].reshape(-1, 1, 1, 1)
    d = torch.tensor(sched.delta_t, dtype=torch.float64)[t].reshape(-1, 1, 1, 1)
    x_t = bridge_marginal(x0, y, m, d, eps)
    target = objective_target(objective, x0, y, eps, m, d)
    torch.testing.assert_close(predict_start_from_objective(objective, x_t, y, m, d, target), x0)


def test_grad_objective_is_x_t_minus_x0():
    sched = make_bridge_schedule(n_timestep=10)
    x0, y, eps = torch.randn(3, 2, 3, 4, 4, dtype=torch.float64)
    m, d = _coef(sched.m_t, 4), _coef(sched.delta_t, 4)
    target = objective_target("grad", x0, y, eps, m, d)
    expected = sched.m_t[4] * (y - x0) + math.sqrt(2 * (sched.m_t[4] - sched.m_t[4] ** 2)) * eps
    torch.testing.assert_close(target, expected)
    torch.testing.assert_close(target, bridge_marginal(x0, y, m, d, eps) - x0)


def test_unknown_objective_is_named():
    x = torch.zeros(1, 1, 1, 1)
    with pytest.raises(ValueError, match="'eps'"):
        objective_target("eps", x, x, x, x, x)


def test_posterior_variance_vanishes_at_the_data_end():
    sched = make_bridge_schedule(n_timestep=20)
    assert posterior_variance(sched.m_t[5], sched.delta_t[5], sched.m_t[0], sched.delta_t[0]) == 0.0
    assert posterior_variance(sched.m_t[5], sched.delta_t[5], sched.m_t[3], sched.delta_t[3]) > 0.0
