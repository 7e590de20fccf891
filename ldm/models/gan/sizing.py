"""Running a fully convolutional generator at a size its strides do not divide: pad, run, crop back.

The U-Net halves the image ``num_downs`` times and the ResNet generator twice, so their input must be
a multiple of 2^num_downs or 4. The paper's slices are 192 x 224, which is not a multiple of 256 (the
pix2pix U-Net's 8 halvings). Rather than resample (which would blur the lesion) the input is padded
at the bottom and right to the next multiple with the background value, and the output cropped back
to the input's size: the padding lies outside the brain, where every map is background (-1 after
normalisation, docs/data.md), so the network sees more background and nothing else changes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

BACKGROUND = -1.0  # every map's value outside the brain mask in the models' [-1, 1] range


def padded_size(size: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``size``."""
    return -(-int(size) // int(multiple)) * int(multiple)


def pad_to_multiple(x: torch.Tensor, multiple: int, value: float = BACKGROUND) -> tuple[torch.Tensor, tuple[int, int]]:
    """``x`` (B, C, H, W) padded at the bottom and right to multiples of ``multiple``; also (H, W)."""
    h, w = x.shape[-2:]
    ph, pw = padded_size(h, multiple) - h, padded_size(w, multiple) - w
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="constant", value=value)
    return x, (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The top-left ``size`` of ``x``: undoes :func:`pad_to_multiple`."""
    return x[..., : size[0], : size[1]]
