"""ldm/experiments/statistics.py on constructed data with a known answer: the MDE against a hand
computation, a known effect found, a null effect not, and a patient's seeds resampled together."""
import math

import numpy as np
import pytest

from ldm.evaluation.paired import bootstrap_ci, cluster_bootstrap_ci
from ldm.experiments import statistics as st


def _cohort(rng, n_patients, n_seeds, effect, patient_sd=0.05, seed_sd=0.01, diff_sd=0.01):
    """Lesion MAE of a control and of a model `effect` away, per (patient, seed): a patient's level
    is shared by its seeds and both models, its difference has a patient part and a seed part."""
    patients, seeds, a, b = [], [], [], []
    level = 0.2 + patient_sd * rng.standard_normal(n_patients)
    shift = diff_sd * rng.standard_normal(n_patients)
    for p in range(n_patients):
        for s in range(n_seeds):
            control = level[p] + seed_sd * rng.standard_normal()
            patients.append(f"P{p:03d}")
            seeds.append(s)
            a.append(control)
            b.append(control + effect + shift[p] + seed_sd * rng.standard_normal())
    return patients, seeds, np.array(a), np.array(b)


def test_mde_matches_a_hand_computation():
    # z_0.975 = 1.959964, z_0.8 = 0.841621 (normal table)
    assert st.power_factor() == pytest.approx(1.959964 + 0.841621, abs=1e-6)
    assert st.minimum_detectable_effect(0.02, 16) == pytest.approx(2.801585 * 0.02 / 4, rel=1e-6)
    assert st.minimum_detectable_effect(0.02, 16, alpha=0.01, power=0.9) == pytest.approx(
        (2.575829 + 1.281552) * 0.02 / 4, rel=1e-6)
    # planning: SD 14% of the control, effect 10% of it -> (2.8016 * 1.4)^2 = 15.38 -> 16 patients
    assert st.patients_needed(0.14, 0.10) == 16
    assert st.minimum_detectable_effect(0.14, 16) <= 0.10 < st.minimum_detectable_effect(0.14, 15)
    assert st.patients_needed(1.0, st.minimum_detectable_effect(1.0, 9)) == 9  # the two invert each other
    for bad in ((-0.1, 5), (0.1, 0)):
        with pytest.raises(ValueError):
            st.minimum_detectable_effect(*bad)


def test_the_reported_mde_uses_the_sd_of_per_patient_mean_differences():
    patients = ["A", "A", "B", "B", "C", "C"]
    seeds = [0, 1, 0, 1, 0, 1]
    a = np.zeros(6)
    b = np.array([0.1, 0.3, 0.0, 0.0, -0.2, -0.4])  # patient means 0.2, 0.0, -0.3
    r = st.pooled_difference(patients, seeds, a, b, n_boot=200)
    sd = np.std([0.2, 0.0, -0.3], ddof=1)
    assert r.sd_patient_difference == pytest.approx(sd)
    assert r.mde == pytest.approx(2.801585 * sd / math.sqrt(3), rel=1e-6)
    assert r.difference == pytest.approx(-0.1 / 3)
    assert r.per_seed == pytest.approx({0: -0.1 / 3, 1: -0.1 / 3})
    assert (r.n_patients, r.n_seeds, r.n_pairs, r.n_patients_b_better) == (3, 2, 6, 1)


def test_a_known_effect_is_found_and_its_size_covered():
    rng = np.random.default_rng(1)
    r = st.pooled_difference(*_cohort(rng, 18, 3, effect=-0.02), n_boot=4000)
    assert r.ci_high < 0 and r.ci_low < -0.02 < r.ci_high
    assert r.difference == pytest.approx(-0.02, abs=0.006)
    assert r.mde < 0.02  # designed to detect it
    assert r.n_patients == 18 and r.n_seeds == 3 and r.n_patients_b_better >= 15


def test_a_null_effect_is_not_found_in_most_draws():
    rng = np.random.default_rng(2)
    covered = []
    for k in range(60):
        r = st.pooled_difference(*_cohort(rng, 18, 3, effect=0.0), n_boot=1000, seed=k)
        covered.append(r.ci_low <= 0 <= r.ci_high)
    # a 95% interval: the percentile bootstrap with 18 clusters runs slightly short of nominal
    assert 0.85 <= np.mean(covered) < 1.0


def test_power_the_mde_promises_is_the_power_observed():
    """At a true effect equal to the MDE, about 80% of studies find it (the normal approximation's
    promise; a little under with 18 patients, where t would be exact)."""
    rng = np.random.default_rng(3)
    diff_sd = 0.01
    mde = st.minimum_detectable_effect(diff_sd, 18)
    found = 0
    for k in range(60):
        # one seed, no seed noise: the per-patient differences have SD diff_sd exactly as planned
        r = st.pooled_difference(*_cohort(rng, 18, 1, effect=-mde, seed_sd=0.0, diff_sd=diff_sd), n_boot=1000, seed=k)
        found += r.ci_high < 0
    assert 0.6 <= found / 60 <= 0.95


def test_the_cluster_bootstrap_keeps_a_patients_seeds_together():
    rng = np.random.default_rng(4)
    n, seeds = 12, 3
    per_patient = rng.normal(-0.01, 0.02, n)
    # each patient's seeds agree exactly: the pooled data are the patient means, each three times
    d = np.repeat(per_patient, seeds)
    patients = np.repeat([f"P{i:02d}" for i in range(n)], seeds)  # sorted as numbered
    clustered = cluster_bootstrap_ci(d, patients, n_boot=3000, seed=7)
    assert clustered == pytest.approx(bootstrap_ci(per_patient, n_boot=3000, seed=7))
    r = st.pooled_difference(list(patients), [s for _ in range(n) for s in range(seeds)], np.zeros(n * seeds), d,
                             n_boot=3000, seed=7)
    assert (r.ci_low, r.ci_high) == pytest.approx(clustered)
    # treating the 36 (patient, seed) values as independent would claim sqrt(3) more precision
    naive = bootstrap_ci(d, n_boot=3000, seed=7)
    assert (clustered[1] - clustered[0]) / (naive[1] - naive[0]) == pytest.approx(math.sqrt(3), rel=0.2)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="twice"):
        st.pooled_difference(["A", "A"], [0, 0], [0.1, 0.2], [0.1, 0.2])
    with pytest.raises(ValueError, match="one patient"):
        st.pooled_difference(["A"], [0, 1], [0.1], [0.2])
    single = st.pooled_difference(["A"], [0], [0.1], [0.2], n_boot=50)
    assert single.sd_patient_difference is None and single.mde is None
