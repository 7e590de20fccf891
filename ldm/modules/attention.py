"""Multi-head spatial self-attention of the diffusion UNet (CompVis/openai ``AttentionBlock``).

The parameters and state-dict keys are CompVis's (``norm``, ``qkv`` a 1x1 Conv1d to 3C channels,
``proj_out`` a zero-initialised 1x1 Conv1d), so CompVis checkpoints load. The computation differs
in layout only: tokens are kept (B, HW, C) and the 1x1 convolutions are applied as linear maps,
so q, k and v come out as contiguous (B, heads, HW, C/heads) tensors that
``F.scaled_dot_product_attention`` can hand to its flash / memory-efficient kernels on GPU (the
reference materialises the (HW x HW) weights with einsum). With channels_last activations the
(B, C, H, W) -> (B, HW, C) step is a free view.

Head layout: CompVis's default "legacy" order splits heads before q/k/v (channel index
``head * 3 * d + {q,k,v} * d + i``); ``use_new_attention_order`` splits q/k/v first
(``{q,k,v} * C + head * d + i``). Both are supported so checkpoints of either kind load and
compute the same. ``impl="math"`` is the explicit softmax(q k^T / sqrt(d)) v, kept as the
reference the fast path is tested against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ldm.modules.diffusionmodules.util import checkpoint, conv_nd, normalization, zero_module

ATTENTION_IMPLS = ("sdpa", "math")


def split_heads(qkv: torch.Tensor, n_heads: int, legacy_order: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T, 3C) tokens -> q, k, v of shape (B, heads, T, C / heads)."""
    b, t, width = qkv.shape
    d = width // (3 * n_heads)
    if legacy_order:
        q, k, v = qkv.view(b, t, n_heads, 3, d).permute(3, 0, 2, 1, 4).unbind(0)
    else:
        q, k, v = qkv.view(b, t, 3, n_heads, d).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str = "sdpa") -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over the token axis, for (B, heads, T, d) inputs."""
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    weights = torch.softmax((q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5, dim=-1).type(q.dtype)
    return weights @ v


class QKVAttention(nn.Module):
    """Attention over (B, T, 3C) packed q/k/v tokens -> (B, T, C); no parameters."""

    def __init__(self, n_heads: int, legacy_order: bool = True, impl: str = "sdpa") -> None:
        super().__init__()
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention impl {impl!r} is not one of {ATTENTION_IMPLS}")
        self.n_heads, self.legacy_order, self.impl = n_heads, legacy_order, impl

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        b, t, width = qkv.shape
        if width % (3 * self.n_heads):
            raise ValueError(f"qkv width {width} is not divisible by 3 x {self.n_heads} heads")
        q, k, v = split_heads(qkv, self.n_heads, self.legacy_order)
        out = attention(q, k, v, self.impl)  # (B, heads, T, d)
        return out.transpose(1, 2).reshape(b, t, width // 3)


class AttentionBlock(nn.Module):
    """Residual multi-head self-attention over all spatial positions: x + proj_out(attn(norm(x)))."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1,
                 use_checkpoint: bool = False, use_new_attention_order: bool = False,
                 impl: str = "sdpa") -> None:
        super().__init__()
        self.channels = channels
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"attention width {channels} is not divisible by num_head_channels "
                                 f"{num_head_channels}")
            self.num_heads = channels // num_head_channels
        if self.num_heads < 1 or channels % self.num_heads:
            raise ValueError(f"attention width {channels} cannot be split into {self.num_heads} heads")
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        self.attention = QKVAttention(self.num_heads, legacy_order=not use_new_attention_order, impl=impl)
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._forward, (x,), None, self.use_checkpoint)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        tokens = self.norm(x).reshape(b, c, -1).transpose(1, 2)  # (B, T, C)
        qkv = F.linear(tokens, self.qkv.weight.squeeze(-1), self.qkv.bias)
        h = self.attention(qkv)
        h = F.linear(h, self.proj_out.weight.squeeze(-1), self.proj_out.bias)  # (B, T, C)
        return x + h.transpose(1, 2).reshape(b, c, *spatial)
