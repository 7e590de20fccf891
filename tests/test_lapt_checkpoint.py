"""Starting post-training from a stage-2 checkpoint (EMA or raw weights), the validation lesion MAE,
and a short Lightning fit with bf16 autocast and decoder checkpointing."""
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ldm.samplers.ddim import DDIMSampler
from ldm.util import ConfigError
from tests.helpers.lapt_models import build, lapt_config, make_batch, save_stage2_checkpoint


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def stage2_ckpt(tmp_path_factory):
    return save_stage2_checkpoint(tmp_path_factory.mktemp("stage2") / "last.ckpt")


def _ema_key(name: str) -> str:
    return "model_ema." + name.replace(".", "")


@pytest.mark.parametrize("init_weights", ["ema", "raw"])
def test_stage2_weights_loaded_with_ema_or_raw_choice(stage2_ckpt, init_weights, caplog):
    path, sd = stage2_ckpt
    with caplog.at_level(logging.INFO):
        model = build(lapt_config(str(path), init_weights=init_weights))
    assert model.init_weights_used == init_weights
    assert f"{init_weights.upper()} UNet weights" in caplog.text
    for name, p in model.model.named_parameters():
        expected = sd[_ema_key(name)] if init_weights == "ema" else sd["model." + name]
        assert torch.equal(p, expected), name
        assert not torch.equal(sd[_ema_key(name)], sd["model." + name])  # the choice is visible
    # the rescaler has no EMA; it and the first stage come from the checkpoint as trained
    assert torch.equal(model.cond_stage_model.channel_mapper.weight,
                       sd["cond_stage_model.channel_mapper.weight"])
    for k, v in model.first_stage_model.state_dict().items():
        assert torch.equal(v, sd["first_stage_model." + k]), k
    assert model.restarted_from_ckpt and not model.use_ema


def test_checkpoint_without_ema_falls_back_to_raw_with_warning(tmp_path):
    path, sd = save_stage2_checkpoint(tmp_path / "no_ema.ckpt", with_ema=False)
    with pytest.warns(UserWarning, match="no EMA weights"):
        model = build(lapt_config(str(path), init_weights="ema"))
    assert model.init_weights_used == "raw"
    name, p = next(iter(model.model.named_parameters()))
    assert torch.equal(p, sd["model." + name])


def test_post_training_ema_restarts_from_the_chosen_weights(stage2_ckpt):
    path, sd = stage2_ckpt
    model = build(lapt_config(str(path), init_weights="raw", use_ema=True))
    shadows = dict(model.model_ema.named_buffers())
    for name, p in model.model.named_parameters():
        assert torch.equal(shadows[name.replace(".", "")], p)
    assert int(model.model_ema.num_updates) == 0


def test_missing_or_absent_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build(lapt_config(str(tmp_path / "nope.ckpt")))
    with pytest.raises(ConfigError, match="init_weights"):
        build(lapt_config(init_weights="best"))
    model = build(lapt_config(None))  # allowed for inference / resuming ...
    model.trainer = SimpleNamespace(ckpt_path=None)  # ... but not for a fresh post-training fit
    with pytest.raises(ConfigError, match="ckpt_path"):
        model.on_fit_start()


def test_lesion_mae_equals_independent_computation(stage2_ckpt):
    path, _ = stage2_ckpt
    model = build(lapt_config(str(path), lesion_mae_ddim_steps=3)).eval()
    batch = make_batch(b=2, lesion_slices=(0, 1))
    got = model.lesion_mae(batch["ctp"], batch["mri"], batch["lesion"], first_index=4)
    with torch.no_grad():
        c = model.get_learned_conditioning(batch["ctp"])
        x_T = model.lesion_mae_noise((3, 8, 8), 4, 2)
        latents, _ = DDIMSampler(model).sample(S=3, batch_size=2, shape=(3, 8, 8), conditioning=c, eta=0.0,
                                               x_T=x_T, verbose=False)
        x_hat = model.decode_first_stage(latents).numpy()
    x, m = batch["mri"].numpy(), batch["lesion"].numpy()[:, 0]
    unit = lambda a: (np.clip(a, -1, 1) + 1) / 2  # noqa: E731
    for b in range(2):
        for ch in range(2):
            ref = (m[b] * np.abs(unit(x[b, ch]) - unit(x_hat[b, ch]))).sum() / m[b].sum()
            assert got[b, ch].item() == pytest.approx(ref, rel=1e-5)
    again = model.lesion_mae(batch["ctp"], batch["mri"], batch["lesion"], first_index=4)
    assert torch.equal(got, again)  # fixed noise: the same figure for the same model


class _Slices(torch.utils.data.Dataset):
    def __init__(self, n: int, lesion_slices: tuple[int, ...]) -> None:
        self.batch = make_batch(b=n, lesion_slices=lesion_slices, seed=n)

    def __len__(self) -> int:
        return self.batch["mri"].shape[0]

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.batch.items()}


