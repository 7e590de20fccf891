"""Intensity normalisation of docs/data.md (the reference code's) and its inverse.

The model sees each map in [0, 1], then masked and mapped to [-1, 1]:
- DWI, ADC: negatives set to 0, then clipped to the patient's 0.5th and 99.5th percentiles inside
  the brain mask and scaled linearly, ``u = (clip(x, lo, hi) - lo) / (hi - lo)``;
- CTP: clipped to [0, 200] HU and divided by 200.
Preprocessing stores the scaled maps *unclipped* (``clip=False``: negatives of DWI/ADC already 0),
so that the training augmentation warps them before the clipping, as the reference does; the
datasets clip to [0, 1] after warping (:func:`to_model_range`). The model range is ``x = 2u - 1``
inside the brain and exactly -1 outside. The inverse maps a model output back to physical units
(values beyond the clipping range cannot come back: that is the only loss of the round trip
besides the storage dtype).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # preprocessing stays torch-free (fast start-up in worker processes)
    import torch

PERCENTILES = (0.5, 99.5)
CTP_RANGE_HU = (0.0, 200.0)


def percentile_range(volume: np.ndarray, mask: np.ndarray,
                     percentiles: tuple[float, float] = PERCENTILES) -> tuple[float, float]:
    """(lo, hi) percentiles of ``max(volume, 0)`` inside ``mask``."""
    values = np.maximum(volume[mask.astype(bool)], 0.0)
    if values.size == 0:
        raise ValueError("the brain mask is empty")
    lo, hi = np.percentile(values, percentiles)
    return float(lo), float(hi)


def scale_to_unit(volume: np.ndarray, lo: float, hi: float, dtype: np.dtype | type = np.float32,
                  clip: bool = True, zero_negatives: bool = True) -> np.ndarray:
    """``(clip(max(x, 0), lo, hi) - lo) / (hi - lo)`` as a new array (computed in float32).

    ``clip=False`` leaves values outside [lo, hi] (outside [0, 1] after scaling); ``zero_negatives
    =False`` keeps negative inputs (the CTP's: the reference clips it only after augmentation).
    """
    if not hi > lo:
        raise ValueError(f"empty intensity range [{lo}, {hi}]")
    out = np.array(volume, dtype=np.float32)
    if zero_negatives:
        np.maximum(out, 0.0, out=out)
    if clip:
        np.clip(out, lo, hi, out=out)
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return out.astype(dtype, copy=False)


def unit_to_physical(unit: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Inverse of :func:`scale_to_unit` on [0, 1] (float32)."""
    return (np.clip(unit, 0.0, 1.0).astype(np.float32) * np.float32(hi - lo) + np.float32(lo)).astype(np.float32)


def to_model_range(unit: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
    """[0, 1] images to [-1, 1] inside ``mask`` (broadcast over channels), exactly -1 outside."""
    import torch

    return torch.where(mask > 0.5, unit.clamp(0.0, 1.0) * 2.0 - 1.0, torch.full_like(unit, -1.0))


def from_model_range(x: np.ndarray) -> np.ndarray:
    """[-1, 1] back to [0, 1] (clipped: a sampler may overshoot)."""
    return np.clip((np.asarray(x, dtype=np.float32) + 1.0) * 0.5, 0.0, 1.0)
