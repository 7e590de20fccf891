"""Reverse Brownian bridge sampling on a skipped schedule with eta (Li et al., CVPR 2023, Sec. 3.2-3.3).

Sampling starts at the source end, x_T = y, and walks t_1 = T > t_2 > ... > t_S >= 1 -> 0. At each
step from t to s < t the model's output gives x0_hat, and

    x_s = (1 - m_s) x0_hat + m_s y + sqrt((delta_s - sigma^2) / delta_t) (x_t - (1 - m_t) x0_hat - m_t y)
          + sigma z,                     sigma^2 = eta^2 * delta_{t|s} delta_s / delta_t   (BBDM Eq. 7-8)

This is the DDIM-style form of the bridge posterior: with eta = 1 it is exactly q(x_s | x_t, x_0 =
x0_hat, y) (ancestral sampling, BBDM's Algorithm 2 on the skipped grid); with eta = 0 it is
deterministic. For every eta the marginal variance delta_s of x_s given x_0 is preserved.

Deviation from the reference code (xuekt98/BBDM): there the mean uses sqrt((delta_s - delta_tilde) /
delta_t) whatever eta is, and only the added noise is scaled by eta. That agrees with the form above
at eta = 1 (BBDM's default) but for eta < 1 it shrinks the variance of x_s below delta_s; here the
mean coefficient uses sigma^2 = eta^2 delta_tilde so that eta interpolates between two consistent
samplers, as in DDIM.

The last step lands on t = 0, where m_0 = delta_0 = 0, so the formula returns x0_hat itself: the
reference code's special case "at index 0 return x0_recon" falls out of the schedule.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from ldm.modules.diffusionmodules.bridge_schedule import posterior_variance


class BridgeModel(Protocol):
    """What the sampler needs from a bridge model (see :class:`ldm.models.diffusion.bbdm.LatentBrownianBridge`)."""

    num_timesteps: int
    m_t: torch.Tensor       # (T + 1,), index 0 is the data end
    delta_t: torch.Tensor   # (T + 1,)

    def get_source(self, cond: Any) -> torch.Tensor: ...

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor: ...

    def predict_start(self, x_noisy: torch.Tensor, t: torch.Tensor, model_output: torch.Tensor, *,
                      y: torch.Tensor | None = None) -> torch.Tensor: ...


def make_bridge_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
    """The S visited timesteps, descending from T to 1, evenly spaced (BBDM's "linear" skip_sample).

    The sampler steps t_i -> t_{i+1} and finally t_S -> 0, i.e. S evaluations of the denoiser.
    """
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"bridge sampler: steps must be in 1..{num_timesteps} (the model's T), got {num_steps}")
    if num_steps == 1:
        return np.array([num_timesteps], dtype=np.int64)
    # Spacing (T - 1) / (S - 1) >= 1, so rounding keeps the S values distinct.
    return np.round(np.linspace(num_timesteps, 1, num_steps)).astype(np.int64)


def bridge_step(x_t: torch.Tensor, x0_hat: torch.Tensor, y: torch.Tensor, m_t: torch.Tensor, delta_t: torch.Tensor,
                m_s: torch.Tensor, delta_s: torch.Tensor, eta: float,
                noise: torch.Tensor | None = None) -> torch.Tensor:
    """One reverse step x_t -> x_s of the bridge (module docstring); the coefficients broadcast to x_t."""
    var = eta ** 2 * posterior_variance(m_t, delta_t, m_s, delta_s)
    # delta_s - var >= 0 analytically (var <= delta_tilde <= delta_s); the clamp guards float round-off.
    coef = ((delta_s - var) / delta_t).clamp(min=0.0).sqrt()
    x_s = (1.0 - m_s) * x0_hat + m_s * y + coef * (x_t - (1.0 - m_t) * x0_hat - m_t * y)
    if eta == 0:
        return x_s
    if noise is None:
        noise = torch.randn_like(x_t)
    return x_s + var.clamp(min=0.0).sqrt() * noise


class BridgeSampler:
    """Samples a :class:`BridgeModel` from the source end y = model.get_source(cond) to the data end.

    The call is the protocol of :mod:`ldm.samplers.base` (CompVis's DDIMSampler.sample) so that
    scripts can drive any sampler. It runs on the device and in the dtype of the conditioning;
    sample inside ``model.ema_scope()`` to use the EMA weights.
    """

    name = "bridge"
    starts_from_noise = False

    def __init__(self, model: BridgeModel) -> None:
        self.model = model

    @classmethod
    def unsupported(cls, model: Any) -> str | None:
        if not all(hasattr(model, a) for a in ("m_t", "delta_t", "get_source")):
            return (f"the bridge sampler samples a Brownian bridge (a model with m_t, delta_t and get_source); "
                    f"{type(model).__name__} is not one")
        return None

    def check(self, S: int, eta: float) -> None:
        if eta < 0:
            raise ValueError(f"bridge sampler: eta must be >= 0, got {eta}")
        make_bridge_timesteps(self.model.num_timesteps, S)

    def timesteps(self, S: int) -> np.ndarray:
        return make_bridge_timesteps(self.model.num_timesteps, S)

    def _coefficient(self, table: torch.Tensor, t: int, like: torch.Tensor) -> torch.Tensor:
        return table[t].to(device=like.device, dtype=like.dtype).reshape(1, *([1] * (like.dim() - 1)))

    @torch.no_grad()
    def sample(self, S: int, batch_size: int, shape: tuple[int, ...] | None, conditioning: Any, eta: float = 1.0,
               x_T: torch.Tensor | None = None, verbose: bool = True, log_every_t: int = 20,
               noise_generator: torch.Generator | None = None, step_noise: torch.Tensor | None = None,
               **unused: Any) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Run S steps and return (latents, intermediates).

        S: number of denoiser evaluations (visited timesteps, see :func:`make_bridge_timesteps`).
        shape: (C, H, W) of one latent, checked against the source y; None takes y's shape.
        x_T: the start; by default y itself, as in the reference code (the true x_T also holds
            (1 - m_T) x_0 and noise of variance delta_T, both small at m_T = 0.999).
        noise_generator: draws the per-step noise (eta > 0); on the device of the conditioning.
        step_noise: the per-step noise itself, (S, B, C, H, W), instead of drawing it (the slice
            sampler uses per-slice seeded noise so that results do not depend on the batching).
        intermediates: {"x_inter": [...], "pred_x0": [...]} every ``log_every_t`` steps and at the end.
        """
        if eta < 0:
            raise ValueError(f"bridge sampler: eta must be >= 0, got {eta}")
        model = self.model
        y = model.get_source(conditioning)
        if y.dtype in (torch.float16, torch.bfloat16):  # under autocast: keep the chain in float32
            y = y.float()
        if y.shape[0] != batch_size:
            raise ValueError(f"bridge sampler: conditioning gives a source of batch {y.shape[0]}, "
                             f"but batch_size is {batch_size}")
        if shape is not None and tuple(y.shape[1:]) != tuple(shape):
            raise ValueError(f"bridge sampler: requested latent shape {tuple(shape)} differs from the source "
                             f"latent y {tuple(y.shape[1:])} that the conditioning gives")
        x = y.clone() if x_T is None else x_T.to(device=y.device, dtype=y.dtype)
        if x.shape != y.shape:
            raise ValueError(f"bridge sampler: x_T has shape {tuple(x.shape)}, the source y {tuple(y.shape)}")

        timesteps = make_bridge_timesteps(model.num_timesteps, S).tolist()
        if step_noise is not None and tuple(step_noise.shape) != (len(timesteps), *x.shape):
            raise ValueError(f"bridge sampler: step_noise has shape {tuple(step_noise.shape)}, expected "
                             f"{(len(timesteps), *x.shape)} (steps, batch, C, H, W)")
        intermediates: dict[str, list[torch.Tensor]] = {"x_inter": [x], "pred_x0": [x]}
        pairs = list(zip(timesteps, timesteps[1:] + [0]))
        iterator = tqdm(pairs, desc="Brownian bridge sampler", total=len(pairs), disable=not verbose)
        for i, (t, s) in enumerate(iterator):
            t_batch = torch.full((batch_size,), t, device=y.device, dtype=torch.long)
            out = model.apply_model(x, t_batch, conditioning)
            x0_hat = model.predict_start(x, t_batch, out, y=y)
            noise = None
            if eta > 0 and step_noise is not None:
                noise = step_noise[i].to(device=x.device, dtype=x.dtype)
            elif eta > 0:
                noise = torch.randn(x.shape, generator=noise_generator, device=x.device, dtype=x.dtype) \
                    if noise_generator is not None else torch.randn_like(x)
            x = bridge_step(x, x0_hat, y,
                            self._coefficient(model.m_t, t, x), self._coefficient(model.delta_t, t, x),
                            self._coefficient(model.m_t, s, x), self._coefficient(model.delta_t, s, x),
                            eta, noise)
            if (i + 1) % log_every_t == 0 or i == len(pairs) - 1:
                intermediates["x_inter"].append(x)
                intermediates["pred_x0"].append(x0_hat)
        return x, intermediates
