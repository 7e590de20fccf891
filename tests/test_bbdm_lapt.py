"""cBBDM-PT: the lesion-aware post-training on the Brownian bridge (Eqs. 6-8 with the bridge's x0_hat)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ldm.models.diffusion.bbdm import LatentBrownianBridge
from ldm.models.diffusion.bbdm_lapt import LesionAwareBrownianBridge
from ldm.util import ConfigError
from tests.helpers.bridge_models import IMAGE, T, tiny_batch, tiny_bridge, tiny_bridge_params


@pytest.fixture(scope="module")
def trained_bridge() -> LatentBrownianBridge:
    """A cBBDM with 'trained' weights (EMA shadow visibly different from the raw weights)."""
    model = tiny_bridge(seed=0)
    with torch.no_grad():
        for p in model.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for name, buf in model.model_ema.named_buffers():
            if name not in ("decay", "num_updates"):
                buf.add_(0.5)
    return model


@pytest.fixture(scope="module")
def bridge_ckpt(trained_bridge, tmp_path_factory):
    path = tmp_path_factory.mktemp("cbbdm") / "last.ckpt"
    torch.save({"state_dict": trained_bridge.state_dict(), "global_step": 10}, path)
    return str(path)


def post_trained(bridge_ckpt: str, **params) -> LesionAwareBrownianBridge:
    torch.manual_seed(5)
    defaults = dict(ckpt_path=bridge_ckpt, use_ema=False, monitor="val/loss_simple", lambda_image=0.01,
                    lambda_lesion=0.02, init_weights="raw")
    return LesionAwareBrownianBridge(**tiny_bridge_params(**{**defaults, **params}))


def _fixed(model, batch):
    z, ctp = model.get_input(batch, "mri")
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(2))
    return z, ctp, torch.tensor([3, 17]), noise


def test_loss_equals_hand_computation_of_eqs_6_to_8(bridge_ckpt):
    model = post_trained(bridge_ckpt, lambda_image=0.3, lambda_lesion=0.5, image_target="input")
    model.train()
    batch = tiny_batch()
    z, ctp, t, noise = _fixed(model, batch)
    loss, loss_dict = model(z, ctp, t=t, noise=noise, **model.get_loss_kwargs(batch))

    fs = model.first_stage_model
    with torch.no_grad():
        c = model.cond_stage_model(batch["ctp"])
        y = model.source_stage_model(c)
        m = torch.tensor(np.linspace(0.001, 0.999, T)[t.numpy() - 1], dtype=torch.float32).reshape(-1, 1, 1, 1)
        x_t = (1 - m) * z + m * y + (2 * (m - m ** 2)).sqrt() * noise
        out = model.model.diffusion_model(torch.cat([x_t, c], dim=1), t)
        latent = (out - (x_t - z)).abs().mean()  # L1 on the "grad" objective, which equals x_t - x_0
        # x0_hat = x_t - output; decoded as the frozen VQGAN decodes: nearest code, then the decoder
        h = (x_t - out) / 0.8
        codes = fs.quantize.embedding.weight
        flat = h.permute(0, 2, 3, 1).reshape(-1, 3)
        q = codes[torch.cdist(flat, codes).argmin(dim=1)].reshape(h.shape[0], h.shape[2], h.shape[3], 3)
        x_hat = fs.decoder(fs.post_quant_conv(q.permute(0, 3, 1, 2)))
        sq = (x_hat - batch["mri"]).pow(2).sum(dim=1, keepdim=True)  # summed over DWI and ADC
        l_image = sq.sum() / batch["mask"].sum()
        l_lesion = (sq * batch["lesion"]).sum() / batch["lesion"].sum()
    torch.testing.assert_close(loss_dict["train/loss_latent"], latent, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_dict["train/loss_image"], l_image, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss_dict["train/loss_lesion"], l_lesion, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss, latent + 0.3 * l_image + 0.5 * l_lesion, rtol=1e-4, atol=1e-6)


def test_lambdas_zero_give_cbbdm_loss_and_gradients(bridge_ckpt, trained_bridge):
    model = post_trained(bridge_ckpt, lambda_image=0.0, lambda_lesion=0.0)
    base = tiny_bridge(seed=9, use_ema=False)
    base.load_state_dict({k: v for k, v in trained_bridge.state_dict().items() if not k.startswith("model_ema.")})
    batch = tiny_batch()
    z, ctp, t, noise = _fixed(model, batch)
    for m in (model, base):
        m.train()
        m.zero_grad(set_to_none=True)
    loss_pt, dict_pt = model(z, ctp, t=t, noise=noise, **model.get_loss_kwargs(batch))
    loss_base, _ = base(z, ctp, t=t, noise=noise)
    loss_pt.backward()
    loss_base.backward()
    assert torch.equal(loss_pt, loss_base)
    assert "train/loss_image" not in dict_pt  # logged in validation only
    model.eval()
    with torch.no_grad():
        assert model(z, ctp, t=t, noise=noise, **model.get_loss_kwargs(batch))[1]["val/loss_image"] > 0
    grads_pt = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    grads_base = {n: p.grad for n, p in base.named_parameters() if p.grad is not None}
    assert grads_pt.keys() == grads_base.keys()
    assert any(n.startswith("source_stage_model.") for n in grads_pt)
    for n in grads_pt:
        assert torch.equal(grads_pt[n], grads_base[n]), n


def test_image_terms_send_gradients_to_unet_rescaler_and_source_only(bridge_ckpt):
    model = post_trained(bridge_ckpt, lambda_image=1.0, lambda_lesion=1.0)
    model.train()
    batch = tiny_batch()
    z, ctp, t, noise = _fixed(model, batch)
    kwargs = model.get_loss_kwargs(batch)
    _, loss_dict = model(z, ctp, t=t, noise=noise, **kwargs)
    # the image terms alone: drop the latent loss by differentiating L_total - L_latent
    loss, _ = model(z, ctp, t=t, noise=noise, **kwargs)
    (loss - loss_dict["train/loss_latent"]).backward()
    for module in (model.model, model.cond_stage_model, model.source_stage_model):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert all(p.grad is None for p in model.first_stage_model.parameters())
    assert not model.first_stage_model.training


def test_starts_from_the_cbbdm_checkpoint_with_the_ema_or_raw_choice(bridge_ckpt, trained_bridge):
    raw = post_trained(bridge_ckpt, init_weights="raw")
    ema = post_trained(bridge_ckpt, init_weights="ema")
    assert raw.init_weights_used == "raw" and ema.init_weights_used == "ema"
    shadow = dict(trained_bridge.model_ema.named_buffers())
    for name, p in trained_bridge.model.named_parameters():
        assert torch.equal(dict(raw.model.named_parameters())[name], p)
        assert torch.equal(dict(ema.model.named_parameters())[name], shadow[name.replace(".", "")])
    for model in (raw, ema):
        assert torch.equal(model.source_stage_model.weight, trained_bridge.source_stage_model.weight)
        assert torch.equal(model.m_t, trained_bridge.m_t)


def test_refuses_what_does_not_fit(bridge_ckpt, tmp_path):
    with pytest.raises(ConfigError, match="another bridge schedule"):
        post_trained(bridge_ckpt, m_max=0.99)
    with pytest.raises(ConfigError, match="abar_t"):
        post_trained(bridge_ckpt, image_loss_t_weighting="alphas_cumprod")
    with pytest.raises(ConfigError, match="lambda_imag"):
        post_trained(bridge_ckpt, lambda_imag=0.1)
    with pytest.raises(ConfigError, match="does not exist"):
        post_trained(str(tmp_path / "missing.ckpt"))
    sd = torch.load(bridge_ckpt, weights_only=True)["state_dict"]
    no_source = tmp_path / "no_source.ckpt"
    torch.save({"state_dict": {k: v for k, v in sd.items() if not k.startswith("source_stage_model.")}}, no_source)
    with pytest.raises(ConfigError, match="source map"):
        post_trained(str(no_source))


def test_lesion_free_batch_and_timestep_restriction(bridge_ckpt):
    model = post_trained(bridge_ckpt, image_loss_t_max=10)
    batch = tiny_batch(lesion=False)
    z, ctp, t, noise = _fixed(model, batch)  # t = 3 (kept) and 17 (dropped)
    loss, loss_dict = model(z, ctp, t=t, noise=noise, **model.get_loss_kwargs(batch))
    assert torch.isfinite(loss) and loss_dict["train/loss_lesion"] == 0
    assert loss_dict["train/loss_image"] > 0


def test_validation_lesion_mae_uses_the_bridge_sampler(bridge_ckpt):
    model = post_trained(bridge_ckpt, lesion_mae_slices=4, lesion_mae_ddim_steps=3)
    model.eval()
    logged: dict = {}
    model.log_dict = lambda values, **kw: logged.update(values)  # no trainer here
    batch = tiny_batch()
    model.on_validation_epoch_start()
    model.validation_step(batch, 0)
    model.on_validation_epoch_end()
    assert "val/loss" in logged and "val/loss_lesion" in logged
    direct = model.lesion_mae(batch["ctp"][:1], batch["mri"][:1], batch["lesion"][:1])  # the one lesion slice
    torch.testing.assert_close(logged["val/lesion_mae"], direct.mean())
    torch.testing.assert_close(logged["val/lesion_mae_dwi"], direct[0, 0])
    # deterministic: a second evaluation gives the same number
    torch.testing.assert_close(model.lesion_mae(batch["ctp"][:1], batch["mri"][:1], batch["lesion"][:1]), direct)
    assert IMAGE == batch["mri"].shape[-1]


def test_lightning_fit_logs_the_post_training_terms_and_lesion_mae(bridge_ckpt):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    model = post_trained(bridge_ckpt, use_ema=True, lesion_mae_slices=2, lesion_mae_ddim_steps=2)
    model.learning_rate = 1e-4
    data = [{k: v[i] for k, v in tiny_batch(b=2).items() if isinstance(v, torch.Tensor)} for i in range(2)]
    loader = DataLoader(data, batch_size=1)
    before = [p.detach().clone() for p in model.model.parameters()]
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=1, val_check_interval=2,
                         num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(model, loader, loader)
    metrics = trainer.callback_metrics
    for key in ("train/loss_latent", "train/loss_image", "train/loss_lesion", "val/loss_simple", "val/loss_simple_ema",
                "val/lesion_mae"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert any(not torch.equal(a, b) for a, b in zip(before, model.model.parameters()))
    assert int(model.model_ema.num_updates) == 2
