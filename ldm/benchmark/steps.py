"""The units of work the benchmark times, built the way training and sampling run them.

A training step is what Lightning does per batch: the model's own loss (``shared_step`` for the
LDM and the post-training, which share ``LatentDiffusion.shared_step``), backward, the optimiser
from the model's ``configure_optimizers``, and the EMA update of ``on_train_batch_end``. The
forward runs inside the same autocast context as Lightning's ``precision: bf16-mixed`` (its
``MixedPrecision`` plugin is used directly); backward and the optimiser run outside it, as in
Lightning's automatic optimisation.

The VQGAN step repeats :meth:`taming.models.vqgan.VQModel.training_step` (manual optimisation)
without a Trainer: autoencoder loss and Adam step with the discriminator's weights switched off,
as ``toggle_optimizer`` does, then the discriminator loss and its Adam step. Its ``training_step``
cannot run without a Trainer (``self.optimizers()``, ``manual_backward``, ``self.log``).

Sampling is the production path of ``scripts/sample_LDM.py``:
:func:`ldm.inference.slice_sampler.make_slice_sampler` (conditioning, the sampler, decoding, clamp).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ldm.inference.slice_sampler import make_slice_sampler
from ldm.precision import precision_context


def _disc(shape: Sequence[int], centre: tuple[float, float], radii: tuple[float, float]) -> torch.Tensor:
    h, w = shape
    yy = torch.linspace(-1.0, 1.0, h)[:, None]
    xx = torch.linspace(-1.0, 1.0, w)[None, :]
    return ((((yy - centre[0]) / radii[0]) ** 2 + ((xx - centre[1]) / radii[1]) ** 2) <= 1.0).float()


def synthetic_batch(batch_size: int, image_size: Sequence[int], device: torch.device | str = "cpu",
                    ctp_channels: int = 15, mri_channels: int = 2, lesion_fraction: float = 0.5,
                    seed: int = 0) -> dict[str, Any]:
    """A batch in the layout of ``CTPMRISlices`` (docs/data.md): values in [-1, 1], background -1.

    The brain is an ellipse; ``lesion_fraction`` of the slices carry a small lesion inside it, so
    that the lesion term of the post-training is exercised. Timing does not depend on the values.
    """
    h, w = (int(image_size[0]), int(image_size[1]))
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    g = torch.Generator().manual_seed(seed)
    brain = _disc((h, w), (0.0, 0.0), (0.8, 0.7))
    mask = brain.expand(batch_size, 1, h, w).clone()
    lesion = torch.zeros(batch_size, 1, h, w)
    for b in range(math.ceil(lesion_fraction * batch_size)):
        cy, cx = (torch.rand(2, generator=g) - 0.5).tolist()
        lesion[b, 0] = _disc((h, w), (0.6 * cy, 0.6 * cx), (0.12, 0.1)) * brain

    def in_brain(channels: int) -> torch.Tensor:
        values = torch.rand(batch_size, channels, h, w, generator=g) * 2.0 - 1.0
        return torch.where(mask.bool(), values, torch.full_like(values, -1.0))

    batch = {"ctp": in_brain(ctp_channels), "mri": in_brain(mri_channels), "mask": mask, "lesion": lesion,
             "patient_id": [f"bench{b:03d}" for b in range(batch_size)], "slice_index": list(range(batch_size))}
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def slice_batch(batch: Mapping[str, Any], n: int) -> dict[str, Any]:
    """The first ``n`` slices of a batch."""
    return {k: v[:n] for k, v in batch.items()}


def model_optimizers(model: Any, learning_rate: float) -> list[torch.optim.Optimizer]:
    """The optimisers of ``model.configure_optimizers()`` (learning rate set as main.py does)."""
    model.learning_rate = float(learning_rate)
    configured = model.configure_optimizers()
    if isinstance(configured, torch.optim.Optimizer):
        return [configured]
    if isinstance(configured, (list, tuple)) and configured and isinstance(configured[0], (list, tuple)):
        return list(configured[0])  # ([optimisers], [schedulers])
    if isinstance(configured, (list, tuple)):
        return list(configured)
    if isinstance(configured, dict):
        return [configured["optimizer"]]
    raise TypeError(f"configure_optimizers returned {type(configured).__name__}, which the benchmark cannot read")


def diffusion_training_step(model: Any, optimizer: torch.optim.Optimizer, batch: Mapping[str, Any],
                            precision: str = "32") -> Callable[[], torch.Tensor]:
    """One training step of a LatentDiffusion (stage 2) or its post-training subclass (stage 3).

    forward (``shared_step``: first-stage encoding, conditioning, loss) -> backward -> optimiser
    -> EMA of the UNet when the model keeps one. Returns the detached loss.
    """
    device = model.device

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with precision_context(device, precision):
            loss, _ = model.shared_step(batch)
        loss.backward()
        optimizer.step()
        if getattr(model, "use_ema", False):
            model.model_ema(model.model)
        return loss.detach()

    model.train()
    return step


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """``requires_grad_(False)`` on ``module`` for the block (Lightning's ``toggle_optimizer``)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def vqgan_training_step(model: Any, optimizers: Sequence[torch.optim.Optimizer], batch: Mapping[str, Any],
                        precision: str = "32") -> Callable[[], torch.Tensor]:
    """One VQGAN step with both optimisers, the discriminator active (as after ``disc_start``)."""
    opt_ae, opt_disc = optimizers
    device = model.device
    x = model.get_input(batch, model.image_key).to(device)
    loss_fn = model.loss
    step_count = max(int(getattr(loss_fn, "discriminator_iter_start", 0)), 0)  # the GAN phase

    def step() -> torch.Tensor:
        with frozen(loss_fn.discriminator):
            with precision_context(device, precision):
                xrec, qloss = model(x)
                aeloss, _ = loss_fn(qloss, x, xrec, 0, step_count, last_layer=model.get_last_layer(),
                                    split="train")
            aeloss.backward()
            opt_ae.step()
            opt_ae.zero_grad(set_to_none=True)
        with precision_context(device, precision):
            discloss, _ = loss_fn(qloss, x, xrec.detach(), 1, step_count, split="train")
        discloss.backward()
        opt_disc.step()
        opt_disc.zero_grad(set_to_none=True)
        return aeloss.detach()

    if not hasattr(loss_fn, "discriminator"):
        raise ValueError("the VQGAN benchmark needs a training loss with a discriminator (lossconfig "
                         "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator)")
    model.train()
    return step


def sampling_step(model: Any, ctp: torch.Tensor, steps: int, precision: str = "32",
                  eta: float = 0.0, sampler: str = "ddim") -> Callable[[], torch.Tensor]:
    """Synthesise [DWI, ADC] for a batch of CTP slices: conditioning, ``steps`` steps of ``sampler``,
    decoding.

    This is ``scripts/sample_LDM.py``'s per-batch work (its slice sampler at ``--precision``, EMA
    weights swapped in once per run and so left out here).
    """
    sampler = make_slice_sampler(model, steps=steps, eta=eta, precision=precision, sampler=sampler)
    device = model.device
    model.eval()

    def noise(shape: Sequence[int]) -> torch.Tensor:
        return torch.randn((ctp.shape[0], *shape), device=device)

    def step() -> torch.Tensor:
        return sampler(ctp, noise)

    return step
