"""Noise schedules of the diffusion process (paper Eqs. 1-2) and the DDIM sub-sequences.

Indexing follows CompVis: the model's timestep index t runs over 0..T-1 and ``betas[t]`` is
beta_{t+1} of the paper (so ``alphas_cumprod[t]`` is abar_{t+1}). Everything here is float64
NumPy; the models register float32 buffers from it.
"""
from __future__ import annotations

import math

import numpy as np

BETA_SCHEDULES = ("linear", "cosine", "sqrt_linear", "sqrt")
DDIM_DISCRETIZATIONS = ("uniform", "quad")


def make_beta_schedule(schedule: str, n_timestep: int, linear_start: float = 1e-4, linear_end: float = 2e-2,
                       cosine_s: float = 8e-3) -> np.ndarray:
    """beta_1..beta_T as a float64 array of length ``n_timestep`` (CompVis names and formulas).

    "linear" is CompVis's: the squares of a linspace of square roots, so ``linear_start`` and
    ``linear_end`` are the first and last beta. "cosine" is Nichol & Dhariwal's (Eq. 17), with
    betas clipped to 0.999.
    """
    if n_timestep < 1:
        raise ValueError(f"a beta schedule needs at least one timestep, got {n_timestep}")
    if schedule == "linear":
        return np.linspace(linear_start ** 0.5, linear_end ** 0.5, n_timestep, dtype=np.float64) ** 2
    if schedule == "cosine":
        steps = np.arange(n_timestep + 1, dtype=np.float64) / n_timestep + cosine_s
        alphas_cumprod = np.cos(steps / (1 + cosine_s) * math.pi / 2) ** 2
        alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
        return np.clip(1 - alphas_cumprod[1:] / alphas_cumprod[:-1], 0.0, 0.999)
    if schedule == "sqrt_linear":
        return np.linspace(linear_start, linear_end, n_timestep, dtype=np.float64)
    if schedule == "sqrt":
        return np.linspace(linear_start, linear_end, n_timestep, dtype=np.float64) ** 0.5
    raise ValueError(f"beta_schedule {schedule!r} unknown; choose one of {BETA_SCHEDULES}")


def make_ddim_timesteps(ddim_discr_method: str, num_ddim_timesteps: int, num_ddpm_timesteps: int,
                        verbose: bool = False) -> np.ndarray:
    """The model timesteps (ascending) that DDIM visits.

    "uniform" is CompVis's spacing: c = T // S and the steps 1, 1 + c, 1 + 2c, ... (so a
    CompVis-trained model samples the same; as in CompVis there are about T / c of them, more than
    S when S does not divide T). Where CompVis breaks, this does not:
    - when c divides T - 1 (T = 1000 and S = 333, 111, 37, ...) CompVis's last step is the
      non-existent timestep T and it crashes; that step is dropped here;
    - when c = 1 (S > T / 2) the "+ 1" leaves no room: every timestep 0..T-1 is visited instead,
      which with eta = 1 is exactly ancestral DDPM sampling.
    "quad" is CompVis's quadratic spacing up to 0.8 T, plus one.
    """
    T, S = int(num_ddpm_timesteps), int(num_ddim_timesteps)
    if not 1 <= S <= T:
        raise ValueError(f"DDIM needs 1 <= steps <= T = {T} timesteps of the model, got {S}")
    if ddim_discr_method == "uniform":
        c = T // S
        steps = np.arange(0, T, c) + 1 if c > 1 else np.arange(T)
        steps = steps[steps < T]
    elif ddim_discr_method == "quad":
        steps = (np.linspace(0, np.sqrt(T * 0.8), S) ** 2).astype(int) + 1
    else:
        raise ValueError(f"ddim_discretize {ddim_discr_method!r} unknown; choose one of {DDIM_DISCRETIZATIONS}")
    if verbose:
        print(f"Selected timesteps for ddim sampler: {steps}")
    return steps.astype(np.int64)


def make_ddim_sampling_parameters(alphacums: np.ndarray, ddim_timesteps: np.ndarray, eta: float,
                                  verbose: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sigmas, alphas, alphas_prev) of DDIM (Song et al., 2021, Eq. 16) for the visited timesteps.

    ``alphas[i]`` is abar at ``ddim_timesteps[i]`` and ``alphas_prev[i]`` abar at the next visited
    timestep below it. Below the smallest visited timestep CompVis uses abar at index 0 (its
    steps start at 1); when the smallest is 0 itself the chain ends at the data, abar = 1, as
    ancestral DDPM's last step does.
    sigma_i = eta * sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev)).
    """
    alphacums = np.asarray(alphacums, dtype=np.float64)
    alphas = alphacums[ddim_timesteps]
    first_prev = alphacums[0] if ddim_timesteps[0] > 0 else 1.0
    alphas_prev = np.concatenate([[first_prev], alphacums[ddim_timesteps[:-1]]])
    sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
    if verbose:
        print(f"Selected alphas for ddim sampler: a_t: {alphas}; a_(t-1): {alphas_prev}")
        print(f"For eta = {eta} the sigma_t schedule of the ddim sampler is {sigmas}")
    return sigmas, alphas, alphas_prev
