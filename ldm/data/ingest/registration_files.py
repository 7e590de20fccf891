"""One CTP registered into its DWI's space from files to files (``scripts/register_ctp.py``'s pair mode).

:func:`register_files` reads the 4-D CTP and the 3-D DWI (and any CT-space masks), runs
:func:`ldm.data.ingest.registration.register_ctp` (rigid, then affine, mutual information: the
paper's ANTs step) and writes, each atomically: the CTP on the DWI's grid (its shape and affine,
every frame; the CTP's time step and its frame-times sidecar travel along), the ITK transform
(DWI points to CT points, readable by ITK and ANTs tools), a carried mask, the QC overlay and a JSON
report (mutual information before and after, parameters, timings). A file that cannot be
registered is an :class:`InputError` naming it, raised before anything is written.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from ldm.data.ingest.registration import register_ctp
from ldm.data.transforms.timepoints import sidecar_path
from ldm.io import atomic_path, atomic_save_nifti, atomic_write_json

METHOD = "rigid then affine, Mattes mutual information, 3 levels (SimpleITK; the paper used ANTs)"


class InputError(ValueError):
    """A file that cannot be registered (one line naming it)."""


def nifti_stem(path: Path) -> str:
    """``ctp.nii.gz`` -> ``ctp`` (Path.stem keeps the ``.nii``)."""
    name = path.name
    return name[:-7] if name.endswith(".nii.gz") else name[:-4] if name.endswith(".nii") else path.stem


def read_volume(path: Path, ndim: int) -> tuple[nib.Nifti1Image, np.ndarray]:
    """A NIfTI file of ``ndim`` dimensions (a 4-D file with one frame counts as 3-D) and its data."""
    if not path.is_file():
        raise InputError(f"{path.name}: no such file ({path})")
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as e:  # nibabel raises many types for a corrupt file
        raise InputError(f"{path.name} cannot be read ({type(e).__name__}: {e})") from e
    if data.ndim == 4 and ndim == 3 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != ndim:
        raise InputError(f"{path.name} is {data.ndim}-D ({'x'.join(map(str, data.shape))}), expected {ndim}-D")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise InputError(f"{path.name} has NaN/inf values")
    return image, data


def registered_ctp_image(frames: np.ndarray, dwi: nib.Nifti1Image, ctp: nib.Nifti1Image,
                         integer: bool) -> nib.Nifti1Image:
    """The registered frames with the DWI's geometry and the CTP's time axis."""
    data = np.clip(np.rint(frames), -32768, 32767).astype(np.int16) if integer else frames.astype(np.float32)
    image = nib.Nifti1Image(data, dwi.affine)
    qform, qcode = dwi.header.get_qform(coded=True)
    _, scode = dwi.header.get_sform(coded=True)
    image.set_qform(dwi.affine if qform is None else qform, code=int(qcode or 1))
    image.set_sform(dwi.affine, code=int(scode or 1))
    space_unit = dwi.header.get_xyzt_units()[0]
    time_unit = ctp.header.get_xyzt_units()[1]
    image.header.set_xyzt_units(space_unit if space_unit != "unknown" else "mm", time_unit)
    image.header.set_zooms((*dwi.header.get_zooms()[:3], float(ctp.header.get_zooms()[3])))
    image.header["toffset"] = ctp.header["toffset"]
    image.header["descrip"] = b"CT perfusion (HU), registered to DWI"
    return image


def register_files(ctp_path: Path, dwi_path: Path, out_path: Path, qc_path: Path | None = None,
                   mask_path: Path | None = None, mask_out: Path | None = None, brain_mask_path: Path | None = None,
                   motion: bool = False, transform_path: Path | None = None, report_path: Path | None = None) -> dict:
    """Register one pair and write its outputs; return the report.

    ``mask_path`` is a CT-space mask (brain or lesion) carried to the DWI grid (``mask_out``,
    default ``<out stem>_mask.nii.gz``), ``brain_mask_path`` a CT-space brain mask for skull-stripping
    the mean CTP (else one is derived from the CTP), ``motion`` first aligns each frame to the first.
    The transform, report and QC default to ``<out stem>_to_dwi.tfm``, ``_registration.json`` and
    ``_qc.png``.
    """
    import SimpleITK as sitk

    from ldm.data.ingest.registration_qc import write_qc_png  # matplotlib, loaded when a QC is drawn

    ctp_image, ctp = read_volume(ctp_path, 4)
    dwi_image, dwi = read_volume(dwi_path, 3)
    if ctp.shape[3] < 2:
        raise InputError(f"{ctp_path.name} has {ctp.shape[3]} frame(s): not a perfusion series")
    ct_masks = {}
    for name, path in (("mask", mask_path), ("brain", brain_mask_path)):
        if path is None:
            continue
        image, data = read_volume(path, 3)
        if data.shape != ctp.shape[:3] or float(np.max(np.abs(image.affine - ctp_image.affine))) > 1e-3:
            raise InputError(f"{path.name} is not on {ctp_path.name}'s grid (a CT-space mask must share its shape "
                             f"and affine)")
        ct_masks[name] = data > 0.5
    try:
        result = register_ctp(ctp, ctp_image.affine, dwi.astype(np.float32), dwi_image.affine,
                              brain_mask=ct_masks.get("brain"),
                              masks={"mask": ct_masks["mask"]} if "mask" in ct_masks else None, motion=motion)
    except ValueError as e:
        raise InputError(f"{ctp_path.name}: {e}") from e

    stem = out_path.parent / nifti_stem(out_path)
    transform_path = transform_path or Path(f"{stem}_to_dwi.tfm")
    report_path = report_path or Path(f"{stem}_registration.json")
    qc_path = qc_path or Path(f"{stem}_qc.png")
    atomic_save_nifti(registered_ctp_image(result.ctp, dwi_image, ctp_image, ctp.dtype.kind in "iu"), out_path)
    sidecar = sidecar_path(ctp_path)
    if sidecar.is_file():  # frame times belong to the frames
        with atomic_path(sidecar_path(out_path)) as tmp:
            shutil.copyfile(sidecar, tmp)
    if "mask" in result.masks:
        mask_out = mask_out or Path(f"{stem}_mask.nii.gz")
        atomic_save_nifti(nib.Nifti1Image(result.masks["mask"].astype(np.uint8), dwi_image.affine), mask_out)
    with atomic_path(transform_path) as tmp:
        sitk.WriteTransform(result.transform, str(tmp))
    write_qc_png(qc_path, dwi.astype(np.float32), result.brain_mask, result.brain_mask_before, result.mi_before,
                 result.mi_after, title=nifti_stem(ctp_path))
    report = {"ctp": str(ctp_path), "dwi": str(dwi_path), "out": str(out_path), "transform_file": str(transform_path),
              "qc": str(qc_path), "motion_correction": motion, **result.report(), "method": METHOD}
    atomic_write_json(report_path, report)
    return report
