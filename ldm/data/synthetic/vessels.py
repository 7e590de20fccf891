"""Large intracranial vessels of the synthetic CTP, as tubes along polylines in MNI space.

Arteries (internal carotid / M1-M2 of the MCA, ACA, basilar, PCA) enhance first and strongest;
the venous sinuses and deep veins enhance a few seconds later. Each tube has a Gaussian profile;
a coarse voxel sees it with partial volume (wider and fainter, same cross-sectional area). The
courses are schematic, placed from standard MNI atlases to within a few millimetres.
"""
from __future__ import annotations

import numpy as np

# (points in MNI mm, radius in mm); the left-sided ones are mirrored to the right.
_LEFT_ARTERIES = [
    ([(-14, 2, -16), (-24, 3, -10), (-37, -2, -3), (-44, -10, 6), (-48, -24, 14)], 1.6),  # ICA -> M1 -> M2
    ([(-4, 6, -10), (-4, 24, -2), (-4, 36, 18), (-4, 22, 44), (-4, -12, 60)], 1.1),  # ACA (A1/A2 to pericallosal)
    ([(-2, -24, -14), (-14, -36, -8), (-24, -60, 0), (-16, -86, 6)], 1.0),  # PCA
]
_MIDLINE_ARTERIES = [([(0, -26, -44), (0, -22, -14)], 1.5)]  # basilar
_VEINS = [
    ([(0, 62, 14), (0, 52, 50), (0, 20, 72), (0, -30, 74), (0, -76, 48), (0, -98, 14)], 3.0),  # superior sagittal sinus
    ([(0, -8, 14), (0, -36, 10), (0, -50, 18), (0, -76, 12)], 2.2),  # internal cerebral vein, Galen, straight sinus
]


def _mirror(polylines: list) -> list:
    return [([(-x, y, z) for x, y, z in points], r) for points, r in polylines]


ARTERIES = _LEFT_ARTERIES + _mirror(_LEFT_ARTERIES) + _MIDLINE_ARTERIES
VEINS = _VEINS


def _segment_distance_sq(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distance of ``points`` (N, 3) to the segment ab."""
    ab = b - a
    t = np.clip(((points - a) @ ab) / float(ab @ ab), 0.0, 1.0)
    nearest = a + t[:, None] * ab
    diff = points - nearest
    return np.einsum("ij,ij->i", diff, diff)


def vessel_fraction(polylines: list, mni: np.ndarray, voxel_xy_mm: float) -> np.ndarray:
    """Fraction of each voxel (in [0, 1]) occupied by the given tubes; ``mni`` is (3, X, Y, Z)."""
    shape = mni.shape[1:]
    points = mni.reshape(3, -1).T
    fraction = np.zeros(points.shape[0], dtype=np.float32)
    voxel_sigma = voxel_xy_mm / 2.355
    for polyline, radius in polylines:
        vertices = np.asarray(polyline, dtype=np.float32)
        sigma_sq = (radius / 1.2) ** 2 + voxel_sigma ** 2
        amplitude = (radius / 1.2) ** 2 / sigma_sq
        reach = 3.0 * np.sqrt(sigma_sq)
        lo, hi = vertices.min(0) - reach, vertices.max(0) + reach
        near = np.flatnonzero(np.all((points >= lo) & (points <= hi), axis=1))
        if near.size == 0:
            continue
        candidates = points[near]
        distance_sq = np.full(near.size, np.inf, dtype=np.float32)
        for a, b in zip(vertices[:-1], vertices[1:]):
            distance_sq = np.minimum(distance_sq, _segment_distance_sq(candidates, a, b))
        fraction[near] = np.maximum(fraction[near], amplitude * np.exp(-0.5 * distance_sq / sigma_sq))
    return fraction.reshape(shape)
