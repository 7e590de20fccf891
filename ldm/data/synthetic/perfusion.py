"""Synthetic CT perfusion: a contrast bolus (gamma variates, in HU) through tissue and vessels.

Each compartment c (artery, vein, grey matter, white matter, CSF) enhances as

    C_c(t) = A_c * g((t - t0_c) / beta_c),   g(s) = (s / alpha)^alpha * exp(alpha - s),  s > 0

(a gamma variate with peak A_c at t0_c + alpha * beta_c) over its unenhanced density, and a voxel
mixes its compartments by volume fraction. Arrival, peak and width depend on the tissue: arteries
first and highest, then grey matter, white matter (lower, later, wider), veins a few seconds after
the arteries. In the infarct core the tissue enhancement falls to 10-25 % and arrives 4-6 s late
with a wider bolus; in the penumbra it is moderately reduced (by 25-45 % at the core border) and
delayed by 2-4 s: hypoperfused but not infarcted, so peak height alone does not tell core from
penumbra. Per patient: injection delay, contrast dose, density offset and noise level vary
(noise sd 3-7 HU for a 1 x 1 x 5 mm voxel, less for the coarser demo voxels).
Outside the brain mask the CTP is 0 (the paper's CTP is skull-stripped and registered to DWI).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GAMMA_ALPHA = 3.0
ACQUISITION_SECONDS = 42.0  # time points span 0..42 s whatever their number


def gamma_variate(t: np.ndarray, t0: np.ndarray | float, beta: np.ndarray | float,
                  alpha: float = GAMMA_ALPHA) -> np.ndarray:
    """Gamma variate normalised to a peak of 1 at ``t0 + alpha * beta`` (0 before ``t0``)."""
    s = np.maximum((np.asarray(t) - t0) / beta, 0.0)
    return np.where(s > 0, (s / alpha) ** alpha * np.exp(alpha - s), 0.0)


def acquisition_times(n_timepoints: int) -> np.ndarray:
    return np.linspace(0.0, ACQUISITION_SECONDS, n_timepoints, dtype=np.float64)


@dataclass(frozen=True)
class Compartment:
    baseline_hu: float
    peak_hu: float
    delay_s: float  # after arterial arrival
    beta_s: float


COMPARTMENTS = {
    "artery": Compartment(40.0, 380.0, 0.0, 1.5),
    "vein": Compartment(40.0, 300.0, 3.5, 2.0),
    "gm": Compartment(38.0, 30.0, 1.0, 2.3),
    "wm": Compartment(29.0, 13.0, 1.8, 2.8),
    "csf": Compartment(7.0, 1.5, 2.0, 3.0),
}


@dataclass
class BolusPatient:
    """Per-patient acquisition and physiology."""

    arrival_s: float
    dose: float
    offset_hu: float
    noise_hu: float
    core_residual: float  # fraction of normal enhancement left in the core
    core_delay_s: float
    penumbra_loss: float  # fraction of enhancement lost at the core border
    penumbra_delay_s: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "BolusPatient":
        return cls(arrival_s=float(rng.uniform(5.0, 11.0)), dose=float(rng.uniform(0.75, 1.25)),
                   offset_hu=float(rng.normal(0.0, 2.0)), noise_hu=float(rng.uniform(3.0, 7.0)),
                   core_residual=float(rng.uniform(0.1, 0.25)), core_delay_s=float(rng.uniform(4.0, 6.0)),
                   penumbra_loss=float(rng.uniform(0.25, 0.45)), penumbra_delay_s=float(rng.uniform(2.0, 4.0)))


def synthesize_ctp(rng: np.random.Generator, fractions: dict[str, np.ndarray], core: np.ndarray,
                   penumbra: np.ndarray, brain: np.ndarray, n_timepoints: int, noise_scale: float = 1.0,
                   bolus: BolusPatient | None = None) -> np.ndarray:
    """CTP (X, Y, Z, T) int16 in HU from compartment ``fractions`` (keys of COMPARTMENTS).

    ``noise_scale`` multiplies the noise of a 1 x 1 x 5 mm voxel (coarser voxels average it down).
    """
    bolus = bolus or BolusPatient.sample(rng)
    times = acquisition_times(n_timepoints)
    shape = brain.shape
    ctp = np.zeros((n_timepoints, *shape), dtype=np.float32)
    baseline = np.full(shape, bolus.offset_hu, dtype=np.float32)
    for name, compartment in COMPARTMENTS.items():
        fraction = fractions[name]
        baseline += compartment.baseline_hu * fraction
        curve = bolus.dose * compartment.peak_hu * gamma_variate(
            times, bolus.arrival_s + compartment.delay_s, compartment.beta_s)
        ctp += curve.astype(np.float32)[:, None, None, None] * fraction
    baseline -= 3.0 * core  # early ischaemic hypodensity

    # Ischaemic tissue: replace the healthy grey/white enhancement by a reduced, delayed one.
    ischaemic = np.flatnonzero(((core > 0.01) | (penumbra > 0.01)) & brain)
    if ischaemic.size:
        c, p = core.ravel()[ischaemic, None], penumbra.ravel()[ischaemic, None]
        scale = (1.0 - (1.0 - bolus.core_residual) * c) * (1.0 - bolus.penumbra_loss * p)
        delay = bolus.core_delay_s * c + bolus.penumbra_delay_s * p
        widen = 1.0 + 0.7 * c + 0.5 * p
        flat = ctp.reshape(n_timepoints, -1)
        for name in ("gm", "wm"):
            compartment = COMPARTMENTS[name]
            fraction = fractions[name].ravel()[ischaemic, None]
            healthy = gamma_variate(times[None], bolus.arrival_s + compartment.delay_s, compartment.beta_s)
            sick = scale * gamma_variate(times[None], bolus.arrival_s + compartment.delay_s + delay,
                                         compartment.beta_s * widen)
            flat[:, ischaemic] += (bolus.dose * compartment.peak_hu * fraction * (sick - healthy)).T.astype(np.float32)

    ctp += baseline
    ctp += rng.standard_normal(ctp.shape, dtype=np.float32) * np.float32(bolus.noise_hu * noise_scale)
    ctp *= brain
    return np.moveaxis(np.rint(ctp).astype(np.int16), 0, -1)
