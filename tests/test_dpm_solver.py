"""DPM-Solver++(2M): against an independent float64 NumPy implementation of Lu et al.'s update
equations, against the exact ODE solution for Gaussian data, and its timestep rule."""
import numpy as np
import pytest
import torch

from ldm.modules.diffusionmodules.schedules import make_beta_schedule
from ldm.samplers.ddim import DDIMSampler
from ldm.samplers.dpm_solver import DPMSolverPlusPlusSampler, dpm_solver_timesteps

T = 1000


def paper_alphas_cumprod() -> np.ndarray:
    return np.cumprod(1.0 - make_beta_schedule("linear", T, linear_start=0.0015, linear_end=0.0195))


class AnalyticModel(torch.nn.Module):
    """eps_theta(x, t, c) = tanh(0.7 x + c) * (0.5 + t / T) + 0.2 x: nonlinear in x, depends on t and
    the conditioning, and has a NumPy twin (:func:`numpy_eps`)."""

    num_timesteps = T
    channels = 2

    def __init__(self, parameterization: str = "eps") -> None:
        super().__init__()
        self.parameterization = parameterization
        self.register_buffer("alphas_cumprod", torch.tensor(paper_alphas_cumprod(), dtype=torch.float32))

    def apply_model(self, x, t, cond):
        scale = 0.5 + t.to(x.dtype).view(-1, 1, 1, 1) / T
        return torch.tanh(0.7 * x + cond.to(x.dtype)) * scale + 0.2 * x


def numpy_eps(x: np.ndarray, t: int, cond: np.ndarray) -> np.ndarray:
    return np.tanh(0.7 * x + cond) * (0.5 + t / T) + 0.2 * x


def numpy_dpm_solver_2m(x_T: np.ndarray, cond: np.ndarray, steps: int, abar: np.ndarray) -> np.ndarray:
    """Algorithm 2 of Lu et al. (2022), written from the paper, in float64: linspace timesteps from
    T - 1 to 0, first order at the first step and (S < 15) at the last."""
    ts = [int(np.floor((T - 1) * (1 - i / steps) + 0.5)) for i in range(steps + 1)]
    alpha = lambda t: np.sqrt(abar[t])  # noqa: E731
    sigma = lambda t: np.sqrt(1.0 - abar[t])  # noqa: E731
    lam = lambda t: np.log(alpha(t) / sigma(t))  # noqa: E731
    x, previous = x_T.astype(np.float64), None
    for i in range(1, steps + 1):
        s, t = ts[i - 1], ts[i]
        data = (x - sigma(s) * numpy_eps(x, s, cond)) / alpha(s)
        h = lam(t) - lam(s)
        if previous is None or (i == steps and steps < 15):
            d = data
        else:
            r = (lam(s) - lam(ts[i - 2])) / h
            d = (1 + 1 / (2 * r)) * data - 1 / (2 * r) * previous
        x = sigma(t) / sigma(s) * x - alpha(t) * (np.exp(-h) - 1.0) * d
        previous = data
    return x


@pytest.mark.parametrize("steps", [1, 2, 10, 14, 15, 20, 50])
def test_matches_an_independent_float64_numpy_implementation(steps):
    g = torch.Generator().manual_seed(steps)
    x_T = torch.randn(3, 2, 5, 4, generator=g, dtype=torch.float64)
    cond = torch.randn(3, 2, 5, 4, generator=g, dtype=torch.float64)
    model = AnalyticModel().double()
    ours, _ = DPMSolverPlusPlusSampler(model).sample(steps, 3, (2, 5, 4), cond, x_T=x_T, verbose=False)
    assert ours.dtype == torch.float64
    reference = numpy_dpm_solver_2m(x_T.numpy(), cond.numpy(), steps, model.alphas_cumprod.double().numpy())
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-10, atol=1e-10)


def test_float32_state_stays_close_to_float64():
    g = torch.Generator().manual_seed(1)
    x_T, cond = torch.randn(2, 2, 6, 6, generator=g), torch.randn(2, 2, 6, 6, generator=g)
    ours, _ = DPMSolverPlusPlusSampler(AnalyticModel()).sample(20, 2, (2, 6, 6), cond, x_T=x_T, verbose=False)
    assert ours.dtype == torch.float32
    reference = numpy_dpm_solver_2m(x_T.double().numpy(), cond.double().numpy(), 20, paper_alphas_cumprod())
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-4, atol=1e-4)


