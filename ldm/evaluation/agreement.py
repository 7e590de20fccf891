"""Agreement of two measurements of the same quantity (here: core volume from synthesised vs true ADC).

- Bland-Altman: mean difference and 95% limits of agreement, mean +- 1.96 SD of the differences
  (SD with n - 1), Bland & Altman, Lancet 1986;1(8476):307-310.
- Pearson and Spearman correlation (scipy.stats).
- ICC(2,1): two-way random effects, absolute agreement, single measurement, Shrout & Fleiss,
  Psychol Bull 1979;86:420-428.
- Cohen's kappa of a binary decision and its 2 x 2 table, Cohen, Educ Psychol Meas 1960;20:37-46.

Undefined statistics are None, never NaN: limits of agreement with fewer than 2 patients,
correlations with fewer than 3 (two points always correlate perfectly) or a constant input, ICC
when every value is the same, kappa when chance agreement is 1 (both methods put every patient
in the same class: the 2 x 2 table and the percent agreement still say how they agree).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

LOA_Z = 1.96  # Bland & Altman's 95% limits: mean difference +- 1.96 SD


def bland_altman(a: Sequence[float], b: Sequence[float]) -> dict:
    """Differences ``a - b``: mean, SD (n - 1), and the 95% limits of agreement."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    out = {"n": int(diff.size), "mean_diff": float(diff.mean()) if diff.size else None,
           "sd_diff": None, "loa_lower": None, "loa_upper": None}
    if diff.size >= 2:
        sd = float(diff.std(ddof=1))
        out.update(sd_diff=sd, loa_lower=out["mean_diff"] - LOA_Z * sd, loa_upper=out["mean_diff"] + LOA_Z * sd)
    return out


def correlations(a: Sequence[float], b: Sequence[float]) -> dict:
    """Pearson r and Spearman rho with their two-sided p-values (None where undefined)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out = {"pearson_r": None, "pearson_p": None, "spearman_rho": None, "spearman_p": None}
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    pearson = stats.pearsonr(x, y)
    spearman = stats.spearmanr(x, y)
    out.update(pearson_r=float(pearson.statistic), pearson_p=float(pearson.pvalue),
               spearman_rho=float(spearman.statistic), spearman_p=float(spearman.pvalue))
    return out


def anova_mean_squares(ratings: np.ndarray) -> dict:
    """Two-way ANOVA of an (n targets x k raters) table: BMS, JMS, EMS (and WMS), Shrout & Fleiss' Table 1."""
    x = np.asarray(ratings, dtype=np.float64)
    n, k = x.shape
    grand = x.mean()
    ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_total = ((x - grand) ** 2).sum()
    ss_error = ss_total - ss_rows - ss_cols
    return {"BMS": float(ss_rows / (n - 1)), "JMS": float(ss_cols / (k - 1)),
            "EMS": float(ss_error / ((n - 1) * (k - 1))), "WMS": float((ss_total - ss_rows) / (n * (k - 1)))}


def icc_2_1(ratings: np.ndarray) -> float | None:
    """ICC(2,1) of an (n targets x k raters) table (Shrout & Fleiss 1979):

    (BMS - EMS) / (BMS + (k - 1) EMS + k (JMS - EMS) / n). None with fewer than 2 targets or
    raters, or when it is 0 / 0 (every value the same).
    """
    x = np.asarray(ratings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        return None
    if np.ptp(x) == 0:  # every value the same: no variance to apportion (checked exactly, not
        return None     # through the mean squares, which float rounding leaves at ~1e-34)
    n, k = x.shape
    ms = anova_mean_squares(x)
    denominator = ms["BMS"] + (k - 1) * ms["EMS"] + k * (ms["JMS"] - ms["EMS"]) / n
    if denominator <= 0:  # n = k = 2 with equal row and column means, e.g. [[0, 1], [1, 0]]
        return None
    return float((ms["BMS"] - ms["EMS"]) / denominator)


def decision_table(reference: Sequence[bool], test: Sequence[bool]) -> dict:
    """2 x 2 counts of a binary decision: ``both``, ``reference_only``, ``test_only``, ``neither``."""
    r, t = np.asarray(reference, dtype=bool), np.asarray(test, dtype=bool)
    return {"both": int((r & t).sum()), "reference_only": int((r & ~t).sum()),
            "test_only": int((~r & t).sum()), "neither": int((~r & ~t).sum())}


def cohen_kappa(table: dict) -> dict:
    """Percent agreement p_o, chance agreement p_e and kappa = (p_o - p_e) / (1 - p_e) of a
    :func:`decision_table` (kappa None when p_e is 1, percent agreement None without patients)."""
    n = sum(table.values())
    if n == 0:
        return {"percent_agreement": None, "chance_agreement": None, "kappa": None}
    p_o = (table["both"] + table["neither"]) / n
    ref_yes = (table["both"] + table["reference_only"]) / n
    test_yes = (table["both"] + table["test_only"]) / n
    p_e = ref_yes * test_yes + (1 - ref_yes) * (1 - test_yes)
    kappa = None if p_e >= 1 - 1e-12 else (p_o - p_e) / (1 - p_e)
    return {"percent_agreement": 100.0 * p_o, "chance_agreement": p_e, "kappa": kappa}
