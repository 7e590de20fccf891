"""ldm.optim: the fused Adam(W) is chosen where torch has it, and follows the same trajectory as
torch's per-tensor implementation to float rounding."""
from __future__ import annotations

import pytest
import torch

from ldm.optim import adam, can_fuse


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GroupNorm(4, 8), torch.nn.SiLU(),
                               torch.nn.Conv2d(8, 2, 1))


@pytest.mark.parametrize("decoupled", [False, True], ids=["Adam", "AdamW"])
def test_fused_follows_the_per_tensor_update(decoupled):
    nets = [_net(), _net()]
    kwargs = dict(lr=1e-2, betas=(0.5, 0.9), weight_decay=0.01)
    fused = adam(nets[0].parameters(), decoupled_weight_decay=decoupled, **kwargs)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    plain = cls(nets[1].parameters(), foreach=False, **kwargs)
    assert fused.defaults["fused"] is True and not plain.defaults.get("fused")
    x = torch.randn(4, 3, 16, 16)
    for _ in range(5):
        for net, opt in zip(nets, (fused, plain)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    moved = False
    for a, b, start in zip(nets[0].parameters(), nets[1].parameters(), _net().parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        moved |= not torch.allclose(a, start)
    assert moved  # the steps did change the weights


def test_what_cannot_be_fused_falls_back():
    assert can_fuse([torch.zeros(2, requires_grad=True)])
    assert not can_fuse([])
    assert not can_fuse([torch.zeros(2, dtype=torch.int64)])
    opt = adam([torch.nn.Parameter(torch.zeros(2, device="meta"))], lr=1e-3)
    assert not opt.defaults.get("fused")
