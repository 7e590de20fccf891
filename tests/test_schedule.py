"""Noise schedules and DDIM sub-sequences against independent NumPy computations."""
import math

import numpy as np
import pytest
import torch

from ldm.modules.diffusionmodules.schedules import (
    make_beta_schedule,
    make_ddim_sampling_parameters,
    make_ddim_timesteps,
)
from ldm.modules.diffusionmodules.util import timestep_embedding


def test_linear_schedule_is_squares_of_a_linspace_of_square_roots():
    T, start, end = 1000, 0.0015, 0.0195
    betas = make_beta_schedule("linear", T, linear_start=start, linear_end=end)
    step = (math.sqrt(end) - math.sqrt(start)) / (T - 1)
    for i in (0, 1, 500, 998, 999):
        assert betas[i] == pytest.approx((math.sqrt(start) + i * step) ** 2, rel=1e-12)
    assert betas.dtype == np.float64 and betas.shape == (T,)
    # the paper's setting: abar_T is small but not zero, so z_T is almost pure noise
    abar = np.prod(1 - betas)
    assert 1e-6 < abar < 1e-3


def test_cosine_schedule_matches_nichol_dhariwal():
    T, s = 50, 8e-3
    betas = make_beta_schedule("cosine", T, cosine_s=s)

    def f(t: float) -> float:
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    abar = np.array([f(t) / f(0) for t in range(T + 1)])
    expected = np.clip(1 - abar[1:] / abar[:-1], 0, 0.999)
    np.testing.assert_allclose(betas, expected, rtol=1e-12)
    assert betas[-1] == 0.999  # clipped at the end


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="quadratic"):
        make_beta_schedule("quadratic", 10)


def test_uniform_ddim_steps_are_compvis_spacing():
    np.testing.assert_array_equal(make_ddim_timesteps("uniform", 50, 1000), np.arange(0, 1000, 20) + 1)
    np.testing.assert_array_equal(make_ddim_timesteps("uniform", 200, 1000), np.arange(1, 1000, 5))
    # S not dividing T: CompVis gives ceil(T / (T // S)) steps
    np.testing.assert_array_equal(make_ddim_timesteps("uniform", 400, 1000), np.arange(1, 1000, 2))


def test_uniform_ddim_steps_never_exceed_the_last_timestep():
    # CompVis asks for timestep T when T // S divides T - 1 (here 1 + 333 * 3 = 1000) and crashes
    steps = make_ddim_timesteps("uniform", 333, 1000)
    assert steps.max() == 997 and len(steps) == 333
    # S = T (and any S > T / 2): every timestep, from 0
    np.testing.assert_array_equal(make_ddim_timesteps("uniform", 1000, 1000), np.arange(1000))
    np.testing.assert_array_equal(make_ddim_timesteps("uniform", 600, 1000), np.arange(1000))
    with pytest.raises(ValueError, match="steps"):
        make_ddim_timesteps("uniform", 1001, 1000)


def test_quad_ddim_steps():
    steps = make_ddim_timesteps("quad", 10, 1000)
    expected = [int(v) + 1 for v in (np.linspace(0, math.sqrt(800), 10) ** 2)]
    np.testing.assert_array_equal(steps, expected)


def test_ddim_sampling_parameters_against_song_et_al():
    alphacums = np.cumprod(1 - make_beta_schedule("linear", 100, 0.0015, 0.0195))
    steps = make_ddim_timesteps("uniform", 10, 100)
    sigmas, a, a_prev = make_ddim_sampling_parameters(alphacums, steps, eta=0.7)
    for i, t in enumerate(steps):
        prev = alphacums[steps[i - 1]] if i > 0 else alphacums[0]
        assert a[i] == alphacums[t] and a_prev[i] == prev
        expected = 0.7 * math.sqrt((1 - prev) / (1 - alphacums[t])) * math.sqrt(1 - alphacums[t] / prev)
        assert sigmas[i] == pytest.approx(expected, rel=1e-12)
    # a chain that starts at timestep 0 ends at the data (abar = 1), as ancestral DDPM
    _, _, a_prev0 = make_ddim_sampling_parameters(alphacums, np.arange(100), eta=1.0)
    assert a_prev0[0] == 1.0


def test_timestep_embedding_is_cos_then_sin():
    t = torch.tensor([0, 3, 999])
    emb = timestep_embedding(t, 8).numpy()
    freqs = np.exp(-math.log(10000) * np.arange(4) / 4)
    expected = np.concatenate([np.cos(t.numpy()[:, None] * freqs), np.sin(t.numpy()[:, None] * freqs)], axis=1)
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-5)
    assert timestep_embedding(t, 9).shape == (3, 9)
