"""Lesion-aware post-training (Eqs. 5-8) on tiny real models: hand computation, stage-2 equivalence,
gradient flow, lesion-free batches, image targets, timestep restriction and bf16 autocast."""
import copy

import numpy as np
import pytest
import torch

from ldm.models.diffusion.image_space_loss import image_space_losses
from tests.helpers.lapt_models import LINEAR, T, build, lapt_config, make_batch, stage2_config


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _fixed_inputs(model, batch, t=(3, 20, 41), seed=1):
    """(z, ctp, t, noise, loss kwargs) for a batch, with fixed timesteps and noise."""
    z, ctp = model.get_input(batch, "mri")
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(z.shape, generator=g)
    return z, ctp, torch.tensor(t[: z.shape[0]]), noise, model.get_loss_kwargs(batch)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def stage2():
    torch.manual_seed(0)
    model = build(stage2_config(use_ema=False))
    with torch.no_grad():  # "trained" weights: the UNet's zero-initialised output layer would block gradients
        for p in model.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _lapt_like(stage2, **params):
    model = build(lapt_config(**params))
    model.load_state_dict(stage2.state_dict())
    return model


def test_lambdas_zero_give_stage2_loss_and_gradients(stage2):
    lapt = _lapt_like(stage2, lambda_image=0.0, lambda_lesion=0.0)
    batch = make_batch()
    z, ctp, t, noise, kwargs = _fixed_inputs(lapt, batch)
    for m in (stage2, lapt):
        m.train()
        m.zero_grad(set_to_none=True)
    loss2, dict2 = stage2(z, ctp, t=t, noise=noise)
    loss3, dict3 = lapt(z, ctp, t=t, noise=noise, **kwargs)
    loss2.backward()
    loss3.backward()
    assert torch.equal(loss2, loss3)
    assert dict3["train/loss_latent"] == dict2["train/loss"]
    assert "train/loss_image" not in dict3  # the control run skips the decode in training ...
    lapt.eval()
    _, val = lapt(z, ctp, t=t, noise=noise, **kwargs)
    assert val["val/loss_image"] > 0  # ... and logs the image terms in validation
    g2, g3 = _grads(stage2), _grads(lapt)
    assert g2.keys() == g3.keys() and any(k.startswith("cond_stage_model.") for k in g2)
    for name in g2:
        assert torch.equal(g2[name], g3[name]), name


def _abar(t):
    betas = np.linspace(LINEAR[0] ** 0.5, LINEAR[1] ** 0.5, T, dtype=np.float64) ** 2
    return torch.tensor(np.cumprod(1.0 - betas)[t.numpy()], dtype=torch.float32).view(-1, 1, 1, 1)


