"""Reading one raw patient folder (DESIGN.md layout) and rejecting what cannot be used.

A patient folder holds ``ctp`` (4-D, required), optionally ``mask``, and either all of ``dwi``,
``adc``, ``lesion`` (a training/evaluation patient) or none of them (a CTP-only patient: the
clinical case, no MRI yet); each as ``.nii.gz`` or ``.nii``. Every problem is a
:class:`PatientError` whose one-line message names the patient and the file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

MRI_MAPS = ("dwi", "adc", "lesion")
AFFINE_TOLERANCE_MM = 1e-3  # NIfTI stores affines in float32: allow its rounding, nothing more


class PatientError(ValueError):
    """A patient that preprocessing must reject (message: ``patient <id>: <file> ...``)."""


@dataclass
class PatientVolumes:
    """A validated patient. Arrays are (X, Y, Z) and (X, Y, Z, T) for the CTP; masks boolean."""

    patient_id: str
    folder: Path
    ctp: np.ndarray
    dwi: np.ndarray | None
    adc: np.ndarray | None
    mask: np.ndarray | None  # None: derive it from the CTP
    lesion: np.ndarray | None
    affine: np.ndarray
    zooms: tuple[float, float, float]
    qform: np.ndarray | None
    qform_code: int
    sform_code: int
    geometry_file: str  # the file whose header ``affine``/``qform`` come from

    @property
    def has_mri(self) -> bool:
        return self.dwi is not None


def find_map(folder: Path, name: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        path = folder / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


def _read(patient_id: str, path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as e:  # nibabel raises many types for a corrupt or truncated file
        raise PatientError(f"patient {patient_id}: {path.name} cannot be read ({type(e).__name__}: {e})") from e
    if data.dtype.kind == "f":
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise PatientError(f"patient {patient_id}: {path.name} has {bad} NaN/inf values")
    elif data.dtype.kind not in "iub":
        raise PatientError(f"patient {patient_id}: {path.name} has unsupported data type {data.dtype}")
    return image, data


def load_patient(folder: str | Path, n_timepoints: int = 15) -> PatientVolumes:
    """Read and validate ``folder``; raise :class:`PatientError` on the first problem."""
    folder = Path(folder)
    pid = folder.name
    ctp_path = find_map(folder, "ctp")
    if ctp_path is None:
        raise PatientError(f"patient {pid}: ctp.nii.gz is missing")
    present = {name: find_map(folder, name) for name in MRI_MAPS}
    found = [name for name, path in present.items() if path is not None]
    if 0 < len(found) < len(MRI_MAPS):
        missing = [f"{name}.nii.gz" for name in MRI_MAPS if name not in found]
        raise PatientError(f"patient {pid}: incomplete MRI set: {', '.join(missing)} missing "
                           f"(a patient has all of dwi, adc, lesion or none of them)")

    ctp_image, ctp = _read(pid, ctp_path)
    if ctp.ndim != 4:
        raise PatientError(f"patient {pid}: {ctp_path.name} is {ctp.ndim}-D ({_shape(ctp.shape)}), "
                           f"expected 4-D X x Y x Z x {n_timepoints}")
    if ctp.shape[3] != n_timepoints:
        raise PatientError(f"patient {pid}: {ctp_path.name} has {ctp.shape[3]} time points, expected {n_timepoints}")
    spatial = ctp.shape[:3]

    maps: dict[str, np.ndarray] = {}
    images: dict[str, tuple[Path, nib.Nifti1Image]] = {"ctp": (ctp_path, ctp_image)}
    for name in ("dwi", "adc", "mask", "lesion"):
        path = find_map(folder, name) if name == "mask" else present[name]
        if path is None:
            continue
        image, data = _read(pid, path)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise PatientError(f"patient {pid}: {path.name} is {data.ndim}-D ({_shape(data.shape)}), expected 3-D")
        if data.shape != spatial:
            raise PatientError(f"patient {pid}: {path.name} has shape {_shape(data.shape)}, "
                               f"{ctp_path.name} has {_shape(spatial)}")
        maps[name] = data
        images[name] = (path, image)

    # The cohort lives in DWI space: DWI's header is the geometry when there is one.
    geometry_name = "dwi" if "dwi" in images else "ctp"
    geometry_path, geometry = images[geometry_name]
    for name, (path, image) in images.items():
        difference = float(np.max(np.abs(image.affine - geometry.affine)))
        if difference > AFFINE_TOLERANCE_MM:
            raise PatientError(f"patient {pid}: {path.name} affine differs from {geometry_path.name}'s "
                               f"by up to {difference:.3g} (voxel-to-world, mm)")

    mask = None
    if "mask" in maps:
        mask = maps["mask"] > 0.5
        if not mask.any():
            raise PatientError(f"patient {pid}: {images['mask'][0].name} is empty (no brain voxel)")
    lesion = maps["lesion"] > 0.5 if "lesion" in maps else None
    qform, qform_code = geometry.header.get_qform(coded=True)
    _, sform_code = geometry.header.get_sform(coded=True)
    return PatientVolumes(
        patient_id=pid, folder=folder, ctp=ctp, dwi=maps.get("dwi"), adc=maps.get("adc"), mask=mask, lesion=lesion,
        affine=np.asarray(geometry.affine, dtype=np.float64),
        zooms=tuple(float(z) for z in geometry.header.get_zooms()[:3]),
        qform=None if qform is None else np.asarray(qform, dtype=np.float64), qform_code=int(qform_code or 0),
        sform_code=int(sform_code or 0), geometry_file=geometry_path.name)
