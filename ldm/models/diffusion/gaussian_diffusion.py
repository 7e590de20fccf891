"""``DDPM``: Gaussian diffusion (Ho et al., 2020) around a UNet, in CompVis's layout.

Paper Section 2.1: the forward process q(z_t | z_0) = N(sqrt(abar_t) z_0, (1 - abar_t) I) (Eq. 2) and
a UNet eps_theta(z_t, t, c~) trained with L_latent = E ||eps - eps_theta(z_t, t, c~)||^2 (Eq. 4);
``predict_start`` is Eq. 5. This class works in pixel space; :mod:`.latent_diffusion` moves it into
the first stage's latent. Names, config parameters and state-dict keys are CompVis's
(``model.diffusion_model.*``, ``model_ema.*``, the schedule buffers), so CompVis-trained checkpoints
of the same architecture load. The schedule (:mod:`ldm.modules.diffusionmodules.schedules`), the EMA
and the samplers (:mod:`ldm.samplers`) live in their own modules.

Hooks that subclasses build on: ``get_loss_kwargs(batch)`` feeds extra batch entries into
``p_losses``; ``p_losses`` is q_sample -> apply_model -> ``latent_loss``.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ldm.compilation import compile_unavailable
from ldm.models.diffusion.diffusion_wrapper import DiffusionWrapper
from ldm.modules.diffusionmodules.schedules import make_beta_schedule
from ldm.modules.diffusionmodules.util import extract_into_tensor, mean_flat
from ldm.modules.ema import EMA_PREFIX, LitEma
from ldm.optim import adam
from ldm.samplers import make_sampler, sampler_name
from ldm.util import ConfigError, default, instantiate_from_config, load_state_dict

PARAMETERIZATIONS = ("eps", "x0", "v")  # v: Salimans & Ho (2022), beyond the paper
LOSS_TYPES = ("l1", "l2")
VALIDATION_SEED = 20250923


class DDPM(pl.LightningModule):
    """Gaussian diffusion (Ho et al., 2020) around a UNet; in pixel space unless subclassed.

    Parameters are CompVis's (``clip_denoised`` is accepted for CompVis configs but has no effect:
    the DDIM sampler here does not clip x0_hat, and a value given says so once), plus:
    ``ema_decay`` (CompVis fixes 0.9999), ``sampler`` (the sampler of ``log_images``, ``sample_log``
    and the post-training's validation lesion MAE: a name of :data:`ldm.samplers.SAMPLERS` or a
    ``{target, params}`` node; ``scripts/sample_LDM.py`` uses it unless ``--sampler`` is given),
    ``log_ddim_steps`` (its steps for the samples in ``log_images``), ``compile_unet`` /
    ``compile_kwargs`` (run the UNet through ``torch.compile(**compile_kwargs)``; the state dict is unchanged).
    """

    def __init__(self, unet_config: Mapping, timesteps: int = 1000, beta_schedule: str = "linear",
                 loss_type: str = "l2", ckpt_path: str | None = None, ignore_keys: Sequence[str] = (),
                 load_only_unet: bool = False, monitor: str | None = "val/loss", use_ema: bool = True,
                 first_stage_key: str = "mri", image_size: int | Sequence[int] = 256, channels: int = 3,
                 log_every_t: int = 100, clip_denoised: bool | None = None, linear_start: float = 1e-4,
                 linear_end: float = 2e-2, cosine_s: float = 8e-3, given_betas: Sequence[float] | None = None,
                 original_elbo_weight: float = 0.0, v_posterior: float = 0.0, l_simple_weight: float = 1.0,
                 conditioning_key: str | None = None, parameterization: str = "eps",
                 scheduler_config: Mapping | None = None, learn_logvar: bool = False, logvar_init: float = 0.0,
                 ema_decay: float = 0.9999, log_ddim_steps: int = 20, compile_unet: bool = False,
                 compile_kwargs: Mapping | None = None, sampler: str | Mapping = "ddim") -> None:
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ConfigError(f"parameterization {parameterization!r} is not one of {PARAMETERIZATIONS}")
        if loss_type not in LOSS_TYPES:
            raise ConfigError(f"loss_type {loss_type!r} is not one of {LOSS_TYPES}")
        self.parameterization = parameterization
        self.loss_type = loss_type
        self.cond_stage_model: nn.Module | None = None
        if clip_denoised is not None:
            warnings.warn(f"{type(self).__name__}: clip_denoised={clip_denoised} has no effect here (the DDIM "
                          f"sampler does not clip x0_hat); remove it from the config", stacklevel=2)
        self.log_every_t = log_every_t
        self.log_ddim_steps = int(log_ddim_steps)
        self.first_stage_key = first_stage_key
        self.image_size = image_size
        self.channels = channels
        self.model = DiffusionWrapper(unet_config, conditioning_key)
        rank_zero_info(f"{type(self).__name__}: {parameterization}-prediction UNet with "
                       f"{sum(p.numel() for p in self.model.parameters()) / 1e6:.2f} M parameters")
        self.use_ema = use_ema
        if use_ema:
            self.model_ema = LitEma(self.model, decay=ema_decay)
        self.use_scheduler = scheduler_config is not None
        self.scheduler_config = scheduler_config
        self.v_posterior = v_posterior
        self.original_elbo_weight = original_elbo_weight
        self.l_simple_weight = l_simple_weight
        self.monitor = monitor
        self.learning_rate: float | None = None  # main.py sets it from model.base_learning_rate
        self.register_schedule(given_betas=given_betas, beta_schedule=beta_schedule, timesteps=timesteps,
                               linear_start=linear_start, linear_end=linear_end, cosine_s=cosine_s)
        self.sampler_spec = sampler
        self.latent_sampler()  # a sampler that cannot sample this model fails here, with the reason
        self.learn_logvar = learn_logvar
        logvar = torch.full((self.num_timesteps,), float(logvar_init))
        if learn_logvar:
            self.logvar = nn.Parameter(logvar)
        else:  # not in the state dict, as in CompVis; a buffer so that it follows the device
            self.register_buffer("logvar", logvar, persistent=False)
        self.compile_unet = compile_unet
        self.compile_kwargs = dict(compile_kwargs or {})
        self._compiled_model: Any = None
        self._ema_step = 0  # global_step at the last EMA update: one update per optimiser step
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys, only_model=load_only_unet)

    # ----------------------------------------------------------------------------- schedule
    def register_schedule(self, given_betas: Sequence[float] | None = None, beta_schedule: str = "linear",
                          timesteps: int = 1000, linear_start: float = 1e-4, linear_end: float = 2e-2,
                          cosine_s: float = 8e-3) -> None:
        """Register the float32 schedule buffers (CompVis names) computed in float64."""
        if given_betas is not None:
            betas = np.asarray(given_betas, dtype=np.float64)
        else:
            betas = make_beta_schedule(beta_schedule, timesteps, linear_start=linear_start,
                                       linear_end=linear_end, cosine_s=cosine_s)
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        self.num_timesteps = int(betas.shape[0])
        self.linear_start, self.linear_end = linear_start, linear_end

        def buffer(name: str, value: np.ndarray, persistent: bool = True) -> None:
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32), persistent=persistent)

        buffer("betas", betas)
        buffer("alphas_cumprod", alphas_cumprod)
        buffer("alphas_cumprod_prev", alphas_cumprod_prev)
        buffer("sqrt_alphas_cumprod", np.sqrt(alphas_cumprod))
        buffer("sqrt_one_minus_alphas_cumprod", np.sqrt(1.0 - alphas_cumprod))
        buffer("log_one_minus_alphas_cumprod", np.log(1.0 - alphas_cumprod))
        buffer("sqrt_recip_alphas_cumprod", np.sqrt(1.0 / alphas_cumprod))
        buffer("sqrt_recipm1_alphas_cumprod", np.sqrt(1.0 / alphas_cumprod - 1))
        # posterior q(z_{t-1} | z_t, z_0); v_posterior interpolates its variance towards beta_t
        posterior_variance = ((1 - self.v_posterior) * betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
                              + self.v_posterior * betas)
        buffer("posterior_variance", posterior_variance)
        # clipped: the posterior variance is 0 at the first step
        buffer("posterior_log_variance_clipped", np.log(np.maximum(posterior_variance, 1e-20)))
        coef1 = betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        buffer("posterior_mean_coef1", coef1)
        buffer("posterior_mean_coef2", (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod))
        # weights of the per-timestep ELBO terms relative to the simple loss, 1 / (2 sigma_t^2) times
        # the squared coefficient of the prediction error in the posterior mean. (CompVis's x0
        # weight, 0.5 sqrt(abar) / (2 * 1 - abar), is not this; it only matters when
        # original_elbo_weight > 0.) The first entry is infinite (sigma_1 = 0) and copies the second.
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.parameterization == "eps":
                lvlb = betas ** 2 / (2 * posterior_variance * alphas * (1 - alphas_cumprod))
            elif self.parameterization == "v":  # an error e in v is an error sqrt(1 - abar) e in x0_hat
                lvlb = coef1 ** 2 * (1.0 - alphas_cumprod) / (2 * posterior_variance)
            else:
                lvlb = coef1 ** 2 / (2 * posterior_variance)
        lvlb[0] = lvlb[1] if len(lvlb) > 1 else 0.0
        buffer("lvlb_weights", lvlb, persistent=False)

    # ----------------------------------------------------------------------------- EMA, weights
    @contextlib.contextmanager
    def ema_scope(self, context: str | None = None) -> Iterator[None]:
        """Run the body with the EMA weights of the UNet; the raw weights come back afterwards."""
        if self.use_ema:
            self.model_ema.store(self.model.parameters())
            self.model_ema.copy_to(self.model)
            if context is not None:
                rank_zero_info(f"{context}: Switched to EMA weights")
        try:
            yield None
        finally:
            if self.use_ema:
                self.model_ema.restore(self.model.parameters())
                if context is not None:
                    rank_zero_info(f"{context}: Restored training weights")

    def init_from_ckpt(self, path: str, ignore_keys: Sequence[str] = (), only_model: bool = False
                       ) -> tuple[list[str], list[str]]:
        """Load weights from a checkpoint (Lightning or bare state dict); returns (missing, unexpected).

        Keys starting with any of ``ignore_keys`` are dropped. Unlike CompVis, a checkpoint without
        the UNet, with other shapes, or trained with another noise schedule is an error, and a
        checkpoint without EMA weights restarts the EMA from the loaded weights (not from the
        random initialisation).
        """
        sd = load_state_dict(path)
        ignore = tuple(ignore_keys or ())
        if ignore:
            dropped = [k for k in sd if k.startswith(ignore)]
            sd = {k: v for k, v in sd.items() if not k.startswith(ignore)}
            rank_zero_info(f"{path}: ignoring {len(dropped)} keys starting with {list(ignore)}")
        target: nn.Module = self.model if only_model else self
        if not only_model:
            self.check_checkpoint(sd, path)
        try:
            missing, unexpected = target.load_state_dict(sd, strict=False)
        except RuntimeError as e:
            detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e))
            raise ConfigError(f"checkpoint {path!r} does not fit {type(self).__name__}: {detail}") from e
        unet_prefix = "diffusion_model." if only_model else "model.diffusion_model."
        missing_unet = [k for k in missing if k.startswith(unet_prefix)]
        if missing_unet:
            raise ConfigError(f"checkpoint {path!r} lacks {len(missing_unet)} UNet weights (e.g. {missing_unet[0]!r}): "
                              f"not a checkpoint of this model")
        if self.use_ema and not only_model and not any(k.startswith(EMA_PREFIX) for k in sd):
            self.model_ema.reset_to(self.model)
            rank_zero_warn(f"checkpoint {path!r} has no EMA weights: the EMA restarts from its weights")
            missing = [k for k in missing if not k.startswith(EMA_PREFIX)]
        if not self.use_ema:
            unexpected = [k for k in unexpected if not k.startswith(EMA_PREFIX)]
        rank_zero_info(f"Restored {type(self).__name__} from {path} with {len(missing)} missing and "
                       f"{len(unexpected)} unexpected keys")
        if missing or unexpected:
            rank_zero_warn(f"{path}: missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}; "
                           f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        return list(missing), list(unexpected)

    def check_checkpoint(self, sd: Mapping[str, torch.Tensor], path: str) -> None:
        """Refuse a checkpoint trained with another noise schedule (loading it would silently
        replace the config's schedule buffers)."""
        betas = sd.get("betas")
        if betas is not None and betas.shape == self.betas.shape \
                and not torch.allclose(betas.float().cpu(), self.betas.cpu(), rtol=1e-4, atol=1e-7):
            raise ConfigError(f"checkpoint {path!r} was trained with another noise schedule than the config "
                              f"(betas {betas[0]:.6g}..{betas[-1]:.6g} vs {self.betas[0]:.6g}..{self.betas[-1]:.6g}): "
                              f"set timesteps/linear_start/linear_end/beta_schedule as in training")

    # ----------------------------------------------------------------------------- diffusion math
    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log-variance of q(x_t | x_0) (Eq. 2)."""
        mean = extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
        variance = extract_into_tensor(1.0 - self.alphas_cumprod, t, x_start.shape)
        log_variance = extract_into_tensor(self.log_one_minus_alphas_cumprod, t, x_start.shape)
        return mean, variance, log_variance

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Eq. 2)."""
        noise = default(noise, lambda: torch.randn_like(x_start))
        return (extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
                + extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise)

    def predict_start_from_noise(self, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (paper Eq. 5), the inverse of q_sample."""
        return (extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
                - extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * noise)

    def get_v(self, x_start: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0, the target of v-prediction (Salimans & Ho, 2022)."""
        return (extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * noise
                - extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * x_start)

    def predict_start(self, x_noisy: torch.Tensor, t: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
        """The model's estimate of x_0 for its parameterisation: Eq. 5 for eps; for v,
        x0_hat = sqrt(abar_t) x_t - sqrt(1 - abar_t) v, which stays bounded as abar_t -> 0."""
        if self.parameterization == "eps":
            return self.predict_start_from_noise(x_noisy, t, model_output)
        if self.parameterization == "v":
            return (extract_into_tensor(self.sqrt_alphas_cumprod, t, x_noisy.shape) * x_noisy
                    - extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_noisy.shape) * model_output)
        return model_output

    def q_posterior(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = (extract_into_tensor(self.posterior_mean_coef1, t, x_t.shape) * x_start
                + extract_into_tensor(self.posterior_mean_coef2, t, x_t.shape) * x_t)
        variance = extract_into_tensor(self.posterior_variance, t, x_t.shape)
        log_variance = extract_into_tensor(self.posterior_log_variance_clipped, t, x_t.shape)
        return mean, variance, log_variance

    # ----------------------------------------------------------------------------- model and loss
    def _diffusion_model(self) -> nn.Module:
        """``self.model``, or its torch.compile'd twin with ``compile_unet`` (same parameters; kept
        out of the module tree so that state-dict keys do not change)."""
        if not self.compile_unet:
            return self.model
        if self._compiled_model is None:
            backend = self.compile_kwargs.get("backend", "inductor")
            why = compile_unavailable(self.device.type, backend if isinstance(backend, str) else "")
            if why:
                raise ConfigError(f"compile_unet: torch.compile ({backend}) cannot build the UNet's kernels on "
                                  f"{self.device.type}: {why}; or set model.params.compile_unet=false")
            object.__setattr__(self, "_compiled_model", torch.compile(self.model, **self.compile_kwargs))
        return self._compiled_model

    def denoised_range(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The box a sampler's ``clip_x0`` clips x0_hat to: [-1, 1], the data range in pixel space."""
        return torch.tensor(-1.0), torch.tensor(1.0)

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """The UNet's prediction (eps, x0 or v) at (x_t, t); an unconditional DDPM takes no ``cond``."""
        if cond is not None:
            raise ValueError(f"{type(self).__name__} is unconditional but got a condition")
        return self._diffusion_model()(x_noisy, t)

    def get_loss(self, pred: torch.Tensor, target: torch.Tensor, mean: bool = True) -> torch.Tensor:
        """Elementwise L1 or squared error (``loss_type``), averaged unless ``mean`` is False."""
        loss = (target - pred).abs() if self.loss_type == "l1" else (target - pred).pow(2)
        return loss.mean() if mean else loss

    def latent_loss(self, model_output: torch.Tensor, x_start: torch.Tensor, noise: torch.Tensor,
                    t: torch.Tensor, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_latent (Eq. 4) and its CompVis variants; returns (loss, loss_dict).

        loss_simple = mean |target - output|^p per sample (target eps, x0 or v; with ``weight``, a
        (B, 1, h, w) map, the weighted mean sum(w e) / sum(w) over each sample), reweighted by the
        (optionally learned) log-variance gamma_t as loss_simple / exp(gamma_t) + gamma_t, times
        ``l_simple_weight``, plus ``original_elbo_weight`` x the ELBO-weighted loss_vlb. With the
        defaults (no learned logvar, ELBO weight 0) loss = loss_simple, the paper's Eq. 4. Keys are
        prefixed 'train/' or 'val/' by ``self.training``.
        """
        if self.parameterization == "eps":
            target = noise
        elif self.parameterization == "v":
            target = self.get_v(x_start, noise, t)
        else:
            target = x_start
        prefix = "train" if self.training else "val"
        error = self.get_loss(model_output.float(), target.float(), mean=False)
        if weight is None:
            loss_simple = mean_flat(error)
        else:  # a weighted mean: a sample without lesion keeps the plain mean
            weight = weight.float().expand_as(error)
            loss_simple = (error * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3))
        loss_dict = {f"{prefix}/loss_simple": loss_simple.mean()}
        logvar_t = self.logvar[t]
        loss = loss_simple / torch.exp(logvar_t) + logvar_t
        if self.learn_logvar:
            loss_dict[f"{prefix}/loss_gamma"] = loss.mean()
            loss_dict["logvar"] = self.logvar.detach().mean()
        loss = self.l_simple_weight * loss.mean()
        loss_vlb = (self.lvlb_weights[t] * loss_simple).mean()
        loss_dict[f"{prefix}/loss_vlb"] = loss_vlb
        loss = loss + self.original_elbo_weight * loss_vlb
        loss_dict[f"{prefix}/loss"] = loss
        return loss, loss_dict

    def p_losses(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        noise = default(noise, lambda: torch.randn_like(x_start))
        x_noisy = self.q_sample(x_start, t, noise)
        return self.latent_loss(self.apply_model(x_noisy, t), x_start, noise, t)

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """t ~ U{0, ..., T-1} for a batch."""
        return torch.randint(0, self.num_timesteps, (batch_size,), device=self.device, generator=generator)

    def forward(self, x_start: torch.Tensor, /, *args: Any, t: torch.Tensor | None = None, **kwargs: Any):
        t = default(t, lambda: self.sample_timesteps(x_start.shape[0]))
        return self.p_losses(x_start, t, *args, **kwargs)

    # ----------------------------------------------------------------------------- data
    def get_input(self, batch: Mapping[str, Any], k: str) -> torch.Tensor:
        """``batch[k]`` as a float (B, C, H, W) tensor on the model's device (channels first, docs/data.md)."""
        if k not in batch:
            raise ValueError(f"the batch has no key {k!r} (keys: {', '.join(map(str, batch.keys()))}); "
                             f"check first_stage_key / cond_stage_key")
        x = batch[k]
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"batch[{k!r}] must be a (B, C, H, W) tensor, got {shape}")
        return x.to(device=self.device, dtype=torch.float32, memory_format=torch.contiguous_format)

    def get_loss_kwargs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Extra keyword arguments of ``p_losses`` taken from the batch (none in the base model)."""
        return {}

    def shared_step(self, batch: Mapping[str, Any], **kwargs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = self.get_input(batch, self.first_stage_key)
        return self(x, **self.get_loss_kwargs(batch), **kwargs)

    def _batch_size(self, batch: Mapping[str, Any]) -> int:
        return int(batch[self.first_stage_key].shape[0])

    # ----------------------------------------------------------------------------- Lightning hooks
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss, loss_dict = self.shared_step(batch)
        bs = self._batch_size(batch)
        self.log_dict(loss_dict, prog_bar=True, logger=True, on_step=True, on_epoch=True, batch_size=bs)
        self.log("global_step", float(self.global_step), prog_bar=True, logger=True, on_step=True,
                 on_epoch=False, batch_size=bs)
        if self.use_scheduler:
            lr = self.optimizers().param_groups[0]["lr"]
            self.log("lr_abs", lr, prog_bar=True, logger=True, on_step=True, on_epoch=False, batch_size=bs)
        return loss

    def _validation_noise(self, batch_idx: int, x_start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, noise) fixed per validation batch, so that val losses compare across epochs and
        between raw and EMA weights (CompVis draws new ones each time, which makes the monitored
        metric noisy)."""
        seed = VALIDATION_SEED + batch_idx * self.trainer.world_size + self.global_rank \
            if self._trainer is not None else VALIDATION_SEED + batch_idx
        g = torch.Generator(device=x_start.device).manual_seed(seed)
        t = torch.randint(0, self.num_timesteps, (x_start.shape[0],), device=x_start.device, generator=g)
        noise = torch.randn(x_start.shape, device=x_start.device, dtype=x_start.dtype, generator=g)
        return t, noise

    def _log_validation(self, loss_dict: dict, loss_dict_ema: dict | None, batch_size: int) -> None:
        self.log_dict(loss_dict, prog_bar=False, logger=True, on_step=False, on_epoch=True, sync_dist=True,
                      batch_size=batch_size)
        if loss_dict_ema is not None:
            self.log_dict({k + "_ema": v for k, v in loss_dict_ema.items()}, prog_bar=False, logger=True,
                          on_step=False, on_epoch=True, sync_dist=True, batch_size=batch_size)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        """val/loss_simple etc. with the raw weights and, with EMA, val/loss_simple_ema etc."""
        x = self.get_input(batch, self.first_stage_key)
        t, noise = self._validation_noise(batch_idx, x)
        kwargs = self.get_loss_kwargs(batch)
        _, loss_dict = self(x, t=t, noise=noise, **kwargs)
        loss_dict_ema = None
        if self.use_ema:
            with self.ema_scope():
                _, loss_dict_ema = self(x, t=t, noise=noise, **kwargs)
        self._log_validation(loss_dict, loss_dict_ema, x.shape[0])

    def on_train_start(self) -> None:
        self._ema_step = self.global_step

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # only after an optimiser step: with gradient accumulation CompVis averages the same weights k times
        if self.use_ema and self.global_step != self._ema_step:
            self.model_ema(self.model)
            self._ema_step = self.global_step

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser trains: the UNet (and the learned log-variance)."""
        params = list(self.model.parameters())
        if self.learn_logvar:
            params.append(self.logvar)
        return params

    def configure_optimizers(self):
        """AdamW (fused where the parameters allow, :mod:`ldm.optim`) over :meth:`trainable_parameters`
        at ``self.learning_rate``; with ``scheduler_config`` a per-step LambdaLR whose factor is the
        scheduler object's ``schedule`` (CompVis) or the object itself when it is callable."""
        if self.learning_rate is None:
            raise ConfigError(f"{type(self).__name__}.learning_rate is not set (main.py sets it from "
                              f"model.base_learning_rate)")
        params = [p for p in self.trainable_parameters() if p.requires_grad]
        opt = adam(params, decoupled_weight_decay=True, lr=self.learning_rate)
        if not self.use_scheduler:
            return opt
        scheduler = instantiate_from_config(self.scheduler_config)
        lr_lambda = getattr(scheduler, "schedule", scheduler)
        if not callable(lr_lambda):
            raise ConfigError(f"scheduler_config target {self.scheduler_config.get('target')!r} is neither "
                              f"callable nor has a 'schedule' method")
        rank_zero_info("Setting up LambdaLR scheduler...")
        return [opt], [{"scheduler": LambdaLR(opt, lr_lambda=lr_lambda), "interval": "step", "frequency": 1}]

    # ----------------------------------------------------------------------------- sampling and logging
    def latent_sampler(self, spec: str | Mapping | None = None) -> Any:
        """The configured sampler (``sampler``), or the one ``spec`` names, around this model."""
        return make_sampler(self.sampler_spec if spec is None else spec, self)

    @property
    def sampler_name(self) -> str:
        return sampler_name(self.sampler_spec)

    def sample_shape(self) -> tuple[int, int, int]:
        size = self.image_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return int(self.channels), int(h), int(w)

    @torch.no_grad()
    def sample(self, batch_size: int = 16, return_intermediates: bool = False, x_T: torch.Tensor | None = None,
               verbose: bool = True):
        """Ancestral sampling: DDIM over all T timesteps with eta = 1, which is exactly the DDPM
        chain (without CompVis's clipping of x0_hat to [-1, 1]), whatever sampler is configured."""
        samples, intermediates = self.latent_sampler("ddim").sample(
            S=self.num_timesteps, batch_size=batch_size, shape=self.sample_shape(), conditioning=None, eta=1.0,
            x_T=x_T, verbose=verbose, log_every_t=self.log_every_t)
        return (samples, intermediates["x_inter"]) if return_intermediates else samples

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], N: int = 4, sample: bool = True, ddim_steps: int | None = None,
                   **kwargs: Any) -> dict[str, torch.Tensor]:
        x = self.get_input(batch, self.first_stage_key)[:N]
        log = {"inputs": x}
        if sample:
            with self.ema_scope():
                log["samples"], _ = self.latent_sampler().sample(
                    S=ddim_steps or self.log_ddim_steps, batch_size=x.shape[0], shape=tuple(x.shape[1:]),
                    conditioning=None, eta=0.0, verbose=False)
        return log
