"""Is the per-voxel spread over samples informative? Voxel std against the error of the mean.

``scripts/sample_LDM.py --summary`` writes, next to the samples, ``<modality>_mean.nii.gz`` and
``<modality>_std.nii.gz`` (voxel-wise over the K samples). Here, inside the brain mask, the
absolute error of the mean map against the ground truth is compared with the std map: the
Spearman correlation of the two (an uncertainty that tracks the error ranks voxels alike), and
the mean absolute error in each decile of std (equal-count bins by rank, so ties do not empty a
bin). Both maps are divided by the width (hi - lo) of the ground truth's range under the
intensity window of the Table 1 metrics, so that DWI (arbitrary scanner units) pools across
patients; per patient that scaling changes nothing, since Spearman and deciles use ranks.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import stats

from ldm.data.transforms.intensity_window import IntensityWindow
from ldm.evaluation.volumes import (
    MODALITIES,
    EvaluationInputError,
    GroundTruth,
    _nifti,  # the .nii.gz / .nii lookup shared with the loaders
    load_prediction,
)

N_BINS = 10


def summary_map_paths(folder: Path, modality: str) -> tuple[Path | None, Path | None]:
    """The (mean, std) maps of one modality in a patient's prediction folder (None where absent)."""
    return _nifti(folder, f"{modality}_mean"), _nifti(folder, f"{modality}_std")


def has_summary_maps(pred_dir: str | Path, patients: Sequence[str]) -> bool:
    """Whether any of ``patients`` has a std map in ``pred_dir``."""
    return any(summary_map_paths(Path(pred_dir) / pid, m)[1] is not None for pid in patients for m in MODALITIES)


def std_error_spearman(std: np.ndarray, abs_error: np.ndarray) -> float | None:
    """Spearman correlation of voxel std and absolute error (None: fewer than 3 voxels or a constant map)."""
    s, e = np.ravel(std), np.ravel(abs_error)
    if s.size < 3 or np.ptp(s) == 0 or np.ptp(e) == 0:
        return None
    return float(stats.spearmanr(s, e).statistic)


def error_by_std_decile(std: np.ndarray, abs_error: np.ndarray, n_bins: int = N_BINS) -> list[dict]:
    """Mean std and mean absolute error in ``n_bins`` equal-count bins of increasing std.

    Voxels are ordered by std (a stable sort: ties keep their order) and split into bins whose
    sizes differ by at most one (``numpy.array_split``); a bin is None when there are fewer
    voxels than bins.
    """
    s, e = np.ravel(std).astype(np.float64), np.ravel(abs_error).astype(np.float64)
    order = np.argsort(s, kind="stable")
    out = []
    for i, idx in enumerate(np.array_split(order, n_bins)):
        if idx.size == 0:
            out.append({"bin": i + 1, "n": 0, "mean_std": None, "mean_abs_error": None})
            continue
        out.append({"bin": i + 1, "n": int(idx.size), "mean_std": float(s[idx].mean()),
                    "mean_abs_error": float(e[idx].mean())})
    return out


def _row(run: str, modality: str, patient: str, std: np.ndarray, err: np.ndarray, n_patients: int) -> dict:
    row = {"run": run, "modality": modality, "patient_id": patient, "n_patients": n_patients,
           "n_voxels": int(std.size), "spearman_std_abs_error": std_error_spearman(std, err),
           "mean_std": float(std.mean()), "mean_abs_error": float(err.mean())}
    bins = error_by_std_decile(std, err)
    row.update({f"abs_error_d{b['bin']}": b["mean_abs_error"] for b in bins})
    row.update({f"std_d{b['bin']}": b["mean_std"] for b in bins})
    return row


def patient_uncertainty(gt: GroundTruth, folder: str | Path,
                        window: IntensityWindow | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{modality: (std, abs_error)}`` over the brain voxels, in window units, for every modality
    with a std map in ``folder`` ({} when there is none).

    A std map needs its mean map beside it, both must lie on the ground truth's grid, and std must
    not be negative; anything else is an :class:`EvaluationInputError` naming patient and file.
    """
    folder = Path(folder)
    out = {}
    for modality in MODALITIES:
        mean_path, std_path = summary_map_paths(folder, modality)
        if std_path is None:
            continue
        if mean_path is None:
            raise EvaluationInputError(f"patient {gt.patient_id}: {std_path.name} has no {modality}_mean.nii.gz "
                                       f"beside it in {str(folder)!r}")
        std = load_prediction(std_path, gt)[gt.mask].astype(np.float64)
        if std.min() < 0:
            raise EvaluationInputError(f"patient {gt.patient_id}: {std_path.name} holds negative values")
        truth = getattr(gt, modality)
        lo, hi = IntensityWindow.from_config(window).intensity_range(modality, truth, gt.mask)
        width = hi - lo if hi > lo else 1.0  # a constant ground truth: leave the units as they are
        err = np.abs(load_prediction(mean_path, gt)[gt.mask].astype(np.float64) - truth[gt.mask]) / width
        out[modality] = (std / width, err)
    return out


def uncertainty_rows(parts: Mapping[tuple[str, str], Sequence[tuple[str, np.ndarray, np.ndarray]]]) -> list[dict]:
    """From ``{(run, modality): [(patient_id, std, abs_error), ...]}``: a row per patient, then a
    pooled row (``patient_id`` "all") over the brain voxels of all of them."""
    rows = []
    for (run, modality), items in parts.items():
        for pid, std, err in items:
            rows.append(_row(run, modality, pid, std, err, 1))
        std, err = (np.concatenate([item[i] for item in items]) for i in (1, 2))
        rows.append(_row(run, modality, "all", std, err, len(items)))
    return rows
