"""Aggregating per-slice scores: per patient, and over all slices of a run (Table 1's numbers).

A "slice" here is one scored image: a (sample, axial slice) pair, so with several samples per
patient every sample counts. Per-patient values are means over that patient's slices; the run's
values are means over *all* its slices pooled across patients (so a patient with more scored
slices weighs more), as a slice-wise evaluation like the paper's does. Every variant of a metric
is kept (``mae_brain_mean``, ``mae_slice_mean``, ``lesion_mae_pooled``, ...); the headline columns
``mae``, ``psnr`` and ``lesion_mae`` are the variants that :class:`MetricChoices` selects. A lesion
MAE without any lesion voxel is None, never NaN.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from ldm.evaluation.choices import MetricChoices
from ldm.evaluation.evaluator import Evaluation
from ldm.evaluation.volumes import MODALITIES

SLICE_METRICS = ("mae_brain", "mae_slice", "psnr_brain", "psnr_slice", "ms_ssim")


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def _group(rows: Iterable[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(row)
    return groups


def summarise(rows: list[dict], choices: MetricChoices) -> dict:
    """Means (and standard deviations over slices) of every metric variant of ``rows``, the pooled
    lesion MAE, the failed-slice share and the headline columns ``mae``/``psnr``/``lesion_mae``."""
    out: dict = {"n_slices": len(rows)}
    for metric in SLICE_METRICS:
        out[f"{metric}_mean"], out[f"{metric}_std"] = _mean_std([r[metric] for r in rows if r[metric] is not None])
    lesion = [r["lesion_mae"] for r in rows if r["lesion_mae"] is not None]
    out["lesion_mae_slice_mean"], out["lesion_mae_slice_std"] = _mean_std(lesion)
    out["n_lesion_slices"] = len(lesion)
    voxels = sum(r["lesion_voxels"] for r in rows)
    out["n_lesion_voxels"] = voxels
    out["lesion_mae_pooled"] = sum(r["lesion_abs_error"] for r in rows) / voxels if voxels else None
    ratios = [r["intensity_ratio"] for r in rows if r["intensity_ratio"] is not None]
    out["n_failed"] = sum(1 for v in ratios if v < choices.failed_ratio)
    out["failed_share"] = out["n_failed"] / len(ratios) if ratios else None
    out["mae"] = out[f"{choices.mae_key}_mean"]
    out["psnr"] = out[f"{choices.psnr_key}_mean"]
    out["lesion_mae"] = out[choices.lesion_key]
    return out


def per_patient(rows: list[dict], choices: MetricChoices | None = None) -> list[dict]:
    """One record per (run, patient, modality): means over the patient's slices and samples."""
    choices = choices or MetricChoices()
    records = []
    for (run, pid, modality), group in _group(rows, ("run", "patient_id", "modality")).items():
        records.append({"run": run, "patient_id": pid, "modality": modality,
                        "n_samples": len({r["sample"] for r in group}), **summarise(group, choices)})
    return records


def per_run(evaluation: Evaluation) -> list[dict]:
    """One record per (run, modality) over all slices, with the run's FID."""
    records = []
    for report in evaluation.runs:
        for modality in MODALITIES:
            group = [r for r in report.rows if r["modality"] == modality]
            records.append({"run": report.name, "modality": modality, "n_patients": len(report.patients),
                            **summarise(group, evaluation.choices), "fid": report.fid.get(modality)})
    return records
