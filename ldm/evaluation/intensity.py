"""Mapping DWI / ADC volumes to [0, 1] for scoring, the way training normalises them.

DESIGN.md (and the reference preprocessing): negatives are set to 0, then the volume is clipped to
the patient's 0.5th and 99.5th percentiles *inside the brain mask* and scaled to [0, 1]; outside the
mask the image is 0. For scoring, the constants always come from the ground truth, and the same
constants are applied to the prediction, so that a prediction with a wrong intensity scale is
penalised instead of being silently re-normalised to look right.
"""
from __future__ import annotations

import numpy as np

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5


def percentile_window(volume: np.ndarray, mask: np.ndarray,
                      low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE) -> tuple[float, float]:
    """The (low, high) percentiles of ``max(volume, 0)`` inside ``mask`` (linear interpolation,
    as ``np.quantile`` in the reference)."""
    inside = np.clip(np.asarray(volume, dtype=np.float64)[np.asarray(mask) > 0], 0.0, None)
    if inside.size == 0:
        raise ValueError("the brain mask is empty: no intensity window can be computed")
    lo, hi = np.percentile(inside, [low, high])
    return float(lo), float(hi)


def to_unit_range(volume: np.ndarray, window: tuple[float, float], mask: np.ndarray) -> np.ndarray:
    """Clip ``volume`` to ``window``, scale to [0, 1] and set everything outside ``mask`` to 0."""
    lo, hi = window
    scaled = (np.clip(np.asarray(volume, dtype=np.float64), lo, hi) - lo) / max(hi - lo, 1e-12)
    scaled[np.asarray(mask) <= 0] = 0.0
    return scaled.astype(np.float32)