def _nearest_code(h, codebook):
    flat = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
    idx = torch.cdist(flat, codebook).argmin(dim=1)
    return codebook[idx].reshape(h.shape[0], h.shape[2], h.shape[3], -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize("image_target", ["input", "reconstruction"])
def test_loss_equals_hand_computation_of_eqs_5_to_8(stage2, image_target):
    lam_i, lam_l = 0.3, 0.7
    lapt = _lapt_like(stage2, lambda_image=lam_i, lambda_lesion=lam_l, image_target=image_target).eval()
    batch = make_batch()
    x, mask, lesion = batch["mri"], batch["mask"], batch["lesion"]
    fs, s = lapt.first_stage_model, 0.8
    codebook = fs.quantize.embedding.weight.detach()
    t = torch.tensor([3, 20, 41])
    noise = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        z = s * fs.quant_conv(fs.encoder(x))                             # z = scale * E(x)
        abar = _abar(t)
        z_t = abar.sqrt() * z + (1 - abar).sqrt() * noise                 # Eq. 2
        c = lapt.cond_stage_model.channel_mapper(
            torch.nn.functional.interpolate(torch.nn.functional.interpolate(batch["ctp"], scale_factor=0.5,
                                            mode="bilinear"), scale_factor=0.5, mode="bilinear"))
        eps = lapt.model.diffusion_model(torch.cat([z_t, c], dim=1), t)
        z0_hat = (z_t - (1 - abar).sqrt() * eps) / abar.sqrt()            # Eq. 5
        decode = lambda h: fs.decoder(fs.post_quant_conv(_nearest_code(h, codebook)))  # noqa: E731
        x_hat = decode(z0_hat / s)
        target = x if image_target == "input" else decode(z / s)
        err = ((target - x_hat) ** 2).sum(dim=1, keepdim=True)            # summed over DWI, ADC
        l_latent = ((noise - eps) ** 2).mean()                            # Eq. 4
        l_image = err.sum() / mask.sum()                                  # Eq. 6 (reference normalisation)
        l_lesion = (err * lesion).sum() / lesion.sum()                    # Eq. 7
        expected = l_latent + lam_i * l_image + lam_l * l_lesion          # Eq. 8
        loss, d = lapt.p_losses(z, c, t, noise=noise, mask=mask, lesion=lesion, x=x)
    assert d["val/loss_image"].item() == pytest.approx(l_image.item(), rel=1e-4)
    assert d["val/loss_lesion"].item() == pytest.approx(l_lesion.item(), rel=1e-4)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.equal(d["val/loss"], loss.detach()) and not d["val/loss"].requires_grad  # logged detached


def test_targets_differ_and_reconstruction_target_has_no_graph(stage2):
    lapt = _lapt_like(stage2, image_target="reconstruction")
    batch = make_batch()
    z, _ = lapt.get_input(batch, "mri")
    z = z.clone().requires_grad_(True)
    target = lapt.image_objective.target(lapt, batch["mri"], z_start=z)
    assert target.grad_fn is None and not target.requires_grad
    with torch.no_grad():
        assert torch.allclose(target, lapt.decode_first_stage(z))
    losses = {}
    for image_target in ("input", "reconstruction"):
        lapt.image_objective.image_target = image_target
        _, d = lapt(*_fixed_inputs(lapt, batch)[:2], t=torch.tensor([3, 20, 41]),
                    noise=_fixed_inputs(lapt, batch)[3], **lapt.get_loss_kwargs(batch))
        losses[image_target] = d["train/loss_image"].item()
    assert losses["input"] != pytest.approx(losses["reconstruction"], rel=1e-3)


def test_gradients_reach_unet_and_rescaler_first_stage_frozen(stage2):
    batch = make_batch()
    grads = {}
    for lambdas in ((0.0, 0.0), (1.0, 1.0)):
        lapt = _lapt_like(stage2, lambda_image=lambdas[0], lambda_lesion=lambdas[1])
        lapt.train()
        first_stage = copy.deepcopy(lapt.first_stage_model.state_dict())
        z, ctp, t, noise, kwargs = _fixed_inputs(lapt, batch)
        loss, _ = lapt(z, ctp, t=t, noise=noise, **kwargs)
        loss.backward()
        grads[lambdas] = _grads(lapt)
        opt = torch.optim.AdamW(lapt.trainable_parameters(), lr=1e-3)
        opt.step()
        assert not lapt.first_stage_model.training
        assert all(not p.requires_grad and p.grad is None for p in lapt.first_stage_model.parameters())
        for k, v in lapt.first_stage_model.state_dict().items():
            assert torch.equal(v, first_stage[k]), k
    image_part = {n: grads[(1.0, 1.0)][n] - grads[(0.0, 0.0)][n] for n in grads[(0.0, 0.0)]}
    unet = [n for n in image_part if n.startswith("model.diffusion_model.")]
    assert unet and sum(image_part[n].abs().sum() > 0 for n in unet) > 0.9 * len(unet)
    assert image_part["cond_stage_model.channel_mapper.weight"].abs().sum() > 0
    assert not any(n.startswith("first_stage_model.") for n in grads[(1.0, 1.0)])


def test_lesion_free_batch_has_no_nan(stage2):
    lapt = _lapt_like(stage2, lambda_lesion=1.0).train()
    batch = make_batch(lesion_slices=())
    z, ctp, t, noise, kwargs = _fixed_inputs(lapt, batch)
    loss, d = lapt(z, ctp, t=t, noise=noise, **kwargs)
    loss.backward()
    assert d["train/loss_lesion"].item() == 0.0 and torch.isfinite(loss)
    assert all(torch.isfinite(g).all() for g in _grads(lapt).values())


def test_timestep_restriction_decodes_only_early_slices(stage2):
    lapt = _lapt_like(stage2, image_loss_t_max=10, image_target="input").eval()
    batch = make_batch()
    z, ctp, t, noise, kwargs = _fixed_inputs(lapt, batch, t=(3, 20, 5))
    with torch.no_grad():
        c = lapt.get_learned_conditioning(ctp)
        x0_hat = lapt.predict_start(lapt.q_sample(z, t, noise), t, lapt.apply_model(lapt.q_sample(z, t, noise), t, c))
        li, ll, extras = lapt.image_objective(lapt, x0_hat, kwargs["x"], kwargs["mask"], kwargs["lesion"], t)
        keep = torch.tensor([0, 2])
        x_hat = lapt.decode_first_stage(x0_hat[keep])
        ref_i, ref_l = image_space_losses(x_hat, kwargs["x"][keep], kwargs["mask"][keep], kwargs["lesion"][keep])
    assert extras["index"].tolist() == [0, 2] and extras["x_hat"].shape[0] == 2
    assert li.item() == pytest.approx(ref_i.item(), rel=1e-5)
    assert ll.item() == pytest.approx(ref_l.item(), rel=1e-5)


def test_bf16_autocast_with_decoder_checkpointing(stage2):
    lapt = _lapt_like(stage2, lambda_image=1.0, lambda_lesion=1.0, decoder_checkpointing=True,
                      quantize_x0_hat=False).train()
    batch = make_batch()
    z, ctp, t, noise, kwargs = _fixed_inputs(lapt, batch)
    loss32, d32 = lapt(z, ctp, t=t, noise=noise, **kwargs)
    loss32.backward()
    g32 = _grads(lapt)
    lapt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, d16 = lapt(z, ctp, t=t, noise=noise, **kwargs)
    loss16.backward()
    assert loss16.dtype == torch.float32 and torch.isfinite(loss16)
    assert not lapt.first_stage_model.decoder.use_checkpoint  # switched on only while decoding
    assert d16["train/loss_image"].item() == pytest.approx(d32["train/loss_image"].item(), rel=0.05)
    g16 = _grads(lapt)
    w = "cond_stage_model.channel_mapper.weight"
    cos = torch.nn.functional.cosine_similarity(g16[w].flatten(), g32[w].flatten(), dim=0)
    assert cos > 0.95


def test_missing_lesion_key_and_bad_settings_are_clear(stage2):
    lapt = _lapt_like(stage2)
    batch = make_batch()
    del batch["lesion"]
    with pytest.raises(ValueError, match=r"batch\['lesion'\]"):
        lapt.shared_step(batch)
    from ldm.util import ConfigError
    with pytest.raises(ConfigError, match="image_target"):
        build(lapt_config(image_target="recon"))
    with pytest.raises(ConfigError, match="lambda_imge"):
        build(lapt_config(lambda_imge=0.1))


def _saved_bytes(fn):
    """Bytes of the tensors autograd keeps for the backward pass while ``fn`` runs."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


def test_decoder_checkpointing_keeps_fewer_activations_same_gradients(stage2):
    batch = make_batch()
    grads, saved = {}, {}
    for checkpointing in (False, True):
        lapt = _lapt_like(stage2, lambda_image=1.0, lambda_lesion=1.0, decoder_checkpointing=checkpointing).train()
        z, ctp, t, noise, kwargs = _fixed_inputs(lapt, batch)
        (loss, _), saved[checkpointing] = _saved_bytes(lambda: lapt(z, ctp, t=t, noise=noise, **kwargs))
        loss.backward()
        grads[checkpointing] = _grads(lapt)
    assert saved[True] < 0.75 * saved[False]  # the full-resolution decoder dominates what is kept
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-4, atol=1e-6)
