"""The latent Brownian bridge diffusion model (BBDM, Li et al., CVPR 2023), conditional variant (cBBDM).

Bridge math (BBDM Sec. 3.1), with the schedule of :mod:`ldm.modules.diffusionmodules.bridge_schedule`:

    x_t = (1 - m_t) x_0 + m_t y + sqrt(delta_t) eps                                    (BBDM Eq. 3)

and the denoiser is trained to predict one of the objectives

    "grad":  m_t (y - x_0) + sqrt(delta_t) eps  ( = x_t - x_0 )                      (BBDM Eq. 11)
    "noise": eps
    "ysubx": y - x_0                                 (the reference code's third option)
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ldm.modules.diffusionmodules.bridge_schedule import make_bridge_schedule
from ldm.models.diffusion.latent_diffusion import LatentDiffusion
from ldm.modules.diffusionmodules.util import extract_into_tensor
from ldm.util import ConfigError, default, instantiate_from_config

OBJECTIVES = ("grad", "noise", "ysubx")


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"bridge objective {objective!r} unknown; choose one of {OBJECTIVES}")


def bridge_marginal(x_start: torch.Tensor, y: torch.Tensor, m_t: torch.Tensor, delta_t: torch.Tensor,
                    noise: torch.Tensor) -> torch.Tensor:
    """x_t ~ q(x_t | x_0, y) (BBDM Eq. 3); ``m_t``/``delta_t`` broadcast to x_start, e.g. (B, 1, 1, 1)."""
    return (1.0 - m_t) * x_start + m_t * y + delta_t.sqrt() * noise


def objective_target(objective: str, x_start: torch.Tensor, y: torch.Tensor, noise: torch.Tensor,
                     m_t: torch.Tensor, delta_t: torch.Tensor) -> torch.Tensor:
    """What the denoiser learns to output at x_t = bridge_marginal(x_start, y, m_t, delta_t, noise)."""
    _check_objective(objective)
    if objective == "grad":
        return m_t * (y - x_start) + delta_t.sqrt() * noise
    if objective == "noise":
        return noise
    return y - x_start


def predict_start_from_objective(objective: str, x_t: torch.Tensor, y: torch.Tensor, m_t: torch.Tensor,
                                 delta_t: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
    """z0_hat from the denoiser's output: the inverse of :func:`objective_target` given x_t.

    The bridge analogue of the LDM's Eq. 5, used by the sampler and by the post-training.
    """
    _check_objective(objective)
    if objective == "grad":
        return x_t - model_output
    if objective == "noise":
        return (x_t - m_t * y - delta_t.sqrt() * model_output) / (1.0 - m_t)
    return y - model_output


# ================================================================================ the model
class LatentBrownianBridge(LatentDiffusion):
    """cBBDM: a Brownian bridge in the frozen VQGAN's latent space from the source y to x_0 = E(x).

    Reused from :class:`LatentDiffusion` (unchanged): the frozen first stage, ``scale_factor`` /
    ``scale_by_std``, the trainable SpatialRescaler c~ = F(CTP) (``cond_stage_model``), the UNet
    behind ``model.diffusion_model``, the UNet's EMA and ``ema_scope``, AdamW and the LR scheduler,
    validation with and without EMA. Replaced: the schedule (m_t, delta_t instead of betas), the
    forward process and objective, the sampler and the sample images.

    The source y. The bridge needs a source in the latent space, but the CTP series is not an MRI
    and has no VQGAN latent. Here y = S(c~) with S = ``source_stage_model`` (``source_stage_config``;
    the configs use a 1x1 convolution 15 -> 3), a learned map of the rescaled 15-channel CTP to the
    latent's channels, trained with the UNet and the rescaler. Nothing ties y to x_0 unless
    ``source_loss_weight`` > 0 adds that weight times mean (y - x_0)^2, which turns y into a coarse
    regression estimate of the latent and shortens the bridge; off by default (the loss of BBDM
    alone). Like the rescaler, S has no EMA copy.

    cBBDM (Kim & Chung, 2024) also concatenates c~ to the denoiser's input (UNet in_channels =
    3 + 15); ``concat_condition: false`` gives the plain BBDM denoiser (in_channels = 3).

    Timesteps run over t = 1..T (t = 0 is the data itself, see
    :mod:`ldm.modules.diffusionmodules.bridge_schedule`); the UNet sees t.
    """

    def __init__(self, first_stage_config: Mapping, cond_stage_config: Mapping, unet_config: Mapping,
                 source_stage_config: Mapping, objective: str = "grad", mt_schedule: str = "linear",
                 m_min: float = 0.001, m_max: float = 0.999, max_var: float = 1.0, timesteps: int = 1000,
                 concat_condition: bool = True, source_loss_weight: float = 0.0, sample_steps: int = 200,
                 sample_eta: float = 1.0, loss_type: str = "l1", cond_stage_key: str = "ctp",
                 cond_stage_trainable: bool = True, scale_factor: float = 1.0, scale_by_std: bool = False,
                 ckpt_path: str | None = None, ignore_keys: Sequence[str] = (), load_only_unet: bool = False,
                 monitor: str | None = "val/loss", use_ema: bool = True, first_stage_key: str = "mri",
                 image_size: int | Sequence[int] = (48, 56), channels: int = 3, log_every_t: int = 100,
                 scheduler_config: Mapping | None = None, ema_decay: float = 0.9999, log_ddim_steps: int = 20,
                 compile_unet: bool = False, compile_kwargs: Mapping | None = None,
                 sampler: str | Mapping = "bridge") -> None:
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective {objective!r} is not one of {OBJECTIVES}")
        if source_loss_weight < 0:
            raise ConfigError(f"source_loss_weight must be >= 0, got {source_loss_weight}")
        if sample_eta < 0:
            raise ConfigError(f"sample_eta must be >= 0, got {sample_eta}")
        if not 1 <= sample_steps <= timesteps:
            raise ConfigError(f"sample_steps must be in 1..timesteps ({timesteps}), got {sample_steps}")
        # Read by register_schedule, which DDPM.__init__ calls (plain attributes may precede Module.__init__).
        self.bridge_settings = {"schedule": mt_schedule, "n_timestep": int(timesteps), "m_min": float(m_min),
                                "m_max": float(m_max), "max_var": float(max_var)}
        super().__init__(first_stage_config=first_stage_config, cond_stage_config=cond_stage_config,
                         unet_config=unet_config, cond_stage_key=cond_stage_key,
                         cond_stage_trainable=cond_stage_trainable, conditioning_key="concat",
                         scale_factor=scale_factor, scale_by_std=scale_by_std, ckpt_path=None,
                         timesteps=timesteps, loss_type=loss_type, monitor=monitor, use_ema=use_ema,
                         first_stage_key=first_stage_key, image_size=image_size, channels=channels,
                         log_every_t=log_every_t, scheduler_config=scheduler_config, ema_decay=ema_decay,
                         log_ddim_steps=log_ddim_steps, compile_unet=compile_unet, compile_kwargs=compile_kwargs,
                         sampler=sampler)
        self.objective = objective
        self.parameterization = objective  # DDPM's eps/x0 switch does not apply to the bridge
        self.concat_condition = bool(concat_condition)
        self.source_loss_weight = float(source_loss_weight)
        self.sample_steps = int(sample_steps)
        self.sample_eta = float(sample_eta)
        self.source_stage_model = instantiate_from_config(source_stage_config)
        if ckpt_path is not None:  # after the source map exists, so that its weights load too
            self.init_from_ckpt(ckpt_path, ignore_keys=ignore_keys, only_model=load_only_unet)
            self.restarted_from_ckpt = True

    # ----------------------------------------------------------------------------- schedule
    def register_schedule(self, **unused: Any) -> None:
        """Register m_t and delta_t (t = 0..T, float32 buffers computed in float64); DDPM's beta
        arguments are ignored."""
        try:
            sched = make_bridge_schedule(**self.bridge_settings)
        except ValueError as e:
            raise ConfigError(str(e)) from e
        self.num_timesteps = sched.num_timesteps
        self.register_buffer("m_t", torch.tensor(sched.m_t, dtype=torch.float32))
        self.register_buffer("delta_t", torch.tensor(sched.delta_t, dtype=torch.float32))

    def check_checkpoint(self, sd: Mapping[str, torch.Tensor], path: str) -> None:
        """Refuse a checkpoint of a Gaussian diffusion model (whose UNet can still warm-start a bridge
        with ``load_only_unet``) or of another bridge schedule; LatentDiffusion's latent-scaling check."""
        if "betas" in sd:
            raise ConfigError(f"checkpoint {path!r} is a Gaussian diffusion (LDM) checkpoint, not a Brownian "
                              f"bridge one; set load_only_unet: true to start the bridge's UNet from it")
        m_t = sd.get("m_t")
        if m_t is not None and (m_t.shape != self.m_t.shape
                                or not torch.allclose(m_t.float().cpu(), self.m_t.cpu(), atol=1e-6)):
            raise ConfigError(f"checkpoint {path!r} was trained with another bridge schedule (m_t over "
                              f"{m_t.shape[0] - 1} steps up to {float(m_t[-1]):.6g}; config: {self.num_timesteps} "
                              f"steps up to {float(self.m_t[-1]):.6g}): set timesteps/m_min/m_max/mt_schedule as "
                              f"in training")
        super().check_checkpoint(sd, path)

    def init_from_ckpt(self, path: str, ignore_keys: Sequence[str] = (), only_model: bool = False
                       ) -> tuple[list[str], list[str]]:
        """LatentDiffusion's loading (with :meth:`check_checkpoint`); the source map must be in it."""
        missing, unexpected = super().init_from_ckpt(path, ignore_keys=ignore_keys, only_model=only_model)
        lost = [k for k in missing if k.startswith("source_stage_model.")]
        if lost:
            raise ConfigError(f"checkpoint {path!r} lacks the source map weights ({lost[0]!r}): not a checkpoint "
                              f"of this Brownian bridge model")
        return missing, unexpected

    def _coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (extract_into_tensor(self.m_t, t, like.shape).to(like.dtype),
                extract_into_tensor(self.delta_t, t, like.shape).to(like.dtype))

    def sample_timesteps(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """t ~ U{1, ..., T} (t = 0 is the data)."""
        return torch.randint(1, self.num_timesteps + 1, (batch_size,), device=self.device, generator=generator)

    def _validation_noise(self, batch_idx: int, x_start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t, noise = super()._validation_noise(batch_idx, x_start)
        return t + 1, noise  # U{0..T-1} -> U{1..T}, same seeds

    # ----------------------------------------------------------------------------- source and denoiser
    def trainable_parameters(self) -> list[nn.Parameter]:
        """LatentDiffusion's (UNet, rescaler) plus the source map S."""
        return super().trainable_parameters() + list(self.source_stage_model.parameters())

    def get_source(self, cond: torch.Tensor) -> torch.Tensor:
        """y = S(c~): the bridge's source latent from the learned conditioning."""
        if isinstance(cond, (list, tuple)) and len(cond) == 1:
            cond = cond[0]
        y = self.source_stage_model(cond)
        if y.dim() != 4 or y.shape[0] != cond.shape[0] or y.shape[1] != self.channels or y.shape[2:] != cond.shape[2:]:
            raise ValueError(f"source_stage_model maps the condition {tuple(cond.shape)} to {tuple(y.shape)}, but the "
                             f"bridge needs a latent ({cond.shape[0]}, {self.channels}, {cond.shape[2]}, "
                             f"{cond.shape[3]}); check source_stage_config (in/out channels, stride)")
        return y

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """The denoiser's objective prediction at (x_t, t); c~ is concatenated for cBBDM."""
        if self.concat_condition:
            return super().apply_model(x_noisy, t, cond)
        return self._diffusion_model()(x_noisy, t, c_concat=[])

    # ----------------------------------------------------------------------------- bridge math
    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None, *,
                 y: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = (1 - m_t) x_0 + m_t y + sqrt(delta_t) eps (BBDM Eq. 3); ``y`` is required."""
        if y is None:
            raise ValueError("the Brownian bridge's q_sample needs the source y")
        if y.shape != x_start.shape:
            raise ValueError(f"source y {tuple(y.shape)} and latent x_0 {tuple(x_start.shape)} differ in shape")
        noise = default(noise, lambda: torch.randn_like(x_start))
        m, d = self._coefficients(t, x_start)
        return bridge_marginal(x_start, y, m, d, noise)

    def predict_start(self, x_noisy: torch.Tensor, t: torch.Tensor, model_output: torch.Tensor, *,
                      y: torch.Tensor | None = None) -> torch.Tensor:
        """z0_hat from the denoiser's output at the same t (the bridge's Eq. 5); ``y`` is required."""
        if y is None:
            raise ValueError("the Brownian bridge's predict_start needs the source y")
        m, d = self._coefficients(t, x_noisy)
        return predict_start_from_objective(self.objective, x_noisy, y, m, d, model_output)

    def latent_loss(self, model_output: torch.Tensor, x_start: torch.Tensor, noise: torch.Tensor,
                    t: torch.Tensor, *, y: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_latent of the bridge: mean |target - output|^p for the configured objective (BBDM Eq. 11
        for "grad"), plus ``source_loss_weight`` * mean (y - x_0)^2; returns (loss, loss_dict)."""
        if y is None:
            raise ValueError("the Brownian bridge's latent_loss needs the source y")
        prefix = "train" if self.training else "val"
        m, d = self._coefficients(t, x_start)
        target = objective_target(self.objective, x_start, y, noise, m, d)
        loss_simple = self.get_loss(model_output.float(), target.float())
        loss = loss_simple
        loss_dict = {f"{prefix}/loss_simple": loss_simple.detach()}
        if self.source_loss_weight:
            loss_source = (y.float() - x_start.float()).pow(2).mean()
            loss = loss + self.source_loss_weight * loss_source
            loss_dict[f"{prefix}/loss_source"] = loss_source.detach()
        loss_dict[f"{prefix}/loss"] = loss.detach()
        return loss, loss_dict

    def latent_step(self, x_start: torch.Tensor, cond: Any, t: torch.Tensor, noise: torch.Tensor
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(the bridge's latent loss, its loss dict, z0_hat) from one denoiser output at (x_t, t), with
        the source y = S(c~): the hook the post-training builds on."""
        y = self.get_source(cond)
        x_noisy = self.q_sample(x_start, t, noise, y=y)
        model_output = self.apply_model(x_noisy, t, cond)
        loss, loss_dict = self.latent_loss(model_output, x_start, noise, t, y=y)
        return loss, loss_dict, self.predict_start(x_noisy, t, model_output, y=y)

    def p_losses(self, x_start: torch.Tensor, cond: Any, t: torch.Tensor, noise: torch.Tensor | None = None,
                 **kwargs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The bridge's training loss at timesteps t in 1..T; extra keyword arguments are for subclasses."""
        noise = default(noise, lambda: torch.randn_like(x_start))
        loss, loss_dict, _ = self.latent_step(x_start, cond, t, noise)
        return loss, loss_dict

    # ----------------------------------------------------------------------------- sampling and logging
    @torch.no_grad()
    def sample_latents(self, cond: torch.Tensor, shape: Sequence[int] | None = None, steps: int | None = None,
                       eta: float | None = None, x_T: torch.Tensor | None = None, verbose: bool = False,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents sampled for the learned conditioning ``cond`` (= get_learned_conditioning(ctp)).

        steps/eta default to the config's ``sample_steps``/``sample_eta``; ``x_T`` is the start of
        the chain (default: the source y; never Gaussian noise for a bridge); ``generator`` draws the
        per-step noise. Uses the weights in place: wrap in ``ema_scope()`` for the EMA weights.
        """
        cond = cond[0] if isinstance(cond, (list, tuple)) and len(cond) == 1 else cond
        latents, _ = self.latent_sampler().sample(
            S=default(steps, self.sample_steps), batch_size=cond.shape[0], shape=shape, conditioning=cond,
            eta=default(eta, self.sample_eta), x_T=x_T, verbose=verbose, log_every_t=self.log_every_t,
            noise_generator=generator)
        return latents

    @torch.no_grad()
    def sample_log(self, cond: torch.Tensor, batch_size: int, ddim: bool = True, ddim_steps: int | None = None,
                   eta: float | None = None, x_T: torch.Tensor | None = None, verbose: bool = False,
                   return_intermediates: bool = True, **kwargs: Any):
        """CompVis-named entry point: the configured (bridge) sampler (``ddim``/``ddim_steps`` name the
        skipped schedule)."""
        if cond.shape[0] != batch_size:
            raise ValueError(f"batch_size {batch_size} differs from the conditioning's batch {cond.shape[0]}")
        samples, intermediates = self.latent_sampler().sample(
            S=default(ddim_steps, self.sample_steps), batch_size=batch_size, shape=None, conditioning=cond,
            eta=default(eta, self.sample_eta), x_T=x_T, verbose=verbose, log_every_t=self.log_every_t, **kwargs)
        return (samples, intermediates) if return_intermediates else samples

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, batch_size: int | None = None, return_intermediates: bool = False,
               x_T: torch.Tensor | None = None, verbose: bool = True):
        """Ancestral bridge sampling over all T timesteps (eta = 1)."""
        return self.sample_log(cond, default(batch_size, cond.shape[0]), ddim_steps=self.num_timesteps, eta=1.0,
                               x_T=x_T, verbose=verbose, return_intermediates=return_intermediates)

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], N: int = 4, sample: bool = True, ddim_steps: int | None = None,
                   ddim_eta: float | None = None, plot_reconstruction: bool = True, seed: int = 0, **kwargs: Any
                   ) -> dict[str, torch.Tensor]:
        """Images in [-1, 1]: the CTP mean (ctp_mean), ground truth (inputs), its reconstruction, the
        decoded source y (what the bridge starts from) and a bridge sample with EMA weights
        (``ddim_steps`` default ``log_ddim_steps``; per-step noise from a fixed ``seed``)."""
        z, c, x, xrec, xc = self.get_input(batch, self.first_stage_key, return_first_stage_outputs=True,
                                           force_c_encode=True, return_original_cond=True, bs=N)
        log = {"ctp_mean": xc.mean(dim=1, keepdim=True), "inputs": x}
        if plot_reconstruction:
            log["reconstruction"] = xrec
        with self.ema_scope():
            log["source"] = self.decode_first_stage(self.get_source(c)).clamp(-1.0, 1.0)
            if sample:
                g = torch.Generator(device=z.device).manual_seed(seed)
                latents = self.sample_latents(c, steps=ddim_steps or self.log_ddim_steps,
                                              eta=ddim_eta, generator=g)
                log["samples"] = self.decode_first_stage(latents).clamp(-1.0, 1.0)
        return log
