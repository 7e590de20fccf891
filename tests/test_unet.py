"""The diffusion UNet: shapes, CompVis state-dict layout, and the fast paths computing the same thing."""
import math

import pytest
import torch
import torch.nn.functional as F

from ldm.modules.attention import AttentionBlock
from ldm.modules.diffusionmodules.openaimodel import UNetModel


def tiny_unet(**overrides) -> UNetModel:
    params = dict(image_size=None, in_channels=18, out_channels=3, model_channels=32, num_res_blocks=1,
                  attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=8)
    params.update(overrides)
    return UNetModel(**params)


def randomize(module: torch.nn.Module) -> torch.nn.Module:
    """Give the zero-initialised output convolutions weights, so every branch matters."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return module


def test_output_shape_at_the_paper_latent_size():
    # the paper's latent grid and level count (channel_mult of length 3), small widths
    unet = tiny_unet(channel_mult=(1, 1, 1), attention_resolutions=(4,))
    out = unet(torch.randn(1, 18, 48, 56), torch.tensor([999]))
    assert out.shape == (1, 3, 48, 56)
    # the output convolution starts at zero (CompVis zero_module): an untrained UNet predicts 0
    assert torch.count_nonzero(out) == 0


def test_paper_unet_size():
    with torch.device("meta"):
        unet = UNetModel(image_size=[48, 56], in_channels=18, out_channels=3, model_channels=224, num_res_blocks=2,
                         attention_resolutions=[8, 4, 2], channel_mult=[1, 4, 8], num_head_channels=32)
    n = sum(p.numel() for p in unet.parameters())
    assert 7.3e8 < n < 7.5e8  # "about 740 M parameters" (the paper-scale UNet)
    heads = {m.num_heads for m in unet.modules() if isinstance(m, AttentionBlock)}
    assert heads == {896 // 32, 1792 // 32}  # attention at downsampling 2 (896 ch) and 4 (1792 ch)


def test_input_not_divisible_by_the_downsampling_is_a_clear_error():
    unet = tiny_unet()
    with pytest.raises(ValueError, match="divisible by 2"):
        unet(torch.randn(1, 18, 5, 4), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"expected \(B, 18, H, W\)"):
        unet(torch.randn(1, 17, 4, 4), torch.tensor([1]))


def test_state_dict_keys_are_compvis_layout():
    sd = tiny_unet().state_dict()
    res = ["in_layers.0", "in_layers.2", "emb_layers.1", "out_layers.0", "out_layers.3"]
    att = ["norm", "qkv", "proj_out"]
    expected = {"time_embed.0", "time_embed.2", "input_blocks.0.0", "out.0", "out.2"}
    expected |= {f"input_blocks.1.0.{n}" for n in res}                                   # level 0
    expected |= {"input_blocks.2.0.op"}                                                 # downsample
    expected |= {f"input_blocks.3.0.{n}" for n in res + ["skip_connection"]}            # 32 -> 64
    expected |= {f"input_blocks.3.1.{n}" for n in att}                                  # attention at ds 2
    expected |= {f"middle_block.0.{n}" for n in res} | {f"middle_block.1.{n}" for n in att}
    expected |= {f"middle_block.2.{n}" for n in res}
    expected |= {f"output_blocks.0.0.{n}" for n in res + ["skip_connection"]} | {f"output_blocks.0.1.{n}" for n in att}
    expected |= {f"output_blocks.1.0.{n}" for n in res + ["skip_connection"]} | {f"output_blocks.1.1.{n}" for n in att}
    expected |= {"output_blocks.1.2.conv"}                                              # upsample
    expected |= {f"output_blocks.2.0.{n}" for n in res + ["skip_connection"]}
    expected |= {f"output_blocks.3.0.{n}" for n in res + ["skip_connection"]}
    assert set(sd) == {f"{m}.{w}" for m in expected for w in ("weight", "bias")}
    # skip channels: 64 + 64 in, 64 + 32 (the downsample), then 64 + 32 and 32 + 32
    assert sd["output_blocks.0.0.in_layers.2.weight"].shape == (64, 128, 3, 3)
    assert sd["output_blocks.1.0.in_layers.2.weight"].shape == (64, 96, 3, 3)
    assert sd["output_blocks.2.0.in_layers.2.weight"].shape == (32, 96, 3, 3)
    assert sd["input_blocks.3.1.qkv.weight"].shape == (192, 64, 1)     # CompVis Conv1d layout
    assert sd["input_blocks.3.1.proj_out.weight"].shape == (64, 64, 1)
    assert sd["time_embed.0.weight"].shape == (128, 32)


def compvis_attention(block: AttentionBlock, x: torch.Tensor, legacy: bool) -> torch.Tensor:
    """Independent einsum implementation of CompVis's AttentionBlock on (B, C, H, W)."""
    b, c, h, w = x.shape
    heads = block.num_heads
    xf = x.reshape(b, c, -1)
    qkv = F.conv1d(F.group_norm(xf, 32, block.norm.weight, block.norm.bias, 1e-5), block.qkv.weight, block.qkv.bias)
    d = c // heads
    if legacy:
        q, k, v = qkv.reshape(b * heads, 3 * d, -1).split(d, dim=1)
    else:
        q, k, v = (part.reshape(b * heads, d, -1) for part in qkv.chunk(3, dim=1))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(d), dim=-1)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)
    return (xf + F.conv1d(a, block.proj_out.weight, block.proj_out.bias)).reshape(b, c, h, w)


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_attention_equals_compvis_einsum(legacy, impl):
    block = randomize(AttentionBlock(64, num_head_channels=16, use_new_attention_order=not legacy, impl=impl))
    x = torch.randn(2, 64, 6, 5)
    torch.testing.assert_close(block(x), compvis_attention(block, x, legacy), rtol=1e-4, atol=1e-5)


def test_fast_paths_compute_the_same():
    """SDPA, activation checkpointing and channels_last: same outputs and gradients as the plain UNet."""
    reference = randomize(tiny_unet(attention_impl="math"))
    x, t = torch.randn(2, 18, 4, 4, requires_grad=True), torch.tensor([3, 700])
    out = reference(x, t)
    grads = torch.autograd.grad(out.square().sum(), [x, *reference.parameters()])
    for switches in (dict(use_checkpoint=True),
                     dict(attention_impl="sdpa", use_checkpoint=True, channels_last=True)):
        fast = tiny_unet(**switches)
        fast.load_state_dict(reference.state_dict())
        out_fast = fast(x, t)
        torch.testing.assert_close(out_fast, out, rtol=1e-4, atol=1e-5, msg=str(switches))
        grads_fast = torch.autograd.grad(out_fast.square().sum(), [x, *fast.parameters()])
        for g_fast, g in zip(grads_fast, grads):
            torch.testing.assert_close(g_fast, g, rtol=1e-3, atol=1e-4, msg=str(switches))
    assert fast.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)


def test_scale_shift_norm_and_resblock_updown_variants_run():
    unet = tiny_unet(use_scale_shift_norm=True, resblock_updown=True, num_head_channels=-1, num_heads=2)
    assert unet(torch.randn(1, 18, 4, 4), torch.tensor([5])).shape == (1, 3, 4, 4)
    assert unet.input_blocks[2][0].emb_layers[1].out_features == 2 * 32  # scale and shift


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_on_cuda_is_close():
    unet = randomize(tiny_unet()).cuda()
    x, t = torch.randn(2, 18, 16, 16, device="cuda"), torch.tensor([3, 700], device="cuda")
    ref = unet(x, t)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = unet(x, t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=5e-2, atol=5e-2)
