"""The VQGAN autoencoder as a Lightning 2.x module (CompVis ``VQModel``; stage 1 of the paper).

x = [DWI, ADC] (B, 2, H, W) in [-1, 1] -> Encoder -> quant_conv -> VectorQuantizer -> post_quant_conv
-> Decoder -> x_rec. The LDM later works in the quantiser's input space (``VQModelInterface``).

Training uses manual optimisation (Lightning 2.x has no ``optimizer_idx``): per batch an autoencoder
step and, from ``disc_start`` on, a discriminator step, each with its own Adam (betas 0.5, 0.9).

Steps. CompVis's ``disc_start`` counts autoencoder updates (Lightning 1.x's global_step with
``accumulate_grad_batches``). Lightning 2.x's ``trainer.global_step`` counts the ``step()`` calls of
*every* optimiser, so once the discriminator trains it advances by 2 per update. This module keeps
its own count of autoencoder updates (:attr:`generator_step`, saved in checkpoints) and compares
``disc_start`` with it. Remember that a ``max_steps`` in the trainer config counts both optimisers.

Gradient accumulation: Lightning refuses ``accumulate_grad_batches`` with manual optimisation, so
``main.py`` moves it onto this model's ``accumulate_grad_batches`` attribute: losses are scaled by
1/N and the optimisers step and zero every N batches.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from ldm.optim import adam
from ldm.util import ConfigError, instantiate_from_config
from taming.models.checkpoint import load_autoencoder_weights
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.metrics import psnr_per_channel
from taming.modules.vqvae.codebook_usage import CodeUsage, code_counts, perplexity_from_counts
from taming.modules.vqvae.quantize import VectorQuantizer


def _build_loss(lossconfig: Mapping | None) -> nn.Module:
    if lossconfig is None:
        return nn.Identity()
    return instantiate_from_config(lossconfig)


class VQModel(pl.LightningModule):
    """CompVis ``VQModel`` (keys ``encoder.*``, ``decoder.*``, ``quantize.embedding.weight``,
    ``quant_conv.*``, ``post_quant_conv.*``, ``loss.discriminator.*``).

    Beyond CompVis: ``beta`` and ``legacy`` of the quantiser; ``reinit_unused_codes`` (re-initialise
    codes unused during the last ``reinit_every`` autoencoder updates from recent encoder outputs);
    ``channel_names`` for the per-channel PSNR logs; ``channels_last`` memory format.
    """

    #: batches over which the training codebook usage is counted before it is logged
    train_usage_window = 100

    def __init__(self, ddconfig: Mapping[str, Any], lossconfig: Mapping | None, n_embed: int, embed_dim: int,
                 ckpt_path: str | None = None, ignore_keys: Iterable[str] = (), image_key: str = "mri",
                 monitor: str | None = None, remap: str | None = None, sane_index_shape: bool = False,
                 beta: float = 0.25, legacy: bool = True, reinit_unused_codes: bool = False,
                 reinit_every: int = 200, channel_names: Sequence[str] | None = None,
                 channels_last: bool = False) -> None:
        super().__init__()
        ddconfig = dict(ddconfig)
        if ddconfig.get("double_z", True):
            raise ConfigError("VQModel needs ddconfig double_z: false (the quantiser takes z_channels)")
        self.image_key = image_key
        self.n_embed, self.embed_dim = int(n_embed), int(embed_dim)
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.loss = _build_loss(lossconfig)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=beta, remap=remap,
                                        sane_index_shape=sane_index_shape, legacy=legacy,
                                        reinit_unused_codes=reinit_unused_codes)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self._check_loss_matches(ddconfig)
        self.monitor = monitor
        self.reinit_every = int(reinit_every)
        out_ch = int(ddconfig["out_ch"])
        default_names = ("dwi", "adc") if out_ch == 2 else tuple(f"ch{i}" for i in range(out_ch))
        self.channel_names = tuple(channel_names) if channel_names is not None else default_names
        if len(self.channel_names) != out_ch:
            raise ConfigError(f"channel_names {list(self.channel_names)} do not name the {out_ch} output channels")
        self.channels_last = bool(channels_last)

        self.automatic_optimization = False
        self.accumulate_grad_batches = 1
        self.learning_rate: float | None = None
        self._generator_steps = 0
        self._micro_batches = 0
        self._train_usage = CodeUsage(self.n_embed)
        self._val_usage = CodeUsage(self.n_embed)

        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def _check_loss_matches(self, ddconfig: Mapping[str, Any]) -> None:
        disc = getattr(self.loss, "discriminator", None)
        if disc is not None and disc.main[0].in_channels != ddconfig["out_ch"]:
            raise ConfigError(f"lossconfig disc_in_channels ({disc.main[0].in_channels}) differs from "
                              f"ddconfig out_ch ({ddconfig['out_ch']})")

    def init_from_ckpt(self, path: str, ignore_keys: Iterable[str] = ()) -> None:
        load_autoencoder_weights(self, path, ignore_keys)

    # -- the autoencoder ---------------------------------------------------------------------
    # encode/decode are the public API (VQModelInterface redefines them for the LDM); the round trip
    # of training, validation and log_images uses the quantised path below in either class.
    def _encode_quantized(self, x: torch.Tensor):
        return self.quantize(self.quant_conv(self.encoder(x)))

    def _decode_quantized(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))

    def encode(self, x: torch.Tensor):
        """x -> (quant, codebook loss, (perplexity, None, indices))."""
        return self._encode_quantized(x)

    def encode_to_prequant(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self._decode_quantized(quant)

    def decode_code(self, code_b: torch.Tensor) -> torch.Tensor:
        """Code indices (B, h, w) -> images."""
        if code_b.dim() != 3:
            raise ValueError(f"decode_code expects code indices (B, h, w), got {tuple(code_b.shape)}")
        b, h, w = code_b.shape
        quant = self.quantize.get_codebook_entry(code_b.reshape(-1), (b, h, w, self.embed_dim))
        return self._decode_quantized(quant)

    def forward(self, input: torch.Tensor, return_pred_indices: bool = False):
        quant, diff, (_, _, ind) = self._encode_quantized(input)
        dec = self._decode_quantized(quant)
        return (dec, diff, ind) if return_pred_indices else (dec, diff)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute decoder activations in backward (post-training decodes with gradients)."""
        self.decoder.set_gradient_checkpointing(enabled)

    def get_last_layer(self) -> torch.Tensor:
        return self.decoder.conv_out.weight

    def get_input(self, batch: Mapping[str, Any], k: str) -> torch.Tensor:
        """``batch[k]`` as a float (B, C, H, W) tensor (the datasets yield channels first)."""
        if k not in batch:
            raise KeyError(f"batch has no key {k!r} (keys: {', '.join(map(str, batch.keys()))}); "
                           f"set model.params.image_key")
        x = batch[k]
        expected = self.encoder.in_channels
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != expected:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"batch[{k!r}] must be (B, {expected}, H, W), got {shape}")
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.to(memory_format=fmt).float()

    def _lesion(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        """The batch's lesion mask when the loss weights the lesion (lossconfig lesion_weight > 0)."""
        if getattr(self.loss, "lesion_weight", 0) == 0:
            return None
        if "lesion" not in batch:
            raise KeyError(f"lossconfig lesion_weight > 0 needs the batch's lesion mask, but the batch has no key "
                           f"'lesion' (keys: {', '.join(map(str, batch.keys()))})")
        return batch["lesion"].float()

    # -- training ----------------------------------------------------------------------------
    @property
    def generator_step(self) -> int:
        """Autoencoder updates so far: the step that ``disc_start`` counts (CompVis global_step)."""
        return self._generator_steps

    def _require_trainable_loss(self) -> None:
        if not hasattr(self.loss, "discriminator"):
            raise ConfigError("this VQModel has no training loss (lossconfig is None or torch.nn.Identity); "
                              "train with taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator")

    def training_step(self, batch, batch_idx: int) -> None:
        self._require_trainable_loss()
        x = self.get_input(batch, self.image_key)
        opt_ae, opt_disc = self.optimizers()
        n_accumulate = max(1, int(self.accumulate_grad_batches or 1))
        self._micro_batches += 1
        update = self._micro_batches % n_accumulate == 0
        step = self._generator_steps

        self.toggle_optimizer(opt_ae)  # discriminator weights get no gradient from the generator loss
        xrec, qloss, ind = self(x, return_pred_indices=True)
        aeloss, log_ae = self.loss(qloss, x, xrec, 0, step, last_layer=self.get_last_layer(), split="train",
                                   lesion=self._lesion(batch))
        self.manual_backward(aeloss / n_accumulate)
        if update:
            opt_ae.step()
            opt_ae.zero_grad(set_to_none=True)
        self.untoggle_optimizer(opt_ae)

        log = dict(log_ae)
        if self.loss.discriminator_active(step):
            self.toggle_optimizer(opt_disc)
            discloss, log_disc = self.loss(qloss, x, xrec.detach(), 1, step, split="train")
            self.manual_backward(discloss / n_accumulate)
            if update:
                opt_disc.step()
                opt_disc.zero_grad(set_to_none=True)
            self.untoggle_optimizer(opt_disc)
            log.update(log_disc)

        if update:
            self._generator_steps += 1
            if self.quantize.reinit_unused and self._generator_steps % self.reinit_every == 0:
                log["train/reinit_codes"] = torch.tensor(float(self.quantize.reinit_unused_codes_()))
        self._log_batch("train", x, xrec.detach(), ind, log, on_step=True)
        self._train_usage.update(ind)
        if self._micro_batches % self.train_usage_window == 0:
            self._log_usage("train", self._train_usage)

    def on_train_epoch_end(self) -> None:
        self._train_usage.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        x = self.get_input(batch, self.image_key)
        xrec, qloss, ind = self(x, return_pred_indices=True)
        log = {}
        if hasattr(self.loss, "discriminator"):
            step = self._generator_steps
            _, log_ae = self.loss(qloss, x, xrec, 0, step, last_layer=self.get_last_layer(), split="val",
                                  lesion=self._lesion(batch))
            _, log_disc = self.loss(qloss, x, xrec, 1, step, split="val")
            log.update(log_ae)
            log.update(log_disc)
        else:
            log["val/rec_loss"] = (x - xrec).abs().mean()
        self._log_batch("val", x, xrec, ind, log, on_step=False)
        self._val_usage.update(ind)

    def on_validation_epoch_end(self) -> None:
        self._log_usage("val", self._val_usage)

    def _log_batch(self, split: str, x: torch.Tensor, xrec: torch.Tensor, ind: torch.Tensor,
                   log: dict[str, torch.Tensor], on_step: bool) -> None:
        batch_size = x.shape[0]
        sync = not on_step  # epoch aggregates are reduced over ranks; step values stay local
        for name, value in zip(self.channel_names, psnr_per_channel(x.detach(), xrec.detach())):
            log[f"{split}/psnr_{name}"] = value
        log[f"{split}/batch_perplexity"] = perplexity_from_counts(code_counts(ind, self.n_embed))
        rec = log.pop(f"{split}/rec_loss")
        self.log(f"{split}/rec_loss", rec, prog_bar=True, on_step=on_step, on_epoch=True,
                 batch_size=batch_size, sync_dist=sync)
        self.log_dict(log, prog_bar=False, on_step=on_step, on_epoch=True, batch_size=batch_size, sync_dist=sync)

    def _log_usage(self, split: str, usage: CodeUsage) -> None:
        """Codebook perplexity and fraction of codes used, counted over all ranks."""
        if usage.empty:
            return
        counts = usage.counts
        if self.trainer is not None and self.trainer.world_size > 1:
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        total = CodeUsage(self.n_embed)
        total.counts = counts
        self.log(f"{split}/perplexity", total.perplexity(), rank_zero_only=True)
        self.log(f"{split}/codebook_usage", total.fraction_used(), rank_zero_only=True)
        usage.reset()

    def configure_optimizers(self):
        self._require_trainable_loss()
        if self.learning_rate is None:
            raise ConfigError("VQModel.learning_rate is not set (main.py sets it from model.base_learning_rate)")
        lr = float(self.learning_rate)
        ae_params = [*self.encoder.parameters(), *self.decoder.parameters(), *self.quantize.parameters(),
                     *self.quant_conv.parameters(), *self.post_quant_conv.parameters()]
        opt_ae = adam(ae_params, lr=lr, betas=(0.5, 0.9))
        opt_disc = adam(self.loss.discriminator.parameters(), lr=lr, betas=(0.5, 0.9))
        return [opt_ae, opt_disc]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vqgan"] = {"generator_steps": self._generator_steps}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("vqgan", {}).get("generator_steps")
        if saved is None:  # a checkpoint from elsewhere: the autoencoder Adam's step count is the same number
            states = checkpoint.get("optimizer_states") or [{}]
            steps = [s.get("step") for s in states[0].get("state", {}).values() if "step" in s]
            saved = int(max(steps)) if steps else 0
        self._generator_steps = int(saved)
        self._micro_batches = 0

    # -- images --------------------------------------------------------------------------------
    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], N: int = 4, **kwargs) -> dict[str, torch.Tensor]:
        """{"inputs", "reconstructions"}: (N, C, H, W) in [-1, 1], one column block per channel."""
        x = self.get_input(batch, self.image_key)[:N].to(self.device)
        xrec, _ = self(x)
        return {"inputs": x, "reconstructions": xrec.clamp(-1.0, 1.0)}
