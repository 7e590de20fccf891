"""Reading one raw patient folder (the layout of docs/data.md) and rejecting what cannot be used.

A patient folder holds ``ctp`` (4-D, required), optionally ``mask``, and either all of ``dwi``,
``adc``, ``lesion`` (a training/evaluation patient) or none of them (a CTP-only patient: the
clinical case, no MRI yet); each as ``.nii.gz`` or ``.nii``. Every problem is a
:class:`PatientError` whose one-line message names the patient and the file.

DWI, ADC, lesion and brain mask come from one MRI study and must share the DWI's grid (shape and
affine); a CTP-only patient's mask must share the CTP's. The CTP may come on its own grid (it is
resampled onto the DWI's by preprocessing) and with more frames than the model takes (resampled in
time, ldm/data/timepoints.py), never with fewer.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ldm.data.record import MASKS, MODALITIES
from ldm.data.resampling import AFFINE_TOLERANCE_MM
from ldm.data.timepoints import FrameTimes, read_frame_times

MRI_MAPS = (*MODALITIES, "lesion")


class PatientError(ValueError):
    """A patient that preprocessing must reject (message: ``patient <id>: <file> ...``)."""


@dataclass
class PatientVolumes:
    """A validated patient. Arrays are (X, Y, Z) and (X, Y, Z, T) for the CTP; masks boolean.

    ``affine``/``zooms``/``qform`` are the patient's geometry (the DWI's, or the CTP's for a
    CTP-only patient); ``ctp_affine`` is the CTP's own grid, which may differ.
    """

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
    ctp_affine: np.ndarray | None = None  # None: the CTP is on the geometry's grid
    ctp_file: str = "ctp.nii.gz"
    frame_times: FrameTimes = FrameTimes(None, "frame index")

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """Shape of the patient's grid (the MRI maps' and mask's)."""
        for volume in (self.dwi, self.mask):
            if volume is not None:
                return tuple(int(n) for n in volume.shape[:3])  # type: ignore[return-value]
        return tuple(int(n) for n in self.ctp.shape[:3])  # type: ignore[return-value]

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
    if ctp.shape[3] < n_timepoints:
        raise PatientError(f"patient {pid}: {ctp_path.name} has {ctp.shape[3]} time points, expected {n_timepoints} "
                           f"or more (fewer cannot cover the bolus passage the model was trained on)")
    try:
        frame_times = read_frame_times(ctp_path, ctp_image.header, int(ctp.shape[3]))
    except ValueError as e:
        raise PatientError(f"patient {pid}: {ctp_path.name}: {e}") from e

    maps: dict[str, np.ndarray] = {}
    images: dict[str, tuple[Path, nib.Nifti1Image]] = {}
    for name in (*MODALITIES, *MASKS):
        path = find_map(folder, name) if name == "mask" else present[name]
        if path is None:
            continue
        image, data = _read(pid, path)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise PatientError(f"patient {pid}: {path.name} is {data.ndim}-D ({_shape(data.shape)}), expected 3-D")
        maps[name] = data
        images[name] = (path, image)

    # The cohort lives in DWI space: DWI's header is the geometry when there is one. The MRI maps
    # and the mask share that grid; the CTP may come on its own and is resampled onto it.
    geometry_path, geometry = images["dwi"] if "dwi" in images else (ctp_path, ctp_image)
    spatial = maps["dwi"].shape if "dwi" in maps else ctp.shape[:3]
    for name, (path, image) in images.items():
        if maps[name].shape != spatial:
            raise PatientError(f"patient {pid}: {path.name} has shape {_shape(maps[name].shape)}, "
                               f"{geometry_path.name} has {_shape(spatial)}")
        difference = float(np.max(np.abs(image.affine - geometry.affine)))
        if difference > AFFINE_TOLERANCE_MM:
            raise PatientError(f"patient {pid}: {path.name} affine differs from {geometry_path.name}'s "
                               f"by up to {difference:.3g} (voxel-to-world, mm)")
    ctp_affine = np.asarray(ctp_image.affine, dtype=np.float64)
    same_grid = (ctp.shape[:3] == spatial
                 and float(np.max(np.abs(ctp_affine - geometry.affine))) <= AFFINE_TOLERANCE_MM)

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
        sform_code=int(sform_code or 0), geometry_file=geometry_path.name,
        ctp_affine=None if same_grid else ctp_affine, ctp_file=ctp_path.name, frame_times=frame_times)
