"""Lesion-aware post-training (LAPT), once for every latent model: paper Section 2.2, Eqs. 5-8.

:class:`LesionAwarePostTraining` continues training a trained latent model (the cLDM of stage 2,
or the cBBDM) with image-space objectives: at the same t, noise and prediction as the latent loss,
the model's estimate z0_hat of the clean latent (Eq. 5 for the LDM) is decoded through the frozen
first stage and scored against the MRI in the image space, overall (Eq. 6) and inside the lesion
mask (Eq. 7); the total is Eq. 8. The objectives live in :mod:`ldm.models.diffusion.image_space_loss`;
this mixin holds everything else that post-training adds: where the trained weights come from
(EMA or raw), which batch entries feed the loss, the loss combination and its log, and a lesion MAE
on validation slices that tells whether post-training helps.

A model plugs in with two hooks: ``latent_step(x_start, cond, t, noise) -> (loss, loss_dict,
z0_hat)``, its latent loss and clean-latent estimate from one prediction (LatentDiffusion and
LatentBrownianBridge both have it), and ``lesion_mae_latents(c, first_index) -> latents``, how a
validation slice is sampled (:mod:`ldm.models.diffusion.lapt`, :mod:`ldm.models.diffusion.bbdm_lapt`).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from ldm.data.record import MODALITIES
from ldm.models.diffusion.gaussian_diffusion import DDPM
from ldm.models.diffusion.image_space_loss import ImageSpaceObjective, combine_objectives
from ldm.modules.ema import EMA_PREFIX
from ldm.util import ConfigError, accepted_keywords, default

INIT_WEIGHTS = ("ema", "raw")


def _modalities(channels: int) -> list[str]:
    return list(MODALITIES) if channels == len(MODALITIES) else [f"ch{i}" for i in range(channels)]


class LesionAwarePostTraining:
    """Mixin: L_latent + lambda_image L_image + lambda_lesion L_lesion (Eq. 8) on top of a latent model.

    ckpt_path: the trained checkpoint to start from (needed to train; it holds the UNet, the
        rescaler and the first stage). It may be None only to build the model for inference or for
        resuming a post-training run, whose own checkpoint then provides every weight.
    init_weights: "raw" (default, what the reference code does) starts from the checkpoint's
        training weights of the UNet, "ema" from its EMA weights (those it is evaluated with). A
        checkpoint without EMA weights falls back to the raw ones with a warning. The rescaler has
        no EMA and always starts raw.
    lambda_image, lambda_lesion: the weights of Eq. 8 (paper: 0.01 and 0.02).
    image_target: "reconstruction" (default: the VQGAN reconstruction D(E(x)), what the reference
        code compares against) or "input" (x itself, as the paper's Eq. 6 is written).
    quantize_x0_hat: decode z0_hat through the codebook with the straight-through estimator (the
        reference's behaviour) or, if False, decode the continuous latent.
    image_loss_t_max, image_loss_t_weighting: optional restriction of the image terms to t < t_max
        and weighting by abar_t (off by default); see :class:`ImageSpaceObjective`.
    decoder_checkpointing: recompute the decoder's activations in the backward pass (the decoder at
        full resolution is what limits the batch size of post-training).
    lesion_mae_slices, lesion_mae_ddim_steps, lesion_mae_every_n_val, lesion_mae_seed: the
        validation lesion MAE (val/lesion_mae, and per modality) is computed on the first
        ``lesion_mae_slices`` lesion-bearing validation slices (the validation loader is not
        shuffled, so they are the same every time), sampled with ``lesion_mae_ddim_steps`` steps,
        every ``lesion_mae_every_n_val``-th validation run; 0 slices switches it off.

    Every other parameter is the model's (passed on by keyword).
    """

    def __init__(self, *, ckpt_path: str | None = None, init_weights: str = "raw",
                 lambda_image: float = 0.01, lambda_lesion: float = 0.02, image_target: str = "reconstruction",
                 quantize_x0_hat: bool = True, image_loss_t_max: int | None = None,
                 image_loss_t_weighting: str = "uniform", decoder_checkpointing: bool = False,
                 lesion_mae_slices: int = 16, lesion_mae_ddim_steps: int = 10, lesion_mae_every_n_val: int = 1,
                 lesion_mae_seed: int = 0, ignore_keys: Sequence[str] = (), **kwargs: Any) -> None:
        base = accepted_keywords(type(self), after=LesionAwarePostTraining)
        unknown = sorted(set(kwargs) - base) if base is not None else []
        if unknown:
            raise ConfigError(f"{type(self).__name__} takes no parameter {unknown[0]!r}")
        if kwargs.get("load_only_unet"):
            raise ConfigError("load_only_unet is not supported by post-training: the stage-2 checkpoint must "
                              "also provide the rescaler and the first stage")
        if init_weights not in INIT_WEIGHTS:
            raise ConfigError(f"init_weights must be one of {INIT_WEIGHTS}, got {init_weights!r}")
        if ckpt_path is not None and not os.path.isfile(ckpt_path):
            raise ConfigError(f"model.params.ckpt_path {ckpt_path!r} (the stage-2 checkpoint to post-train) "
                              f"does not exist")
        for name, value in (("lambda_image", lambda_image), ("lambda_lesion", lambda_lesion)):
            if float(value) < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if int(lesion_mae_slices) < 0 or int(lesion_mae_ddim_steps) < 1 or int(lesion_mae_every_n_val) < 1:
            raise ConfigError(f"lesion MAE settings: slices {lesion_mae_slices} must be >= 0, DDIM steps "
                              f"{lesion_mae_ddim_steps} and every_n_val {lesion_mae_every_n_val} >= 1")
        super().__init__(ckpt_path=None, ignore_keys=ignore_keys, **kwargs)
        self.lambda_image = float(lambda_image)
        self.lambda_lesion = float(lambda_lesion)
        try:
            self.image_objective = ImageSpaceObjective(
                image_target=image_target, quantize=bool(quantize_x0_hat), t_max=image_loss_t_max,
                t_weighting=image_loss_t_weighting, decoder_checkpointing=bool(decoder_checkpointing))
        except ValueError as e:
            raise ConfigError(str(e)) from e
        self.lesion_mae_slices = int(lesion_mae_slices)
        self.lesion_mae_ddim_steps = int(lesion_mae_ddim_steps)
        self.lesion_mae_every_n_val = int(lesion_mae_every_n_val)
        self.lesion_mae_seed = int(lesion_mae_seed)
        self._validation_runs = 0
        self._lesion_mae_due = False
        self._lesion_slices: list[dict[str, torch.Tensor]] = []
        self.stage2_ckpt_path = ckpt_path
        self.init_weights_used: str | None = None
        if ckpt_path is not None:
            self.init_weights_used = self.load_stage2(ckpt_path, init_weights, ignore_keys)
            self.restarted_from_ckpt = True

    # ----------------------------------------------------------------------------- stage-2 weights
    def load_stage2(self, path: str, init_weights: str = "raw", ignore_keys: Sequence[str] = ()) -> str:
        """Load the stage-2 checkpoint and put its EMA (or raw) UNet weights into ``model``.

        Returns the weights actually used ("ema" or "raw"). The EMA shadow weights are picked up
        while the checkpoint loads (one read of a possibly multi-GB file) and copied into the UNet,
        since post-training runs with ``use_ema: false`` and so has no ``model_ema`` to hold them.
        With ``use_ema: true`` the post-training EMA restarts from the weights chosen here.
        """
        ema: dict[str, torch.Tensor] = {}

        def capture(module: torch.nn.Module, state_dict: Mapping, prefix: str, *args: Any) -> None:
            if prefix == "":
                ema.update({k[len(EMA_PREFIX):]: v for k, v in state_dict.items() if k.startswith(EMA_PREFIX)})

        handle = self.register_load_state_dict_pre_hook(capture)
        try:
            missing, _ = self.init_from_ckpt(path, ignore_keys=ignore_keys)
        finally:
            handle.remove()
        for prefix in ("first_stage_model.", "cond_stage_model."):
            lost = [k for k in missing if k.startswith(prefix)]
            if lost:
                raise ConfigError(f"stage-2 checkpoint {path!r} lacks {len(lost)} {prefix[:-1]} weights "
                                  f"(e.g. {lost[0]!r}): post-training needs the full stage-2 model")
        used = init_weights
        if init_weights == "ema":
            if ema:
                self._copy_ema_into_unet(ema, path)
            else:
                used = "raw"
                rank_zero_warn(f"stage-2 checkpoint {path!r} has no EMA weights (model_ema.*): post-training "
                               f"starts from its raw UNet weights")
        if self.use_ema:
            self.model_ema.reset_to(self.model)
        rank_zero_info(f"{type(self).__name__}: post-training starts from the {used.upper()} UNet weights of "
                       f"{path} (init_weights: {init_weights}); rescaler and first stage as trained")
        return used

    @torch.no_grad()
    def _copy_ema_into_unet(self, ema: Mapping[str, torch.Tensor], path: str) -> None:
        """LitEma names a shadow weight after its parameter with the dots removed."""
        params = dict(self.model.named_parameters())
        absent = [n for n in params if n.replace(".", "") not in ema]
        if absent:
            raise ConfigError(f"stage-2 checkpoint {path!r} has EMA weights but none for {len(absent)} UNet "
                              f"parameters (e.g. {absent[0]!r}); use init_weights: raw")
        for name, p in params.items():
            shadow = ema[name.replace(".", "")]
            if shadow.shape != p.shape:
                raise ConfigError(f"stage-2 checkpoint {path!r}: EMA weight of {name!r} has shape "
                                  f"{tuple(shadow.shape)}, the model {tuple(p.shape)}")
            p.copy_(shadow)

    def on_fit_start(self) -> None:
        if self.stage2_ckpt_path is None and self.trainer.ckpt_path is None:
            raise ConfigError(f"{type(self).__name__} needs model.params.ckpt_path: the stage-2 checkpoint to "
                              f"post-train (e.g. logs/<stage-2 run>/checkpoints/last.ckpt)")
        super().on_fit_start()

    # ----------------------------------------------------------------------------- loss (Eqs. 5-8)
    def latent_step_kwargs(self, lesion: torch.Tensor | None) -> dict[str, Any]:
        """The lesion for a lesion-weighted L_latent (the model's ``lesion_weight`` > 0), else nothing."""
        return {"lesion": lesion} if getattr(self, "lesion_weight", 0.0) else {}

    @property
    def image_terms_weighted(self) -> bool:
        return self.lambda_image > 0 or self.lambda_lesion > 0

    def get_loss_kwargs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """mask (brain), lesion and x = batch[first_stage_key] for the image-space terms."""
        for key in ("mask", "lesion"):
            if key not in batch:
                raise ValueError(f"lesion-aware post-training needs batch[{key!r}] (binary, (B, 1, H, W)); the "
                                 f"batch has keys {', '.join(map(str, batch.keys()))}")
        return {"mask": DDPM.get_input(self, batch, "mask"), "lesion": DDPM.get_input(self, batch, "lesion"),
                "x": DDPM.get_input(self, batch, self.first_stage_key)}

    def p_losses(self, x_start: torch.Tensor, cond: Any, t: torch.Tensor, noise: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None, lesion: torch.Tensor | None = None,
                 x: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_total = L_latent + lambda_image L_image + lambda_lesion L_lesion (Eq. 8) at timesteps t.

        The latent loss and z0_hat come from one prediction of the model (``latent_step``: Eqs. 4
        and 5 for the LDM). With both lambdas 0 the loss is exactly the model's latent loss; the
        image terms are then computed (without a gradient graph) only in validation, for the log.
        """
        noise = default(noise, lambda: torch.randn_like(x_start))
        loss_latent, loss_dict, z0_hat = self.latent_step(x_start, cond, t, noise, **self.latent_step_kwargs(lesion))
        prefix = "train" if self.training else "val"
        loss_dict[f"{prefix}/loss_latent"] = loss_latent.detach()
        if x is None or mask is None or lesion is None:
            if self.image_terms_weighted:
                raise ValueError("lesion-aware post-training needs mask, lesion and x (the MRI batch) in p_losses")
            return loss_latent, loss_dict
        if self.training and not self.image_terms_weighted:
            # the control run (both weights 0): the image terms would only be logged; validation logs them
            return loss_latent, loss_dict
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.image_terms_weighted):
            loss_image, loss_lesion, _ = self.image_objective(self, z0_hat, x, mask, lesion, t, z_start=x_start)
        loss = combine_objectives(loss_latent, loss_image, loss_lesion, self.lambda_image, self.lambda_lesion)
        loss_dict.update({f"{prefix}/loss_image": loss_image.detach(), f"{prefix}/loss_lesion": loss_lesion.detach(),
                          f"{prefix}/loss": loss.detach()})
        return loss, loss_dict

    # ----------------------------------------------------------------------------- validation lesion MAE
    def on_validation_epoch_start(self) -> None:
        self._lesion_slices = []
        sanity = self._trainer is not None and self.trainer.sanity_checking
        self._lesion_mae_due = (self.lesion_mae_slices > 0 and not sanity
                                and self._validation_runs % self.lesion_mae_every_n_val == 0)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        if self._lesion_mae_due:
            self._collect_lesion_slices(batch)

    def _collect_lesion_slices(self, batch: Mapping[str, Any]) -> None:
        have = sum(item["mri"].shape[0] for item in self._lesion_slices)
        if have >= self.lesion_mae_slices:
            return
        lesion = DDPM.get_input(self, batch, "lesion")
        keep = lesion.flatten(1).sum(dim=1) > 0
        keep &= torch.cumsum(keep.long(), 0) <= self.lesion_mae_slices - have
        if keep.any():
            self._lesion_slices.append({
                "mri": DDPM.get_input(self, batch, self.first_stage_key)[keep],
                "ctp": DDPM.get_input(self, batch, self.cond_stage_key)[keep], "lesion": lesion[keep]})

    def on_validation_epoch_end(self) -> None:
        sanity = self._trainer is not None and self.trainer.sanity_checking
        if self._lesion_mae_due:
            self._log_lesion_mae()
        if not sanity:
            self._validation_runs += 1
        self._lesion_slices = []

    @torch.no_grad()
    def lesion_mae(self, ctp: torch.Tensor, mri: torch.Tensor, lesion: torch.Tensor,
                   first_index: int = 0) -> torch.Tensor:
        """Per-slice lesion MAE, (B, C): sum(M |x - x_hat|) / sum(M) on images mapped to [0, 1].

        x_hat is the model's deterministic sample (``lesion_mae_latents``, EMA weights when the model
        has them) of the slices at positions ``first_index ..`` of the validation subset.
        """
        c = self.get_learned_conditioning(ctp)
        with self.ema_scope():
            latents = self.lesion_mae_latents(c, first_index)
        x_hat = self.decode_first_stage(latents).float()
        to_unit = lambda v: (v.clamp(-1.0, 1.0) + 1.0) / 2.0  # noqa: E731
        m = lesion.float()
        return (m * (to_unit(mri) - to_unit(x_hat)).abs()).sum(dim=(2, 3)) / m.sum(dim=(2, 3)).clamp(min=1.0)

    def lesion_mae_latents(self, c: torch.Tensor, first_index: int) -> torch.Tensor:
        """The latents the validation lesion MAE decodes for the learned conditioning ``c`` (a model hook)."""
        raise NotImplementedError(f"{type(self).__name__} must define lesion_mae_latents")

    def _log_lesion_mae(self) -> None:
        device = self.device
        channels = None
        sums = None
        count = 0
        for item in self._lesion_slices:
            per_slice = self.lesion_mae(item["ctp"], item["mri"], item["lesion"], first_index=count)
            sums = per_slice.sum(dim=0) if sums is None else sums + per_slice.sum(dim=0)
            channels = per_slice.shape[1]
            count += per_slice.shape[0]
        if channels is None:
            channels = int(self.first_stage_model.decoder.conv_out.out_channels)
            sums = torch.zeros(channels, device=device)
        # every rank takes part in the reduction, also one whose share of the data has no lesion
        totals = torch.cat([sums.float().to(device), torch.tensor([float(count)], device=device)])
        if self._trainer is not None:
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        n = float(totals[-1])
        if n == 0:
            rank_zero_warn("val/lesion_mae: no validation slice with lesion was seen; nothing logged")
            return
        per_modality = totals[:-1] / n
        values = {f"val/lesion_mae_{m}": per_modality[i] for i, m in enumerate(_modalities(channels))}
        values["val/lesion_mae"] = per_modality.mean()
        self.log_dict(values, prog_bar=False, logger=True, on_step=False, on_epoch=True, sync_dist=False)
