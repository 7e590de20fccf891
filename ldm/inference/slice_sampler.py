"""From a batch of CTP slices to synthesised [DWI, ADC] slices with a trained latent diffusion model.

The conditional LDM concatenates the rescaled CTP c~ with z_t, so the latent has c~'s spatial size
and ``model.channels`` channels. DDIM (Song et al., 2021) starts from the x_T it is given: with
eta = 0 the result is a deterministic function of (CTP, x_T), hence of the per-slice seeds. With
eta > 0 DDIM also draws fresh noise at every step for the whole batch from one generator; it is
seeded per batch (``step_seed``), so such a run is reproducible for a fixed batch size but depends
on the batching.

Another model family (e.g. a Brownian bridge) plugs in by giving its model a
``make_slice_sampler(steps, eta)`` method that returns a callable with the same signature as
:class:`DDIMSliceSampler`. ``precision="bf16-mixed"`` runs either family's networks under bf16
autocast (Lightning's forward context, as in training); the latent state of the sampler and the
returned images stay float32.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

from ldm.precision import PRECISIONS, precision_context

NoiseFn = Callable[[Sequence[int]], torch.Tensor]


class DDIMSliceSampler:
    """``sampler(ctp (B, 15, H, W), noise) -> (B, 2, H, W)`` images in [-1, 1].

    ``initial_noise="zero_mean"`` (default) starts DDIM from x_T with its spatial mean removed per
    channel (:func:`~ldm.modules.diffusionmodules.util.zero_mean_per_channel`: the sample's
    brightness no longer follows the mean of the drawn noise); ``"gaussian"`` uses x_T as drawn,
    as CompVis and the reference do.
    """

    def __init__(self, model: torch.nn.Module, steps: int = 200, eta: float = 0.0,
                 initial_noise: str = "zero_mean"):
        from ldm.models.diffusion.ddim import DDIMSampler
        from ldm.modules.diffusionmodules.util import INITIAL_NOISE

        if initial_noise not in INITIAL_NOISE:
            raise ValueError(f"initial noise must be one of {INITIAL_NOISE}, got {initial_noise!r}")
        self.model, self.steps, self.eta = model, int(steps), float(eta)
        self.initial_noise = initial_noise
        self.sampler = DDIMSampler(model)
        self.sampler.make_schedule(self.steps, ddim_eta=self.eta)  # bad steps / eta fail here, before any work

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def ema_scope(self) -> contextlib.AbstractContextManager:
        """The model's EMA weights for the whole run, when it has them."""
        if getattr(self.model, "use_ema", False) and hasattr(self.model, "ema_scope"):
            return self.model.ema_scope("sampling")
        return contextlib.nullcontext()

    @torch.inference_mode()
    def __call__(self, ctp: torch.Tensor, noise: NoiseFn, step_seed: int | None = None) -> torch.Tensor:
        """``noise(shape)`` returns the (B, *shape) x_T for this batch, shape = (C, h, w) of the latent;
        ``step_seed`` seeds DDIM's per-step noise when eta > 0."""
        cond = self.model.get_learned_conditioning(ctp.to(self.device))
        shape = (int(self.model.channels), *cond.shape[-2:])
        x_T = noise(shape).to(self.device)
        if self.initial_noise == "zero_mean":
            from ldm.modules.diffusionmodules.util import zero_mean_per_channel

            x_T = zero_mean_per_channel(x_T)
        extra = {}
        if self.eta > 0 and step_seed is not None:
            extra["noise_generator"] = torch.Generator(device=self.device).manual_seed(step_seed)
        latents, _ = self.sampler.sample(S=self.steps, batch_size=ctp.shape[0], shape=shape,
                                         conditioning=cond, eta=self.eta, x_T=x_T, verbose=False, **extra)
        # the decoder can overshoot slightly; the inverse normalisation is defined on [-1, 1]
        return self.model.decode_first_stage(latents).clamp(-1.0, 1.0)


class AutocastSliceSampler:
    """A slice sampler whose networks run under a precision's autocast; float32 images out."""

    def __init__(self, sampler: Callable, precision: str) -> None:
        if precision not in PRECISIONS:  # fail here, before any work
            raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
        self.sampler, self.precision = sampler, precision

    @property
    def device(self) -> torch.device:
        return self.sampler.device

    def ema_scope(self) -> contextlib.AbstractContextManager:
        return self.sampler.ema_scope()

    def __call__(self, ctp: torch.Tensor, noise: NoiseFn, step_seed: int | None = None) -> torch.Tensor:
        with precision_context(self.device, self.precision):
            return self.sampler(ctp, noise, step_seed=step_seed).float()


def make_slice_sampler(model: torch.nn.Module, steps: int, eta: float, precision: str = "32",
                       initial_noise: str = "zero_mean") -> Callable:
    """The model's own slice sampler if it defines one (a Brownian bridge starts from its source, not
    from noise: ``initial_noise`` does not apply), else DDIM for a LatentDiffusion; under bf16
    autocast with ``precision="bf16-mixed"``."""
    if hasattr(model, "make_slice_sampler"):
        sampler = model.make_slice_sampler(steps=steps, eta=eta)
    else:
        sampler = DDIMSliceSampler(model, steps=steps, eta=eta, initial_noise=initial_noise)
    return sampler if precision in ("32", "32-true") else AutocastSliceSampler(sampler, precision)
