"""Ischaemic lesions of the synthetic cohort: an infarct core inside a larger penumbra.

A lesion is an irregular ellipsoid placed in a vascular territory (MNI coordinates, so it follows
the patient's warped anatomy). Its outline is perturbed by a few low-frequency waves. The core
(what the lesion mask marks) has a soft 1 mm edge; the penumbra extends it by a factor
``penumbra_ratio`` of the core's normalised radius, with a severity that falls from 1 at the core
border to 0 at its outer edge. Volumes follow a heavy-tailed log-normal law: most strokes are a
few millilitres, a few are very large. Its parameters give the written lesions of the lesion
patients (main lesion, satellites, restricted to brain tissue) the paper cohort's mean and SD,
15 +- 41 ml (measured on 400 lesion patients at the demo size over the whole brain, one at
each of 400 evenly spaced quantiles: mean 14.6 ml, SD 41.9 ml, median 2.4 ml).

A patient's lesion volume is a quantile ``q`` of the whole law, lesion-free patients included
(``q < P_NO_LESION``: none). A cohort draws the quantiles of each split stratified (one in each of
n equal bins, in random order: Latin hypercube), so that every split, even a small test set,
spans the law from lesion-free to large lesions; each patient is still marginally from the law.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from ldm.data.synthetic.anatomy import rotation_matrix

# name: (centre in the left hemisphere, MNI mm; jitter sd, mm; probability)
TERRITORIES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], float]] = {
    "MCA cortical": ((-44.0, -10.0, 14.0), (6.0, 14.0, 10.0), 0.42),
    "MCA deep": ((-24.0, 2.0, 6.0), (3.0, 6.0, 5.0), 0.20),
    "ACA": ((-9.0, 22.0, 44.0), (3.0, 14.0, 8.0), 0.10),
    "PCA": ((-20.0, -74.0, 6.0), (5.0, 8.0, 6.0), 0.16),
    "cerebellar": ((-20.0, -60.0, -30.0), (5.0, 7.0, 5.0), 0.12),
}
# Probability that a patient has no acute lesion (the paper's cohort has such patients).
P_NO_LESION = 0.25
# Main-lesion volume (ml): exp(N(VOLUME_LOG_MEAN, VOLUME_LOG_SD^2)) clipped to VOLUME_RANGE_ML.
VOLUME_LOG_MEAN = 0.9
VOLUME_LOG_SD = 2.05
VOLUME_RANGE_ML = (0.2, 600.0)


def volume_at_quantile(q: float) -> float:
    """Main-lesion volume (ml) at quantile ``q`` in [0, 1) of the law, 0 for a lesion-free patient."""
    if not 0.0 <= q < 1.0:
        raise ValueError(f"lesion quantile must lie in [0, 1), got {q}")
    if q < P_NO_LESION:
        return 0.0
    z = float(ndtri((q - P_NO_LESION) / (1.0 - P_NO_LESION)))
    return float(np.clip(math.exp(VOLUME_LOG_MEAN + VOLUME_LOG_SD * z) if math.isfinite(z) else 0.0,
                         *VOLUME_RANGE_ML))


def stratified_quantiles(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` quantiles, one uniform in each of n equal bins of [0, 1), in random order."""
    return (rng.permutation(n) + rng.random(n)) / max(n, 1)


@dataclass
class Lesion:
    territory: str
    centre_mm: np.ndarray  # MNI
    radii_mm: np.ndarray  # core ellipsoid semi-axes
    rotation: np.ndarray  # 3 x 3
    penumbra_ratio: float
    waves: np.ndarray  # (K, 3) rad/mm
    phases: np.ndarray  # (K,)
    amplitudes: np.ndarray  # (K,) perturbation of the normalised radius

    @property
    def nominal_volume_ml(self) -> float:
        return float(4.0 / 3.0 * math.pi * np.prod(self.radii_mm) / 1000.0)

    def normalised_distance(self, mni: np.ndarray) -> np.ndarray:
        """1 on the (perturbed) core surface, < 1 inside; ``mni`` is (3, ...) in mm."""
        offset = mni - self.centre_mm.astype(np.float32).reshape(3, *([1] * (mni.ndim - 1)))
        local = np.einsum("ij,j...->i...", (self.rotation.T / self.radii_mm[:, None]).astype(np.float32), offset)
        distance = np.sqrt(np.einsum("i...,i...->...", local, local))
        for wave, phase, amplitude in zip(self.waves, self.phases, self.amplitudes):
            distance += np.float32(amplitude) * np.cos(np.einsum("i,i...->...", wave.astype(np.float32), offset)
                                                       + np.float32(phase))
        return distance


