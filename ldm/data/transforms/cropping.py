"""The in-plane window: crop or pad each axial slice to the model's size around the brain.

On each in-plane axis independently, a source longer than the target is cropped to a window
centred on the brain's bounding box (shifted to stay inside the source); a shorter one is padded
so that the brain's centre lands as near the middle as the padding allows. What was done is kept
as ``crop`` (source range) and ``pad`` (before, after), which is all the inverse needs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class InPlaneWindow:
    crop: tuple[tuple[int, int], tuple[int, int]]
    pad: tuple[tuple[int, int], tuple[int, int]]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(stop - start + before + after  # type: ignore[return-value]
                     for (start, stop), (before, after) in zip(self.crop, self.pad))

    @property
    def source_slices(self) -> tuple[slice, slice]:
        """Index of the kept source region on the (X, Y) axes."""
        return tuple(slice(start, stop) for start, stop in self.crop)  # type: ignore[return-value]

    @property
    def target_slices(self) -> tuple[slice, slice]:
        """Where that region lands in the (H, W) output."""
        return tuple(slice(before, before + stop - start)  # type: ignore[return-value]
                     for (start, stop), (before, _) in zip(self.crop, self.pad))


def _axis_window(n: int, target: int, lo: int, hi: int) -> tuple[tuple[int, int], tuple[int, int]]:
    centre = (lo + hi + 1) / 2.0
    if n >= target:
        start = int(np.clip(np.floor(centre - target / 2.0 + 0.5), 0, n - target))
        return (start, start + target), (0, 0)
    total = target - n
    before = int(np.clip(np.floor(target / 2.0 - centre + 0.5), 0, total))
    return (0, n), (before, total - before)


def brain_window(mask: np.ndarray, size: tuple[int, int]) -> tuple[InPlaneWindow, bool]:
    """Window of ``size`` (H, W) around the brain of ``mask`` (X, Y, Z); also whether it cuts brain."""
    crops, pads, cuts = [], [], False
    for axis, target in enumerate(size):
        profile = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        lo, hi = (int(profile[0]), int(profile[-1])) if profile.size else (0, mask.shape[axis] - 1)
        crop, pad = _axis_window(mask.shape[axis], int(target), lo, hi)
        cuts |= lo < crop[0] or hi >= crop[1]
        crops.append(crop)
        pads.append(pad)
    return InPlaneWindow(tuple(crops), tuple(pads)), cuts  # type: ignore[arg-type]
