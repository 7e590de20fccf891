"""VQModel under Lightning 2.x: a short fit learns, resume restores both optimisers, the discriminator
waits for disc_start (counted in autoencoder updates), gradient accumulation equals a bigger batch."""
from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tests.helpers.vqgan_models import tiny_ddconfig, tiny_lossconfig, tiny_vqmodel


class BlobSlices(Dataset):
    """Smooth random blobs standing in for [DWI, ADC] slices: an elliptic 'brain' on a -1 background,
    with a bright-DWI / dark-ADC 'lesion' blob inside."""

    def __init__(self, n: int, size: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        images = []
        for _ in range(n):
            cx, cy, lx, ly = (torch.rand(4, generator=g) * 0.6 - 0.3).tolist()
            rx, ry = (0.6 + 0.3 * torch.rand(2, generator=g)).tolist()
            brain = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
            blob = torch.exp(-((xx - lx) ** 2 + (yy - ly) ** 2) / 0.05)
            dwi = torch.where(brain, -0.2 + 0.8 * blob, torch.tensor(-1.0))
            adc = torch.where(brain, 0.3 - 0.9 * blob, torch.tensor(-1.0))
            images.append(torch.stack([dwi, adc]).clamp(-1, 1))
        self.mri = torch.stack(images)

    def __len__(self) -> int:
        return len(self.mri)

    def __getitem__(self, i: int) -> dict:
        return {"mri": self.mri[i], "mask": (self.mri[i, :1] > -1).float()}


def make_trainer(max_steps: int, callbacks=(), **kwargs) -> pl.Trainer:
    kwargs.setdefault("limit_val_batches", 2)
    return pl.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False, accelerator="cpu",
                      devices=1, enable_progress_bar=False, enable_model_summary=False,
                      log_every_n_steps=1, num_sanity_val_steps=0, callbacks=list(callbacks), **kwargs)


def loaders(batch_size: int = 4, n_train: int = 32, shuffle: bool = True):
    train = DataLoader(BlobSlices(n_train, seed=0), batch_size=batch_size, shuffle=shuffle)
    val = DataLoader(BlobSlices(8, seed=1), batch_size=4)
    return train, val


def test_short_fit_lowers_validation_reconstruction_loss():
    torch.manual_seed(0)
    model = tiny_vqmodel(ddconfig=tiny_ddconfig(ch=16, norm_groups=8), n_embed=64, monitor="val/rec_loss")
    model.learning_rate = 2e-3
    train, val = loaders()
    before = make_trainer(1).validate(model, val, verbose=False)[0]["val/rec_loss"]
    trainer = make_trainer(40, val_check_interval=40, check_val_every_n_epoch=None)
    trainer.fit(model, train, val)
    metrics = trainer.callback_metrics
    after = float(metrics["val/rec_loss"])
    print(f"val/rec_loss {before:.3f} -> {after:.3f}")
    assert after < 0.5 * before, (before, after)
    # the figures are logged: PSNR per channel, codebook perplexity and usage
    for key in ("val/psnr_dwi", "val/psnr_adc", "val/perplexity", "val/codebook_usage",
                "train/rec_loss_step", "train/psnr_dwi_step", "train/batch_perplexity_step"):
        assert key in metrics, key
    assert 0 < float(metrics["val/codebook_usage"]) <= 1 and float(metrics["val/perplexity"]) >= 1
    assert float(metrics["val/psnr_dwi"]) > 10
    images = model.log_images(next(iter(val)), N=3)
    assert images["inputs"].shape == images["reconstructions"].shape == (3, 2, 32, 32)
    assert images["reconstructions"].abs().max() <= 1


