"""Paired comparisons of two runs on the same patients: the difference, its 95% bootstrap
confidence interval and a Wilcoxon signed-rank p-value.

Two units of analysis:
- **patient**: each patient's mean (per-patient pooled lesion MAE, or as MetricChoices says) in run
  B minus run A; the bootstrap resamples patients, Wilcoxon treats patients as independent. This
  is the read-out that matches how the test set was drawn (patients, not slices).
- **lesion slice**: each lesion-bearing (sample, slice)'s lesion MAE in B minus A. Slices of one
  patient are correlated, so the interval is a *cluster* bootstrap that resamples whole patients
  with their slices; the Wilcoxon p-value over slices assumes independence and is optimistic.

The bootstrap is the percentile interval of the mean difference over ``n_boot`` resamples from a
fixed seed (reproducible). Differences are B - A: negative is better for MAE, positive for PSNR
and MS-SSIM.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from ldm.evaluation.volumes import MODALITIES

# (headline column of per-patient records, label, lower is better)
PAIRED_METRICS = (("mae", "MAE", True), ("lesion_mae", "Lesion MAE", True), ("psnr", "PSNR", False),
                  ("ms_ssim_mean", "MS-SSIM", False))
N_BOOT = 10_000
CONFIDENCE = 0.95


def bootstrap_ci(differences: Sequence[float], n_boot: int = N_BOOT, confidence: float = CONFIDENCE,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``differences`` (resampling them with replacement)."""
    d = np.asarray(differences, dtype=np.float64)
    if d.size == 0:
        raise ValueError("bootstrap of no values")
    return cluster_bootstrap_ci(d, np.arange(d.size), n_boot, confidence, seed)


def cluster_bootstrap_ci(differences: Sequence[float], clusters: Sequence, n_boot: int = N_BOOT,
                         confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of ``differences`` when whole clusters are resampled.

    Each replicate draws as many clusters as there are, with replacement, and takes the mean over
    all values of the drawn clusters (a cluster drawn twice counts twice). With one value per
    cluster this is the ordinary bootstrap of the mean.
    """
    d = np.asarray(differences, dtype=np.float64)
    labels = np.asarray(clusters)
    if d.size == 0 or d.shape != labels.shape:
        raise ValueError(f"cluster bootstrap needs one cluster label per value, got {d.shape} and {labels.shape}")
    _, inverse = np.unique(labels, return_inverse=True)
    sums = np.bincount(inverse, weights=d)
    counts = np.bincount(inverse).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, sums.size, size=(int(n_boot), sums.size))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def wilcoxon_p(differences: Sequence[float]) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value (scipy; exact for small samples without ties).

    1.0 when every difference is 0 (nothing to rank); None without any value.
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.size == 0:
        return None
    if not np.any(d != 0):
        return 1.0
    return float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


@dataclass
class PairedResult:
    run_a: str
    run_b: str
    modality: str
    metric: str
    unit: str  # "patient" or "lesion slice"
    n: int
    n_patients: int
    mean_a: float
    mean_b: float
    difference: float  # mean of B - A
    ci_low: float
    ci_high: float
    p_value: float | None
    n_b_better: int
    lower_is_better: bool

    def to_record(self) -> dict:
        return asdict(self)


def _result(run_a: str, run_b: str, modality: str, metric: str, unit: str, a: np.ndarray, b: np.ndarray,
            clusters: np.ndarray, lower: bool, n_boot: int, seed: int) -> PairedResult:
    d = b - a
    lo, hi = cluster_bootstrap_ci(d, clusters, n_boot=n_boot, seed=seed)
    better = int(np.sum(d < 0) if lower else np.sum(d > 0))
    return PairedResult(run_a, run_b, modality, metric, unit, int(d.size), int(np.unique(clusters).size),
                        float(a.mean()), float(b.mean()), float(d.mean()), lo, hi, wilcoxon_p(d), better, lower)


def run_pairs(runs: Sequence[str], pairs: Sequence[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """The pairs to compare: ``pairs`` as given (checked), or every pair (earlier, later) of ``runs``."""
    if pairs is None:
        return list(itertools.combinations(runs, 2))
    for a, b in pairs:
        for name in (a, b):
            if name not in runs:
                raise ValueError(f"paired comparison {a}:{b}: no run named {name!r} (runs: {', '.join(runs)})")
        if a == b:
            raise ValueError(f"paired comparison {a}:{b} compares a run with itself")
    return list(pairs)


def paired_statistics(patient_records: Sequence[dict], slice_rows: Sequence[dict],
                      pairs: Sequence[tuple[str, str]], n_boot: int = N_BOOT, seed: int = 0) -> list[PairedResult]:
    """Per-patient differences of every headline metric and per-lesion-slice differences of the
    lesion MAE, for each (A, B) in ``pairs`` and each modality (see the module docstring)."""
    by_patient = {(r["run"], r["modality"], r["patient_id"]): r for r in patient_records}
    by_slice = {(r["run"], r["modality"], r["patient_id"], r["sample"], r["slice_index"]): r["lesion_mae"]
                for r in slice_rows if r["lesion_mae"] is not None}
    results = []
    for a, b in pairs:
        for modality in MODALITIES:
            patients = sorted({pid for run, m, pid in by_patient if run == a and m == modality}
                              & {pid for run, m, pid in by_patient if run == b and m == modality})
            for metric, _, lower in PAIRED_METRICS:
                keep = [p for p in patients if by_patient[(a, modality, p)][metric] is not None
                        and by_patient[(b, modality, p)][metric] is not None]
                if not keep:
                    continue
                va = np.array([by_patient[(a, modality, p)][metric] for p in keep], dtype=np.float64)
                vb = np.array([by_patient[(b, modality, p)][metric] for p in keep], dtype=np.float64)
                results.append(_result(a, b, modality, metric, "patient", va, vb, np.array(keep), lower, n_boot,
                                       seed))
            keys = sorted(k[2:] for k in by_slice if k[0] == a and k[1] == modality
                          and (b, modality, *k[2:]) in by_slice)
            if keys:
                va = np.array([by_slice[(a, modality, *k)] for k in keys], dtype=np.float64)
                vb = np.array([by_slice[(b, modality, *k)] for k in keys], dtype=np.float64)
                results.append(_result(a, b, modality, "lesion_mae", "lesion slice", va, vb,
                                       np.array([k[0] for k in keys]), True, n_boot, seed))
    return results
