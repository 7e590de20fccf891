"""Reading one raw patient folder (the layout of docs/data.md) and rejecting what cannot be used.

A patient folder holds ``ctp`` (4-D, required), optionally ``mask``, and either all of ``dwi``,
``adc``, ``lesion`` (a training/evaluation patient) or none of them (a CTP-only patient: the
clinical case, no MRI yet); each as ``.nii.gz`` or ``.nii``. Every problem is a
:class:`PatientError` whose one-line message names the patient and the file.

DWI, ADC, lesion and brain mask come from one MRI study and must share the DWI's grid (shape and
affine); a CTP-only patient's mask must share the CTP's. The CTP may come on its own grid (it is
resampled onto the DWI's by preprocessing) and with more frames than the model takes (resampled in
time, ldm/data/transforms/timepoints.py), never with fewer.

This is the one reading of a raw patient (docs/data.md, "Plausibility checks"): preprocessing, the
ISLES'24 import, CTP-only inference (through preprocessing) and evaluation all read maps here. A
mask (brain or lesion) is ``> 0.5``; one that is not binary is thresholded and said so once. The
maps are checked for what they claim (ldm/data/ingest/plausibility.py): an ADC in 10^-3 mm^2/s or mm^2/s
is converted, a CTP stored without its rescale intercept is corrected, each with one line in
``notes`` and an entry in ``checks["corrections"]``; a DWI/ADC pair that looks swapped and anything
else implausible is a PatientError. Lesion voxels outside a given brain mask are dropped (said so);
with a derived mask :func:`with_brain_mask` does the same.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np

from ldm.data.ingest import plausibility
from ldm.data.transforms.brain_mask import derive_brain_mask
from ldm.data.record import MASKS, MODALITIES
from ldm.data.transforms.resampling import AFFINE_TOLERANCE_MM, Grid, affine_zooms, resample
from ldm.data.transforms.timepoints import FrameTimes, read_frame_times

MRI_MAPS = (*MODALITIES, "lesion")
MASK_THRESHOLD = 0.5  # a brain or lesion mask is value > 0.5, wherever it is read
CTP_EMPTY_WARN_SHARE = 0.01  # a CTP that is 0 in every frame in more of the brain mask is reported


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
    ctp: np.ndarray | None  # None only for an evaluation ground truth without CTP (require_ctp=False)
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
    mask_source: str = "given"  # or "derived from ctp" (with_brain_mask)
    notes: list[str] = field(default_factory=list)  # what was corrected or thresholded, one line each
    checks: dict = field(default_factory=dict)  # the plausibility measurements and corrections (record.json)

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


def patient_folders(input_dir: str | Path) -> list[Path]:
    """The patient folders of a cohort (``<input_dir>/<patient_id>/``, hidden ones left out), sorted;
    a missing or empty cohort is a FileNotFoundError naming the folder."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder {str(input_dir)!r} does not exist")
    folders = sorted(p for p in input_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise FileNotFoundError(f"input folder {str(input_dir)!r} has no patient folders "
                                f"(expected <input_dir>/<patient_id>/ctp.nii.gz, ...)")
    return folders


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


def read_map(who: str, path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """A NIfTI file and its data; unreadable, truncated or non-finite data is a :class:`PatientError`
    (``who``: how the message names the patient, e.g. ``patient P001``)."""
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as e:  # nibabel raises many types for a corrupt or truncated file
        raise PatientError(f"{who}: {path.name} cannot be read ({type(e).__name__}: {e})") from e
    if data.dtype.kind == "f":
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise PatientError(f"{who}: {path.name} has {bad} NaN/inf values")
    elif data.dtype.kind not in "iub":
        raise PatientError(f"{who}: {path.name} has unsupported data type {data.dtype}")
    if data.size == 0:
        raise PatientError(f"{who}: {path.name} is empty (shape {_shape(data.shape)})")
    return image, data


def binary_mask(data: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``data > 0.5``, and what was not binary about it (None when every value is 0 or 1)."""
    mask = np.asarray(data) > MASK_THRESHOLD
    other = int(np.count_nonzero((data != 0) & (data != 1)))
    if not other:
        return mask, None
    return mask, (f"values {float(np.min(data)):.3g}..{float(np.max(data)):.3g}, {other} voxels neither 0 nor 1, "
                  f"{int(mask.sum())} kept")


def thresholded_note(who: str, described: dict[str, str]) -> str | None:
    """One line for all the non-binary masks of a patient ({file: what binary_mask said})."""
    if not described:
        return None
    parts = "; ".join(f"{name} ({text})" for name, text in described.items())
    return f"{who}: not binary, thresholded at {MASK_THRESHOLD:g}: {parts}"


def load_patient(folder: str | Path, n_timepoints: int = 15, require_ctp: bool = True) -> PatientVolumes:
    """Read, validate and check ``folder``; raise :class:`PatientError` on the first problem.

    ``require_ctp=False`` (evaluation's ground truth) accepts a folder without ``ctp``; then the
    brain mask must be given.
    """
    folder = Path(folder)
    pid = folder.name
    ctp_path = find_map(folder, "ctp")
    if ctp_path is None and require_ctp:
        raise PatientError(f"patient {pid}: ctp.nii.gz is missing")
    present = {name: find_map(folder, name) for name in MRI_MAPS}
    found = [name for name, path in present.items() if path is not None]
    if 0 < len(found) < len(MRI_MAPS):
        missing = [f"{name}.nii.gz" for name in MRI_MAPS if name not in found]
        raise PatientError(f"patient {pid}: incomplete MRI set: {', '.join(missing)} missing "
                           f"(a patient has all of dwi, adc, lesion or none of them)")

    who = f"patient {pid}"
    ctp_image = ctp = None
    frame_times = FrameTimes(None, "frame index")
    if ctp_path is not None:
        ctp_image, ctp = read_map(who, ctp_path)
        if ctp.ndim != 4:
            raise PatientError(f"patient {pid}: {ctp_path.name} is {ctp.ndim}-D ({_shape(ctp.shape)}), "
                               f"expected 4-D X x Y x Z x {n_timepoints}")
        if ctp.shape[3] < n_timepoints:
            raise PatientError(f"patient {pid}: {ctp_path.name} has {ctp.shape[3]} time points, expected "
                               f"{n_timepoints} or more (fewer cannot cover the bolus passage the model was trained "
                               f"on)")
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
        image, data = read_map(who, path)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise PatientError(f"patient {pid}: {path.name} is {data.ndim}-D ({_shape(data.shape)}), expected 3-D")
        maps[name] = data
        images[name] = (path, image)

    # The cohort lives in DWI space: DWI's header is the geometry when there is one. The MRI maps
    # and the mask share that grid; the CTP may come on its own and is resampled onto it.
    if "dwi" not in images and ctp is None:
        raise PatientError(f"patient {pid}: neither dwi.nii.gz nor ctp.nii.gz: nothing to read")
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
    same_grid = True
    ctp_affine = None
    if ctp is not None:
        ctp_affine = np.asarray(ctp_image.affine, dtype=np.float64)
        same_grid = (ctp.shape[:3] == spatial
                     and float(np.max(np.abs(ctp_affine - geometry.affine))) <= AFFINE_TOLERANCE_MM)

    binary: dict[str, np.ndarray] = {}
    described: dict[str, str] = {}
    for name in MASKS:
        if name in maps:
            binary[name], text = binary_mask(maps[name])
            if text is not None:
                described[images[name][0].name] = text
    mask = binary.get("mask")
    if mask is not None and not mask.any():
        raise PatientError(f"patient {pid}: {images['mask'][0].name} is empty (no brain voxel)")
    if mask is None and ctp is None:
        raise PatientError(f"patient {pid}: mask.nii.gz is missing and there is no ctp.nii.gz to derive it from")
    qform, qform_code = geometry.header.get_qform(coded=True)
    _, sform_code = geometry.header.get_sform(coded=True)
    volumes = PatientVolumes(
        patient_id=pid, folder=folder, ctp=ctp, dwi=maps.get("dwi"), adc=maps.get("adc"), mask=mask,
        lesion=binary.get("lesion"), affine=np.asarray(geometry.affine, dtype=np.float64),
        zooms=tuple(float(z) for z in geometry.header.get_zooms()[:3]),
        qform=None if qform is None else np.asarray(qform, dtype=np.float64), qform_code=int(qform_code or 0),
        sform_code=int(sform_code or 0), geometry_file=geometry_path.name,
        ctp_affine=None if same_grid else ctp_affine, ctp_file=ctp_path.name if ctp_path else "ctp.nii.gz",
        frame_times=frame_times)
    note = thresholded_note(who, described)
    if note is not None:
        volumes.notes.append(note)
        volumes.checks["thresholded"] = sorted(described)
    files = {name: path.name for name, (path, _) in images.items()}
    try:
        return check_maps(volumes, files)
    except plausibility.ImplausibleMap as e:
        raise PatientError(str(e)) from e


def _no_brain(who: str, ctp_file: str, hint: str = "; provide mask.nii.gz") -> PatientError:
    return PatientError(f"{who}: {ctp_file}: no brain found (derived brain mask is empty){hint}")


def brain_from_ctp(who: str, ctp_file: str, ctp: np.ndarray, zooms: tuple[float, float, float],
                   hint: str = "; provide mask.nii.gz"
                   ) -> tuple[np.ndarray, np.ndarray, plausibility.Correction | None, float]:
    """A CTP without a brain mask: (the CTP in HU, the brain derived from it, brain_mask.py, the offset
    correction or None, the brain's baseline in HU). An offset of 1024 is taken only when the
    corrected series has a brain: the values alone could mislead. No brain: PatientError (+ ``hint``)."""
    correction = None
    brain = np.zeros(ctp.shape[:3], dtype=bool)
    if plausibility.ctp_offset_without_mask(ctp[..., 0], ctp.max(axis=-1) > ctp.min(axis=-1)):
        shifted = plausibility.apply(ctp, plausibility.hu_offset_correction(0.0))
        brain = derive_brain_mask(shifted, zooms=zooms)
        if brain.any():
            correction = plausibility.hu_offset_correction(float(np.median(ctp[..., 0][brain])))
            ctp = shifted
    if correction is None:
        brain = derive_brain_mask(ctp, zooms=zooms)
    if not brain.any():
        raise _no_brain(who, ctp_file, hint)
    _, baseline = plausibility.check_ctp_baseline(who, ctp_file, ctp[..., 0][brain])
    return ctp, brain, correction, float(np.median(ctp[..., 0][brain])) if baseline is None else baseline


def check_diffusion(who: str, files: dict[str, str], dwi: np.ndarray, adc: np.ndarray, brain: np.ndarray,
                    ctp: plausibility.CtpSummary | None) -> tuple[np.ndarray, dict, list[str]]:
    """The DWI/ADC checks (DWI signal, the pair not swapped, the ADC's unit) inside ``brain``, CSF
    found on ``ctp`` (on the same grid): (the ADC in 10^-6 mm^2/s, the measurements for
    ``checks``, the note of a conversion). Raises :class:`~ldm.data.ingest.plausibility.ImplausibleMap`."""
    checks: dict = {"dwi_median": round(plausibility.check_dwi_signal(who, files["dwi"], dwi, brain), 4)}
    contrast = plausibility.check_diffusion_pair(who, (files["dwi"], files["adc"]), dwi, adc, brain, ctp)
    checks["dwi_adc_contrast"] = contrast.to_json()
    adc, correction, median = plausibility.check_adc_unit(who, files["adc"], adc, brain)
    checks["adc_median"] = round(median, 2)
    notes = []
    if correction is not None:
        checks["corrections"] = {"adc": correction.to_json()}
        notes.append(plausibility.correction_note(who, files["adc"], correction))
    return adc, checks, notes


def check_maps(volumes: PatientVolumes, files: dict[str, str] | None = None) -> PatientVolumes:
    """The plausibility checks of a read patient on its own grid (docs/data.md): the CTP's baseline
    in HU (an offset of 1024 corrected), a brain region (the mask, else derived from the CTP), the
    DWI's signal, the DWI/ADC pair (a swap refused), the ADC's unit (converted), the CTP's coverage of
    the mask (said when incomplete) and the lesion inside the brain. Raises
    :class:`~ldm.data.ingest.plausibility.ImplausibleMap` or :class:`PatientError`; ``files`` names the files
    read ({map: file name}, default ``<map>.nii.gz``)."""
    pid = volumes.patient_id
    who = f"patient {pid}"
    files = {**{name: f"{name}.nii.gz" for name in (*MODALITIES, *MASKS)}, **(files or {})}
    grid = Grid(volumes.spatial_shape, volumes.affine)
    notes, checks = list(volumes.notes), dict(volumes.checks)
    corrections: dict[str, dict] = {}
    ctp, region = volumes.ctp, volumes.mask

    def on_grid(volume: np.ndarray, mask: bool = False) -> np.ndarray:
        """A CTP-grid volume on the patient's grid (itself when the grids agree)."""
        return volume if volumes.ctp_affine is None else resample(volume, volumes.ctp_affine, grid, mask=mask)

    if ctp is not None:
        if region is not None:
            nonempty = on_grid(plausibility.has_signal(ctp), mask=True)
            first = on_grid(ctp[..., 0])
            correction, baseline = plausibility.check_ctp_baseline(who, volumes.ctp_file, first[region & nonempty])
            ctp = plausibility.apply(ctp, correction)
            empty = 1.0 - float(nonempty[region].mean())
            checks["ctp_empty_share"] = round(empty, 4)
            if empty > CTP_EMPTY_WARN_SHARE:
                notes.append(f"{who}: {volumes.ctp_file} is 0 in every frame in {100 * empty:.1f}% of the brain mask "
                             f"({files['mask']}): no CTP there (is it registered to the DWI? scripts/register_ctp.py)")
        else:
            zooms = volumes.zooms if volumes.ctp_affine is None else affine_zooms(volumes.ctp_affine)
            ctp, brain, correction, baseline = brain_from_ctp(who, volumes.ctp_file, ctp, zooms)
            region = on_grid(brain, mask=True)
            if not region.any():
                raise _no_brain(who, volumes.ctp_file)
        if baseline is not None:
            checks["ctp_baseline_hu"] = round(baseline, 2)
        if correction is not None:
            corrections["ctp"] = correction.to_json()
            notes.append(plausibility.correction_note(who, volumes.ctp_file, correction))

    adc, lesion = volumes.adc, volumes.lesion
    if volumes.has_mri:
        summary = None
        if ctp is not None:  # CSF and tissue are found on the CTP, on the MRI's grid
            summary = plausibility.CtpSummary.of(ctp)
            if volumes.ctp_affine is not None:
                summary = plausibility.CtpSummary(on_grid(summary.mean), on_grid(summary.varying, mask=True))
        adc, measured, converted = check_diffusion(who, files, volumes.dwi, adc, region, summary)
        corrections.update(measured.pop("corrections", {}))
        checks.update(measured)
        notes += converted
    if lesion is not None and volumes.mask is not None:
        outside = int(np.count_nonzero(lesion & ~volumes.mask))
        checks["lesion_outside_brain"] = outside
        if outside:
            notes.append(f"{who}: {files['lesion']}: {outside} of {int(lesion.sum())} lesion voxels lie outside the "
                         f"brain mask: dropped")
            lesion = lesion & volumes.mask
    if corrections:
        checks["corrections"] = corrections
    return replace(volumes, ctp=ctp, adc=adc, lesion=lesion, notes=notes, checks=checks)


def with_brain_mask(volumes: PatientVolumes) -> tuple[PatientVolumes, list[str]]:
    """The patient with its brain mask on its current grid (the given one, else derived from the
    CTP, brain_mask.py) and the lesion restricted to it; and the note when a derived mask drops
    lesion voxels (a given mask's were noted on reading)."""
    if volumes.mask is not None:
        lesion = None if volumes.lesion is None else volumes.lesion & volumes.mask
        return replace(volumes, lesion=lesion), []
    mask = derive_brain_mask(volumes.ctp, zooms=volumes.zooms)
    if not mask.any():
        raise _no_brain(f"patient {volumes.patient_id}", volumes.ctp_file)
    notes = []
    lesion = volumes.lesion
    if lesion is not None:
        outside = int(np.count_nonzero(lesion & ~mask))
        if outside:
            notes.append(f"patient {volumes.patient_id}: lesion.nii.gz: {outside} of {int(lesion.sum())} lesion voxels "
                         f"lie outside the brain mask derived from {volumes.ctp_file}: dropped")
        lesion = lesion & mask
    return replace(volumes, mask=mask, lesion=lesion, mask_source="derived from ctp"), notes
