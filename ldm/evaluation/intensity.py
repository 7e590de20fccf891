"""Mapping DWI / ADC volumes to [0, 1] for scoring, exactly as training normalises them.

docs/data.md: negatives are set to 0, then the volume is clipped to the (lo, hi) that the
intensity window (ldm/data/transforms/intensity_window.py) gives the patient and scaled to [0, 1]; outside the
mask the image is 0. The functions of ``ldm.data.transforms.normalization`` are used, so scoring and training
cannot drift apart. For scoring, the range always comes from the ground truth and the same range
is applied to the prediction, so that a prediction with a wrong intensity scale is penalised
instead of being silently re-normalised to look right.
"""
from __future__ import annotations

import numpy as np

from ldm.data.transforms.normalization import scale_to_unit


def to_unit_range(volume: np.ndarray, window: tuple[float, float], mask: np.ndarray) -> np.ndarray:
    """Clip ``volume`` to ``window``, scale to [0, 1] and set everything outside ``mask`` to 0."""
    scaled = scale_to_unit(np.asarray(volume), *window, dtype=np.float32)
    scaled[np.asarray(mask) <= 0] = 0.0
    return scaled
