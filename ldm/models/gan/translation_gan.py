"""What the three GAN baselines share: inputs, checks, the two-player optimisation, inference.

Inputs are the latent models' (``ldm.data.training.datasets.CTPMRISlices``): ``batch["ctp"]``
(B, 15, H, W) and ``batch["mri"]`` (B, 2, H, W) = [DWI, ADC], both in [-1, 1] with background -1.
The generator maps CTP to MRI in one pass; :meth:`translate` is the interface that
``ldm.inference`` (scripts/sample_LDM.py) calls instead of a sampler, so a GAN run is sampled into
NIfTI volumes and scored exactly as a latent model's.

Optimisation is manual (Lightning 2.x has no ``optimizer_idx``), one Adam for the generator(s) and
one for the discriminator(s), lr 2e-4 and betas (0.5, 0.999) as the pix2pix / CycleGAN release.
``toggle_optimizer`` switches off the gradients of the other player's weights while a player's loss
is built, so the generator step gives the discriminators no gradient and the discriminator step
(which sees detached fakes) gives the generators none. As for the VQGAN, Lightning's
``trainer.global_step`` counts the ``step()`` of both optimisers, so ``lightning.trainer.max_steps``
is twice the number of batches; :attr:`generator_updates` counts batches (saved in checkpoints).

Gradient accumulation: Lightning refuses ``accumulate_grad_batches`` with manual optimisation, so
``main.py`` moves it onto ``accumulate_grad_batches`` here: losses are scaled by 1/N and the
optimisers step every N batches. Learning rate: constant, or with ``lr_constant_epochs`` set, the
release's "linear" policy: constant for that many epochs, then linearly to 0 over ``lr_decay_epochs``
(pix2pix and CycleGAN: 100 + 100).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from ldm.util import ConfigError, instantiate_from_config
from taming.modules.metrics import psnr_per_channel

MRI_CHANNELS = 2  # [DWI, ADC]: what every model of the project synthesises

# Options of the diffusion models that a GAN config may carry over by mistake (a copied diffusion
# config, or sample_LDM.py overrides): named in the error, since the GAN would otherwise only say
# "takes no parameter".
DIFFUSION_KEYS = frozenset({
    "sampler", "timesteps", "linear_start", "linear_end", "sample_steps", "sample_eta", "log_ddim_steps",
    "ddim_steps", "lesion_mae_ddim_steps", "first_stage_config", "cond_stage_config", "unet_config",
    "source_stage_config", "scale_factor", "scale_by_std", "conditioning_key", "use_ema", "parameterization",
    "objective", "mt_schedule", "initial_noise",
})


def image_size_pair(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``image_size`` as (H, W); an int means a square; anything else is a ConfigError naming the key."""
    sizes = [image_size] * 2 if isinstance(image_size, (int, float)) else list(image_size)
    if len(sizes) != 2 or any(int(s) != s or s < 1 for s in sizes):
        raise ConfigError(f"model.params.image_size must be H W (two positive whole numbers), got {image_size!r}")
    return int(sizes[0]), int(sizes[1])


