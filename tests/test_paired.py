"""Paired statistics: bootstrap intervals and Wilcoxon p-values on cases with known answers."""
import math

import numpy as np
import pytest

from ldm.evaluation.paired import (
    bootstrap_ci,
    cluster_bootstrap_ci,
    paired_statistics,
    run_pairs,
    wilcoxon_p,
)


def test_bootstrap_of_a_constant_difference_is_that_constant():
    lo, hi = bootstrap_ci([0.25] * 12)
    assert lo == pytest.approx(0.25) and hi == pytest.approx(0.25)


def test_bootstrap_interval_matches_the_normal_theory_interval_for_a_large_sample():
    rng = np.random.default_rng(3)
    d = rng.normal(1.0, 2.0, size=2000)
    lo, hi = bootstrap_ci(d, n_boot=4000, seed=1)
    half = 1.959964 * d.std(ddof=1) / math.sqrt(d.size)  # mean +- z * s / sqrt(n)
    assert lo == pytest.approx(d.mean() - half, abs=0.15 * half)
    assert hi == pytest.approx(d.mean() + half, abs=0.15 * half)
    # 95% of the mass: a 50% interval is inside it
    lo50, hi50 = bootstrap_ci(d, n_boot=4000, confidence=0.5, seed=1)
    assert lo < lo50 < hi50 < hi


def test_cluster_bootstrap_with_one_value_per_cluster_is_the_plain_bootstrap():
    d = np.random.default_rng(0).normal(size=30)
    assert cluster_bootstrap_ci(d, np.arange(30), seed=5) == bootstrap_ci(d, seed=5)


def test_cluster_bootstrap_is_wider_than_the_slice_bootstrap_when_slices_of_a_patient_agree():
    """10 patients, 20 slices each sharing their patient's difference: only 10 independent values."""
    rng = np.random.default_rng(2)
    per_patient = rng.normal(0.0, 1.0, size=10)
    d = np.repeat(per_patient, 20)
    clusters = np.repeat(np.arange(10), 20)
    naive = bootstrap_ci(d, seed=0)
    cluster = cluster_bootstrap_ci(d, clusters, seed=0)
    assert (cluster[1] - cluster[0]) > 3 * (naive[1] - naive[0])
    # and it is the patient-level bootstrap exactly (equal cluster sizes)
    assert cluster == pytest.approx(bootstrap_ci(per_patient, seed=0))


def test_wilcoxon_exact_p_values():
    # n = 10, all positive and distinct: W- = 0, the most extreme of 2^10 sign patterns on each side
    assert wilcoxon_p(np.arange(1, 11) / 10) == pytest.approx(2 / 2 ** 10)
    # n = 4: the smallest two-sided p there is
    assert wilcoxon_p([0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.125)
    # one negative of rank 1 among 5: P(W- <= 1) = 2 / 32 per side
    assert wilcoxon_p([-0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(4 / 32)
    assert wilcoxon_p([0.0, 0.0]) == 1.0 and wilcoxon_p([]) is None


def _records(values):
    return [{"run": run, "modality": m, "patient_id": pid, "mae": v, "lesion_mae": v, "psnr": -v,
             "ms_ssim_mean": 1 - v} for (run, pid), v in values.items() for m in ("dwi", "adc")]


def test_paired_statistics_take_b_minus_a_on_common_patients_and_count_who_is_better():
    values = {("A", "P1"): 0.3, ("A", "P2"): 0.2, ("A", "P3"): 0.4, ("A", "P4"): 0.5,
              ("B", "P1"): 0.1, ("B", "P2"): 0.1, ("B", "P3"): 0.5}  # B lacks P4
    slices = [{"run": run, "modality": "dwi", "patient_id": pid, "sample": 0, "slice_index": z,
               "lesion_mae": v + 0.01 * z} for (run, pid), v in values.items() for z in range(3)]
    results = paired_statistics(_records(values), slices, [("A", "B")], n_boot=2000)
    mae = next(r for r in results if r.metric == "mae" and r.modality == "dwi" and r.unit == "patient")
    assert mae.n == 3 and mae.n_patients == 3
    assert mae.difference == pytest.approx(np.mean([0.1 - 0.3, 0.1 - 0.2, 0.5 - 0.4]))
    assert mae.n_b_better == 2 and mae.lower_is_better
    assert mae.ci_low <= mae.difference <= mae.ci_high
    psnr = next(r for r in results if r.metric == "psnr" and r.modality == "dwi")
    assert psnr.n_b_better == 2 and not psnr.lower_is_better  # psnr = -mae here: the same two patients win
    per_slice = next(r for r in results if r.unit == "lesion slice" and r.modality == "dwi")
    assert per_slice.n == 9 and per_slice.n_patients == 3
    assert not any(r.unit == "lesion slice" and r.modality == "adc" for r in results)


def test_run_pairs_default_and_checks():
    assert run_pairs(["a", "b", "c"]) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert run_pairs(["a", "b"], [("b", "a")]) == [("b", "a")]
    with pytest.raises(ValueError, match="no run named 'x'"):
        run_pairs(["a", "b"], [("a", "x")])
    with pytest.raises(ValueError, match="with itself"):
        run_pairs(["a", "b"], [("a", "a")])
