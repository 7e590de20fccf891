"""Per-slice image metrics of Table 1 (MAE, lesion MAE, PSNR, MS-SSIM) on images in [0, 1].

Every function takes stacks of slices ``(S, H, W)`` (ground truth ``x``, synthesised ``x_hat``)
and returns one value per slice, so that callers can aggregate per patient and over all slices.
MAE and PSNR come in two variants: over the whole slice (:func:`mae`, :func:`psnr`; the background
counts, so they depend on the field of view) and over the brain mask (:func:`masked_mae`,
:func:`masked_psnr`; independent of how much background the slice holds).
"""
from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio

from ldm.evaluation.ms_ssim import ScaleSet, ms_ssim

# A slice predicted exactly has infinite PSNR; it is reported at this ceiling so that means stay
# finite (it corresponds to an MSE of 1e-10 on [0, 1] images).
PSNR_CEILING_DB = 100.0


def _check(x: np.ndarray, x_hat: np.ndarray) -> None:
    if x.shape != x_hat.shape or x.ndim != 3:
        raise ValueError(f"metrics need two (S, H, W) stacks of one shape, got {x.shape} and {x_hat.shape}")


def mae(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """Mean absolute error of each slice over all its pixels, shape (S,)."""
    _check(x, x_hat)
    return np.abs(x.astype(np.float64) - x_hat.astype(np.float64)).mean(axis=(1, 2))


def _check_mask(mask: np.ndarray, x: np.ndarray, name: str) -> np.ndarray:
    m = (np.asarray(mask) > 0).astype(np.float64)
    if m.shape != x.shape:
        raise ValueError(f"{name} mask shape {m.shape} does not match the images {x.shape}")
    return m


def masked_mae(x: np.ndarray, x_hat: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean absolute error over the mask's pixels of each slice, shape (S,); NaN for an empty mask."""
    _check(x, x_hat)
    m = _check_mask(mask, x, "brain")
    num = (m * np.abs(x.astype(np.float64) - x_hat.astype(np.float64))).sum(axis=(1, 2))
    den = m.sum(axis=(1, 2))
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def masked_psnr(x: np.ndarray, x_hat: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """PSNR in dB (data range 1) of the mean squared error over the mask's pixels of each slice,
    capped at PSNR_CEILING_DB; NaN for an empty mask."""
    _check(x, x_hat)
    m = _check_mask(mask, x, "brain")
    den = m.sum(axis=(1, 2))
    sq = (m * (x.astype(np.float64) - x_hat.astype(np.float64)) ** 2).sum(axis=(1, 2))
    out = np.full(sq.shape, np.nan)
    filled = den > 0
    mse = np.maximum(sq[filled] / den[filled], 10.0 ** (-PSNR_CEILING_DB / 10.0))
    out[filled] = 10.0 * np.log10(1.0 / mse)
    return out


def mean_intensity_ratio(x: np.ndarray, x_hat: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of ``x_hat`` over the mask divided by the mean of ``x`` there, per slice (S,).

    The failed-slice rule of the evaluation: a synthesised slice whose brain is on average less
    than half as bright as the ground truth's (ratio < 0.5) came out dark. NaN where the ground
    truth's brain mean is 0 or the mask is empty.
    """
    _check(x, x_hat)
    m = _check_mask(mask, x, "brain")
    true = (m * x.astype(np.float64)).sum(axis=(1, 2))
    pred = (m * x_hat.astype(np.float64)).sum(axis=(1, 2))
    out = np.full(true.shape, np.nan)
    np.divide(pred, true, out=out, where=true > 0)
    return out


def lesion_abs_error(x: np.ndarray, x_hat: np.ndarray, lesion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per slice: (sum(M |x - x_hat|), sum(M)), the numerator and denominator of lesion MAE.

    Lesion MAE (paper, Sec. 3.1) = sum(M_lesion(x) * |x - x_hat|) / sum(M_lesion(x)); it is
    undefined where a slice has no lesion voxel, so the parts are returned for the caller to divide
    where the denominator is positive (or to pool over slices).
    """
    _check(x, x_hat)
    m = _check_mask(lesion, x, "lesion")
    err = np.abs(x.astype(np.float64) - x_hat.astype(np.float64))
    return (m * err).sum(axis=(1, 2)), m.sum(axis=(1, 2))


def lesion_mae(x: np.ndarray, x_hat: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """Lesion MAE per slice, NaN for slices without lesion (callers leave those out)."""
    num, den = lesion_abs_error(x, x_hat, lesion)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def psnr(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """PSNR in dB of each slice with data range 1 (torchmetrics), capped at PSNR_CEILING_DB."""
    _check(x, x_hat)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    p = torch.from_numpy(np.ascontiguousarray(x_hat, dtype=np.float64))
    values = peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2))
    return np.minimum(values.numpy(), PSNR_CEILING_DB)


def ms_ssim_slices(x: np.ndarray, x_hat: np.ndarray, scale_set: ScaleSet | None = None,
                   batch_size: int = 64) -> np.ndarray:
    """MS-SSIM of each slice (see ldm.evaluation.ms_ssim for the scale set), shape (S,)."""
    _check(x, x_hat)
    out = []
    for start in range(0, x.shape[0], batch_size):
        t = torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size], dtype=np.float32))[:, None]
        p = torch.from_numpy(np.ascontiguousarray(x_hat[start:start + batch_size], dtype=np.float32))[:, None]
        out.append(ms_ssim(p, t, scale_set).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)
