"""An unstripped head around a skull-stripped synthetic CTP: CSF rim, skull, scalp, air.

Clinical CTP (and ISLES'24's, in NCCT space) comes with the skull; the synthetic cohort's CTP is
skull-stripped like the paper's. For tests of brain extraction and registration this wraps the
brain in shells measured outward from the brain mask in mm: subarachnoid CSF (0-1.5 mm, ~8 HU),
skull (1.5-7.5 mm, cortical bone ~1100 HU), scalp (7.5-12.5 mm, ~45 HU soft tissue) and air
(about -1000 HU) beyond; each frame gets its own noise, as a real acquisition.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

SHELLS_MM = (("csf", 1.5, 8.0), ("skull", 7.5, 1100.0), ("scalp", 12.5, 45.0))
AIR_HU = -1000.0


def add_skull(ctp: np.ndarray, brain: np.ndarray, voxel_mm: Sequence[float], rng: np.random.Generator,
              noise_hu: float = 5.0) -> np.ndarray:
    """(X, Y, Z, T) int16 HU: ``ctp`` inside ``brain``, the shells of the module doc around it."""
    distance = ndimage.distance_transform_edt(~brain.astype(bool), sampling=[float(v) for v in voxel_mm])
    background = np.full(brain.shape, AIR_HU, dtype=np.float32)
    for _, outer, hu in reversed(SHELLS_MM):  # outermost first, inner shells overwrite
        background[(distance > 0) & (distance <= outer)] = hu
    head = np.where(brain.astype(bool)[..., None], ctp.astype(np.float32), background[..., None])
    outside = ~brain.astype(bool)
    noise = rng.standard_normal((int(outside.sum()), ctp.shape[-1]), dtype=np.float32) * np.float32(noise_hu)
    head[outside] += noise
    return np.clip(np.rint(head), -1024, 3071).astype(np.int16)
