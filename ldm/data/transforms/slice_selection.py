"""Which axial slices of a patient are used: for training, sampling and scoring alike.

``reference`` (default) is the reference preprocessing's rule: a slice is kept only if DWI, ADC
and the CTP each have non-zero signal inside the brain mask, on the raw values (DWI and ADC with
their negatives set to 0, the CTP summed over all its time points in HU). A CTP-only patient is
judged on its CTP. ``brain`` keeps every slice with a non-empty brain mask. Preprocessing records
the rule in ``index.json``; evaluation applies the same rule to the ground truth, so that it scores
the slice set that was synthesised (docs/data.md).
"""
from __future__ import annotations

import numpy as np

SLICE_RULES = ("reference", "brain")


def _signal_per_slice(volume: np.ndarray, mask: np.ndarray, zero_negatives: bool) -> np.ndarray:
    """Per axial slice: the sum of ``volume`` (X, Y, Z[, T]) over the brain voxels, in float64."""
    values = np.maximum(volume, 0) if zero_negatives else volume
    weights = mask.astype(np.float64)
    if values.ndim == 4:
        return np.einsum("xyzt,xyz->z", values, weights, dtype=np.float64, casting="unsafe")
    return np.einsum("xyz,xyz->z", values, weights, dtype=np.float64, casting="unsafe")


def select_slices(mask: np.ndarray, rule: str = "reference", dwi: np.ndarray | None = None,
                  adc: np.ndarray | None = None, ctp: np.ndarray | None = None) -> np.ndarray:
    """Indices of the kept axial slices (the last axis of ``mask``), ascending.

    ``mask`` is the (X, Y, Z) brain mask; ``dwi``/``adc`` (X, Y, Z) and ``ctp`` (X, Y, Z, T) are the
    raw maps (any that is None is not checked, e.g. the MRI of a CTP-only patient).
    """
    if rule not in SLICE_RULES:
        raise ValueError(f"slice rule must be one of {SLICE_RULES}, got {rule!r}")
    mask = np.asarray(mask) > 0
    keep = mask.any(axis=(0, 1))
    if rule == "reference":
        for volume, zero_negatives in ((dwi, True), (adc, True), (ctp, False)):
            if volume is not None:
                keep &= _signal_per_slice(np.asarray(volume), mask, zero_negatives) != 0
    return np.flatnonzero(keep)
