"""What every sampler offers: the protocol that models, scripts and the slice sampler call.

A sampler is built around a trained model, ``Sampler(model)``, and knows nothing of training. It
reads what it needs from the model (the schedule buffers, ``apply_model``) and returns latents;
decoding is the caller's. The call is CompVis's ``DDIMSampler.sample`` for every sampler, so a
script written for DDIM drives any of them:

    latents, intermediates = sampler.sample(S, batch_size, shape, conditioning, eta=0.0, x_T=None,
                                            verbose=True, log_every_t=100, noise_generator=None,
                                            step_noise=None)

and ``sampler.timesteps(S)`` gives the S timesteps at which the denoiser is evaluated, in the
order visited (descending), so that a schedule can be checked without running the model.

``starts_from_noise`` tells the callers (ldm.inference.slice_sampler) whether to pass x_T (False
for a bridge, which starts at its source y). A sampler that runs with eta > 0 takes its per-step
noise as ``step_noise`` (S, B, C, H, W), so that callers can draw it per slice; one that cannot run
with eta > 0 refuses it in ``check``.
"""
from __future__ import annotations

from typing import Any, ClassVar, Protocol

import numpy as np
import torch

from ldm.util import ConfigError


class LatentSampler(Protocol):
    name: ClassVar[str]
    starts_from_noise: ClassVar[bool]
    model: Any

    @classmethod
    def unsupported(cls, model: Any) -> str | None:
        """Why this sampler cannot sample ``model`` (None when it can)."""

    def check(self, S: int, eta: float) -> None:
        """Raise ValueError for a step count or eta this sampler cannot run, before any work."""

    def timesteps(self, S: int) -> np.ndarray:
        """The S timesteps at which the denoiser is evaluated, in the order visited."""

    def sample(self, S: int, batch_size: int, shape: tuple[int, ...] | None, conditioning: Any, eta: float = 0.0,
               x_T: torch.Tensor | None = None, verbose: bool = True, log_every_t: int = 100,
               noise_generator: torch.Generator | None = None, step_noise: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """(latents, {"x_inter": [...], "pred_x0": [...]})."""


def noise_schedule_unsupported(name: str, model: Any) -> str | None:
    """The check of samplers for a Gaussian diffusion (DDIM, DPM-Solver++): the model has
    ``alphas_cumprod`` and predicts eps, x0 or v."""
    if not hasattr(model, "alphas_cumprod"):
        return (f"{name} samples a Gaussian diffusion (a model with alphas_cumprod); "
                f"{type(model).__name__} has none")
    parameterization = getattr(model, "parameterization", "eps")
    if parameterization not in ("eps", "x0", "v"):
        return f"{name} takes an eps-, x0- or v-prediction model, {type(model).__name__} predicts {parameterization!r}"
    return None


def start_latent(name: str, batch_size: int, shape: tuple[int, ...], conditioning: Any, x_T: torch.Tensor | None,
                 device: torch.device, generator: torch.Generator | None = None,
                 keep_float64: bool = False) -> torch.Tensor:
    """The chain's state at its start for a sampler that starts from noise: a float32 copy of x_T on
    ``device`` (float64 kept with ``keep_float64``), or N(0, I) drawn with ``generator``; the
    conditioning's batch and x_T's shape are checked (``name`` names the sampler in the message)."""
    if isinstance(conditioning, torch.Tensor) and conditioning.shape[0] != batch_size:
        raise ValueError(f"{name}: conditioning has batch {conditioning.shape[0]} but batch_size is {batch_size}")
    size = (batch_size, *shape)
    if x_T is None:
        return torch.randn(size, device=device, generator=generator)
    if tuple(x_T.shape) != size:
        raise ValueError(f"{name}: x_T has shape {tuple(x_T.shape)}, expected {size}")
    dtype = torch.float64 if keep_float64 and x_T.dtype == torch.float64 else torch.float32
    return x_T.to(device=device, dtype=dtype, copy=True)


def predict_start(model: Any, x: torch.Tensor, model_output: torch.Tensor, sqrt_a: float, sqrt_1m_a: float,
                  out: torch.Tensor) -> torch.Tensor:
    """x0_hat into ``out`` from the model's output at a timestep with abar = a (paper Eq. 5 for eps;
    sqrt(a) x - sqrt(1 - a) v for v)."""
    parameterization = getattr(model, "parameterization", "eps")
    if parameterization == "x0":
        return out.copy_(model_output)
    if parameterization == "v":
        return torch.mul(x, sqrt_a, out=out).sub_(model_output, alpha=sqrt_1m_a)
    return torch.sub(x, model_output, alpha=sqrt_1m_a, out=out).div_(sqrt_a)


def denoised_bounds(name: str, model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi), broadcastable to a latent batch: the box x0_hat is clipped to with ``clip_x0``
    (``model.denoised_range()``: the codebook's per-channel range for a VQ latent model, [-1, 1] in
    pixel space). A model without one is refused, naming the sampler."""
    bounds = model.denoised_range() if callable(getattr(model, "denoised_range", None)) else None
    if bounds is None:
        raise ConfigError(f"sampler {name!r} with clip_x0: {type(model).__name__} has no range to clip x0_hat to "
                          f"(a VQ first stage's codebook gives one; a KL first stage does not): set clip_x0 false")
    return bounds


def clip_denoised(x0_hat: torch.Tensor, bounds: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """x0_hat clipped in place to the box ``bounds`` (docs/sampling.md, *Clipping x0_hat*)."""
    lo, hi = (b.to(device=x0_hat.device, dtype=x0_hat.dtype) for b in bounds)
    return x0_hat.clamp_(min=lo, max=hi)