class GaussianDataModel(torch.nn.Module):
    """The exact eps of data x_0 ~ N(mu, s^2) per element: E[eps | x_t] = sigma (x_t - alpha mu) /
    (alpha^2 s^2 + sigma^2). Its probability-flow ODE keeps (x_t - alpha_t mu) / sqrt(alpha_t^2 s^2
    + sigma_t^2) constant, so the exact solution from any t to 0 is known."""

    num_timesteps = T
    parameterization = "eps"
    channels = 1
    mu, s = 0.7, 2.0

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("alphas_cumprod", torch.tensor(paper_alphas_cumprod(), dtype=torch.float64))

    def apply_model(self, x, t, cond):
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
        return sigma * (x - alpha * self.mu) / (abar * self.s ** 2 + 1 - abar)

    def exact(self, x_T: torch.Tensor, t_start: int) -> torch.Tensor:
        def std(t):
            abar = float(self.alphas_cumprod[t])
            return np.sqrt(abar * self.s ** 2 + 1 - abar), np.sqrt(abar)

        (std_T, alpha_T), (std_0, alpha_0) = std(t_start), std(0)
        return alpha_0 * self.mu + std_0 * (x_T - alpha_T * self.mu) / std_T


def test_second_order_convergence_to_the_exact_ode_solution_of_gaussian_data():
    model = GaussianDataModel()
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def error(sampler, steps):
        start = x_T.float() if isinstance(sampler, DDIMSampler) else x_T
        out, _ = sampler.sample(steps, 4, (1, 8, 8), None, x_T=start, verbose=False)
        return (out.double() - model.exact(x_T, int(sampler.timesteps(steps)[0]))).abs().max().item()

    dpm, ddim = DPMSolverPlusPlusSampler(model), DDIMSampler(model)
    dpm_errors = {n: error(dpm, n) for n in (20, 40, 80, 160)}
    ddim_errors = {n: error(ddim, n) for n in (20, 40, 80, 160)}
    # doubling the steps cuts the error ~3x or more (second order; the grid's big lambda steps near
    # t = 0 keep it from 4x), about 2x for DDIM (first order)
    for n in (20, 40, 80):
        assert dpm_errors[n] / dpm_errors[2 * n] > 2.8, (n, dpm_errors)
        assert 1.6 < ddim_errors[n] / ddim_errors[2 * n] < 2.4, (n, ddim_errors)
    assert dpm_errors[20] < ddim_errors[20] / 2 and dpm_errors[80] < ddim_errors[80] / 4


def test_timesteps_follow_the_documented_linspace_rule():
    sampler = DPMSolverPlusPlusSampler(AnalyticModel())
    np.testing.assert_array_equal(sampler.timesteps(4), [999, 749, 500, 250])
    np.testing.assert_array_equal(dpm_solver_timesteps(T, 4), [999, 749, 500, 250, 0])
    for steps in (1, 7, 20, 333, 500, 998, 999):
        ts = dpm_solver_timesteps(T, steps)
        assert len(ts) == steps + 1 and ts[0] == T - 1 and ts[-1] == 0
        assert (np.diff(ts) < 0).all()  # distinct, descending: no two steps at one timestep
    with pytest.raises(ValueError, match="1..999"):
        sampler.check(1000, 0.0)
    with pytest.raises(ValueError, match="deterministic"):
        sampler.check(20, 0.5)



def test_x0_parameterization_uses_the_output_as_the_data_prediction():
    model = AnalyticModel(parameterization="x0").double()
    x_T = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cond = torch.zeros_like(x_T)
    ours, intermediates = DPMSolverPlusPlusSampler(model).sample(1, 1, (2, 3, 3), cond, x_T=x_T, verbose=False)
    abar = model.alphas_cumprod.double()
    a_s, a_t = abar[999], abar[0]
    x0 = model.apply_model(x_T, torch.tensor([999]), cond)
    # one first-order step: x_t = sigma_t / sigma_s x_s + alpha_t (1 - sigma_t alpha_s / (alpha_t sigma_s)) x0
    ratio = ((1 - a_t) * a_s / (a_t * (1 - a_s))).sqrt()  # sigma_t alpha_s / (alpha_t sigma_s) = exp(-h)
    expected = ((1 - a_t) / (1 - a_s)).sqrt() * x_T + a_t.sqrt() * (1 - ratio) * x0
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(intermediates["pred_x0"][-1], x0)
