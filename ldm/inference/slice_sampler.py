"""From a batch of CTP slices to synthesised [DWI, ADC] slices with a trained latent model and a sampler.

One slice sampler drives every sampler of :mod:`ldm.samplers` through their common protocol: the
conditioning c~ = model.get_learned_conditioning(ctp), the latent shape (``model.channels`` x c~'s
spatial size), x_T from the per-slice seeded ``noise`` for samplers that start from noise (DDIM,
DPM-Solver++; a bridge starts from its source y), the per-step noise (eta > 0) drawn per slice as
well, so that a slice's result does not depend on the batching, and the decoder.
``precision="bf16-mixed"`` runs the networks (UNet and decoder) under bf16 autocast (Lightning's
forward context, as in training); the samplers' state and the returned images stay float32.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence

import torch

from ldm.modules.diffusionmodules.util import INITIAL_NOISE, zero_mean_per_channel
from ldm.precision import PRECISIONS, precision_context
from ldm.samplers import make_sampler

NoiseFn = Callable[[Sequence[int]], torch.Tensor]


class SliceSampler:
    """``sampler(ctp (B, 15, H, W), noise) -> (B, 2, H, W)`` images in [-1, 1].

    sampler: a name of :data:`ldm.samplers.SAMPLERS` or a ``{target, params}`` node; None takes the
        model's configured sampler (``model.sampler_spec``; DDIM for a model without one).
    steps, eta: the sampler's; eta None takes a bridge model's ``sample_eta`` (else 0).
    initial_noise: ``"zero_mean"`` (default) starts from x_T with its spatial mean removed per
        channel (:func:`~ldm.modules.diffusionmodules.util.zero_mean_per_channel`: the sample's
        brightness no longer follows the mean of the drawn noise); ``"gaussian"`` uses x_T as
        drawn, as CompVis and the reference do. Ignored by samplers that do not start from noise.
    """

    def __init__(self, model: torch.nn.Module, steps: int = 200, eta: float | None = 0.0,
                 initial_noise: str = "zero_mean", sampler: str | Mapping | None = None) -> None:
        if initial_noise not in INITIAL_NOISE:
            raise ValueError(f"initial noise must be one of {INITIAL_NOISE}, got {initial_noise!r}")
        self.model, self.steps = model, int(steps)
        self.eta = float(eta if eta is not None else getattr(model, "sample_eta", 0.0))
        self.initial_noise = initial_noise
        self.sampler = make_sampler(sampler if sampler is not None else getattr(model, "sampler_spec", "ddim"), model)
        self.sampler.check(self.steps, self.eta)  # bad steps / eta fail here, before any work
        self.n_evaluations = len(self.sampler.timesteps(self.steps))

    @property
    def name(self) -> str:
        return str(self.sampler.name)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def ema_scope(self) -> contextlib.AbstractContextManager:
        """The model's EMA weights for the whole run, when it has them."""
        if getattr(self.model, "use_ema", False) and hasattr(self.model, "ema_scope"):
            return self.model.ema_scope("sampling")
        return contextlib.nullcontext()

    @torch.inference_mode()
    def __call__(self, ctp: torch.Tensor, noise: NoiseFn) -> torch.Tensor:
        """``noise(shape)`` returns per-slice seeded standard normal noise (B, *shape): x_T with shape
        = (C, h, w) of the latent, and with eta > 0 the per-step noise, (S, C, h, w) per slice."""
        cond = self.model.get_learned_conditioning(ctp.to(self.device))
        shape = (int(self.model.channels), *cond.shape[-2:])
        x_T = None
        if self.sampler.starts_from_noise:
            x_T = noise(shape).to(self.device)
            if self.initial_noise == "zero_mean":
                x_T = zero_mean_per_channel(x_T)
        step_noise = None
        if self.eta > 0:  # a sampler that takes eta > 0 takes its noise as step_noise (ldm.samplers.base)
            step_noise = noise((self.n_evaluations, *shape)).transpose(0, 1).to(self.device)
        latents, _ = self.sampler.sample(S=self.steps, batch_size=ctp.shape[0], shape=shape, conditioning=cond,
                                         eta=self.eta, x_T=x_T, verbose=False, step_noise=step_noise)
        # the decoder can overshoot slightly; the inverse normalisation is defined on [-1, 1]
        return self.model.decode_first_stage(latents.float()).clamp(-1.0, 1.0)


class AutocastSliceSampler:
    """A slice sampler whose networks run under a precision's autocast; float32 images out."""

    def __init__(self, sampler: "SliceSampler | DirectSliceSampler", precision: str) -> None:
        if precision not in PRECISIONS:  # fail here, before any work
            raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
        self.sampler, self.precision = sampler, precision

    @property
    def name(self) -> str:
        return self.sampler.name

    @property
    def device(self) -> torch.device:
        return self.sampler.device

    def ema_scope(self) -> contextlib.AbstractContextManager:
        return self.sampler.ema_scope()

    def __call__(self, ctp: torch.Tensor, noise: NoiseFn) -> torch.Tensor:
        with precision_context(self.device, self.precision):
            return self.sampler(ctp, noise).float()


class DirectSliceSampler:
    """A model that maps CTP to MRI in one forward pass (the GAN baselines, ``ldm.models.gan``: their
    ``translates_directly`` and ``translate(ctp)``), behind the slice sampler's interface: no sampler,
    no latent, no noise (``noise`` is ignored), so the volumes do not depend on the seed."""

    name = "direct"

    def __init__(self, model: torch.nn.Module) -> None:
        if not callable(getattr(model, "translate", None)):
            raise ValueError(f"{type(model).__name__} has no translate(ctp) method")
        self.model = model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def ema_scope(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    @torch.inference_mode()
    def __call__(self, ctp: torch.Tensor, noise: NoiseFn | None = None) -> torch.Tensor:
        # the generator ends in tanh; the clamp only guards the inverse normalisation's domain
        return self.model.translate(ctp.to(self.device)).float().clamp(-1.0, 1.0)


def translates_directly(model: object) -> bool:
    """Whether ``model`` (or its class) synthesises in one pass, without a sampler (the GANs)."""
    return bool(getattr(model, "translates_directly", False))


def make_slice_sampler(model: torch.nn.Module, steps: int, eta: float | None, precision: str = "32",
                       initial_noise: str = "zero_mean", sampler: str | Mapping | None = None
                       ) -> SliceSampler | AutocastSliceSampler | DirectSliceSampler:
    """The slice sampler for ``model`` with ``sampler`` (default: the model's configured one), under
    bf16 autocast with ``precision="bf16-mixed"``. A model that translates directly (a GAN) gets a
    :class:`DirectSliceSampler`; ``steps``, ``eta`` and ``initial_noise`` do not apply to it, and a
    ``sampler`` is refused."""
    if translates_directly(model):
        if sampler is not None:
            raise ValueError(f"{type(model).__name__} translates a slice in one forward pass and takes no sampler "
                             f"(got {sampler!r})")
        slice_sampler = DirectSliceSampler(model)
    else:
        slice_sampler = SliceSampler(model, steps=steps, eta=eta, initial_noise=initial_noise, sampler=sampler)
    return slice_sampler if precision in ("32", "32-true") else AutocastSliceSampler(slice_sampler, precision)
