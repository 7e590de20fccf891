"""Brownian bridge schedules m_t and delta_t as plain data (Li et al., CVPR 2023, "BBDM", Sec. 3.1).

The bridge from the data x_0 to the source y has the marginal

    q(x_t | x_0, y) = N((1 - m_t) x_0 + m_t y, delta_t I),   delta_t = 2 s (m_t - m_t^2)      (BBDM Eq. 3-4)

so that the variance is largest (s / 2) in the middle and vanishes at both ends.

Indexing: the arrays have T + 1 entries, t = 0 .. T. t = 0 is the data end (m_0 = 0, delta_0 = 0, so
x_0 is the data exactly); t = 1 .. T are the noisy states the denoiser is trained on, with m_t linear
from ``m_min`` to ``m_max``. The reference code (xuekt98/BBDM) keeps the same T values in an array of
length T, indexed 0 .. T-1, and treats the data as the implicit state before index 0; its index k is
our t = k + 1. The endpoints are kept off 0 and 1 (0.001 / 0.999, BBDM's setting) so that delta_t > 0
for every trained t: at m = 1 the state would be y without noise and the reverse step would divide by
delta_T = 0.

Like CompVis' ``make_beta_schedule``, this module returns numpy arrays; the model registers them as
buffers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

M_SCHEDULES = ("linear", "sin")


@dataclass(frozen=True)
class BridgeSchedule:
    """m_t and delta_t on t = 0 .. T (float64 numpy arrays of length T + 1; index 0 is the data end)."""

    m_t: np.ndarray
    delta_t: np.ndarray

    @property
    def num_timesteps(self) -> int:
        return len(self.m_t) - 1

    def __post_init__(self) -> None:
        if self.m_t.shape != self.delta_t.shape or self.m_t.ndim != 1:
            raise ValueError(f"bridge schedule: m_t {self.m_t.shape} and delta_t {self.delta_t.shape} must be 1-D "
                             f"arrays of the same length")
        if self.m_t[0] != 0.0 or self.delta_t[0] != 0.0:
            raise ValueError("bridge schedule: t = 0 must be the data end (m_0 = 0, delta_0 = 0)")
        if np.any(np.diff(self.m_t) <= 0) or self.m_t[-1] >= 1.0:
            raise ValueError("bridge schedule: m_t must increase strictly and stay below 1")
        if np.any(self.delta_t[1:] <= 0):
            raise ValueError("bridge schedule: delta_t must be positive for t >= 1")


def make_m_schedule(schedule: str, n_timestep: int, m_min: float = 0.001, m_max: float = 0.999) -> np.ndarray:
    """m_1 .. m_T (length T), the interpolation weight of the source y at each noisy state.

    "linear": linspace(m_min, m_max, T), BBDM's default. "sin": BBDM's alternative (1.0075^t
    normalised, last value m_max), which keeps the bridge close to x_0 for longer.
    """
    if n_timestep < 1:
        raise ValueError(f"bridge schedule: need at least one timestep, got {n_timestep}")
    if not 0.0 < m_min < m_max < 1.0:
        raise ValueError(f"bridge schedule: need 0 < m_min < m_max < 1, got m_min={m_min}, m_max={m_max}")
    if schedule == "linear":
        return np.linspace(m_min, m_max, n_timestep, dtype=np.float64)
    if schedule == "sin":
        m = 1.0075 ** np.linspace(0, n_timestep, n_timestep, dtype=np.float64)
        m = m / m[-1]
        m[-1] = m_max
        return m
    raise ValueError(f"bridge schedule {schedule!r} unknown; choose one of {M_SCHEDULES}")


def make_bridge_schedule(schedule: str = "linear", n_timestep: int = 1000, m_min: float = 0.001,
                         m_max: float = 0.999, max_var: float = 1.0) -> BridgeSchedule:
    """The bridge on t = 0 .. T: m_0 = 0, m_1..T from :func:`make_m_schedule`, delta_t = 2 s (m_t - m_t^2).

    ``max_var`` is BBDM's s: it scales the variance, whose maximum s / 2 is reached at m_t = 1/2.
    """
    if max_var <= 0:
        raise ValueError(f"bridge schedule: max_var (s) must be positive, got {max_var}")
    m_t = np.concatenate([[0.0], make_m_schedule(schedule, n_timestep, m_min, m_max)])
    delta_t = 2.0 * max_var * (m_t - m_t ** 2)
    return BridgeSchedule(m_t=m_t, delta_t=delta_t)


def posterior_variance(m_t: np.ndarray | float, delta_t: np.ndarray | float, m_s: np.ndarray | float,
                       delta_s: np.ndarray | float) -> np.ndarray | float:
    """Variance of q(x_s | x_t, x_0, y) for s < t (BBDM Eq. 7-8, generalised to a skipped step).

    delta_{t|s} = delta_t - delta_s (1 - m_t)^2 / (1 - m_s)^2 is the variance of the forward
    transition q(x_t | x_s, y); the posterior variance is delta_{t|s} delta_s / delta_t. It is 0 when
    s is the data end (delta_s = 0). Works elementwise on arrays or on torch tensors.
    """
    delta_t_given_s = delta_t - delta_s * ((1.0 - m_t) / (1.0 - m_s)) ** 2
    return delta_t_given_s * delta_s / delta_t
