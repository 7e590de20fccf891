"""Each fast path the benchmark switches computes what the plain path computes.

Tested at the level the benchmark times, the whole post-training step (which contains the stage-2
step): the loss and every trainable gradient with a fast path on equal those with it off, for the
same weights, timesteps and noise. The memory claims are checked through the tensors autograd
saves for backward: checkpointing saves fewer, and the work that needs no gradient (first-stage
encoding, the reconstruction target) saves none. The switches' unit tests live with their modules
(tests/test_unet.py, tests/test_vqgan_modules.py, tests/test_lapt.py, tests/test_ddim.py).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ldm.benchmark.models import build_lapt, build_ldm, load_benchmark_config
from ldm.benchmark.steps import synthetic_batch
from ldm.precision import precision_context

SMALL = Path(__file__).resolve().parents[1] / "configs" / "benchmark" / "small.yaml"
# lambdas 1 so that the image-space terms carry weight in the gradients being compared
BASE = ["benchmark.image_size=[32,32]", "lapt.params.lambda_image=1.0", "lapt.params.lambda_lesion=1.0"]
PLAIN = ["ldm.params.unet_config.params.attention_impl=math",
         "ldm.params.first_stage_config.params.ddconfig.attn_impl=math"]
UNET = "ldm.params.unet_config.params."
FIRST_STAGE = "ldm.params.first_stage_config.params."
FAST_PATHS = {
    "unet_sdpa": [UNET + "attention_impl=sdpa"],
    "first_stage_sdpa": [FIRST_STAGE + "ddconfig.attn_impl=sdpa"],
    "unet_checkpointing": [UNET + "use_checkpoint=true"],
    "unet_channels_last": [UNET + "channels_last=true"],
    "first_stage_channels_last": [FIRST_STAGE + "channels_last=true"],
    "decoder_checkpointing": ["lapt.params.decoder_checkpointing=true"],
}
FAST_PATHS["all"] = [o for overrides in FAST_PATHS.values() for o in overrides]


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _config(overrides: list[str]):
    return load_benchmark_config(SMALL, BASE + overrides)


def _randomise_zero_initialised(model: torch.nn.Module) -> torch.nn.Module:
    """The UNet's output conv and attention projections start at zero, which would make every
    comparison trivially equal; give them small random values."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() and not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def reference_state():
    torch.manual_seed(0)
    model = _randomise_zero_initialised(build_lapt(load_benchmark_config(SMALL, BASE + PLAIN)))
    return {k: v.clone() for k, v in model.state_dict().items()}


def _lapt(overrides: list[str], state: dict[str, torch.Tensor]):
    model = build_lapt(_config(overrides))
    model.load_state_dict(state)
    return model.train()


def _inputs(n: int = 2):
    g = torch.Generator().manual_seed(3)
    return (synthetic_batch(n, (32, 32), seed=1), torch.tensor([40, 700][:n]),
            torch.randn(n, 3, 8, 8, generator=g))


def _loss_and_grads(model, precision: str = "32") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    batch, t, noise = _inputs()
    model.zero_grad(set_to_none=True)
    with precision_context("cpu", precision):
        loss, _ = model.shared_step(batch, t=t, noise=noise)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.fixture(scope="module")
def plain_result(reference_state):
    return _loss_and_grads(_lapt(PLAIN, reference_state))


@pytest.mark.parametrize("name", list(FAST_PATHS))
def test_fast_path_gives_the_plain_loss_and_gradients(name, reference_state, plain_result):
    plain_loss, plain_grads = plain_result
    model = _lapt(PLAIN + FAST_PATHS[name], reference_state)
    loss, grads = _loss_and_grads(model)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=1e-6)
    assert set(grads) == set(plain_grads)
    assert any(n.startswith("cond_stage_model.") for n in grads)  # the rescaler trains too
    assert not any(n.startswith("first_stage_model.") for n in grads)  # the first stage stays frozen
    # float32 reordering (fused kernels, NHWC, recomputation) leaves ~1e-7 noise; gradients that are
    # 0 in exact arithmetic (a conv bias under a one-channel GroupNorm) are all noise, so the
    # tolerance is relative to the largest gradient of the model
    scale = max(g.abs().max() for g in plain_grads.values()).item()
    for n, g in grads.items():
        torch.testing.assert_close(g, plain_grads[n], rtol=1e-3, atol=1e-5 * scale, msg=lambda m: f"{name}: {n}: {m}")
    flat = torch.cat([g.flatten() for _, g in sorted(grads.items())])
    flat_plain = torch.cat([g.flatten() for _, g in sorted(plain_grads.items())])
    assert (flat - flat_plain).norm() < 1e-4 * flat_plain.norm()
    if name == "decoder_checkpointing":  # switched on only while decoding
        assert model.first_stage_model.decoder.use_checkpoint is False


