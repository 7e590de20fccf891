"""VQGAN Encoder and Decoder (CompVis ``taming``/``ldm`` architecture and state-dict keys).

Both take the ``ddconfig`` mapping of a CompVis config as keyword arguments. Each ignores the keys
that only the other one uses (``double_z`` / ``give_pre_end``, ``tanh_out``, ``use_checkpoint``) and
rejects any other unknown key, so a typo in a config is an error rather than a silent default.

The down-sampling factor is f = 2 ** (len(ch_mult) - 1); attention blocks go at the levels whose
nominal size (``resolution`` halved per level) is in ``attn_resolutions``, plus one in the mid block.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ldm.util import ConfigError
from taming.modules.diffusionmodules.attention import AttnBlock
from taming.modules.diffusionmodules.blocks import Downsample, Normalize, ResnetBlock, Upsample, nonlinearity

__all__ = ["Encoder", "Decoder", "ResnetBlock", "AttnBlock", "Upsample", "Downsample", "Normalize"]

_ENCODER_ONLY = {"double_z"}
_DECODER_ONLY = {"give_pre_end", "tanh_out", "use_checkpoint"}


def _check_extra(kind: str, extra: dict, other_side: set[str]) -> None:
    unknown = sorted(set(extra) - other_side)
    if unknown:
        raise ConfigError(f"{kind}: unknown ddconfig key {unknown[0]!r}")


def _check_attn_type(attn_type: str) -> None:
    if attn_type != "vanilla":
        raise ConfigError(f"attn_type {attn_type!r} is not supported (only CompVis 'vanilla' attention)")


class Encoder(nn.Module):
    """x (B, in_channels, H, W) -> h (B, z_channels [x2 if double_z], H/f, W/f)."""

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int] = (1, 2, 4, 8), num_res_blocks: int,
                 attn_resolutions: Sequence[int], dropout: float = 0.0, resamp_with_conv: bool = True,
                 in_channels: int, resolution: int, z_channels: int, double_z: bool = True,
                 norm_groups: int = 32, attn_impl: str = "sdpa", attn_type: str = "vanilla",
                 **decoder_only) -> None:
        super().__init__()
        _check_extra("Encoder", decoder_only, _DECODER_ONLY)
        _check_attn_type(attn_type)
        self.ch = ch
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels

        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        curr_res = resolution
        in_ch_mult = (1, *ch_mult)
        self.down = nn.ModuleList()
        block_in = ch
        for i_level in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_ch_mult[i_level], ch * ch_mult[i_level]
            for _ in range(num_res_blocks):
                block.append(ResnetBlock(in_channels=block_in, out_channels=block_out, dropout=dropout,
                                         num_groups=norm_groups))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(AttnBlock(block_in, norm_groups, attn_impl))
            down = nn.Module()
            down.block, down.attn = block, attn
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in, resamp_with_conv)
                curr_res = curr_res // 2
            self.down.append(down)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=dropout,
                                       num_groups=norm_groups)
        self.mid.attn_1 = AttnBlock(block_in, norm_groups, attn_impl)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=dropout,
                                       num_groups=norm_groups)
        self.norm_out = Normalize(block_in, norm_groups)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels,
                                  kernel_size=3, stride=1, padding=1)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (self.num_resolutions - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.downsampling_factor
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"Encoder expects (B, {self.in_channels}, H, W) with H and W divisible by {f}, "
                             f"got {tuple(x.shape)}")
        h = self.conv_in(x)
        for i_level, down in enumerate(self.down):
            for i_block in range(self.num_res_blocks):
                h = down.block[i_block](h)
                if len(down.attn) > 0:
                    h = down.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = down.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(nonlinearity(self.norm_out(h)))


class Decoder(nn.Module):
    """z (B, z_channels, h, w) -> x (B, out_ch, h*f, w*f).

    ``use_checkpoint`` (or :meth:`set_gradient_checkpointing`) recomputes each block's activations
    in the backward pass instead of storing them. It only acts while autograd records, and uses
    non-reentrant checkpointing so that gradients reach the input even when the decoder's own
    parameters are frozen (post-training decodes z0_hat with the decoder frozen).
    """

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int] = (1, 2, 4, 8), num_res_blocks: int,
                 attn_resolutions: Sequence[int], dropout: float = 0.0, resamp_with_conv: bool = True,
                 in_channels: int, resolution: int, z_channels: int, give_pre_end: bool = False,
                 tanh_out: bool = False, use_checkpoint: bool = False, norm_groups: int = 32,
                 attn_impl: str = "sdpa", attn_type: str = "vanilla", **encoder_only) -> None:
        super().__init__()
        _check_extra("Decoder", encoder_only, _ENCODER_ONLY)
        _check_attn_type(attn_type)
        self.ch = ch
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels
        self.z_channels = z_channels
        self.give_pre_end = give_pre_end
        self.tanh_out = tanh_out
        self.use_checkpoint = use_checkpoint

        block_in = ch * ch_mult[-1]
        curr_res = resolution // 2 ** (self.num_resolutions - 1)
        self.z_shape = (1, z_channels, curr_res, curr_res)
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=dropout,
                                       num_groups=norm_groups)
        self.mid.attn_1 = AttnBlock(block_in, norm_groups, attn_impl)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=dropout,
                                       num_groups=norm_groups)

        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks + 1):
                block.append(ResnetBlock(in_channels=block_in, out_channels=block_out, dropout=dropout,
                                         num_groups=norm_groups))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(AttnBlock(block_in, norm_groups, attn_impl))
            up = nn.Module()
            up.block, up.attn = block, attn
            if i_level != 0:
                up.upsample = Upsample(block_in, resamp_with_conv)
                curr_res = curr_res * 2
            self.up.insert(0, up)  # CompVis order: up[0] is the full-resolution level

        self.norm_out = Normalize(block_in, norm_groups)
        self.conv_out = nn.Conv2d(block_in, out_ch, kernel_size=3, stride=1, padding=1)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.use_checkpoint = bool(enabled)

    def _run(self, fn: Callable[[torch.Tensor], torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(fn, h, use_reentrant=False)
        return fn(h)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        h = self.conv_out(nonlinearity(self.norm_out(h)))
        return torch.tanh(h) if self.tanh_out else h

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 4 or z.shape[1] != self.z_channels:
            raise ValueError(f"Decoder expects (B, {self.z_channels}, h, w), got {tuple(z.shape)}")
        self.last_z_shape = z.shape
        h = self.conv_in(z)
        for module in (self.mid.block_1, self.mid.attn_1, self.mid.block_2):
            h = self._run(module, h)
        for i_level in reversed(range(self.num_resolutions)):
            up = self.up[i_level]
            for i_block in range(self.num_res_blocks + 1):
                h = self._run(up.block[i_block], h)
                if len(up.attn) > 0:
                    h = self._run(up.attn[i_block], h)
            if i_level != 0:
                h = self._run(up.upsample, h)
        if self.give_pre_end:
            return h
        return self._run(self._head, h)
