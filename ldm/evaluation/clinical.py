"""Ischemic core from an ADC volume, and the per-patient clinical read-out of a synthesised ADC.

Core definition: ADC < 620 x 10^-6 mm^2/s inside the brain mask, the threshold of the automated
RAPID software (Purushotham et al., "Apparent diffusion coefficient threshold for delineation of
ischemic core", Int J Stroke 2015;10:348-353), the MRI core definition of DEFUSE 3 (Albers et al.,
N Engl J Med 2018;378:708-718). An
optional minimum cluster size removes connected components (26-connectivity: voxels touching by
a face, an edge or a corner) smaller than ``min_cluster_ml``; it is off by default.

Volumes are in ml from the voxel size in the NIfTI header (``pixdim``, ``header.get_zooms()``) of
the patient's ground-truth DWI (the grid its brain mask, given or derived from the CTP, and lesion
share), so anisotropic voxels (e.g. 1 x 1 x 5 mm) count correctly. The ground truth's ADC must be in
10^-6 mm^2/s (:func:`require_adc_units`), as the threshold is.
Undefined values are None (empty CSV cell, a dash in tables), never NaN: the relative volume
error when the true core is 0 ml, and every synthesised-core value of a sample whose ADC could not
go below the threshold: a model writes ADC only inside the range its intensity window gave the
patient (``cal_min``/``cal_max`` in the sample's header, ldm/data/preprocessing/reassembly.py), and when that range
starts at or above the threshold its "0 ml" would be the window's doing, not the model's, so the
core is *not measurable* (``core_measurable`` False) and left out of the agreement. The Dice of two empty masks is defined as 1 (both agree that
there is no core); a patient without lesion is an ordinary case with a lesion volume of 0 ml.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ldm.data.ingest import plausibility
from ldm.data.transforms.intensity_window import ADC_CORE_THRESHOLD
from ldm.data.preprocessing.reassembly import written_range
from ldm.evaluation.volumes import (
    MODALITIES,
    EvaluationInputError,
    GroundTruth,
    _nifti,  # the ground-truth file lookup (.nii.gz or .nii), shared with the loaders
    predicted_map,
    prediction_files,
)

CORE_THRESHOLD_ML = 70.0  # DEFUSE 3 (Albers et al. 2018): eligible for thrombectomy with a core < 70 ml
_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def voxel_volume_ml(header: nib.Nifti1Header) -> float:
    """Volume of one voxel in ml (1 ml = 1000 mm^3) from the header's voxel size (NIfTI units: mm)."""
    zooms = [float(z) for z in header.get_zooms()[:3]]
    if len(zooms) != 3 or not all(np.isfinite(z) and z > 0 for z in zooms):
        raise ValueError(f"voxel size {tuple(zooms)} in the header is not three positive numbers")
    return zooms[0] * zooms[1] * zooms[2] / 1000.0


def segment_core(adc: np.ndarray, brain: np.ndarray, threshold: float = ADC_CORE_THRESHOLD,
                 min_cluster_voxels: int = 0) -> np.ndarray:
    """Boolean core mask: ``adc < threshold`` inside ``brain``.

    With ``min_cluster_voxels`` > 0, connected components (26-connectivity) with fewer voxels are
    dropped: isolated low-ADC voxels (noise, partial volume at the ventricles) are not core.
    """
    core = (np.asarray(adc) < threshold) & (np.asarray(brain) > 0)
    if min_cluster_voxels > 0 and core.any():
        labels, n = ndimage.label(core, structure=_FULL_CONNECTIVITY)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= min_cluster_voxels
        keep[0] = False
        core = keep[labels]
    return core


def cluster_voxels(min_cluster_ml: float | None, voxel_ml: float) -> int:
    """The smallest kept cluster in voxels: those whose volume reaches ``min_cluster_ml`` (0: no filter)."""
    if not min_cluster_ml:
        return 0
    return int(np.ceil(min_cluster_ml / voxel_ml * (1 - 1e-9)))  # float rounding: 0.01 ml / 0.005 ml is 2, not 3


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient 2|A n B| / (|A| + |B|); 1.0 when both masks are empty (they agree)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def core_readout(gt: GroundTruth, pred_adc: np.ndarray, voxel_ml: float, threshold: float = ADC_CORE_THRESHOLD,
                 min_cluster_ml: float | None = None, true_core: np.ndarray | None = None) -> dict:
    """The core read-out of one synthesised ADC against the true ADC and the lesion mask.

    ``volume_diff_ml`` is synthesised minus true-ADC core (Bland-Altman's difference),
    ``rel_volume_error_pct`` is |difference| / true-ADC core in percent (None when that is 0 ml).
    ``true_core`` can be passed to reuse the ground-truth segmentation across runs and samples.
    """
    min_voxels = cluster_voxels(min_cluster_ml, voxel_ml)
    if true_core is None:
        true_core = segment_core(gt.adc, gt.mask, threshold, min_voxels)
    synth_core = segment_core(pred_adc, gt.mask, threshold, min_voxels)
    synth_ml = float(synth_core.sum()) * voxel_ml
    true_ml = float(true_core.sum()) * voxel_ml
    diff = synth_ml - true_ml
    return {
        "voxel_ml": voxel_ml,
        "core_ml_synth": synth_ml,
        "core_ml_true_adc": true_ml,
        "lesion_ml": float(gt.lesion.sum()) * voxel_ml,
        "volume_diff_ml": diff,
        "abs_volume_error_ml": abs(diff),
        "rel_volume_error_pct": None if true_ml == 0 else 100.0 * abs(diff) / true_ml,
        "dice_synth_true_adc": dice(synth_core, true_core),
        "dice_synth_lesion": dice(synth_core, gt.lesion),
        "dice_true_adc_lesion": dice(true_core, gt.lesion),
    }


