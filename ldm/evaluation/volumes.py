"""Reading ground-truth and predicted NIfTI volumes for evaluation, with their checks.

Ground truth is the raw cohort of docs/data.md: ``<gt>/<patient_id>/{dwi,adc,mask,lesion,ctp}.nii.gz``.
Predictions are what ``scripts/sample_LDM.py`` writes:
``<pred>/<patient_id>/{dwi,adc}_sample_{k}.nii.gz``. A prediction must have exactly the ground
truth's shape and affine; anything else is an :class:`EvaluationInputError` with one line naming
the patient and the file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ldm.data.record import MODALITIES
from ldm.data.slice_selection import select_slices

AFFINE_TOLERANCE_MM = 1e-3  # NIfTI stores affines in float32: allow its rounding, nothing more
_SAMPLE_NAME = re.compile(r"^(dwi|adc)_sample_(\d+)\.nii(\.gz)?$")


class EvaluationInputError(ValueError):
    """Predictions or ground truth that cannot be scored (one line, naming patient and file)."""


@dataclass
class GroundTruth:
    """One patient's reference volumes (X, Y, Z); masks are boolean."""

    patient_id: str
    folder: Path
    affine: np.ndarray
    dwi: np.ndarray
    adc: np.ndarray
    mask: np.ndarray
    lesion: np.ndarray
    ctp: np.ndarray | None = None  # (X, Y, Z, T) in HU, when the folder has one

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.mask.shape)  # type: ignore[return-value]

    def scored_slices(self, rule: str = "reference") -> np.ndarray:
        """The axial slices preprocessing keeps under ``rule`` (ldm/data/slice_selection.py), i.e. the
        slices that were synthesised: with "reference", DWI, ADC and (when the folder has it) the CTP
        each with signal in the brain; with "brain", every slice with brain."""
        return select_slices(self.mask, rule, dwi=self.dwi, adc=self.adc, ctp=self.ctp)


def _nifti(folder: Path, name: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        path = folder / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def patient_folders(root: str | Path, required: str | None = None) -> dict[str, Path]:
    """Patient folders under ``root`` (sorted by id); with ``required``, only those holding that map."""
    root = Path(root)
    if not root.is_dir():
        raise EvaluationInputError(f"folder {str(root)!r} does not exist")
    folders = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    if required is not None:
        folders = {k: v for k, v in folders.items() if _nifti(v, required) is not None}
    return folders


def same_geometry(a_shape: tuple, a_affine: np.ndarray, b_shape: tuple, b_affine: np.ndarray) -> bool:
    return tuple(a_shape) == tuple(b_shape) and np.allclose(a_affine, b_affine, rtol=0, atol=AFFINE_TOLERANCE_MM)


def _load(folder: Path, name: str, patient_id: str, ref: nib.Nifti1Image | None) -> nib.Nifti1Image:
    path = _nifti(folder, name)
    if path is None:
        raise EvaluationInputError(f"patient {patient_id}: ground truth {name}.nii.gz is missing in {str(folder)!r}")
    img = nib.load(str(path))
    if ref is not None and not same_geometry(img.shape[:3], img.affine, ref.shape[:3], ref.affine):
        raise EvaluationInputError(
            f"patient {patient_id}: ground truth {path.name} has shape {img.shape[:3]} / affine differing from "
            f"mask.nii.gz (shape {ref.shape[:3]})")
    return img


def load_ground_truth(folder: str | Path) -> GroundTruth:
    """Read dwi, adc, mask and lesion of one patient folder and check they share one geometry."""
    folder = Path(folder)
    pid = folder.name
    mask_img = _load(folder, "mask", pid, None)
    if len(mask_img.shape) != 3:
        raise EvaluationInputError(f"patient {pid}: mask.nii.gz is not 3D (shape {mask_img.shape})")
    arrays = {name: np.asarray(_load(folder, name, pid, mask_img).dataobj, dtype=np.float32)
              for name in (*MODALITIES, "lesion")}
    mask = np.asarray(mask_img.dataobj) > 0
    if not mask.any():
        raise EvaluationInputError(f"patient {pid}: the brain mask is empty")
    ctp = None
    if _nifti(folder, "ctp") is not None:
        ctp_img = _load(folder, "ctp", pid, mask_img)
        if len(ctp_img.shape) != 4:
            raise EvaluationInputError(f"patient {pid}: ground truth ctp.nii.gz is not 4D (shape {ctp_img.shape})")
        arrays["ctp"] = ctp = np.asarray(ctp_img.dataobj, dtype=np.float32)
    for name, arr in arrays.items():
        if not np.isfinite(arr).all():
            raise EvaluationInputError(f"patient {pid}: ground truth {name}.nii.gz holds NaN or inf")
    return GroundTruth(pid, folder, np.asarray(mask_img.affine, dtype=np.float64), arrays["dwi"],
                       arrays["adc"], mask, arrays["lesion"] > 0, ctp)


def prediction_files(folder: str | Path) -> dict[int, dict[str, Path]]:
    """``{k: {"dwi": path, "adc": path}}`` for the samples in one patient's prediction folder."""
    samples: dict[int, dict[str, Path]] = {}
    folder = Path(folder)
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            m = _SAMPLE_NAME.match(path.name)
            if m:
                samples.setdefault(int(m.group(2)), {})[m.group(1)] = path
    return dict(sorted(samples.items()))


def load_prediction(path: Path, gt: GroundTruth) -> np.ndarray:
    """Read one predicted volume and check it lies exactly on the ground truth's grid."""
    img = nib.load(str(path))
    if tuple(img.shape) != gt.shape:
        raise EvaluationInputError(f"patient {gt.patient_id}: {path.name} has shape {tuple(img.shape)} "
                                   f"but the ground truth has {gt.shape}")
    if not np.allclose(img.affine, gt.affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
        worst = float(np.max(np.abs(img.affine - gt.affine)))
        raise EvaluationInputError(f"patient {gt.patient_id}: {path.name} has an affine that differs from the "
                                   f"ground truth's by up to {worst:.4g} (a different grid)")
    data = np.asarray(img.dataobj, dtype=np.float32)
    if not np.isfinite(data).all():
        raise EvaluationInputError(f"patient {gt.patient_id}: {path.name} holds NaN or inf")
    return data
