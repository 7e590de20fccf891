"""DPM-Solver++(2M) (Lu et al., 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", Algorithm 2) for an eps-, x0- or v-prediction model on its discrete schedule.

The probability-flow ODE is solved in the data-prediction form. With alpha_t = sqrt(abar_t),
sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t), x0_hat(x, t) the model's data
prediction (paper Eq. 5 for eps) and h_i = lambda_{t_i} - lambda_{t_{i-1}}, one step is

    x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (exp(-h_i) - 1) D_i
    D_i     = x0_hat(t_{i-1})                                        first order (DDIM's update)
    D_i     = (1 + 1 / (2 r_i)) x0_hat(t_{i-1}) - 1 / (2 r_i) x0_hat(t_{i-2}),   r_i = h_{i-1} / h_i

With ``clip_x0`` each x0_hat is clipped to the model's ``denoised_range()`` before it enters the
update (Lu et al.'s thresholding with a fixed box; docs/sampling.md, *Clipping x0_hat*).

The first step is first order (no earlier x0_hat), and so is the last when S < 15 ("lower order
final", as diffusers' DPMSolverMultistepScheduler: it keeps few-step runs stable). Each step
evaluates the model once, so S steps cost S UNet evaluations, as S DDIM steps do.

Timesteps ("linspace", diffusers' default rule): t_i = floor((T - 1)(1 - i / S) + 1/2), i = 0..S,
from T - 1 down to 0; the model is evaluated at t_0..t_{S-1} and the result is x at t_S = 0, the
noise level at which DDIM ends too, so the two samplers differ only in how they integrate.
``timesteps(S)`` returns the S evaluated ones. (Lu et al.'s logSNR-uniform grid does not fit a
discrete schedule of T = 1000 beyond about 30 steps: lambda jumps by 0.35 between t = 1 and t = 0,
so neighbouring grid points fall on the same timestep.) With eta = 0 only (the solver is deterministic);
x_T is the only randomness, which the slice sampler draws per slice.

Step coefficients are Python floats computed once in float64; the state stays in x_T's dtype
(float32, or float64 when x_T is float64) and its buffers are allocated once per call.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ldm.samplers.base import clip_denoised, denoised_bounds, noise_schedule_unsupported, predict_start, start_latent

LOWER_ORDER_FINAL_BELOW = 15  # S below which the last step is first order


def dpm_solver_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
    """The S + 1 timesteps t_0 = T - 1 > ... > t_S = 0 of the "linspace" rule (module docstring)."""
    if not 1 <= steps <= num_timesteps - 1:
        raise ValueError(f"DPM-Solver++: steps must be in 1..{num_timesteps - 1} (the model's T - 1), got {steps}")
    # floor(x + 1/2) rather than np.round: round-half-to-even can merge neighbours spaced exactly 1 apart
    return np.floor((num_timesteps - 1) * (1.0 - np.arange(steps + 1) / steps) + 0.5).astype(np.int64)


def dpm_solver_coefficients(alphas_cumprod: np.ndarray, timesteps: np.ndarray, lower_order_final: bool = True
                            ) -> list[tuple[float, float, float, float]]:
    """Per step i = 1..S: (sigma ratio, -alpha_t (exp(-h) - 1), weight of x0_hat(t_{i-1}), weight of
    x0_hat(t_{i-2})) in float64 (the update of the module docstring)."""
    a = np.asarray(alphas_cumprod, dtype=np.float64)[timesteps]
    alpha, sigma = np.sqrt(a), np.sqrt(1.0 - a)
    lam = np.log(alpha) - np.log(sigma)
    steps = len(timesteps) - 1
    out = []
    for i in range(1, steps + 1):
        h = lam[i] - lam[i - 1]
        first_order = i == 1 or (lower_order_final and i == steps and steps < LOWER_ORDER_FINAL_BELOW)
        if first_order:
            w0, w1 = 1.0, 0.0
        else:
            r = (lam[i - 1] - lam[i - 2]) / h
            w0, w1 = 1.0 + 1.0 / (2.0 * r), -1.0 / (2.0 * r)
        out.append((float(sigma[i] / sigma[i - 1]), float(-alpha[i] * np.expm1(-h)), float(w0), float(w1)))
    return out


class DPMSolverPlusPlusSampler:
    """``DPMSolverPlusPlusSampler(model).sample(S, batch_size, shape, conditioning, x_T=...)`` ->
    (latents, intermediates): the protocol of :mod:`ldm.samplers.base`."""

    name = "dpmsolver++"
    starts_from_noise = True

    def __init__(self, model: Any, lower_order_final: bool = True, clip_x0: bool = False) -> None:
        self.model = model
        self.clip_x0 = bool(clip_x0)
        self._bounds = denoised_bounds(self.name, model) if self.clip_x0 else None
        self.num_timesteps = int(model.num_timesteps)
        self.lower_order_final = bool(lower_order_final)

    def _all_timesteps(self, S: int) -> np.ndarray:
        return dpm_solver_timesteps(self.num_timesteps, S)

    @classmethod
    def unsupported(cls, model: Any) -> str | None:
        return noise_schedule_unsupported("DPM-Solver++", model)

    def check(self, S: int, eta: float) -> None:
        if eta != 0:
            raise ValueError(f"DPM-Solver++ is deterministic (eta 0), got eta {eta}")
        self._all_timesteps(S)

    def timesteps(self, S: int) -> np.ndarray:
        """The S timesteps at which the model is evaluated, t_0 = T - 1 down to t_{S-1}."""
        return self._all_timesteps(S)[:-1]

    @torch.inference_mode()
    def sample(self, S: int, batch_size: int, shape: tuple[int, ...], conditioning: Any = None, eta: float = 0.0,
               x_T: torch.Tensor | None = None, verbose: bool = True, log_every_t: int = 100,
               noise_generator: torch.Generator | None = None, step_noise: torch.Tensor | None = None,
               callback: Callable[[int], None] | None = None, **unused: Any
               ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Solve from x_T (drawn from N(0, I) with ``noise_generator`` when None) in S model evaluations.

        Returns (latents at t = 0, {"x_inter": [...], "pred_x0": [...]}), intermediates every
        ``log_every_t`` steps and at the last step, after the start x_T. ``step_noise`` is refused
        (nothing is drawn after x_T).
        """
        self.check(S, eta)
        if step_noise is not None:
            raise ValueError("DPM-Solver++ draws no noise after x_T: step_noise does not apply")
        x = start_latent("DPM-Solver++", batch_size, shape, conditioning, x_T, self.model.alphas_cumprod.device,
                         noise_generator, keep_float64=True)
        if self._bounds is not None:  # moved to the chain's device and dtype once, not at every step
            self._bounds = tuple(b.to(device=x.device, dtype=x.dtype) for b in self._bounds)
        all_t = self._all_timesteps(S)
        alphas_cumprod = self.model.alphas_cumprod.detach().double().cpu().numpy()
        coefficients = dpm_solver_coefficients(alphas_cumprod, all_t, self.lower_order_final)
        abar = alphas_cumprod[all_t]
        x0_hat, x0_prev = torch.empty_like(x), torch.empty_like(x)
        ts = torch.empty(batch_size, device=x.device, dtype=torch.long)
        intermediates: dict[str, list[torch.Tensor]] = {"x_inter": [x.clone()], "pred_x0": [x.clone()]}
        iterator = tqdm(range(S), desc=f"DPM-Solver++ ({S} steps)", total=S, disable=not verbose)
        for i in iterator:
            ts.fill_(int(all_t[i]))
            out = self.model.apply_model(x, ts, conditioning)
            x0_hat, x0_prev = x0_prev, x0_hat  # the previous x0_hat moves to x0_prev, its buffer is reused
            predict_start(self.model, x, out.to(x.dtype), float(np.sqrt(abar[i])), float(np.sqrt(1.0 - abar[i])),
                          out=x0_hat)
            if self._bounds is not None:  # the solver's "thresholding" of Lu et al., on a fixed box
                clip_denoised(x0_hat, self._bounds)
            ratio, coef, w0, w1 = coefficients[i]
            x.mul_(ratio).add_(x0_hat, alpha=coef * w0)
            if w1 != 0.0:
                x.add_(x0_prev, alpha=coef * w1)
            if callback is not None:
                callback(i)
            if i % log_every_t == 0 or i == S - 1:
                intermediates["x_inter"].append(x.clone())
                intermediates["pred_x0"].append(x0_hat.clone())
        return x, intermediates
