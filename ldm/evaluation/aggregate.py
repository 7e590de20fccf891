"""Aggregating per-slice scores: per patient, and over all slices of a run (Table 1's numbers).

A "slice" here is one scored image: a (sample, axial slice) pair, so with several samples per
patient every sample counts. Per-patient values are means over that patient's slices; the run's
values are means over *all* its slices pooled across patients (so a patient with more brain slices
weighs more), as a slice-wise evaluation like the paper's does. Lesion MAE is averaged only over
slices that contain lesion; where there is none it is None, never NaN.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from ldm.evaluation.evaluator import Evaluation
from ldm.evaluation.volumes import MODALITIES

IMAGE_METRICS = ("mae", "psnr", "ms_ssim")


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


def _summarise(rows: list[dict]) -> dict:
    out: dict = {"n_slices": len(rows)}
    for metric in IMAGE_METRICS:
        out[f"{metric}_mean"], out[f"{metric}_std"] = _mean_std([r[metric] for r in rows])
    lesion = [r["lesion_mae"] for r in rows if r["lesion_mae"] is not None]
    out["lesion_mae_mean"], out["lesion_mae_std"] = _mean_std(lesion)
    out["n_lesion_slices"] = len(lesion)
    return out


def per_patient(rows: list[dict]) -> list[dict]:
    """One record per (run, patient, modality): means over the patient's slices and samples."""
    records = []
    for (run, pid, modality), group in _group(rows, ("run", "patient_id", "modality")).items():
        summary = _summarise(group)
        records.append({"run": run, "patient_id": pid, "modality": modality,
                        "n_samples": len({r["sample"] for r in group}), **summary})
    return records


def per_run(evaluation: Evaluation) -> list[dict]:
    """One record per (run, modality) over all slices, with the run's FID."""
    records = []
    for report in evaluation.runs:
        for modality in MODALITIES:
            group = [r for r in report.rows if r["modality"] == modality]
            records.append({"run": report.name, "modality": modality, "n_patients": len(report.patients),
                            **_summarise(group), "fid": report.fid.get(modality)})
    return records