class TranslationGAN(pl.LightningModule):
    """Base of the GAN baselines: subclasses build their networks and define ``training_step``
    with :meth:`_update`, ``generator_parameters`` and ``discriminator_parameters``.

    generator_config: ``{target, params}`` of the CTP -> MRI generator (``self.generator``).
    image_size: (H, W) of the training slices (checked against the networks and the data).
    lr_constant_epochs, lr_decay_epochs: the linear decay (module docstring); None keeps lr constant.
    betas: Adam's (the release's 0.5, 0.999).
    """

    #: read by ldm.inference: one forward pass per slice, no sampler, no noise
    translates_directly = True

    def __init__(self, generator_config: Mapping, image_size: int | Sequence[int], ctp_key: str = "ctp",
                 mri_key: str = "mri", monitor: str | None = "val/l1", betas: Sequence[float] = (0.5, 0.999),
                 lr_constant_epochs: int | None = None, lr_decay_epochs: int = 0,
                 channel_names: Sequence[str] = ("dwi", "adc")) -> None:
        super().__init__()
        self.image_size = image_size_pair(image_size)
        self.ctp_key, self.mri_key = ctp_key, mri_key
        self.monitor = monitor
        if len(betas) != 2:
            raise ConfigError(f"model.params.betas must be two numbers, got {list(betas)}")
        self.betas = (float(betas[0]), float(betas[1]))
        if lr_constant_epochs is not None and (lr_constant_epochs < 0 or lr_decay_epochs < 0):
            raise ConfigError(f"model.params.lr_constant_epochs and lr_decay_epochs must be >= 0, got "
                              f"{lr_constant_epochs} and {lr_decay_epochs}")
        self.lr_constant_epochs = None if lr_constant_epochs is None else int(lr_constant_epochs)
        self.lr_decay_epochs = int(lr_decay_epochs)
        self.channel_names = tuple(channel_names)
        if len(self.channel_names) != MRI_CHANNELS:
            raise ConfigError(f"model.params.channel_names must name the {MRI_CHANNELS} MRI channels, got "
                              f"{list(self.channel_names)}")
        self.generator = self._build("generator_config", generator_config, out_channels=MRI_CHANNELS)

        self.automatic_optimization = False
        self.accumulate_grad_batches = 1
        self.learning_rate: float | None = None
        self._generator_updates = 0
        self._micro_batches = 0

    # -- construction and checks ----------------------------------------------------------------
    @classmethod
    def unknown_keyword_hint(cls, name: str) -> str | None:
        """Why a config key is wrong, for :func:`ldm.util.instantiate_from_config`'s one line."""
        if name in DIFFUSION_KEYS:
            return (f"{cls.__name__} is a GAN: it translates a slice in one forward pass, so the diffusion "
                    f"option model.params.{name} does not apply; remove it")
        return None

    def _build(self, key: str, config: Mapping, out_channels: int | None = None,
               in_channels: int | None = None) -> nn.Module:
        """Build ``model.params.<key>`` and check its channels and that it takes ``image_size``."""
        if config is None or "target" not in config:
            raise ConfigError(f"model.params.{key} needs a target (a generator or discriminator class)")
        network = instantiate_from_config(config)
        for name, expected in (("out_channels", out_channels), ("in_channels", in_channels)):
            actual = getattr(network, name, None)
            if expected is not None and actual is not None and int(actual) != expected:
                what = "the 2 MRI channels [DWI, ADC]" if name == "out_channels" and expected == MRI_CHANNELS \
                    else f"{expected} channels"
                raise ConfigError(f"model.params.{key}.params.{name} is {actual}: it must be {expected} "
                                  f"({what}, for {type(self).__name__})")
        min_size = network.min_size() if callable(getattr(network, "min_size", None)) else getattr(network, "min_size", 1)
        if min(self.image_size) < int(min_size):
            h, w = self.image_size
            raise ConfigError(f"model.params.image_size {h} x {w}: model.params.{key} ({config['target']}) takes "
                              f"no side below {min_size} pixels; use larger slices or fewer layers")
        return network

    def _check_input(self, x: Any, key: str, channels: int | None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"batch[{key!r}] must be (B, C, H, W), got {shape}")
        if channels is not None and x.shape[1] != channels:
            raise ConfigError(f"batch[{key!r}] has {x.shape[1]} channels but the networks take {channels} "
                              f"(model.params.*.params.in_channels / out_channels)")
        if tuple(x.shape[-2:]) != self.image_size:
            raise ConfigError(f"model.params.image_size is {self.image_size[0]} x {self.image_size[1]} but the data's "
                              f"slices are {x.shape[-2]} x {x.shape[-1]}: set it to the preprocessed size")
        return x.float()

    def get_input(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ctp, mri) of a batch as float tensors, their channels and size checked."""
        for key in (self.ctp_key, self.mri_key):
            if key not in batch:
                raise KeyError(f"batch has no key {key!r} (keys: {', '.join(map(str, batch.keys()))})")
        ctp = self._check_input(batch[self.ctp_key], self.ctp_key, getattr(self.generator, "in_channels", None))
        mri = self._check_input(batch[self.mri_key], self.mri_key, MRI_CHANNELS)
        return ctp, mri

    # -- inference ------------------------------------------------------------------------------
    def translate(self, ctp: torch.Tensor) -> torch.Tensor:
        """CTP (B, T, H, W) in [-1, 1] -> [DWI, ADC] (B, 2, H, W) in [-1, 1]: the generator in one pass.

        The caller sets eval mode: BatchNorm then uses its running statistics and dropout is off, so a
        slice's result does not depend on the batch (the pix2pix release tests in train mode)."""
        return self.generator(ctp)

    def forward(self, ctp: torch.Tensor) -> torch.Tensor:
        return self.translate(ctp)

    # -- optimisation ---------------------------------------------------------------------------
    def generator_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def discriminator_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    @property
    def generator_updates(self) -> int:
        """Generator updates (batches, or groups of accumulated batches) so far."""
        return self._generator_updates

    def _begin_batch(self) -> bool:
        """Count a micro-batch; whether the optimisers step after it (accumulation)."""
        self._micro_batches += 1
        return self._micro_batches % max(1, int(self.accumulate_grad_batches or 1)) == 0

    def _update(self, optimizer, loss: torch.Tensor, step: bool) -> None:
        """Backward ``loss`` (scaled for accumulation) and, when ``step``, update and zero ``optimizer``.
        Call with ``optimizer`` toggled, so that only its parameters receive gradients."""
        self.manual_backward(loss / max(1, int(self.accumulate_grad_batches or 1)))
        if step:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def _end_batch(self, step: bool) -> None:
        if step:
            self._generator_updates += 1

    def on_train_epoch_end(self) -> None:
        schedulers = self.lr_schedulers()
        for scheduler in (schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []):
            scheduler.step()

    def lr_factor(self, epoch: int) -> float:
        """The learning rate's factor in epoch ``epoch`` (from 0; the release's "linear" policy)."""
        if self.lr_constant_epochs is None:
            return 1.0
        return max(0.0, 1.0 - max(0, epoch + 1 - self.lr_constant_epochs) / float(self.lr_decay_epochs + 1))

    def configure_optimizers(self):
        if self.learning_rate is None:
            raise ConfigError(f"{type(self).__name__}.learning_rate is not set (main.py sets it from "
                              f"model.base_learning_rate)")
        lr = float(self.learning_rate)
        opt_g = torch.optim.Adam(self.generator_parameters(), lr=lr, betas=self.betas)
        opt_d = torch.optim.Adam(self.discriminator_parameters(), lr=lr, betas=self.betas)
        if self.lr_constant_epochs is None:
            return [opt_g, opt_d]
        schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor) for opt in (opt_g, opt_d)]
        return [opt_g, opt_d], schedulers

    def _log_train(self, log: dict[str, torch.Tensor], batch_size: int) -> None:
        log = {k: v.detach() for k, v in log.items()}
        self.log("train/loss_g", log.pop("train/loss_g"), prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=batch_size)
        self.log_dict(log, on_step=True, on_epoch=True, batch_size=batch_size)

    # -- validation -----------------------------------------------------------------------------
    def _evaluate(self, batch: Mapping[str, Any], split: str) -> None:
        ctp, mri = self.get_input(batch)
        has_mri = batch.get("has_mri")
        if isinstance(has_mri, torch.Tensor):  # CTP-only patients have no target to score
            ctp, mri = ctp[has_mri.bool()], mri[has_mri.bool()]
        if ctp.shape[0] == 0:
            return
        fake = self.translate(ctp)
        log = {f"{split}/l1": F.l1_loss(fake, mri)}
        for name, value in zip(self.channel_names, psnr_per_channel(mri, fake.clamp(-1.0, 1.0))):
            log[f"{split}/psnr_{name}"] = value
        self.log_dict(log, on_step=False, on_epoch=True, prog_bar=False, batch_size=ctp.shape[0], sync_dist=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], N: int = 4, **kwargs) -> dict[str, torch.Tensor]:
        """{"inputs": the MRI, "samples": the generator's}, (N, 2, H, W) in [-1, 1]."""
        ctp, mri = self.get_input(batch)
        ctp, mri = ctp[:N].to(self.device), mri[:N].to(self.device)
        return {"inputs": mri, "samples": self.translate(ctp).clamp(-1.0, 1.0)}

    # -- checkpoints ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["gan"] = {"generator_updates": self._generator_updates}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._generator_updates = int(checkpoint.get("gan", {}).get("generator_updates", 0))
        self._micro_batches = 0
