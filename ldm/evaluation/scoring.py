"""Scoring one predicted volume against its ground truth, slice by slice (Table 1 metrics)."""
from __future__ import annotations

import math

import numpy as np

from ldm.evaluation import metrics
from ldm.evaluation.intensity import percentile_window, to_unit_range
from ldm.evaluation.ms_ssim import ScaleSet
from ldm.evaluation.volumes import EvaluationInputError, GroundTruth

METRICS = ("mae", "lesion_mae", "psnr", "ms_ssim")


def axial_stack(volume: np.ndarray, slices: np.ndarray) -> np.ndarray:
    """(X, Y, Z) volume -> (S, X, Y) stack of the chosen axial slices."""
    return np.ascontiguousarray(np.moveaxis(volume[..., slices], -1, 0))


def unit_range_pair(gt: GroundTruth, modality: str, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth and prediction mapped to [0, 1] with the ground truth's window (see intensity.py)."""
    reference = getattr(gt, modality)
    window = percentile_window(reference, gt.mask)
    if not window[1] > window[0]:
        raise EvaluationInputError(f"patient {gt.patient_id}: ground truth {modality}.nii.gz is constant inside the "
                                   f"brain mask (percentile window {window[0]:.4g}..{window[1]:.4g})")
    return to_unit_range(reference, window, gt.mask), to_unit_range(prediction, window, gt.mask)


def score_slices(x: np.ndarray, x_hat: np.ndarray, lesion: np.ndarray, scale_set: ScaleSet | None = None
                 ) -> dict[str, np.ndarray]:
    """Per-slice metrics of (S, H, W) stacks in [0, 1]; ``lesion_mae`` is NaN where a slice has no lesion."""
    _, lesion_voxels = metrics.lesion_abs_error(x, x_hat, lesion)
    return {
        "mae": metrics.mae(x, x_hat),
        "lesion_mae": metrics.lesion_mae(x, x_hat, lesion),
        "lesion_voxels": lesion_voxels,
        "psnr": metrics.psnr(x, x_hat),
        "ms_ssim": metrics.ms_ssim_slices(x, x_hat, scale_set),
    }


def slice_rows(run: str, patient_id: str, sample: int, modality: str, slices: np.ndarray,
               scores: dict[str, np.ndarray]) -> list[dict]:
    """One record per slice; an undefined lesion MAE is None (never NaN) so tables stay clean."""
    rows = []
    for i, z in enumerate(slices):
        lesion_mae = float(scores["lesion_mae"][i])
        rows.append({
            "run": run, "patient_id": patient_id, "sample": int(sample), "modality": modality,
            "slice_index": int(z),
            "mae": float(scores["mae"][i]),
            "lesion_mae": None if math.isnan(lesion_mae) else lesion_mae,
            "lesion_voxels": int(scores["lesion_voxels"][i]),
            "psnr": float(scores["psnr"][i]),
            "ms_ssim": float(scores["ms_ssim"][i]),
        })
    return rows