def sample_lesion(rng: np.random.Generator, volume_ml: float, territory: str | None = None,
                  hemisphere: int | None = None) -> Lesion:
    """A lesion of about ``volume_ml`` (before restriction to tissue) in a random territory."""
    names = list(TERRITORIES)
    if territory is None:
        territory = names[rng.choice(len(names), p=[TERRITORIES[n][2] for n in names])]
    centre, jitter, _ = TERRITORIES[territory]
    hemisphere = hemisphere if hemisphere is not None else (1 if rng.random() < 0.5 else -1)
    centre_mm = np.array(centre) + rng.normal(0.0, jitter)
    centre_mm[0] = -abs(centre_mm[0]) * hemisphere  # hemisphere -1: left (x < 0), +1: right
    elongation = rng.uniform(0.6, 1.5, size=3)
    radius = (3.0 * volume_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    radii = radius * elongation / np.prod(elongation) ** (1.0 / 3.0)
    n_waves = 4
    directions = rng.normal(size=(n_waves, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavelengths = rng.uniform(0.8, 2.0, size=(n_waves, 1)) * radius
    return Lesion(territory=territory, centre_mm=centre_mm, radii_mm=radii,
                  rotation=rotation_matrix(rng.uniform(-40, 40, size=3)),
                  penumbra_ratio=float(rng.uniform(1.6, 2.6)),
                  waves=2 * np.pi * directions / wavelengths, phases=rng.uniform(0, 2 * np.pi, size=n_waves),
                  amplitudes=rng.uniform(0.04, 0.1, size=n_waves))


def sample_lesions(rng: np.random.Generator, volume_ml: float | None = None,
                   territory: str | None = None, quantile: float | None = None) -> list[Lesion]:
    """The patient's lesions: none with probability ``P_NO_LESION``, else one, sometimes with a
    smaller satellite in the same hemisphere (embolic showers). ``volume_ml`` fixes the main
    lesion's volume (0: no lesion), else it is the law's value at ``quantile`` (None: a random
    one); ``territory`` fixes its territory (a key of TERRITORIES)."""
    if territory is not None and territory not in TERRITORIES:
        raise ValueError(f"unknown territory {territory!r}; choose from {', '.join(TERRITORIES)}")
    if volume_ml is None:
        volume_ml = volume_at_quantile(float(rng.random()) if quantile is None else float(quantile))
    if volume_ml <= 0:
        return []
    hemisphere = 1 if rng.random() < 0.5 else -1
    lesions = [sample_lesion(rng, volume_ml, territory, hemisphere=hemisphere)]
    if rng.random() < 0.25:
        lesions.append(sample_lesion(rng, float(rng.uniform(0.2, 0.5)) * volume_ml, hemisphere=hemisphere))
    return lesions


def lesion_fields(lesions: list[Lesion], mni: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Core fraction and penumbra severity, both (X, Y, Z) float32 in [0, 1].

    ``core`` has a ~1 mm soft edge; ``penumbra`` is 1 at the core border, falling linearly to 0
    at ``penumbra_ratio`` times the core's normalised radius, and 0 inside the core.
    """
    core = np.zeros(mni.shape[1:], dtype=np.float32)
    penumbra = np.zeros(mni.shape[1:], dtype=np.float32)
    for lesion in lesions:
        distance = lesion.normalised_distance(mni)
        edge_mm = float(np.mean(lesion.radii_mm))
        core = np.maximum(core, 1.0 / (1.0 + np.exp(np.clip((distance - 1.0) * edge_mm, -30, 30))))
        ramp = (lesion.penumbra_ratio - distance) / (lesion.penumbra_ratio - 1.0)
        penumbra = np.maximum(penumbra, np.clip(ramp, 0.0, 1.0))
    penumbra = penumbra * (1.0 - core)
    return core.astype(np.float32), penumbra.astype(np.float32)
