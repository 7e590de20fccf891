"""VQModelInterface, the first stage as the LDM uses it: pre-quantisation latents, quantising decode,
and a memory-friendly differentiable decode through the frozen decoder (post-training)."""
from __future__ import annotations

import pytest
import torch

from ldm.models.autoencoder import VQModelInterface
from tests.helpers.vqgan_models import tiny_ddconfig


def frozen_first_stage(**ddconfig_overrides) -> VQModelInterface:
    """Built as the CompVis LDM configs build it (no training loss), then frozen as the LDM does."""
    model = VQModelInterface(embed_dim=3, ddconfig=tiny_ddconfig(**ddconfig_overrides),
                             lossconfig={"target": "torch.nn.Identity"}, n_embed=32)
    model.quantize.embedding.weight.data.normal_()  # a spread-out codebook, as after training
    model.eval().requires_grad_(False)
    return model


def test_encode_returns_prequant_latent_and_decode_quantises():
    torch.manual_seed(0)
    model = frozen_first_stage()
    x = torch.rand(2, 2, 32, 32) * 2 - 1
    with torch.no_grad():
        h = model.encode(x)
        assert torch.equal(h, model.quant_conv(model.encoder(x)))
        assert h.shape == (2, 3, 8, 8)
        quant = model.quantize(h)[0]
        assert torch.allclose(model.decode(h), model.decoder(model.post_quant_conv(quant)))
        unquantised = model.decode(h, force_not_quantize=True)
        assert torch.allclose(unquantised, model.decoder(model.post_quant_conv(h)))
        assert not torch.allclose(unquantised, model.decode(h))
        # the VQModel round trip is encode -> decode of the interface
        assert torch.allclose(model.decode(h), model(x)[0], atol=1e-5)


@pytest.mark.parametrize("force_not_quantize", [False, True])
def test_differentiable_decode_through_frozen_decoder_with_checkpointing(force_not_quantize):
    torch.manual_seed(1)
    model = frozen_first_stage(attn_resolutions=[16])
    h0 = torch.randn(2, 3, 8, 8)
    target = torch.rand(2, 2, 32, 32) * 2 - 1
    grads = {}
    for checkpointing in (False, True):
        model.set_gradient_checkpointing(checkpointing)
        h = h0.clone().requires_grad_(True)
        loss = (model.decode(h, force_not_quantize=force_not_quantize) - target).square().mean()
        loss.backward()
        grads[checkpointing] = h.grad
    assert grads[True].abs().sum() > 0  # straight-through quantisation passes the gradient on to h
    assert torch.allclose(grads[True], grads[False], atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_checkpointing_switch_from_ddconfig():
    model = frozen_first_stage(use_checkpoint=True)
    assert model.decoder.use_checkpoint
    model.set_gradient_checkpointing(False)
    assert not model.decoder.use_checkpoint


def test_interface_cannot_train_without_a_loss():
    model = frozen_first_stage()
    model.learning_rate = 1e-4
    with pytest.raises(Exception, match="no training loss"):
        model.configure_optimizers()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_decode_with_gradients_on_cuda():
    torch.manual_seed(2)
    model = frozen_first_stage(attn_resolutions=[16]).cuda()
    model.set_gradient_checkpointing(True)
    h = torch.randn(2, 3, 8, 8, device="cuda", requires_grad=True)
    with torch.no_grad():
        reference = model.decode(h.float())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model.decode(h)
    out.float().square().mean().backward()
    assert torch.isfinite(h.grad).all() and h.grad.abs().sum() > 0
    assert torch.allclose(out.float(), reference, atol=5e-2, rtol=5e-2)