@pytest.mark.filterwarnings("ignore:.*no logger configured")
def test_short_fit_bf16_logs_losses_and_lesion_mae(stage2_ckpt, tmp_path):
    path, sd = stage2_ckpt
    model = build(lapt_config(str(path), decoder_checkpointing=True, lesion_mae_slices=3,
                              lesion_mae_ddim_steps=2, lesion_mae_every_n_val=1))
    model.learning_rate = 1e-3
    train = DataLoader(_Slices(4, (0, 3)), batch_size=2)
    val = DataLoader(_Slices(4, (1, 2, 3)), batch_size=2)
    trainer = pl.Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=2, limit_val_batches=2,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, train, val)
    metrics = trainer.callback_metrics
    for key in ("train/loss_image", "train/loss_lesion", "train/loss_latent", "val/loss_simple",
                "val/loss_image", "val/lesion_mae", "val/lesion_mae_dwi", "val/lesion_mae_adc"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert metrics["val/lesion_mae"].item() == pytest.approx(
        (metrics["val/lesion_mae_dwi"].item() + metrics["val/lesion_mae_adc"].item()) / 2, rel=1e-5)
    assert not model.first_stage_model.training
    for k, v in model.first_stage_model.state_dict().items():
        assert torch.equal(v.cpu(), sd["first_stage_model." + k]), k
    changed = [n for n, p in model.model.named_parameters() if not torch.equal(p.cpu(), sd[_ema_key(n)])]
    assert changed  # the UNet did train


def test_stage2_latent_scale_carries_over_and_is_not_recomputed(tmp_path):
    from tests.helpers.lapt_models import stage2_config

    stage2_cfg = stage2_config(use_ema=True, scale_factor=1.0)
    stage2_cfg["params"]["scale_by_std"] = True
    stage2 = build(stage2_cfg)
    stage2.scale_factor.fill_(0.37)  # as set from the first stage-2 batch
    path = tmp_path / "stage2_std.ckpt"
    torch.save({"state_dict": stage2.state_dict()}, path)
    model = build(lapt_config(str(path), scale_by_std=True, scale_factor=1.0))
    assert model.scale_factor.item() == pytest.approx(0.37) and model._scale_factor_loaded
    model.on_train_batch_start(make_batch(b=2, lesion_slices=(0,)), 0)  # scale_by_std would recompute it here otherwise
    assert model.scale_factor.item() == pytest.approx(0.37)
    with pytest.raises(ConfigError, match="scale_by_std"):
        build(lapt_config(str(path)))  # a post-training config that forgot the stage-2 scaling


@pytest.mark.filterwarnings("ignore:.*no logger configured")
def test_control_run_trains_on_the_same_batches_timesteps_and_noise_with_stage2_loss(stage2_ckpt, tmp_path):
    """The control ("cLDM continued": lambdas 0) and the post-training run, started from the same
    stage-2 checkpoint with the same seed, see the same augmented batches, timesteps and noise at every
    step (a paired design), and the control's loss is exactly the stage-2 (latent) loss."""
    from ldm.data.training.datasets import CTPMRISlices
    from ldm.data.preprocessing.pipeline import preprocess_cohort
    from ldm.data.synthetic.cohort import generate_patient, write_patient
    from ldm.models.diffusion.ddpm import LatentDiffusion
    from tests.helpers.lapt_models import stage2_config

    for i in range(2):
        write_patient(generate_patient([4, i], size=(32, 32), n_slices=4, n_timepoints=15, lesion_volume_ml=20.0,
                                       lesion_territory="MCA deep"), tmp_path / "raw" / f"P{i}")
    preprocess_cohort(tmp_path / "raw", tmp_path / "npy", size=(32, 32), progress=False)
    path, _ = stage2_ckpt

    def fit(lambda_image: float, lambda_lesion: float) -> list[dict]:
        pl.seed_everything(23)
        model = build(lapt_config(str(path), lambda_image=lambda_image, lambda_lesion=lambda_lesion,
                                  lesion_mae_slices=0))
        model.learning_rate = 1e-3
        seen: list[dict] = []
        q_sample, p_losses = model.q_sample, model.p_losses

        def recording_q_sample(x_start, t, noise=None):
            seen.append({"z": x_start.detach().clone(), "t": t.clone(), "noise": noise.clone()})
            return q_sample(x_start=x_start, t=t, noise=noise)

        def recording_p_losses(*args, **kwargs):
            loss, loss_dict = p_losses(*args, **kwargs)
            if model.training:
                seen[-1].update(loss=loss.detach().clone(), latent=loss_dict["train/loss_latent"].clone())
            return loss, loss_dict

        model.q_sample, model.p_losses = recording_q_sample, recording_p_losses
        loader = DataLoader(CTPMRISlices(tmp_path / "npy", augment=True), batch_size=3, shuffle=True)
        trainer = pl.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=0, num_sanity_val_steps=0,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=tmp_path)
        trainer.fit(model, loader)
        return seen, model

    control, control_model = fit(0.0, 0.0)
    post, _ = fit(0.01, 0.02)
    assert len(control) == len(post) == 3
    for c, p in zip(control, post):
        assert torch.equal(c["t"], p["t"]) and torch.equal(c["noise"], p["noise"])
        assert torch.equal(c["loss"], c["latent"])  # the control's loss is the latent loss alone
        assert not torch.equal(p["loss"], p["latent"])  # the post-training adds the image terms
    assert torch.equal(control[0]["z"], post[0]["z"])  # same augmented batch (same weights before step 1)
    assert torch.equal(control[0]["latent"], post[0]["latent"])
    # and it is stage 2's loss: LatentDiffusion on the same latent, timesteps and noise
    stage2 = build(stage2_config(use_ema=False))
    stage2.load_state_dict(build(lapt_config(str(path))).state_dict(), strict=False)
    batch = next(iter(DataLoader(CTPMRISlices(tmp_path / "npy"), batch_size=3)))
    z, ctp = stage2.get_input(batch, "mri")
    t, noise = control[0]["t"], torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
    fresh = build(lapt_config(str(path), lambda_image=0.0, lambda_lesion=0.0))
    stage2.train()
    fresh.train()
    loss2, _ = LatentDiffusion.forward(stage2, z, ctp, t=t, noise=noise)
    loss3, _ = fresh(z, ctp, t=t, noise=noise, **fresh.get_loss_kwargs(batch))
    assert torch.equal(loss2, loss3)