def _saved_activation_bytes(fn: Callable[[], torch.Tensor], model: torch.nn.Module) -> int:
    """Bytes of the distinct non-parameter tensors autograd keeps for backward while ``fn`` runs."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    # Holding each storage until the end keeps its address from being reused by a later tensor
    # (a saved tensor of a branch that does not reach the loss is freed early), which would make
    # two storages count as one depending on the allocator.
    saved: dict[int, torch.UntypedStorage] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storage.nbytes() for storage in saved.values())


def _step_bytes(model) -> int:
    batch, t, noise = _inputs()
    return _saved_activation_bytes(lambda: model.shared_step(batch, t=t, noise=noise)[0], model)


def test_checkpointing_keeps_fewer_activations(reference_state):
    plain = _step_bytes(_lapt([], reference_state))
    decoder = _step_bytes(_lapt(["lapt.params.decoder_checkpointing=true"], reference_state))
    unet = _step_bytes(_lapt([UNET + "use_checkpoint=true"], reference_state))
    both = _step_bytes(_lapt(FAST_PATHS["all"], reference_state))
    # at this size the decoder at full resolution holds most of the activations
    assert decoder < 0.5 * plain
    assert unet < plain and both < min(decoder, unet)


def test_first_stage_encoding_and_reconstruction_target_keep_nothing_for_backward(reference_state):
    batch, t, noise = _inputs()
    ldm = build_ldm(_config([]))
    ldm.load_state_dict(reference_state)
    ldm.train()
    z, c = ldm.get_input(batch, ldm.first_stage_key)
    assert z.grad_fn is None and not z.requires_grad
    # the whole stage-2 step (encoding included) keeps exactly what the diffusion loss on a given z keeps
    with_encoding = _saved_activation_bytes(lambda: ldm.shared_step(batch, t=t, noise=noise)[0], ldm)
    without = _saved_activation_bytes(lambda: ldm(z, c, t=t, noise=noise)[0], ldm)
    assert with_encoding == without > 0
    # decoding x itself as the target (reference code) adds nothing to the graph either
    as_input = _step_bytes(_lapt([], reference_state))
    as_reconstruction = _step_bytes(_lapt(["lapt.params.image_target=reconstruction"], reference_state))
    assert as_reconstruction == as_input


def test_bf16_autocast_of_lightnings_precision_is_close_to_float32(reference_state):
    model = _lapt(PLAIN, reference_state)
    dtypes = {}

    def recorder(key):
        def hook(module, args, out) -> None:
            dtypes[key] = out.dtype
        return hook

    hooks = [m.register_forward_hook(recorder(key))
             for key, m in (("unet", model.model.diffusion_model.input_blocks[0][0]),
                            ("decoder", model.first_stage_model.decoder.conv_out))]
    loss32, grads32 = _loss_and_grads(model, "32")
    dtypes.clear()
    loss16, grads16 = _loss_and_grads(model, "bf16-mixed")
    for h in hooks:
        h.remove()
    assert dtypes == {"unet": torch.bfloat16, "decoder": torch.bfloat16}  # autocast reached both networks
    assert loss16.dtype == torch.float32 and torch.isfinite(loss16)
    assert loss16.item() == pytest.approx(loss32.item(), rel=3e-2)
    flat32 = torch.cat([grads32[n].flatten() for n in sorted(grads32)])
    flat16 = torch.cat([grads16[n].flatten() for n in sorted(grads32)])
    assert torch.nn.functional.cosine_similarity(flat16, flat32, dim=0) > 0.99


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++"])
def test_sampling_in_bf16_is_close_to_float32(reference_state, sampler):
    from ldm.inference.slice_sampler import SliceSampler, make_slice_sampler

    model = build_ldm(_config([]))
    model.load_state_dict(reference_state)
    model.eval()
    ctp = synthetic_batch(2, (32, 32), seed=2)["ctp"]
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))

    def noise(shape):
        return x_T.clone()

    reference = SliceSampler(model, steps=4, sampler=sampler)(ctp, noise)
    fast_sampler = make_slice_sampler(model, steps=4, eta=0.0, precision="bf16-mixed", sampler=sampler)
    dtypes = {"unet": [], "decoder": []}
    hooks = [module.register_forward_hook(lambda mod, args, out, key=key: dtypes[key].append(out.dtype))
             for key, module in (("unet", model.model.diffusion_model.input_blocks[0][0]),
                                 ("decoder", model.first_stage_model.decoder.conv_out))]
    fast = fast_sampler(ctp, noise)
    for hook in hooks:
        hook.remove()
    assert len(dtypes["unet"]) == 4 and all(d == torch.bfloat16 for d in dtypes["unet"])
    assert dtypes["decoder"] == [torch.bfloat16]
    assert fast.dtype == torch.float32
    assert make_slice_sampler(model, steps=4, eta=0.0).__class__ is SliceSampler  # float32: no wrapper
    with pytest.raises(ValueError, match="precision"):
        make_slice_sampler(model, steps=4, eta=0.0, precision="16-mixed")
    # bf16 keeps ~3 significant digits: on images in [-1, 1] (measured with plain autocast here:
    # mean 0.008, max 0.049 after 4 steps)
    error = (fast - reference).abs()
    assert error.mean() < 0.02 and error.max() < 0.15


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_attention_kernels_take_the_paper_attention_shapes():
    """On GPU the SDPA paths must reach a fused kernel (no (HW x HW) matrix): flash for the UNet's
    32-channel heads at 48 x 56 / 2, flash or memory-efficient for the VQGAN's single 512-channel head."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ldm.modules.attention import AttentionBlock
    from taming.modules.diffusionmodules.attention import AttnBlock

    unet_attn = AttentionBlock(896, num_head_channels=32).cuda()
    vq_attn = AttnBlock(512).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            x = torch.randn(2, 896, 24, 28, device="cuda", requires_grad=True)
            unet_attn(x).float().sum().backward()
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            x = torch.randn(2, 512, 48, 56, device="cuda", requires_grad=True)
            vq_attn(x).float().sum().backward()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_unet_training_step_matches_eager_on_cuda(reference_state):
    eager = _lapt(PLAIN, reference_state).cuda()
    compiled = _lapt(PLAIN + ["ldm.params.compile_unet=true"], reference_state).cuda()
    batch, t, noise = _inputs()
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    results = []
    for model in (eager, compiled):
        loss, _ = model.shared_step(batch, t=t.cuda(), noise=noise.cuda())
        loss.backward()
        results.append((loss.detach(), model.model.diffusion_model.out[2].weight.grad.clone()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-2, atol=1e-5)