def ground_truth_voxel_ml(gt: GroundTruth) -> float:
    """Voxel volume (ml) from the header of the patient's ground-truth DWI (its mask, given or
    derived, and lesion share that grid)."""
    path = _nifti(gt.folder, gt.geometry_file.split(".nii")[0])
    try:
        return voxel_volume_ml(nib.load(str(path)).header)
    except ValueError as e:
        raise EvaluationInputError(f"patient {gt.patient_id}: {path.name}: {e}") from e


def require_adc_units(gt: GroundTruth) -> None:
    """The core threshold is in 10^-6 mm^2/s: refuse a ground truth whose ADC is not (the loader
    converts what it can identify; this guards any other way in)."""
    median = plausibility.brain_median(gt.adc, gt.mask)
    unit = plausibility.adc_unit(median)
    if unit is None or unit[1] != 1.0:
        raise EvaluationInputError(f"patient {gt.patient_id}: ground truth adc.nii.gz has a brain median of "
                                   f"{median:.4g}: not an ADC in 10^-6 mm^2/s, which the core threshold is in")


def core_measurable(path: str | Path, threshold: float = ADC_CORE_THRESHOLD) -> bool:
    """Whether the synthesised ADC at ``path`` could hold values below ``threshold``: False when the
    range its model could write (the header's cal_min/cal_max) starts at or above it."""
    writable = written_range(nib.load(str(path)).header)
    return writable is None or writable[0] < threshold


def not_measurable_readout(gt: GroundTruth, voxel_ml: float, true_core: np.ndarray) -> dict:
    """The read-out of a sample whose core is not measurable: the truth's side only."""
    true_ml = float(true_core.sum()) * voxel_ml
    return {"voxel_ml": voxel_ml, "core_ml_synth": None, "core_ml_true_adc": true_ml,
            "lesion_ml": float(gt.lesion.sum()) * voxel_ml, "volume_diff_ml": None, "abs_volume_error_ml": None,
            "rel_volume_error_pct": None, "dice_synth_true_adc": None, "dice_synth_lesion": None,
            "dice_true_adc_lesion": dice(true_core, gt.lesion)}


def patient_readouts(gt: GroundTruth, pred_folder: str | Path, voxel_ml: float, true_core: np.ndarray,
                     threshold: float = ADC_CORE_THRESHOLD, min_cluster_ml: float | None = None) -> list[dict]:
    """One :func:`core_readout` per sample k (``{dwi,adc}_sample_k``) in ``pred_folder``
    (``true_core``: :func:`segment_core` of the true ADC, computed once per patient); a sample whose
    core is not measurable (:func:`core_measurable`) gets None for every synthesised value."""
    # the samples Table 1 scores: those with both files
    samples = {k: v["adc"] for k, v in prediction_files(pred_folder).items() if all(m in v for m in MODALITIES)}
    if not samples:
        raise EvaluationInputError(f"patient {gt.patient_id}: no dwi_sample_k/adc_sample_k pair in "
                                   f"{str(pred_folder)!r}")
    rows = []
    for k, path in samples.items():
        measurable = core_measurable(path, threshold)
        readout = (core_readout(gt, predicted_map(path, gt, "adc"), voxel_ml, threshold, min_cluster_ml, true_core)
                   if measurable else not_measurable_readout(gt, voxel_ml, true_core))
        rows.append({"patient_id": gt.patient_id, "sample": k, "core_measurable": measurable, **readout})
    return rows


def first_sample_rows(rows: Sequence[dict]) -> list[dict]:
    """One row per (run, patient): the lowest sample index (sample 0 unless it is missing)."""
    chosen: dict[tuple[str, str], dict] = {}
    for row in rows:
        key = (row["run"], row["patient_id"])
        if key not in chosen or row["sample"] < chosen[key]["sample"]:
            chosen[key] = row
    return list(chosen.values())
