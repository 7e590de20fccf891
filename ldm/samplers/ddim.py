"""DDIM sampling (Song et al., ICLR 2021) for a trained DDPM / LatentDiffusion.

One step from the visited timestep t to the next lower one s (Eq. 12 of Song et al.):

    x0_hat = (x_t - sqrt(1 - a_t) eps_theta(x_t, t, c)) / sqrt(a_t)                    (paper Eq. 5)
    x_s    = sqrt(a_s) x0_hat + sqrt(1 - a_s - sigma_t^2) eps_theta + sigma_t z,  z ~ N(0, I)
    sigma_t = eta * sqrt((1 - a_s) / (1 - a_t)) * sqrt(1 - a_t / a_s)

with a = abar of the model's schedule (an x0-prediction model gives x0_hat itself and eps follows
from it; a v-prediction model gives x0_hat = sqrt(a_t) x_t - sqrt(1 - a_t) v and eps = sqrt(1 - a_t) x_t
+ sqrt(a_t) v). With ``clip_x0`` x0_hat is clipped to the model's
``denoised_range()`` and eps recomputed from it before the step (docs/sampling.md, *Clipping
x0_hat*; off by default, as in CompVis and the reference). eta = 0 is deterministic DDIM; eta = 1 over every
timestep is ancestral DDPM sampling. The visited timesteps are CompVis's (see
:func:`ldm.modules.diffusionmodules.schedules.make_ddim_timesteps`), so a CompVis-trained model
samples the same.

The sampler is independent of training (the protocol of :mod:`ldm.samplers.base`): it calls
``model.apply_model(x, t, cond)`` and reads ``model.alphas_cumprod``, ``model.num_timesteps`` and
``model.parameterization``. It runs on the
device of the model's schedule buffers, under ``torch.inference_mode``, with its per-step buffers
(x, x0_hat, noise, the timestep tensor) allocated once per call and updated in place; step
coefficients are Python floats computed once in float64. The tensors it returns are inference
tensors: ``clone()`` them before modifying them in place outside inference mode.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ldm.modules.diffusionmodules.schedules import make_ddim_sampling_parameters, make_ddim_timesteps
from ldm.samplers.base import (clip_denoised, denoised_bounds, noise_schedule_unsupported, predict_start,
                                start_latent)


class DDIMSampler:
    """``DDIMSampler(model).sample(S, batch_size, shape, conditioning, eta=0.0, ...)`` -> (latents, intermediates)."""

    name = "ddim"
    starts_from_noise = True

    def __init__(self, model: Any, schedule: str = "linear", clip_x0: bool = False, **kwargs: Any) -> None:
        self.model = model
        self.clip_x0 = bool(clip_x0)
        self._bounds = denoised_bounds(self.name, model) if self.clip_x0 else None
        self.ddpm_num_timesteps = int(model.num_timesteps)
        if schedule != "linear":
            warnings.warn(f"DDIMSampler(schedule={schedule!r}) has no effect: the model's own noise schedule is "
                          f"used (the argument is accepted for CompVis callers)", stacklevel=2)
        self.schedule = schedule
        self._schedule_key: tuple | None = None

    @classmethod
    def unsupported(cls, model: Any) -> str | None:
        return noise_schedule_unsupported("DDIM", model)

    def check(self, S: int, eta: float) -> None:
        self.make_schedule(S, ddim_eta=eta)

    def timesteps(self, S: int) -> np.ndarray:
        """The visited timesteps, descending (CompVis's uniform rule, module docstring)."""
        return np.flip(make_ddim_timesteps("uniform", S, self.ddpm_num_timesteps, False)).copy()

    def make_schedule(self, ddim_num_steps: int, ddim_discretize: str = "uniform", ddim_eta: float = 0.0,
                      verbose: bool = False) -> None:
        """Visited timesteps and their coefficients (as numpy float64 arrays: ``ddim_timesteps``,
        ``ddim_alphas``, ``ddim_alphas_prev``, ``ddim_sigmas``, ``ddim_sqrt_one_minus_alphas``)."""
        key = (ddim_num_steps, ddim_discretize, float(ddim_eta))
        if key == self._schedule_key:
            return
        if ddim_eta < 0:
            raise ValueError(f"DDIM eta must be >= 0, got {ddim_eta}")
        self.ddim_timesteps = make_ddim_timesteps(ddim_discretize, ddim_num_steps, self.ddpm_num_timesteps, verbose)
        alphas_cumprod = self.model.alphas_cumprod.detach().double().cpu().numpy()
        if alphas_cumprod.shape[0] != self.ddpm_num_timesteps:
            raise ValueError(f"model.alphas_cumprod has {alphas_cumprod.shape[0]} entries for "
                             f"{self.ddpm_num_timesteps} timesteps")
        self.ddim_sigmas, self.ddim_alphas, self.ddim_alphas_prev = make_ddim_sampling_parameters(
            alphas_cumprod, self.ddim_timesteps, ddim_eta, verbose)
        self.ddim_sqrt_one_minus_alphas = np.sqrt(1.0 - self.ddim_alphas)
        self._schedule_key = key

    def _coefficients(self, index: int) -> tuple[float, float, float, float, float]:
        """(sqrt a_t, sqrt(1 - a_t), sqrt a_s, sqrt(1 - a_s - sigma^2), sigma) of step ``index``."""
        a_t, a_s, sigma = self.ddim_alphas[index], self.ddim_alphas_prev[index], self.ddim_sigmas[index]
        return (float(np.sqrt(a_t)), float(np.sqrt(1.0 - a_t)), float(np.sqrt(a_s)),
                float(np.sqrt(max(1.0 - a_s - sigma ** 2, 0.0))), float(sigma))

    def _ddim_update(self, x: torch.Tensor, model_output: torch.Tensor, index: int, pred_x0: torch.Tensor,
                     noise: torch.Tensor | None, temperature: float, noise_dropout: float,
                     generator: torch.Generator | None, given_noise: torch.Tensor | None = None) -> None:
        """One DDIM step (module docstring) in place: ``x`` becomes x_s and ``pred_x0`` x0_hat."""
        sqrt_a, sqrt_1m_a, sqrt_a_prev, dir_coef, sigma = self._coefficients(index)
        parameterization = getattr(self.model, "parameterization", "eps")
        predict_start(self.model, x, model_output, sqrt_a, sqrt_1m_a, out=pred_x0)
        if self._bounds is not None or parameterization == "x0":
            # the direction follows x0_hat, clipped when asked (diffusers' DDIMScheduler)
            if self._bounds is not None:
                clip_denoised(pred_x0, self._bounds)
            e_t = (x - sqrt_a * pred_x0) / sqrt_1m_a
        elif parameterization == "v":  # eps = sqrt(1 - a) x + sqrt(a) v: no division by a small sqrt(1 - a)
            e_t = x * sqrt_1m_a + model_output * sqrt_a
        else:
            e_t = model_output
        x.copy_(pred_x0).mul_(sqrt_a_prev).add_(e_t, alpha=dir_coef)
        if sigma > 0 and temperature > 0:
            if given_noise is not None:
                noise.copy_(given_noise)
            else:
                noise.normal_(generator=generator)
            dropped = F.dropout(noise, p=noise_dropout) if noise_dropout > 0 else noise
            x.add_(dropped, alpha=sigma * temperature)

    @torch.inference_mode()
    def p_sample_ddim(self, x: torch.Tensor, c: Any, t: torch.Tensor, index: int, temperature: float = 1.0,
                      noise_dropout: float = 0.0, noise_generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from x_t (timestep ``t``, position ``index`` in the schedule) -> (x_prev, x0_hat).

        Call :meth:`make_schedule` first. ``x`` is not modified.
        """
        x_prev, pred_x0 = x.clone(), torch.empty_like(x)
        out = self.model.apply_model(x, t, c)
        self._ddim_update(x_prev, out, index, pred_x0, torch.empty_like(x), temperature, noise_dropout,
                          noise_generator)
        return x_prev, pred_x0

    def _device(self) -> torch.device:
        return self.model.alphas_cumprod.device

    @torch.inference_mode()
    def sample(self, S: int, batch_size: int, shape: tuple[int, ...], conditioning: Any = None, eta: float = 0.0,
               x_T: torch.Tensor | None = None, verbose: bool = True, callback: Callable[[int], None] | None = None,
               img_callback: Callable[[torch.Tensor, int], None] | None = None, log_every_t: int = 100,
               ddim_discretize: str = "uniform", temperature: float = 1.0, noise_dropout: float = 0.0,
               noise_generator: torch.Generator | None = None, step_noise: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        """Sample a batch of latents of ``shape`` = (C, H, W) in S DDIM steps.

        conditioning: what ``model.apply_model`` takes as ``cond`` (for the LDM, c~ =
            model.get_learned_conditioning(ctp)); its batch must be ``batch_size``.
        x_T: the start noise (B, C, H, W); drawn from N(0, I) (with ``noise_generator``) when None.
        noise_generator: a torch.Generator on the model's device for x_T and the eta > 0 noise.
        step_noise: the eta > 0 noise itself, (S, B, C, H, W), instead of drawing it (the slice
            sampler draws it per slice so that results do not depend on the batching).
        callback(i) and img_callback(x0_hat, i) are called after step i.
        Returns (latents, {"x_inter": [...], "pred_x0": [...]}), intermediates every
        ``log_every_t`` steps and at the last step, after the start x_T.
        """
        self.make_schedule(S, ddim_discretize=ddim_discretize, ddim_eta=eta, verbose=False)
        device = self._device()
        x = start_latent("DDIM", batch_size, shape, conditioning, x_T, device, noise_generator)
        if self._bounds is not None:  # moved to the chain's device and dtype once, not at every step
            self._bounds = tuple(b.to(device=x.device, dtype=x.dtype) for b in self._bounds)
        size = tuple(x.shape)
        pred_x0 = torch.empty_like(x)
        noise = torch.empty_like(x) if eta > 0 else None
        ts = torch.empty(batch_size, device=device, dtype=torch.long)
        intermediates: dict[str, list[torch.Tensor]] = {"x_inter": [x.clone()], "pred_x0": [x.clone()]}

        timesteps = self.ddim_timesteps
        total_steps = len(timesteps)
        if step_noise is not None and tuple(step_noise.shape) != (total_steps, *size):
            raise ValueError(f"DDIM: step_noise has shape {tuple(step_noise.shape)}, expected "
                             f"{(total_steps, *size)} (steps, batch, C, H, W)")
        iterator = tqdm(np.flip(timesteps), desc=f"DDIM sampler ({total_steps} steps)", total=total_steps,
                        disable=not verbose)
        for i, step in enumerate(iterator):
            index = total_steps - i - 1
            ts.fill_(int(step))
            model_output = self.model.apply_model(x, ts, conditioning)
            self._ddim_update(x, model_output, index, pred_x0, noise, temperature, noise_dropout, noise_generator,
                              None if step_noise is None else step_noise[i])
            if callback is not None:
                callback(i)
            if img_callback is not None:
                img_callback(pred_x0.clone(), i)
            if index % log_every_t == 0 or index == total_steps - 1:
                intermediates["x_inter"].append(x.clone())
                intermediates["pred_x0"].append(pred_x0.clone())
        return x, intermediates
