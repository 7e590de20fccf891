"""VQGAN building blocks: shapes, CompVis state-dict layout, quantiser maths, attention, checkpointing,
adversarial-loss weighting, LPIPS loading, checkpoint loading, codebook re-initialisation, configs."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from ldm.util import ConfigError, instantiate_from_config
from taming.modules.diffusionmodules.attention import AttnBlock
from taming.modules.diffusionmodules.model import Decoder
from taming.modules.losses.vqperceptual import (VQLPIPSWithDiscriminator, calculate_adaptive_weight,
                                                hinge_d_loss)
from taming.modules.metrics import psnr_per_channel
from taming.modules.vqvae.quantize import VectorQuantizer
from tests.helpers.vqgan_models import LOSS_TARGET, tiny_ddconfig, tiny_lossconfig, tiny_vqmodel  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


# -- shapes and layout ---------------------------------------------------------------------------
def test_f4_shapes_at_paper_size():
    model = tiny_vqmodel(ddconfig=tiny_ddconfig(resolution=224), sane_index_shape=True).eval()
    x = torch.rand(2, 2, 192, 224) * 2 - 1
    with torch.no_grad():
        quant, emb_loss, (perplexity, _, indices) = model.encode(x)
        dec, diff = model(x)
        from_codes = model.decode_code(indices)
    assert quant.shape == (2, 3, 48, 56)
    assert indices.shape == (2, 48, 56) and indices.dtype == torch.long
    assert emb_loss.dim() == 0 and 1.0 <= float(perplexity) <= 32
    assert dec.shape == x.shape and diff.dim() == 0
    assert torch.allclose(from_codes, dec, atol=1e-4)  # z + (z_q - z) equals z_q up to rounding
    with pytest.raises(ValueError, match=r"divisible by 4.*\(1, 2, 30, 32\)"):
        model.encoder(torch.zeros(1, 2, 30, 32))


def compvis_vq_keys(ch, ch_mult, num_res_blocks, attn_levels, n_layers=3) -> set[str]:
    """The state-dict keys CompVis's VQModel has for this architecture, enumerated from its layout
    rules (independently of our module code)."""
    keys: list[str] = []

    def affine(p):
        keys.extend([f"{p}.weight", f"{p}.bias"])

    def resblock(p, cin, cout):
        for name in ("norm1", "conv1", "norm2", "conv2"):
            affine(f"{p}.{name}")
        if cin != cout:
            affine(f"{p}.nin_shortcut")

    def attn(p):
        for name in ("norm", "q", "k", "v", "proj_out"):
            affine(f"{p}.{name}")

    mults = [ch * m for m in ch_mult]
    affine("encoder.conv_in")
    cin = ch
    for i, cout in enumerate(mults):
        for j in range(num_res_blocks):
            resblock(f"encoder.down.{i}.block.{j}", cin, cout)
            cin = cout
            if i in attn_levels:
                attn(f"encoder.down.{i}.attn.{j}")
        if i != len(mults) - 1:
            affine(f"encoder.down.{i}.downsample.conv")
    for side in ("encoder", "decoder"):
        resblock(f"{side}.mid.block_1", mults[-1], mults[-1])
        attn(f"{side}.mid.attn_1")
        resblock(f"{side}.mid.block_2", mults[-1], mults[-1])
    affine("encoder.norm_out")
    affine("encoder.conv_out")
    affine("decoder.conv_in")
    cin = mults[-1]
    for i in reversed(range(len(mults))):
        for j in range(num_res_blocks + 1):
            resblock(f"decoder.up.{i}.block.{j}", cin, mults[i])
            cin = mults[i]
            if i in attn_levels:
                attn(f"decoder.up.{i}.attn.{j}")
        if i != 0:
            affine(f"decoder.up.{i}.upsample.conv")
    affine("decoder.norm_out")
    affine("decoder.conv_out")
    keys.append("quantize.embedding.weight")
    affine("quant_conv")
    affine("post_quant_conv")
    # PatchGAN: conv, lrelu, then (conv without bias, BatchNorm, lrelu) x n_layers, final conv
    affine("loss.discriminator.main.0")
    for n in range(1, n_layers + 1):
        conv, bn = 3 * n - 1, 3 * n
        keys.append(f"loss.discriminator.main.{conv}.weight")
        keys.extend(f"loss.discriminator.main.{bn}.{s}"
                    for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"))
    affine(f"loss.discriminator.main.{3 * n_layers + 2}")
    assert len(keys) == len(set(keys))
    return set(keys)


def test_state_dict_keys_follow_compvis_layout():
    # attention at the 16-pixel level (level 1 of resolution 32) as well as in the mid blocks
    model = tiny_vqmodel(ddconfig=tiny_ddconfig(attn_resolutions=[16], num_res_blocks=2))
    expected = compvis_vq_keys(ch=8, ch_mult=[1, 2, 4], num_res_blocks=2, attn_levels={1})
    assert set(model.state_dict()) == expected
    assert model.state_dict()["quantize.embedding.weight"].shape == (32, 3)


# -- quantiser -----------------------------------------------------------------------------------
def test_quantizer_picks_nearest_code_and_gradient_is_straight_through():
    torch.manual_seed(1)
    vq = VectorQuantizer(16, 3, beta=0.25)
    vq.embedding.weight.data.normal_()
    z = torch.randn(2, 3, 4, 5, requires_grad=True)
    z_q, _, (_, _, indices) = vq(z)
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    assert torch.equal(indices, torch.cdist(flat, vq.embedding.weight.detach()).argmin(1))
    assert torch.allclose(z_q.detach().permute(0, 2, 3, 1).reshape(-1, 3), vq.embedding.weight[indices].detach())
    upstream = torch.randn_like(z_q)
    (z_q * upstream).sum().backward()
    assert torch.allclose(z.grad, upstream)  # identity Jacobian: straight-through


def test_nearest_codes_in_chunks_match_the_whole_distance_matrix(monkeypatch):
    torch.manual_seed(5)
    vq = VectorQuantizer(64, 3)
    vq.embedding.weight.data.normal_()
    z = torch.randn(1000, 3) * 1.5
    expected = torch.cdist(z, vq.embedding.weight.detach()).argmin(1)
    monkeypatch.setattr(VectorQuantizer, "distance_chunk_elements", {"cpu": 64 * 7})  # 7 rows: a remainder
    assert torch.equal(vq.nearest_codes(z), expected)
    monkeypatch.setattr(VectorQuantizer, "distance_chunk_elements", {"cpu": 10})  # less than a row: 1 row
    assert torch.equal(vq.nearest_codes(z[:50]), expected[:50])


@pytest.mark.parametrize("legacy", [True, False])
def test_quantizer_loss_matches_its_formula(legacy):
    """legacy: mean((sg[zq]-z)^2) + beta*mean((zq-sg[z])^2); else beta on the commitment term.
    Both have the value (1 + beta) * mse; the gradients tell them apart."""
    torch.manual_seed(2)
    beta = 0.25
    vq = VectorQuantizer(8, 3, beta=beta, legacy=legacy)
    vq.embedding.weight.data.normal_()
    z = torch.randn(2, 3, 3, 3, requires_grad=True)
    _, loss, (_, _, indices) = vq(z)
    loss.backward()

    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    e = vq.embedding.weight.detach()
    zq = e[indices]
    numel = flat.numel()
    assert torch.allclose(loss, (1 + beta) * ((zq - flat) ** 2).mean())
    w_commit, w_codebook = (1.0, beta) if legacy else (beta, 1.0)
    expected_z_grad = w_commit * 2 * (flat - zq) / numel
    assert torch.allclose(z.grad.permute(0, 2, 3, 1).reshape(-1, 3), expected_z_grad, atol=1e-7)
    expected_e_grad = torch.zeros_like(e).index_add_(0, indices, w_codebook * 2 * (zq - flat) / numel)
    assert torch.allclose(vq.embedding.weight.grad, expected_e_grad, atol=1e-7)


def test_gradient_reaches_encoder_through_quantiser():
    model = tiny_vqmodel()
    x = torch.rand(2, 2, 32, 32) * 2 - 1
    dec, _ = model(x)
    F.l1_loss(dec, x).backward()  # the reconstruction term alone: only the straight-through path
    grad = model.encoder.conv_in.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_unused_codes_are_reinitialised_from_recent_encoder_outputs():
    torch.manual_seed(3)
    vq = VectorQuantizer(16, 3, reinit_unused_codes=True, reservoir_size=64)
    vq.embedding.weight.data = torch.arange(16.0)[:, None].repeat(1, 3) * 10  # codes far apart
    vq.train()
    levels = torch.randint(0, 3, (72,))
    flat = levels[:, None].float().repeat(1, 3) * 10 + 0.1 * torch.randn(72, 3)  # near codes 0, 1, 2
    z = flat.reshape(1, 8, 9, 3).permute(0, 3, 1, 2)
    _, _, (_, _, indices) = vq(z)
    used = set(indices.tolist())
    before = vq.embedding.weight.detach().clone()
    n = vq.reinit_unused_codes_()
    after = vq.embedding.weight.detach()
    dead = [i for i in range(16) if i not in used]
    assert n == len(dead) == 16 - len(used)
    assert torch.equal(after[sorted(used)], before[sorted(used)])
    nearest = torch.cdist(after[dead], flat).min(1).values
    assert (nearest < 0.5).all()  # a recent encoder output plus small noise (codes are 17 apart)
    assert vq.window_counts.sum() == 0
    with pytest.raises(RuntimeError, match="reinit_unused_codes=True"):
        VectorQuantizer(4, 3).reinit_unused_codes_()


# -- attention and decoder fast paths ---------------------------------------------------------------
def test_sdpa_attention_matches_compvis_math():
    torch.manual_seed(4)
    block = AttnBlock(16, num_groups=4, impl="sdpa")
    x = torch.randn(2, 16, 6, 7)
    # CompVis AttnBlock, written out with bmm
    h = block.norm(x)
    q, k, v = block.q(h).reshape(2, 16, 42), block.k(h).reshape(2, 16, 42), block.v(h).reshape(2, 16, 42)
    w = torch.softmax(torch.bmm(q.permute(0, 2, 1), k) * 16 ** -0.5, dim=2)
    reference = x + block.proj_out(torch.bmm(v, w.permute(0, 2, 1)).reshape(2, 16, 6, 7))
    math_block = copy.deepcopy(block)
    math_block.impl = "math"
    assert torch.allclose(block(x), reference, atol=1e-5)
    assert torch.allclose(math_block(x), reference, atol=1e-5)
    assert torch.allclose(block(x.to(memory_format=torch.channels_last)), reference, atol=1e-5)


def _saved_bytes(fn) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total, out


def test_decoder_checkpointing_is_exact_with_frozen_parameters():
    torch.manual_seed(5)
    dec = Decoder(**tiny_ddconfig(attn_resolutions=[16], dropout=0.1)).requires_grad_(False)
    z = torch.randn(2, 3, 8, 8)
    grads, outs, saved = {}, {}, {}
    for flag in (False, True):
        dec.set_gradient_checkpointing(flag)
        zz = z.clone().requires_grad_(True)
        torch.manual_seed(6)  # same dropout masks
        saved[flag], outs[flag] = _saved_bytes(lambda: dec(zz))
        outs[flag].square().mean().backward()
        grads[flag] = zz.grad
    assert torch.allclose(outs[True], outs[False], atol=1e-6)
    assert torch.allclose(grads[True], grads[False], atol=1e-6)
    assert grads[True].abs().sum() > 0
    assert saved[True] < 0.5 * saved[False]  # activations really were dropped
    assert all(p.grad is None for p in dec.parameters())


def test_channels_last_model_computes_the_same():
    torch.manual_seed(7)
    model = tiny_vqmodel(ddconfig=tiny_ddconfig(attn_resolutions=[16])).eval()
    fast = tiny_vqmodel(ddconfig=tiny_ddconfig(attn_resolutions=[16]), channels_last=True).eval()
    fast.load_state_dict(model.state_dict())
    batch = {"mri": torch.rand(2, 2, 32, 32) * 2 - 1}
    with torch.no_grad():
        ref, _ = model(model.get_input(batch, "mri"))
        x = fast.get_input(batch, "mri")
        out, _ = fast(x)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert fast.decoder.conv_out.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, ref, atol=1e-5)


# -- adversarial loss ------------------------------------------------------------------------------
def test_adaptive_weight_formula_and_zero_gradients():
    last = torch.randn(4, 3, requires_grad=True)
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    nll, g = (last * a).sum(), (last * b).sum()
    w = calculate_adaptive_weight(nll, g, last, disc_weight=0.2)
    assert torch.allclose(w, 0.2 * a.norm() / (b.norm() + 1e-4))
    assert not w.requires_grad
    # a generator loss that does not move the last layer: the weight is large but finite (clamped)
    w = calculate_adaptive_weight((last * a).sum(), (last * 0.0).sum(), last, disc_weight=1.0)
    assert torch.isfinite(w) and float(w) == pytest.approx(1e4)
    w = calculate_adaptive_weight((last * 0.0).sum(), (last * b).sum(), last, disc_weight=1.0)
    assert float(w) == 0.0


def test_discriminator_is_inactive_before_disc_start():
    torch.manual_seed(8)
    loss_fn = VQLPIPSWithDiscriminator(disc_start=5, disc_in_channels=2, perceptual_weight=0.0, disc_ndf=8)
    calls = []
    loss_fn.discriminator.register_forward_hook(lambda *a: calls.append(1))
    x = torch.rand(2, 2, 32, 32) * 2 - 1
    last = torch.randn(2, 2, 3, 3, requires_grad=True)
    xrec = torch.tanh(F.conv2d(x, last, padding=1))
    qloss = torch.tensor(0.3)
    loss, log = loss_fn(qloss, x, xrec, 0, global_step=4, last_layer=last)
    assert torch.allclose(loss, (x - xrec).abs().mean() + qloss)
    assert not calls and float(log["train/disc_factor"]) == 0.0
    d_loss, _ = loss_fn(qloss, x, xrec, 1, global_step=4)
    assert float(d_loss) == 0.0
    assert not loss_fn.discriminator_active(4) and loss_fn.discriminator_active(5)
    calls.clear()
    loss, log = loss_fn(qloss, x, xrec, 0, global_step=5, last_layer=last)
    assert calls and float(log["train/d_weight"]) > 0
    expected = (x - xrec).abs().mean() + log["train/d_weight"] * log["train/g_loss"] + qloss
    assert torch.allclose(loss, expected)
    d_loss, _ = loss_fn(qloss, x, xrec, 1, global_step=5)
    logits_real, logits_fake = loss_fn.discriminator(x), loss_fn.discriminator(xrec)
    assert torch.allclose(d_loss, hinge_d_loss(logits_real, logits_fake))


def test_hinge_loss_formula():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    # relu(1 - real) = [0, 0.5]; relu(1 + fake) = [0, 1.5]
    assert float(hinge_d_loss(real, fake)) == pytest.approx(0.5 * (0.25 + 0.75))


def test_l2_pixel_loss_option():
    loss_fn = VQLPIPSWithDiscriminator(disc_start=10, disc_in_channels=2, perceptual_weight=0.0,
                                       pixel_loss="l2", disc_ndf=8)
    x, y = torch.zeros(1, 2, 8, 8), torch.full((1, 2, 8, 8), 0.5)
    loss, log = loss_fn(torch.tensor(0.0), x, y, 0, global_step=0)
    assert float(loss) == pytest.approx(0.25) and float(log["train/rec_loss"]) == pytest.approx(0.25)


def test_lesion_weighted_pixel_loss_by_hand():
    loss_fn = VQLPIPSWithDiscriminator(disc_start=10, disc_in_channels=2, perceptual_weight=0.0, disc_ndf=8,
                                       lesion_weight=20.0)
    x, y = torch.zeros(1, 2, 4, 4), torch.full((1, 2, 4, 4), 0.5)
    lesion = torch.zeros(1, 1, 4, 4)
    lesion[..., :2, :2] = 1.0  # 4 of 16 pixels
    loss, log = loss_fn(torch.tensor(0.0), x, y, 0, global_step=0, lesion=lesion)
    assert float(loss) == pytest.approx(0.5 * (12 * 1 + 4 * 21) / 16)  # mean of (1 + 20 M) |x - y|
    assert float(log["train/rec_loss"]) == pytest.approx(0.5)  # the logged L1 stays unweighted
    with pytest.raises(ValueError, match="needs the lesion mask in the batch"):
        loss_fn(torch.tensor(0.0), x, y, 0, global_step=0)
    with pytest.raises(ConfigError, match="lesion_weight must be >= 0"):
        VQLPIPSWithDiscriminator(disc_start=10, disc_in_channels=2, perceptual_weight=0.0, lesion_weight=-1.0)
    plain = VQLPIPSWithDiscriminator(disc_start=10, disc_in_channels=2, perceptual_weight=0.0, disc_ndf=8)
    assert float(plain(torch.tensor(0.0), x, y, 0, global_step=0, lesion=lesion)[0]) == pytest.approx(0.5)


def test_vqmodel_feeds_the_batch_lesion_to_a_lesion_weighted_loss():
    from tests.helpers.vqgan_models import tiny_lossconfig, tiny_vqmodel

    model = tiny_vqmodel(lossconfig=tiny_lossconfig(lesion_weight=10.0))
    batch = {"mri": torch.rand(2, 2, 32, 32) * 2 - 1, "lesion": torch.zeros(2, 1, 32, 32)}
    batch["lesion"][0, 0, 8:16, 8:16] = 1.0
    xrec, qloss = model(batch["mri"])
    expected = ((1 + 10.0 * batch["lesion"]) * (batch["mri"] - xrec).abs()).mean() + qloss.mean()
    loss, _ = model.loss(qloss, batch["mri"], xrec, 0, 0, last_layer=model.get_last_layer(),
                         lesion=model._lesion(batch))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(KeyError, match="needs the batch's lesion mask"):
        model._lesion({"mri": batch["mri"]})


# -- perceptual loss -------------------------------------------------------------------------------
def test_perceptual_loss_needs_local_weight_files(tmp_path):
    with pytest.raises(ConfigError, match="vgg16_weights is not set"):
        VQLPIPSWithDiscriminator(disc_start=0, perceptual_weight=1.0)
    with pytest.raises(ConfigError, match="does not exist"):
        VQLPIPSWithDiscriminator(disc_start=0, perceptual_weight=1.0, vgg16_weights=str(tmp_path / "vgg.pth"),
                                 lpips_weights=str(tmp_path / "lin.pth"))


def test_perceptual_loss_loads_torchvision_and_lpips_files(tmp_path):
    from taming.modules.losses.lpips import LPIPS

    torch.manual_seed(9)
    cfg = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
    vgg, index, cin = {}, 0, 3
    for v in cfg:  # torchvision's vgg16().features numbering: conv, relu (and "M" pools) in sequence
        if v == "M":
            index += 1
            continue
        vgg[f"features.{index}.weight"] = torch.randn(v, cin, 3, 3) * (2.0 / (9 * cin)) ** 0.5
        vgg[f"features.{index}.bias"] = torch.zeros(v)
        vgg[f"classifier.0.weight"] = torch.zeros(1)  # unrelated keys are ignored
        index, cin = index + 2, v
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(heads, tmp_path / "vgg_lpips.pth")
    lpips = LPIPS(str(tmp_path / "vgg16.pth"), str(tmp_path / "vgg_lpips.pth"))
    assert torch.equal(getattr(lpips.net.slice3, "14").weight, vgg["features.14.weight"])
    assert torch.equal(lpips.lin4.model[1].weight, heads["lin4.model.1.weight"])
    x, y = torch.rand(2, 2, 32, 32) * 2 - 1, torch.rand(2, 2, 32, 32) * 2 - 1
    d = lpips(x, y)
    assert d.shape == (2, 1, 1, 1) and (d > 0).all()
    assert torch.allclose(lpips(x, x), torch.zeros(2, 1, 1, 1), atol=1e-6)
    per_channel = [lpips(x[:, c:c + 1].repeat(1, 3, 1, 1), y[:, c:c + 1].repeat(1, 3, 1, 1)) for c in range(2)]
    assert torch.allclose(d, (per_channel[0] + per_channel[1]) / 2)
    del heads["lin2.model.1.weight"]
    torch.save(heads, tmp_path / "broken.pth")
    with pytest.raises(ConfigError, match="lin2.model.1.weight"):
        LPIPS(str(tmp_path / "vgg16.pth"), str(tmp_path / "broken.pth"))


# -- checkpoints -------------------------------------------------------------------------------------
def test_ckpt_path_loads_compvis_layout_strictly(tmp_path):
    from ldm.models.autoencoder import VQModelInterface

    source = tiny_vqmodel()
    state = dict(source.state_dict())
    state["loss.perceptual_loss.lin0.model.1.weight"] = torch.zeros(1, 64, 1, 1)  # a CompVis LPIPS tensor
    torch.save({"state_dict": state, "global_step": 7}, tmp_path / "vq.ckpt")

    loaded = tiny_vqmodel(ckpt_path=str(tmp_path / "vq.ckpt"))
    for k, v in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    first_stage = VQModelInterface(embed_dim=3, ddconfig=tiny_ddconfig(), lossconfig={"target": "torch.nn.Identity"},
                                   n_embed=32, ckpt_path=str(tmp_path / "vq.ckpt"))
    assert torch.equal(first_stage.quantize.embedding.weight, source.quantize.embedding.weight)
    assert not any(k.startswith("loss.") for k in first_stage.state_dict())

    partial = tiny_vqmodel(ckpt_path=str(tmp_path / "vq.ckpt"), ignore_keys=["decoder.conv_out"])
    assert not torch.equal(partial.decoder.conv_out.weight, source.decoder.conv_out.weight)
    assert torch.equal(partial.decoder.norm_out.weight, source.decoder.norm_out.weight)

    with pytest.raises(ConfigError, match="missing .* keys"):
        tiny_vqmodel(ddconfig=tiny_ddconfig(num_res_blocks=2), ckpt_path=str(tmp_path / "vq.ckpt"))
    with pytest.raises(ConfigError, match=r"quantize.embedding.weight.*\(32, 3\).*\(64, 3\)"):
        tiny_vqmodel(n_embed=64, ckpt_path=str(tmp_path / "vq.ckpt"))


# -- configs and errors ----------------------------------------------------------------------------
def test_config_mistakes_are_named():
    with pytest.raises(ConfigError, match="unknown ddconfig key 'chmult'"):
        tiny_vqmodel(ddconfig=tiny_ddconfig(chmult=[1, 2]))
    with pytest.raises(ConfigError, match="double_z"):
        tiny_vqmodel(ddconfig=tiny_ddconfig(double_z=True))
    with pytest.raises(ConfigError, match="disc_in_channels"):
        tiny_vqmodel(lossconfig=tiny_lossconfig(disc_in_channels=3))
    model = tiny_vqmodel()
    with pytest.raises(KeyError, match="no key 'mri'"):
        model.get_input({"ctp": torch.zeros(1, 15, 8, 8)}, "mri")
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\), got \(2, 32, 32\)"):
        model.get_input({"mri": torch.zeros(2, 32, 32)}, "mri")


def test_psnr_per_channel_by_hand():
    x = -torch.ones(1, 2, 4, 4)
    y = x.clone()
    y[0, 0] += 0.2  # error 0.1 in [0, 1]: mse 0.01 -> 20 dB
    y[0, 1, 0, 0] += 2.0  # one of 16 pixels off by 1: mse 1/16 -> 12.04 dB
    psnr = psnr_per_channel(x, y)
    assert psnr[0] == pytest.approx(20.0, abs=1e-4)
    assert psnr[1] == pytest.approx(10 * torch.log10(torch.tensor(16.0)).item(), abs=1e-4)
    assert psnr_per_channel(x, x)[0] == pytest.approx(100.0)


def test_paper_config_has_the_reference_settings():
    cfg = OmegaConf.load(ROOT / "configs/autoencoder/VQGAN.yaml")
    p = cfg.model.params
    assert cfg.model.target == "taming.models.vqgan.VQModel" and cfg.model.base_learning_rate == 4.5e-6
    assert (p.embed_dim, p.n_embed, p.monitor, p.image_key) == (3, 8192, "val/rec_loss", "mri")
    dd = p.ddconfig
    assert (dd.ch, list(dd.ch_mult), dd.num_res_blocks, list(dd.attn_resolutions)) == (128, [1, 2, 4], 2, [16])
    assert (dd.z_channels, dd.in_channels, dd.out_ch, dd.resolution, dd.double_z) == (3, 2, 2, 224, False)
    loss = p.lossconfig.params
    assert (loss.disc_start, loss.disc_weight, loss.perceptual_weight, loss.codebook_weight) == (30001, 0.2, 0.0, 1.0)
    assert loss.get("pixel_loss", "l1") == "l1" and loss.disc_in_channels == 2
    assert cfg.data.params.batch_size == 2 and cfg.lightning.trainer.accumulate_grad_batches == 2
    assert not p.get("reinit_unused_codes", False)
    model = instantiate_from_config(cfg.model)
    assert model.encoder.downsampling_factor == 4 and len(model.decoder.up[1].attn) == 0  # no level is 16 px


def test_demo_config_builds_and_runs_at_demo_size():
    cfg = OmegaConf.load(ROOT / "configs/demo/vqgan.yaml")
    p = cfg.model.params
    assert (p.embed_dim, p.ddconfig.z_channels, len(p.ddconfig.ch_mult)) == (3, 3, 3)  # f = 4
    assert cfg.data.params.train.params.data_root == "data/npy/train"
    model = instantiate_from_config(cfg.model).eval()
    size = int(p.ddconfig.resolution)
    with torch.no_grad():
        dec, _ = model(torch.zeros(1, 2, size, size))
    assert dec.shape == (1, 2, size, size)
