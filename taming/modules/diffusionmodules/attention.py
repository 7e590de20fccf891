"""Single-head spatial self-attention of the VQGAN (CompVis ``AttnBlock``: keys norm, q, k, v, proj_out).

The default computes softmax(q k^T / sqrt(C)) v with ``F.scaled_dot_product_attention``, which picks
the flash / memory-efficient kernels on GPU and never materialises the (HW x HW) matrix there.
``impl="math"`` is the explicit CompVis computation, kept as the reference the fast path is tested
against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from taming.modules.diffusionmodules.blocks import Normalize

ATTENTION_IMPLS = ("sdpa", "math")


class AttnBlock(nn.Module):
    def __init__(self, in_channels: int, num_groups: int = 32, impl: str = "sdpa") -> None:
        super().__init__()
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention impl {impl!r} is not one of {ATTENTION_IMPLS}")
        self.in_channels = in_channels
        self.impl = impl
        self.norm = Normalize(in_channels, num_groups)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_ = self.norm(x)
        b, c, h, w = x.shape

        # (B, C, H, W) -> (B, 1, HW, C). The fused kernels (CPU flash included) need a dense last
        # dimension: free for channels_last inputs, one copy otherwise.
        def tokens(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, c, h * w).transpose(1, 2).unsqueeze(1).contiguous()

        q, k, v = tokens(self.q(h_)), tokens(self.k(h_)), tokens(self.v(h_))
        if self.impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            weights = torch.softmax((q @ k.transpose(-1, -2)) * (c ** -0.5), dim=-1)
            out = weights @ v
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)
