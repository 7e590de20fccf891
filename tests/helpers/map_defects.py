"""Small synthetic patients (64 x 64 x 4 at 3.5 x 3.5 x 5 mm, enough CSF for the DWI/ADC check)
written as raw folders, and the defects that hospital exports bring, one per copy."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ldm.data.synthetic.cohort import SyntheticPatient, generate_patient, write_patient

SIZE = (64, 64)
N_SLICES = 4


def synthetic(index: int = 0, patient_id: str | None = None) -> SyntheticPatient:
    """A reproducible small patient with a lesion (index picks the seed)."""
    return generate_patient([33, index], size=SIZE, n_slices=N_SLICES, lesion_volume_ml=10.0,
                            lesion_territory="MCA deep", patient_id=patient_id or f"P{index:03d}")


def write(patient: SyntheticPatient, folder: Path, maps=("ctp", "dwi", "adc", "mask", "lesion"), **replaced) -> Path:
    """Write ``patient`` into ``folder`` with some maps replaced ({name: array}, float32 on its grid,
    or (array, affine)); maps not in ``maps`` are left out."""
    write_patient(patient, folder, [m for m in maps if m not in replaced])
    for name, value in replaced.items():
        array, affine = value if isinstance(value, tuple) else (value, patient.affine)
        save(array, folder / f"{name}.nii.gz", affine)
    return folder


def save(array: np.ndarray, path: Path, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(array)
    nib.save(nib.Nifti1Image(array if array.dtype.kind in "iu" else array.astype(np.float32), affine), str(path))


def probability_map(mask: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """A smoothed version of a binary mask in [0, 1] (as a segmentation network's output)."""
    smooth = ndimage.gaussian_filter(mask.astype(np.float32), sigma=(sigma, sigma, 0.3))
    return smooth / max(float(smooth.max()), 1e-6)


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut a file to ``keep`` of its bytes (an interrupted copy)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