class RecordOptimisers(pl.Callback):
    """Adam step counts of both optimisers and the step counters at the start and end of a fit."""

    def __init__(self) -> None:
        self.records = {}

    @staticmethod
    def _adam_steps(optimizer) -> int:
        steps = [int(s["step"]) for s in optimizer.state.values()]
        return max(steps) if steps else 0

    def _record(self, name, trainer, pl_module) -> None:
        self.records[name] = dict(global_step=trainer.global_step, generator_step=pl_module.generator_step,
                                  ae=self._adam_steps(trainer.optimizers[0]),
                                  disc=self._adam_steps(trainer.optimizers[1]),
                                  disc_weight=pl_module.loss.discriminator.main[0].weight.detach().clone())

    def on_train_start(self, trainer, pl_module) -> None:
        self._record("start", trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._record("end", trainer, pl_module)


def test_resume_continues_both_optimisers(tmp_path):
    train, _ = loaders(batch_size=4, n_train=40)
    model = tiny_vqmodel(lossconfig=tiny_lossconfig(disc_start=2))
    model.learning_rate = 1e-3
    first = RecordOptimisers()
    trainer = make_trainer(6, callbacks=[first], limit_val_batches=0)
    trainer.fit(model, train)
    # 2 autoencoder-only updates, then 2 batches updating both: Lightning counts 2 + 2 x 2 steps
    assert first.records["end"]["generator_step"] == 4 and first.records["end"]["ae"] == 4
    assert first.records["end"]["disc"] == 2 and trainer.global_step == 6
    trainer.save_checkpoint(tmp_path / "last.ckpt")

    resumed_model = tiny_vqmodel(lossconfig=tiny_lossconfig(disc_start=2))
    resumed_model.learning_rate = 1e-3
    second = RecordOptimisers()
    make_trainer(10, callbacks=[second], limit_val_batches=0).fit(resumed_model, train,
                                                                  ckpt_path=tmp_path / "last.ckpt")
    start, end = second.records["start"], second.records["end"]
    assert (start["global_step"], start["generator_step"], start["ae"], start["disc"]) == (6, 4, 4, 2)
    assert torch.equal(start["disc_weight"], first.records["end"]["disc_weight"])
    assert (end["global_step"], end["generator_step"], end["ae"], end["disc"]) == (10, 6, 6, 4)


class DiscriminatorWatch(pl.Callback):
    def __init__(self) -> None:
        self.changed_at = []  # (generator_step before the batch, whether the discriminator changed)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._before = ([p.detach().clone() for p in pl_module.loss.discriminator.parameters()],
                        pl_module.generator_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        params, step = self._before
        changed = any(not torch.equal(a, b) for a, b in zip(params, pl_module.loss.discriminator.parameters()))
        self.changed_at.append((step, changed))


def test_discriminator_waits_for_disc_start_with_accumulation():
    train, _ = loaders(batch_size=2, n_train=16, shuffle=False)
    model = tiny_vqmodel(lossconfig=tiny_lossconfig(disc_start=2))
    model.learning_rate = 1e-3
    model.accumulate_grad_batches = 2
    watch = DiscriminatorWatch()
    make_trainer(4, callbacks=[watch], limit_val_batches=0).fit(model, train)  # 3 + 1 optimiser steps
    # batches 1-4: two autoencoder updates (accumulate 2), no discriminator; then the discriminator
    # accumulates over batch 5 and steps on batch 6, together with the third autoencoder update
    assert watch.changed_at == [(0, False), (0, False), (1, False), (1, False), (2, False), (2, True)]
    assert model.generator_step == 3


class RecordGradients(pl.Callback):
    def __init__(self) -> None:
        self.grads = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads.append({n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None})


def test_accumulation_matches_a_batch_twice_as_large():
    torch.manual_seed(1)
    reference = tiny_vqmodel()
    accumulated = tiny_vqmodel()
    accumulated.load_state_dict(reference.state_dict())
    for model in (reference, accumulated):
        model.learning_rate = 1e-3
    accumulated.accumulate_grad_batches = 2
    data = BlobSlices(2, seed=3)
    big, small = RecordGradients(), RecordGradients()
    make_trainer(1, callbacks=[big], limit_val_batches=0).fit(reference, DataLoader(data, batch_size=2))
    make_trainer(1, callbacks=[small], limit_val_batches=0).fit(accumulated, DataLoader(data, batch_size=1))
    assert reference.generator_step == accumulated.generator_step == 1
    assert len(big.grads) == len(small.grads) == 1  # one update, after the second small batch
    assert big.grads[0].keys() == small.grads[0].keys()
    assert not any(k.startswith("loss.") for k in big.grads[0])  # no generator gradient in the discriminator
    for name, g in big.grads[0].items():
        assert (small.grads[0][name] - g).norm() <= 1e-3 * g.norm() + 1e-7, name


def test_unused_codes_are_reinitialised_during_training():
    train, _ = loaders(batch_size=4, n_train=16)
    model = tiny_vqmodel(n_embed=64, reinit_unused_codes=True, reinit_every=2)
    model.learning_rate = 1e-3
    before = model.quantize.embedding.weight.detach().clone()
    trainer = make_trainer(4, limit_val_batches=0)
    trainer.fit(model, train)
    revived = float(trainer.callback_metrics["train/reinit_codes_step"])
    assert revived > 0  # a 64-code book on 16 x 16 x 4 latents starts far from fully used
    moved = (model.quantize.embedding.weight.detach() - before).norm(dim=1)
    # Adam (lr 1e-3) moves a code by at most ~sqrt(3) * 4e-3 in 4 updates; revived codes jump to
    # encoder outputs
    assert int((moved > 0.02).sum()) >= revived
