"""From model slices back to source-space volumes and NIfTI (what the sampler writes).

The exact inverse of preprocessing's geometry: the (H, W) window is cut back to the cropped
region of the model grid (padding dropped, cropped-away parts and skipped slices become
background) and each slice goes back to its z index; when preprocessing resampled the patient to
another spacing, that volume is resampled back onto the source grid (trilinear, normalised by the
interpolated brain mask; the brain mask by fraction > 0.5), so outputs always have the source's
exact shape and affine. Intensities: [-1, 1] -> [0, 1] -> ``u * (hi - lo) + lo``
with the patient's own percentile constants, or for a CTP-only patient the cohort reference of
the training split; outside the brain mask the volume is 0.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

from ldm.data.transforms.normalization import from_model_range, unit_to_physical
from ldm.data.record import MODALITIES, CohortReference, PatientRecord, load_reference

DESCRIPTIONS = {"dwi": "DWI b=1000", "adc": "ADC 1e-6 mm2/s", "ctp": "CT perfusion (HU)",
                "mask": "brain mask", "lesion": "ischemic lesion"}


def place_slices(slices: np.ndarray, record: PatientRecord, fill: float = 0.0) -> np.ndarray:
    """Put (S, H, W) or (S, C, H, W) slices into the model grid: (X, Y, Z) or (X, Y, Z, C).

    The model grid is the source grid unless preprocessing resampled (``record.resampled``); then
    :func:`to_source_grid` takes the result the rest of the way."""
    slices = np.asarray(slices)
    expected = (record.n_slices, *record.size)
    if slices.ndim not in (3, 4) or (slices.shape[0], *slices.shape[-2:]) != expected:
        raise ValueError(f"patient {record.patient_id}: slices have shape {tuple(slices.shape)}, expected "
                         f"({record.n_slices}, [C,] {record.size[0]}, {record.size[1]}) "
                         f"(kept slices x in-plane size of the index)")
    (x0, x1), (y0, y1) = record.crop
    (bx, _), (by, _) = record.pad
    channels = () if slices.ndim == 3 else (slices.shape[1],)
    dtype = np.float32 if slices.dtype.kind == "f" else slices.dtype
    volume = np.full((*record.model_shape, *channels), fill, dtype=dtype)
    region = slices[..., bx:bx + x1 - x0, by:by + y1 - y0]  # (S, [C,] h, w)
    region = np.moveaxis(region, (-2, -1), (0, 1))  # (h, w, S, [C])
    volume[x0:x1, y0:y1, record.slice_indices] = region
    return volume


def to_source_grid(volume: np.ndarray, record: PatientRecord, mask: bool = False) -> np.ndarray:
    """A model-grid volume ((X, Y, Z[, C])) on the patient's source grid: itself when nothing was
    resampled, else trilinear (``mask=True``: fraction > 0.5) resampling back."""
    if not record.resampled:
        return volume
    from ldm.data.transforms.resampling import Grid, resample

    out = resample(volume, record.model_affine, Grid(tuple(record.source_shape), record.affine), mask=mask)
    return out if mask else out.astype(np.float32, copy=False)


def as_reference(reference: CohortReference | str | Path | Mapping[str, PatientRecord]) -> CohortReference:
    """A CohortReference from any of the forms :func:`slices_to_volume` accepts."""
    if isinstance(reference, CohortReference):
        return reference
    if isinstance(reference, Mapping):
        cohort = CohortReference.from_records(list(reference.values()), source="records")
        if cohort is None:
            raise ValueError("the reference records have no patient with MRI: no reference constants")
        return cohort
    return load_reference(reference)


def _load_mask(record: PatientRecord) -> np.ndarray:
    try:
        return np.load(record.array_path("mask"), mmap_mode="r")
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"patient {record.patient_id}: no brain mask to restore the background ({e}); "
                         "pass mask= or a record from load_index") from e


def output_range(record: PatientRecord, modality: str,
                 reference: CohortReference | str | Path | Mapping[str, PatientRecord] | None = None,
                 use_reference: bool = False) -> tuple[float, float]:
    """The physical (lo, hi) that [0, 1] maps back to for ``modality``: the patient's own constants,
    or for a CTP-only patient (or ``use_reference``) the cohort reference's. A model cannot write
    values outside it."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be 'dwi' or 'adc', got {modality!r}")
    intensity = None if use_reference else record.intensity_range(modality)
    if intensity is None:
        if reference is None:
            raise ValueError(f"patient {record.patient_id} has no {modality.upper()} constants of its own "
                             f"(CTP-only): pass reference= the training split's preprocessed folder")
        intensity = as_reference(reference).intensity_range(modality)
    return intensity


