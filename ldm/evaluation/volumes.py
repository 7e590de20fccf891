"""Reading ground-truth and predicted NIfTI volumes for evaluation, with their checks.

Ground truth is the raw cohort of docs/data.md: ``<gt>/<patient_id>/{dwi,adc,mask,lesion,ctp}.nii.gz``,
read by preprocessing's loader (ldm/data/ingest/validation.py), so that a patient is scored on what
preprocessing made of it: masks ``> 0.5``, the lesion inside the brain, the ADC in 10^-6 mm^2/s and
the CTP in HU (corrected, or refused, with the same line), the brain mask derived from the CTP when
``mask.nii.gz`` is absent, and a CTP on its own grid resampled onto the DWI's (for the slice rule).
Without a CTP the mask must be given. Predictions are what ``scripts/sample_LDM.py`` writes:
``<pred>/<patient_id>/{dwi,adc}_sample_{k}.nii.gz``. A prediction must have exactly the ground
truth's shape and affine and be readable; a pair whose contrast says DWI and ADC are swapped is
refused, and a predicted ADC in 10^-3 mm^2/s or mm^2/s is converted (said once). Anything else is
an :class:`EvaluationInputError` with one line naming the patient and the file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ldm.data.ingest import plausibility
from ldm.data.ingest.harmonisation import harmonise
from ldm.data.record import MODALITIES
from ldm.data.transforms.slice_selection import select_slices
from ldm.data.ingest.validation import PatientError, load_patient, with_brain_mask

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
    ctp: np.ndarray | None = None  # (X, Y, Z, T) in HU on the DWI's grid, when the folder has one
    zooms: tuple[float, float, float] | None = None  # voxel size (mm) from the DWI's header
    geometry_file: str = "dwi.nii.gz"
    mask_source: str = "given"  # or "derived from ctp"
    notes: list[str] = field(default_factory=list)  # what reading corrected or thresholded, one line each
    checks: dict = field(default_factory=dict)  # the loader's plausibility measurements (validation.py)
    _ctp_summary: plausibility.CtpSummary | None = field(default=None, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.mask.shape)  # type: ignore[return-value]

    def ctp_summary(self) -> plausibility.CtpSummary | None:
        """The CTP's temporal mean and variation (computed once): where CSF and tissue are."""
        if self.ctp is None:
            return None
        if self._ctp_summary is None:
            self._ctp_summary = plausibility.CtpSummary.of(self.ctp)
        return self._ctp_summary

    def scored_slices(self, rule: str = "reference") -> np.ndarray:
        """The axial slices preprocessing keeps under ``rule`` (ldm/data/transforms/slice_selection.py), i.e. the
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


def load_ground_truth(folder: str | Path) -> GroundTruth:
    """Read one patient folder with preprocessing's loader, on the DWI's grid (see the module doc).

    What the loader refuses is an :class:`EvaluationInputError` with the line preprocessing gives.
    """
    folder = Path(folder)
    try:
        volumes = load_patient(folder, n_timepoints=1, require_ctp=False)  # frames: only preprocessing counts them
        if not volumes.has_mri:
            raise PatientError(f"patient {folder.name}: no dwi.nii.gz, adc.nii.gz and lesion.nii.gz: nothing to score")
        if volumes.ctp is not None:  # on the DWI's grid as it is (a CTP on its own grid is resampled onto it)
            volumes, _ = harmonise(volumes, None, int(volumes.ctp.shape[3]))
        volumes, notes = with_brain_mask(volumes)
    except PatientError as e:
        raise EvaluationInputError(str(e)) from e
    ctp = None if volumes.ctp is None else np.asarray(volumes.ctp, dtype=np.float32)
    return GroundTruth(volumes.patient_id, folder, np.asarray(volumes.affine, dtype=np.float64),
                       np.asarray(volumes.dwi, dtype=np.float32), np.asarray(volumes.adc, dtype=np.float32),
                       volumes.mask, volumes.lesion, ctp, zooms=volumes.zooms, geometry_file=volumes.geometry_file,
                       mask_source=volumes.mask_source, notes=volumes.notes + notes, checks=volumes.checks)


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


def _unreadable(gt: GroundTruth, path: Path, e: Exception) -> EvaluationInputError:
    return EvaluationInputError(f"patient {gt.patient_id}: {path.name} cannot be read ({type(e).__name__}: {e})")


def load_prediction(path: Path, gt: GroundTruth) -> np.ndarray:
    """Read one predicted volume and check it is readable and lies exactly on the ground truth's grid."""
    try:
        img = nib.load(str(path))
        shape = tuple(img.shape)
    except Exception as e:  # nibabel raises many types for an empty or corrupt header
        raise _unreadable(gt, path, e) from e
    if shape != gt.shape:
        raise EvaluationInputError(f"patient {gt.patient_id}: {path.name} has shape {shape} "
                                   f"but the ground truth has {gt.shape}")
    if not np.allclose(img.affine, gt.affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
        worst = float(np.max(np.abs(img.affine - gt.affine)))
        raise EvaluationInputError(f"patient {gt.patient_id}: {path.name} has an affine that differs from the "
                                   f"ground truth's by up to {worst:.4g} (a different grid)")
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as e:  # a truncated data block
        raise _unreadable(gt, path, e) from e
    if not np.isfinite(data).all():
        raise EvaluationInputError(f"patient {gt.patient_id}: {path.name} holds NaN or inf")
    return data


def predicted_adc(path: Path, gt: GroundTruth) -> tuple[np.ndarray, str | None]:
    """A predicted ADC in 10^-6 mm^2/s, as the ground truth (converted when its brain median says it is
    in 10^-3 mm^2/s or mm^2/s), and the note saying so. Any other scale is left as it is: a prediction
    is scored as it came, however poor."""
    data = load_prediction(path, gt)
    median = plausibility.brain_median(data, gt.mask)
    unit = plausibility.adc_unit(median)
    if unit is None or unit[1] == 1.0:
        return data, None
    name, factor = unit
    note = (f"patient {gt.patient_id}: {path.name}: brain median {median:.3g} is an ADC in {name}: converted to "
            f"10^-6 mm^2/s (x {factor:g})")
    return data * np.float32(factor), note


def predicted_map(path: Path, gt: GroundTruth, modality: str) -> np.ndarray:
    """One predicted map as scoring reads it (an ADC converted as in :func:`predicted_adc`), without the note."""
    return predicted_adc(path, gt)[0] if modality == "adc" else load_prediction(path, gt)


def load_prediction_pair(paths: dict[str, Path], gt: GroundTruth) -> tuple[dict[str, np.ndarray], list[str]]:
    """The predicted DWI and ADC of one sample ({modality: path}) and the notes on them; a pair whose
    contrast says the two are swapped (or one image) is refused, as for the ground truth."""
    dwi = load_prediction(paths["dwi"], gt)
    adc, note = predicted_adc(paths["adc"], gt)
    try:
        plausibility.check_diffusion_pair(f"patient {gt.patient_id}", (paths["dwi"].name, paths["adc"].name),
                                          dwi, adc, gt.mask, gt.ctp_summary())
    except plausibility.ImplausibleMap as e:
        raise EvaluationInputError(str(e)) from e
    return {"dwi": dwi, "adc": adc}, [] if note is None else [note]
