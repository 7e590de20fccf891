"""``LatentDiffusion``: the conditional LDM (cLDM) of paper Section 2.1, DDPM in the frozen VQGAN's latent.

The latent z_0 = E(x) of x = [DWI, ADC] is diffused (Eq. 2) and denoised by eps_theta(z_t, t, c~)
(Eq. 4), where c~ = F(CTP) is the CTP series through a trainable SpatialRescaler, concatenated to z_t
along channels. State-dict keys are CompVis's (``first_stage_model.*``, ``cond_stage_model.*`` beside
DDPM's). Left out on purpose: cross-attention, hybrid and class conditioning, classifier-free
guidance, patch-wise first-stage processing, inpainting/super-resolution/progressive-denoising logs.

Hooks that lesion-aware post-training (:mod:`ldm.models.diffusion.lapt`) builds on: ``latent_step``
returns the latent loss with z0_hat (Eq. 5); ``differentiable_decode_first_stage`` decodes with
gradients through the frozen decoder.
"""
from __future__ import annotations

import types
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from ldm.models.diffusion.gaussian_diffusion import DDPM
from ldm.util import ConfigError, default, instantiate_from_config


def disabled_train(self: nn.Module, mode: bool = True) -> nn.Module:
    """Replaces ``train`` of a frozen module so that ``model.train()`` leaves it in eval mode."""
    return self


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode for good (dropout off, no statistics updates) and no gradients for its weights."""
    module.eval()
    module.train = types.MethodType(disabled_train, module)  # type: ignore[method-assign]
    module.requires_grad_(False)
    return module


def _shape(t: torch.Tensor) -> str:
    return "(" + ",".join(str(s) for s in t.shape) + ")"


class LatentDiffusion(DDPM):
    """The conditional LDM (cLDM): diffusion in the frozen first stage's latent, conditioned on
    c~ = cond_stage_model(batch[cond_stage_key]) by channel concatenation.

    The first stage (``first_stage_config``, a VQModelInterface whose ``encode`` returns the
    pre-quantisation latent and whose ``decode`` quantises then decodes) is frozen: eval mode for
    good, no gradients. The latent is scaled by ``scale_factor``; with ``scale_by_std`` it is
    1 / std of the first training batch's latent, computed on rank 0 and broadcast to every rank,
    and kept in the state dict so that a resumed or fine-tuned run does not recompute it.
    ``log_ddim_steps`` is the number of sampler steps of the samples in ``log_images``.
    """

    def __init__(self, first_stage_config: Mapping, cond_stage_config: Mapping, cond_stage_key: str = "ctp",
                 cond_stage_trainable: bool = False, conditioning_key: str | None = "concat",
                 concat_mode: bool | None = None, num_timesteps_cond: int | None = None, scale_factor: float = 1.0,
                 scale_by_std: bool = False, ckpt_path: str | None = None, ignore_keys: Sequence[str] = (),
                 load_only_unet: bool = False, image_size: int | Sequence[int] = (48, 56), lesion_weight: float = 0.0,
                 **kwargs: Any) -> None:
        """Its own parameters; every other (``unet_config``, the schedule, EMA, ...) is DDPM's, passed on.

        ``lesion_weight`` w: L_latent weighted by 1 + w x the lesion share of each latent pixel (the
        lesion mask area-averaged to the latent size; docs/training.md, *A lesion-weighted stage 2*).
        0 is the paper's Eq. 4; w > 0 goes beyond the paper and needs ``batch["lesion"]``."""
        if lesion_weight < 0:
            raise ConfigError(f"lesion_weight must be >= 0, got {lesion_weight}")
        if num_timesteps_cond not in (None, 1):
            raise ConfigError("num_timesteps_cond > 1 (a shortened conditioning schedule) is not supported")
        if conditioning_key is None:  # CompVis: concat_mode chooses when no key is given
            conditioning_key = "concat" if concat_mode in (None, True) else "crossattn"
        elif concat_mode is not None:
            warnings.warn(f"{type(self).__name__}: concat_mode={concat_mode} has no effect when conditioning_key "
                          f"is given ({conditioning_key!r}); remove it from the config", stacklevel=2)
        if conditioning_key != "concat":
            raise ConfigError(f"conditioning_key {conditioning_key!r} is not supported: LatentDiffusion here "
                              f"conditions by channel concatenation ('concat')")
        if scale_by_std and scale_factor != 1.0:
            raise ConfigError(f"scale_by_std computes the scale factor; do not also set scale_factor ({scale_factor})")
        super().__init__(ckpt_path=None, image_size=image_size, conditioning_key=conditioning_key, **kwargs)
        self.lesion_weight = float(lesion_weight)
        self.cond_stage_trainable = cond_stage_trainable
        self.cond_stage_key = cond_stage_key
        self.scale_by_std = scale_by_std
        if scale_by_std:
            self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))
        else:
            self.scale_factor = float(scale_factor)
        # set whenever a state dict holding 'scale_factor' is loaded (init_from_ckpt, a resumed
        # Lightning run, load_state_dict): then the factor is never recomputed
        self._scale_factor_loaded = False
        self.register_load_state_dict_pre_hook(self._note_scale_factor)
        self.instantiate_first_stage(first_stage_config)
        self.instantiate_cond_stage(cond_stage_config)
        self.restarted_from_ckpt = False
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys, only_model=load_only_unet)
            self.restarted_from_ckpt = True

    def check_checkpoint(self, sd: Mapping[str, torch.Tensor], path: str) -> None:
        """Also refuse a latent scaling that differs from training: a stored scale_factor (trained
        with scale_by_std) into a model without scale_by_std would be dropped, and a checkpoint
        without one into a model with scale_by_std would have its factor recomputed."""
        super().check_checkpoint(sd, path)
        if not any(k.startswith("model.diffusion_model.") for k in sd):
            return
        if "scale_factor" in sd and not self.scale_by_std:
            raise ConfigError(f"checkpoint {path!r} was trained with scale_by_std: true (scale_factor "
                              f"{float(sd['scale_factor']):.6g}); set scale_by_std: true to use its latent scaling")
        if "scale_factor" not in sd and self.scale_by_std:
            raise ConfigError(f"checkpoint {path!r} was trained without scale_by_std; set scale_by_std: false "
                              f"and scale_factor as in its training config")

    def _note_scale_factor(self, module: nn.Module, state_dict: Mapping, prefix: str, *args: Any) -> None:
        if prefix + "scale_factor" in state_dict:
            self._scale_factor_loaded = True

    # ----------------------------------------------------------------------------- stages
    def instantiate_first_stage(self, config: Mapping) -> None:
        """Build the autoencoder and freeze it (eval mode for good, no gradients)."""
        self.first_stage_model = freeze(instantiate_from_config(config))

    def instantiate_cond_stage(self, config: Mapping) -> None:
        """Build the conditioning encoder: trained with the UNet, or frozen like the first stage."""
        model = instantiate_from_config(config)
        if model is None:
            raise ConfigError("cond_stage_config must build a conditioning encoder (e.g. "
                              "ldm.modules.encoders.modules.SpatialRescaler) for concat conditioning")
        self.cond_stage_model = model if self.cond_stage_trainable else freeze(model)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The UNet, the rescaler when ``cond_stage_trainable``, and the learned log-variance."""
        params = list(self.model.parameters())
        if self.cond_stage_trainable:
            params += list(self.cond_stage_model.parameters())
        if self.learn_logvar:
            params.append(self.logvar)
        return params

    @torch.no_grad()
    def encode_first_stage(self, x: torch.Tensor) -> torch.Tensor:
        """E(x): the first stage's (pre-quantisation) latent, without a gradient graph."""
        return self.first_stage_model.encode(x)

    def get_first_stage_encoding(self, encoder_posterior: Any) -> torch.Tensor:
        """scale_factor * z, z the encoder output (or a sample of it for a distribution)."""
        if isinstance(encoder_posterior, torch.Tensor):
            z = encoder_posterior
        elif callable(getattr(encoder_posterior, "sample", None)):
            z = encoder_posterior.sample()
        else:
            raise TypeError(f"encoder output of type {type(encoder_posterior).__name__} is not supported")
        return self.scale_factor * z

    def _decode(self, z: torch.Tensor, force_not_quantize: bool) -> torch.Tensor:
        z = z / self.scale_factor
        if force_not_quantize:
            return self.first_stage_model.decode(z, force_not_quantize=True)
        return self.first_stage_model.decode(z)

    @torch.no_grad()
    def decode_first_stage(self, z: torch.Tensor, predict_cids: bool = False, force_not_quantize: bool = False
                           ) -> torch.Tensor:
        """D(z / scale_factor) without a gradient graph (the decoder quantises unless told not to)."""
        return self._decode(z, force_not_quantize or predict_cids)

    def differentiable_decode_first_stage(self, z: torch.Tensor, predict_cids: bool = False,
                                          force_not_quantize: bool = False) -> torch.Tensor:
        """D(z / scale_factor) with gradients flowing into z; the decoder itself stays frozen."""
        return self._decode(z, force_not_quantize or predict_cids)

    def denoised_range(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-channel (lo, hi) of scale_factor x the first stage's codebook, shaped (1, C, 1, 1); None
        without a codebook. Every latent the decoder turns into an image is quantised into that box
        first, so a sampler's ``clip_x0`` loses nothing the decoder could show."""
        quantize = getattr(self.first_stage_model, "quantize", None)
        embedding = getattr(quantize, "embedding", None)
        if not isinstance(embedding, nn.Embedding):
            return None
        codes = embedding.weight.detach() * self.scale_factor
        return codes.amin(0).view(1, -1, 1, 1), codes.amax(0).view(1, -1, 1, 1)

    def get_learned_conditioning(self, c: torch.Tensor) -> torch.Tensor:
        """c~ = F(c): the conditioning encoder applied to the raw condition (the CTP series)."""
        model = self.cond_stage_model
        c = model.encode(c) if callable(getattr(model, "encode", None)) else model(c)
        return c if isinstance(c, torch.Tensor) else c.mode()  # a distribution (KL encoders): its mode

    @torch.no_grad()
    def get_input(self, batch: Mapping[str, Any], k: str, return_first_stage_outputs: bool = False,
                  force_c_encode: bool = False, cond_key: str | None = None, return_original_cond: bool = False,
                  bs: int | None = None) -> list[Any]:
        """[z, c] (+ [x, x_rec] with ``return_first_stage_outputs``, + [xc] with ``return_original_cond``).

        z = scale_factor * E(batch[k]) without a gradient graph. c is the raw condition
        batch[cond_key] when the conditioning encoder is trained (``forward`` encodes it, with
        gradients), else (or with ``force_c_encode``) c~ = get_learned_conditioning(raw).
        """
        x = super().get_input(batch, k)
        if bs is not None:
            x = x[:bs]
        z = self.get_first_stage_encoding(self.encode_first_stage(x)).detach()
        cond_key = default(cond_key, self.cond_stage_key)
        xc = super().get_input(batch, cond_key) if cond_key != k else x
        if bs is not None:
            xc = xc[:bs]
        c = self.get_learned_conditioning(xc) if (not self.cond_stage_trainable or force_c_encode) else xc
        out = [z, c]
        if return_first_stage_outputs:
            out.extend([x, self.decode_first_stage(z)])
        if return_original_cond:
            out.append(xc)
        return out

    # ----------------------------------------------------------------------------- model and loss
    def check_condition(self, x_noisy: torch.Tensor, cond: torch.Tensor) -> None:
        """Raise ValueError naming both shapes when c~ cannot be concatenated to z_t."""
        if not isinstance(cond, torch.Tensor):
            raise ValueError(f"the condition must be the tensor get_learned_conditioning returns, got "
                             f"{type(cond).__name__}")
        in_channels = getattr(self.model.diffusion_model, "in_channels", None)
        want = None if in_channels is None else in_channels - x_noisy.shape[1]
        if (cond.dim() != x_noisy.dim() or cond.shape[0] != x_noisy.shape[0] or cond.shape[2:] != x_noisy.shape[2:]
                or (want is not None and cond.shape[1] != want)):
            channels = (f" and {want} channels (UNet in_channels {in_channels} - {x_noisy.shape[1]} latent channels)"
                        if want is not None else "")
            raise ValueError(f"condition {_shape(cond)} does not fit latent {_shape(x_noisy)}: concat conditioning "
                             f"needs the latent's batch and spatial size{channels}; check cond_stage_config "
                             f"(n_stages, out_channels) against the image size")

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """eps_theta(z_t, t, c~) (or the x0 prediction) with c~ concatenated to z_t along channels."""
        if isinstance(cond, (list, tuple)) and len(cond) == 1:  # CompVis callers pass [c]
            cond = cond[0]
        self.check_condition(x_noisy, cond)
        return self._diffusion_model()(x_noisy, t, c_concat=[cond])

    def latent_weight(self, lesion: torch.Tensor | None, latent: torch.Tensor) -> torch.Tensor | None:
        """1 + lesion_weight x the lesion share of each latent pixel, (B, 1, h, w); None when the
        weight is 0 (the paper's unweighted Eq. 4)."""
        if not self.lesion_weight:
            return None
        if lesion is None:
            raise ValueError(f"lesion_weight {self.lesion_weight}: L_latent needs the lesion mask (batch['lesion'])")
        share = F.adaptive_avg_pool2d(lesion.float(), tuple(latent.shape[-2:]))
        return 1.0 + self.lesion_weight * share

    def get_loss_kwargs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The lesion mask when L_latent is lesion-weighted (``lesion_weight`` > 0)."""
        if not self.lesion_weight:
            return {}
        if "lesion" not in batch:
            raise ValueError(f"lesion_weight {self.lesion_weight} needs batch['lesion'] (binary, (B, 1, H, W)); the "
                             f"batch has keys {', '.join(map(str, batch.keys()))}")
        return {"lesion": DDPM.get_input(self, batch, "lesion")}

    def latent_step(self, x_start: torch.Tensor, cond: Any, t: torch.Tensor, noise: torch.Tensor,
                    lesion: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(L_latent (Eq. 4, lesion-weighted with ``lesion_weight``), its loss dict, z0_hat (Eq. 5))
        from one prediction at (z_t, t): the hook the post-training builds on
        (:mod:`ldm.models.diffusion.post_training`)."""
        x_noisy = self.q_sample(x_start=x_start, t=t, noise=noise)
        model_output = self.apply_model(x_noisy, t, cond)
        loss, loss_dict = self.latent_loss(model_output, x_start, noise, t, weight=self.latent_weight(lesion, x_start))
        return loss, loss_dict, self.predict_start(x_noisy, t, model_output)

    def p_losses(self, x_start: torch.Tensor, cond: Any, t: torch.Tensor, noise: torch.Tensor | None = None,
                 lesion: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_latent at timesteps t (Eq. 4); other keyword arguments are for subclasses and ignored here."""
        noise = default(noise, lambda: torch.randn_like(x_start))
        loss, loss_dict, _ = self.latent_step(x_start, cond, t, noise, lesion=lesion)
        return loss, loss_dict

    def forward(self, z: torch.Tensor, c: Any, /, *args: Any, t: torch.Tensor | None = None, **kwargs: Any):
        """Loss of the latent ``z`` at uniformly drawn (or given) timesteps; a trainable conditioning
        encoder runs here. ``z`` and ``c`` are positional-only, so that loss keyword arguments may be
        named ``x`` (the MRI batch of the post-training, docs/conventions.md)."""
        t = default(t, lambda: self.sample_timesteps(z.shape[0]))
        if c is None:
            raise ValueError("LatentDiffusion is conditional but no condition was given")
        if self.cond_stage_trainable:
            c = self.get_learned_conditioning(c)
        return self.p_losses(z, c, t, *args, **kwargs)

    def shared_step(self, batch: Mapping[str, Any], **kwargs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z, c = self.get_input(batch, self.first_stage_key)
        return self(z, c, **self.get_loss_kwargs(batch), **kwargs)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """val/loss_simple etc. with the raw weights and, with EMA, val/loss_simple_ema etc.
        (same t and noise for both, fixed per batch)."""
        z, c = self.get_input(batch, self.first_stage_key)
        t, noise = self._validation_noise(batch_idx, z)
        kwargs = self.get_loss_kwargs(batch)
        _, loss_dict = self(z, c, t=t, noise=noise, **kwargs)
        loss_dict_ema = None
        if self.use_ema:
            with self.ema_scope():
                _, loss_dict_ema = self(z, c, t=t, noise=noise, **kwargs)
        self._log_validation(loss_dict, loss_dict_ema, z.shape[0])

    # ----------------------------------------------------------------------------- scale_by_std
    def on_train_batch_start(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        if self.scale_by_std and not self._scale_factor_loaded:
            self.set_scale_factor_from_batch(batch)

    @torch.no_grad()
    def set_scale_factor_from_batch(self, batch: Mapping[str, Any]) -> float:
        """scale_factor = 1 / std of the raw latent of ``batch`` on rank 0, broadcast to every rank.

        Every rank must call this (the broadcast is a collective). Afterwards the factor counts as
        loaded, so it is computed once per run and kept by checkpoints.
        """
        value = None
        if self.global_rank == 0:
            z = self.encode_first_stage(DDPM.get_input(self, batch, self.first_stage_key))
            z = self.get_first_stage_encoding(z) / self.scale_factor  # the raw latent
            value = float(1.0 / z.float().flatten().std())
        if self._trainer is not None:
            value = self.trainer.strategy.broadcast(value, src=0)
        self.scale_factor.fill_(value)
        self._scale_factor_loaded = True
        rank_zero_info(f"scale_by_std: scale_factor set to {value:.6g} (1 / std of the first batch's latent)")
        return value

    # ----------------------------------------------------------------------------- sampling and logging
    def sample(self, cond: torch.Tensor, batch_size: int | None = None, return_intermediates: bool = False,
               x_T: torch.Tensor | None = None, verbose: bool = True):
        """Ancestral sampling given c~ (DDIM over all T timesteps with eta = 1 is exactly DDPM's chain),
        whatever sampler is configured."""
        return self.sample_log(cond, default(batch_size, cond.shape[0]), ddim=True, ddim_steps=self.num_timesteps,
                               eta=1.0, x_T=x_T, verbose=verbose, return_intermediates=return_intermediates,
                               sampler="ddim")

    @torch.no_grad()
    def sample_log(self, cond: torch.Tensor, batch_size: int, ddim: bool = True, ddim_steps: int = 200,
                   eta: float = 0.0, x_T: torch.Tensor | None = None, verbose: bool = False,
                   return_intermediates: bool = True, sampler: str | Mapping | None = None, **kwargs: Any):
        """Samples (latents) for the learned conditioning ``cond`` in ``ddim_steps`` steps of the
        configured sampler, or of ``sampler`` (CompVis's name and arguments: ``ddim`` must be True,
        and the steps keep their CompVis name whichever sampler runs them)."""
        if not ddim:
            raise ValueError("only DDIM-style sampling is offered (DDIM with S = T and eta = 1 is ancestral sampling)")
        shape = (int(self.channels), *cond.shape[-2:])
        samples, intermediates = self.latent_sampler(sampler).sample(S=ddim_steps, batch_size=batch_size, shape=shape,
                                                          conditioning=cond, eta=eta, x_T=x_T, verbose=verbose,
                                                          log_every_t=self.log_every_t, **kwargs)
        return (samples, intermediates) if return_intermediates else samples

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], N: int = 4, sample: bool = True, ddim_steps: int | None = None,
                   ddim_eta: float = 0.0, plot_reconstruction: bool = True, seed: int = 0, **kwargs: Any
                   ) -> dict[str, torch.Tensor]:
        """Images in [-1, 1] for the ImageLogger: the CTP mean over time points (ctp_mean), the ground
        truth (inputs), its first-stage reconstruction, and a sample with EMA weights (the configured
        sampler, ``ddim_steps`` default ``log_ddim_steps``) from x_T drawn with a fixed ``seed`` so
        that successive logs show the same noise."""
        z, c, x, xrec, xc = self.get_input(batch, self.first_stage_key, return_first_stage_outputs=True,
                                           force_c_encode=True, return_original_cond=True, bs=N)
        log = {"ctp_mean": xc.mean(dim=1, keepdim=True), "inputs": x}
        if plot_reconstruction:
            log["reconstruction"] = xrec
        if sample:
            g = torch.Generator(device=z.device).manual_seed(seed)
            x_T = torch.randn(z.shape, device=z.device, generator=g)
            with self.ema_scope():
                latents = self.sample_log(c, z.shape[0], ddim_steps=ddim_steps or self.log_ddim_steps, eta=ddim_eta,
                                          x_T=x_T, return_intermediates=False)
            log["samples"] = self.decode_first_stage(latents)
        return log
