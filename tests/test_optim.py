"""ldm.optim: the fused Adam(W) is chosen on a GPU only, and follows the same trajectory as torch's
per-tensor implementation to float rounding; on the CPU the multi-tensor (foreach) one, bit for bit."""
from __future__ import annotations

import pytest
import torch

from ldm.optim import adam, can_fuse


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GroupNorm(4, 8), torch.nn.SiLU(),
                               torch.nn.Conv2d(8, 2, 1))


def _trajectories(device: str, decoupled: bool) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.optim.Optimizer]:
    nets = [_net().to(device), _net().to(device)]
    kwargs = dict(lr=1e-2, betas=(0.5, 0.9), weight_decay=0.01)
    chosen = adam(nets[0].parameters(), decoupled_weight_decay=decoupled, **kwargs)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    plain = cls(nets[1].parameters(), foreach=False, **kwargs)
    x = torch.randn(4, 3, 16, 16, device=device)
    for _ in range(5):
        for net, opt in zip(nets, (chosen, plain)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    return list(nets[0].parameters()), list(nets[1].parameters()), chosen


@pytest.mark.parametrize("decoupled", [False, True], ids=["Adam", "AdamW"])
def test_on_the_cpu_the_update_is_torchs_default_bit_for_bit(decoupled):
    a, b, chosen = _trajectories("cpu", decoupled)
    assert not chosen.defaults.get("fused")
    assert chosen.defaults["foreach"] is True
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.allclose(x, s) for x, s in zip(a, _net().parameters()))  # the steps moved the weights


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("decoupled", [False, True], ids=["Adam", "AdamW"])
def test_on_a_gpu_the_fused_update_follows_the_per_tensor_one(decoupled):
    a, b, chosen = _trajectories("cuda", decoupled)
    assert chosen.defaults["fused"] is True
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_what_cannot_be_fused_falls_back():
    assert not can_fuse([])
    assert not can_fuse([torch.zeros(2, requires_grad=True)])  # a CPU tensor
    assert not can_fuse([torch.zeros(2, dtype=torch.int64, device="meta")])
    opt = adam([torch.nn.Parameter(torch.zeros(2, device="meta"))], lr=1e-3)
    assert not opt.defaults.get("fused") and not opt.defaults.get("foreach")
