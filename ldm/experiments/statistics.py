"""Statistics of a study over patients and training seeds: pooled paired differences, their
patient-cluster bootstrap interval, and the power of the design.

**Unit: the patient.** Each (patient, seed) gives a paired difference B - A (cLDM-PT minus its
control, on the same patient, from models trained with the same seed). A patient's seeds share its
anatomy and lesion, so they are not independent: the 95% interval resamples patients with
replacement and keeps each patient's seeds together (the percentile cluster bootstrap of
``ldm.evaluation.paired.cluster_bootstrap_ci``, the one evaluate.py uses for lesion slices). The
pooled difference is the mean over all (patient, seed) pairs, which with every seed scored on every
patient is the mean of the per-patient means.

**Power** (normal approximation of the two-sided paired t-test on the per-patient differences, each
patient's mean over its seeds): the minimum detectable effect at significance ``alpha`` and power
``power`` is

    MDE = (z_{1 - alpha/2} + z_{power}) * sd_diff / sqrt(n)

with n patients and sd_diff the SD (n - 1 in the denominator) of the per-patient differences; and
the patients needed for an effect E are ceil(((z_{1 - alpha/2} + z_{power}) * sd_diff / E)^2). At
alpha 0.05 and power 0.8 the factor is 1.960 + 0.842 = 2.802. Averaging a patient's seeds removes
the seed-to-seed part of the variance from sd_diff, so planning with a one-seed SD is conservative.
The t-test's own quantiles would give an MDE about 7% larger at n = 16 (t_{15, 0.975} = 2.131).
"""
from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from ldm.evaluation.paired import CONFIDENCE, N_BOOT, cluster_bootstrap_ci

ALPHA = 0.05
POWER = 0.80


def power_factor(alpha: float = ALPHA, power: float = POWER) -> float:
    """z_{1 - alpha/2} + z_{power} (2.802 at the defaults)."""
    if not (0.0 < alpha < 1.0 and 0.0 < power < 1.0):
        raise ValueError(f"alpha and power must lie in (0, 1), got {alpha} and {power}")
    return float(stats.norm.ppf(1.0 - alpha / 2.0) + stats.norm.ppf(power))


def minimum_detectable_effect(sd_diff: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true mean difference a paired test on ``n`` patients detects with probability
    ``power`` at two-sided level ``alpha`` (see the module docstring)."""
    if n < 1 or sd_diff < 0:
        raise ValueError(f"minimum detectable effect needs n >= 1 and sd >= 0, got n={n}, sd={sd_diff}")
    return power_factor(alpha, power) * sd_diff / math.sqrt(n)


def patients_needed(sd_diff: float, effect: float, alpha: float = ALPHA, power: float = POWER) -> int:
    """Patients for which the minimum detectable effect is at most ``effect``."""
    if effect <= 0 or sd_diff < 0:
        raise ValueError(f"patients needed for effect {effect} with sd {sd_diff}: both must be positive")
    return max(1, math.ceil((power_factor(alpha, power) * sd_diff / effect) ** 2 - 1e-9))


@dataclass
class PooledDifference:
    """B - A pooled over patients x seeds (see the module docstring)."""

    n_patients: int
    n_seeds: int
    n_pairs: int
    mean_a: float
    mean_b: float
    difference: float
    ci_low: float
    ci_high: float
    sd_patient_difference: float | None  # SD of the per-patient means of B - A; None with one patient
    mde: float | None  # minimum detectable effect with these patients and that SD
    per_seed: dict  # seed -> mean of B - A over that seed's patients
    n_patients_b_better: int  # patients whose mean difference favours B
    lower_is_better: bool

    def to_record(self) -> dict:
        return asdict(self)


def means_by(keys: Sequence[Hashable], values: Sequence[float]) -> dict:
    """key -> the mean of its values (a patient's over its seeds, a seed's over its patients), in
    first-seen order."""
    groups: dict = {}
    for key, value in zip(keys, values):
        groups.setdefault(key, []).append(float(value))
    return {k: float(np.mean(v)) for k, v in groups.items()}


def pooled_difference(patients: Sequence[Hashable], seeds: Sequence[Hashable], a: Sequence[float],
                      b: Sequence[float], lower_is_better: bool = True, n_boot: int = N_BOOT,
                      confidence: float = CONFIDENCE, seed: int = 0, alpha: float = ALPHA,
                      power: float = POWER) -> PooledDifference:
    """B - A over paired (patient, seed) values, with the patient-cluster bootstrap interval and the
    minimum detectable effect that the per-patient differences give."""
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not (len(patients) == len(seeds) == va.size == vb.size) or va.size == 0:
        raise ValueError(f"pooled difference needs one patient, seed, A and B per pair, got {len(patients)}, "
                         f"{len(seeds)}, {va.size}, {vb.size}")
    pairs = list(zip(patients, seeds))
    if len(set(pairs)) != len(pairs):
        raise ValueError("pooled difference: a (patient, seed) pair appears twice")
    d = vb - va
    lo, hi = cluster_bootstrap_ci(d, np.asarray([str(p) for p in patients]), n_boot=n_boot, confidence=confidence,
                                  seed=seed)
    by_patient = np.array(list(means_by(patients, d).values()))
    sd = float(np.std(by_patient, ddof=1)) if by_patient.size > 1 else None
    per_seed = means_by(seeds, d)
    better = int(np.sum(by_patient < 0) if lower_is_better else np.sum(by_patient > 0))
    return PooledDifference(
        n_patients=int(by_patient.size), n_seeds=len(per_seed), n_pairs=int(d.size), mean_a=float(va.mean()),
        mean_b=float(vb.mean()), difference=float(d.mean()), ci_low=lo, ci_high=hi, sd_patient_difference=sd,
        mde=None if sd is None else minimum_detectable_effect(sd, by_patient.size, alpha, power), per_seed=per_seed,
        n_patients_b_better=better, lower_is_better=lower_is_better)