def slices_to_volume(slices: np.ndarray, record: PatientRecord, modality: str,
                     reference: CohortReference | str | Path | Mapping[str, PatientRecord] | None = None,
                     mask: np.ndarray | None = None,
                     use_reference: bool = False) -> np.ndarray:
    """(S, H, W) slices in [-1, 1] to an (X, Y, Z) float32 volume in physical units.

    DWI in the scanner's units, ADC in 1e-6 mm^2/s. The constants are the patient's own unless it
    is CTP-only (or ``use_reference``), then ``reference``: a CohortReference (``load_reference``),
    the training split's output folder or its reference.json, or the training split's records
    (``load_index``; their medians are taken). ``mask`` (S, H, W) defaults to the stored mask.
    """
    intensity = output_range(record, modality, reference, use_reference)
    slices = np.asarray(slices, dtype=np.float32)
    if slices.ndim != 3:
        raise ValueError(f"patient {record.patient_id}: {modality} slices must be (S, H, W), got {slices.shape}")
    mask = _load_mask(record) if mask is None else np.asarray(mask)
    if mask.shape != slices.shape:
        raise ValueError(f"patient {record.patient_id}: mask shape {tuple(mask.shape)} != slices shape {slices.shape}")
    physical = np.where(mask > 0, unit_to_physical(from_model_range(slices), *intensity), 0.0).astype(np.float32)
    volume = place_slices(physical, record, fill=0.0)
    if record.resampled:
        # Back onto the source grid, zero outside the brain mask there (fraction > 0.5). Inside,
        # normalised interpolation (the interpolated volume over the interpolated mask): a voxel
        # at the brain's edge takes the brain's values, not a blend with the zero background.
        weight = to_source_grid(place_slices((mask > 0).astype(np.float32), record, fill=0.0), record)
        values = to_source_grid(volume, record)
        brain = weight > 0.5
        volume = np.where(brain, values / np.maximum(weight, 0.5), 0.0).astype(np.float32)
    return volume


def volume_to_nifti(volume: np.ndarray, record: PatientRecord, modality: str | None = None,
                    description: str | None = None,
                    intensity_range: tuple[float, float] | None = None) -> nib.Nifti1Image:
    """A NIfTI image with the source's exact shape, affine (sform and qform with their codes) and
    units; ``modality`` ("dwi", "adc", ...) sets the description and intent name.

    ``intensity_range``: the (lo, hi) the model could write (:func:`output_range`), stored as the
    header's ``cal_min``/``cal_max``: a viewer opens the volume in that window, and evaluation knows
    which values the model could not have written (an ADC core below lo)."""
    volume = np.asarray(volume)
    if tuple(volume.shape[:3]) != tuple(record.source_shape):
        raise ValueError(f"patient {record.patient_id}: volume shape {tuple(volume.shape)} != source shape "
                         f"{tuple(record.source_shape)}")
    if volume.dtype.kind == "f" and volume.dtype != np.float32:
        volume = volume.astype(np.float32)
    image = nib.Nifti1Image(volume, record.affine)
    header = image.header
    header.set_data_dtype(volume.dtype)
    qform = record.affine if record.qform is None else record.qform
    image.set_qform(qform, code=int(record.qform_code))
    image.set_sform(record.affine, code=int(record.sform_code))
    if record.qform_code == 0 and record.sform_code == 0:  # the source had only pixdim: keep it readable
        image.set_sform(record.affine, code=1)
    header.set_xyzt_units("mm", "sec")
    text = description or DESCRIPTIONS.get(modality or "", "")
    header["descrip"] = text.encode()[:79]
    if modality:
        header["intent_name"] = modality.upper().encode()[:15]
    if intensity_range is not None:
        header["cal_min"], header["cal_max"] = (float(v) for v in intensity_range)
    return image


def written_range(header: nib.Nifti1Header) -> tuple[float, float] | None:
    """The (cal_min, cal_max) a writer stored with :func:`volume_to_nifti`, None when unset (0, 0)."""
    lo, hi = float(header["cal_min"]), float(header["cal_max"])
    return (lo, hi) if hi > lo else None
