"""Scoring one predicted volume against its ground truth, slice by slice (Table 1 metrics)."""
from __future__ import annotations

import math

import numpy as np

from ldm.data.transforms.intensity_window import IntensityWindow
from ldm.evaluation import metrics
from ldm.evaluation.intensity import to_unit_range
from ldm.evaluation.ms_ssim import ScaleSet
from ldm.evaluation.volumes import EvaluationInputError, GroundTruth

# Per-slice columns: MAE and PSNR over the brain and over the whole slice, MS-SSIM, lesion MAE (with
# its numerator and denominator, for pooling), and the brain-mean intensity ratio (failed slices).
METRICS = ("mae_brain", "mae_slice", "psnr_brain", "psnr_slice", "ms_ssim", "lesion_mae")


def axial_stack(volume: np.ndarray, slices: np.ndarray) -> np.ndarray:
    """(X, Y, Z) volume -> (S, X, Y) stack of the chosen axial slices."""
    return np.ascontiguousarray(np.moveaxis(volume[..., slices], -1, 0))


def unit_range_pair(gt: GroundTruth, modality: str, prediction: np.ndarray,
                    window: IntensityWindow | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth and prediction mapped to [0, 1] with the ground truth's range under ``window``
    (the training normalisation, see intensity.py; None: the default window)."""
    reference = getattr(gt, modality)
    lo, hi = IntensityWindow.from_config(window).intensity_range(modality, reference, gt.mask)
    if not hi > lo:
        raise EvaluationInputError(f"patient {gt.patient_id}: ground truth {modality}.nii.gz is constant inside the "
                                   f"brain mask (window {lo:.4g}..{hi:.4g})")
    return to_unit_range(reference, (lo, hi), gt.mask), to_unit_range(prediction, (lo, hi), gt.mask)


def score_slices(x: np.ndarray, x_hat: np.ndarray, lesion: np.ndarray, brain: np.ndarray,
                 scale_set: ScaleSet | None = None) -> dict[str, np.ndarray]:
    """Per-slice metrics of (S, H, W) stacks in [0, 1]; ``lesion_mae`` is NaN where a slice has no lesion."""
    lesion_error, lesion_voxels = metrics.lesion_abs_error(x, x_hat, lesion)
    return {
        "mae_brain": metrics.masked_mae(x, x_hat, brain),
        "mae_slice": metrics.mae(x, x_hat),
        "psnr_brain": metrics.masked_psnr(x, x_hat, brain),
        "psnr_slice": metrics.psnr(x, x_hat),
        "ms_ssim": metrics.ms_ssim_slices(x, x_hat, scale_set),
        "lesion_mae": metrics.lesion_mae(x, x_hat, lesion),
        "lesion_abs_error": lesion_error,
        "lesion_voxels": lesion_voxels,
        "brain_voxels": (np.asarray(brain) > 0).sum(axis=(1, 2)),
        "intensity_ratio": metrics.mean_intensity_ratio(x, x_hat, brain),
    }


def _value(v: float) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def slice_rows(run: str, patient_id: str, sample: int, modality: str, slices: np.ndarray,
               scores: dict[str, np.ndarray]) -> list[dict]:
    """One record per slice; an undefined value (lesion MAE without lesion) is None, never NaN."""
    rows = []
    for i, z in enumerate(slices):
        row = {"run": run, "patient_id": patient_id, "sample": int(sample), "modality": modality,
               "slice_index": int(z)}
        row.update({name: _value(scores[name][i]) for name in METRICS})
        row.update({"lesion_abs_error": float(scores["lesion_abs_error"][i]),
                    "lesion_voxels": int(scores["lesion_voxels"][i]), "brain_voxels": int(scores["brain_voxels"][i]),
                    "intensity_ratio": _value(scores["intensity_ratio"][i])})
        rows.append(row)
    return rows
