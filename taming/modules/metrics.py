"""Image-quality figures logged while training the autoencoder."""
from __future__ import annotations

import torch


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clipped (the convention of the paper's metrics)."""
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def psnr_per_channel(target: torch.Tensor, prediction: torch.Tensor, max_db: float = 100.0) -> torch.Tensor:
    """PSNR in dB of each channel, averaged over the images of the batch: (B, C, H, W) -> (C,).

    Both inputs are in [-1, 1] and are mapped to [0, 1] first, so the peak is 1. An identical image
    has an MSE of 0; it is reported as ``max_db`` rather than infinity."""
    if target.shape != prediction.shape or target.dim() != 4:
        raise ValueError(f"psnr_per_channel: expected two (B, C, H, W) tensors of one shape, got "
                         f"{tuple(target.shape)} and {tuple(prediction.shape)}")
    mse = ((to_unit_range(target) - to_unit_range(prediction)) ** 2).mean(dim=(2, 3))
    psnr = 10.0 * torch.log10(1.0 / mse.clamp_min(10.0 ** (-max_db / 10.0)))
    return psnr.mean(dim=0)
