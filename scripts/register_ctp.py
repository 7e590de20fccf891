"""Register a CTP into its DWI's space (rigid, then affine, mutual information; the paper's ANTs step).

    python scripts/register_ctp.py --ctp CTP.nii.gz --dwi DWI.nii.gz --out OUT.nii.gz [--qc QC.png] [--motion]
        [--mask CT_SPACE_MASK.nii.gz --mask_out MASK_OUT.nii.gz] [--brain_mask CT_BRAIN.nii.gz] [--threads N]
    python scripts/register_ctp.py --cohort IN --output_dir OUT [--motion] [--workers N] [--threads N]

Pair mode writes OUT on the DWI's grid (its shape and affine, every frame; the CTP's time step and
a sidecar JSON with frame times travel along), ``<OUT stem>_to_dwi.tfm`` (the ITK transform: DWI
points to CT points, readable by ITK and ANTs tools), ``<OUT stem>_registration.json`` (mutual
information before and after, parameters, timings) and the QC overlay (``--qc``, default
``<OUT stem>_qc.png``). ``--motion`` first aligns each frame to the first (rigid). ``--mask`` is
a CT-space mask (brain or lesion) carried to the DWI grid; ``--brain_mask`` a CT-space brain mask
for skull-stripping the mean CTP (else one is derived from the CTP).

Cohort mode takes ``IN/<patient>/{ctp,dwi}.nii.gz`` (plus any of adc, lesion, mask: already in DWI
space, copied; and ``ctp_mask.nii.gz``, a CT-space brain mask, registered and written as
``mask.nii.gz`` when there is no DWI-space one) and writes ``OUT/<patient>/`` in the raw layout of
preprocessing, with ``registration/{ctp_to_dwi.tfm,registration.json,qc.png}``; each patient is
written whole or not at all. A bad patient is reported in one line naming it and the file and the
others go on (exit 1 at the end); mistakes on the command line exit 2.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.data.transforms.timepoints import sidecar_path  # noqa: E402
from ldm.data.ingest.validation import PatientError, find_map  # noqa: E402
from ldm.io import atomic_path, atomic_save_nifti, atomic_write_json, remove_stale_staging, staged_folder  # noqa: E402

EXIT_USER_ERROR = 2
COPIED_MAPS = ("dwi", "adc", "lesion", "mask")


class InputError(ValueError):
    """A file that cannot be registered (one line naming it)."""


def _stem(path: Path) -> str:
    name = path.name
    return name[:-7] if name.endswith(".nii.gz") else name[:-4] if name.endswith(".nii") else path.stem


def _read(path: Path, ndim: int) -> tuple[nib.Nifti1Image, np.ndarray]:
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


def _ctp_image(frames: np.ndarray, dwi: nib.Nifti1Image, ctp: nib.Nifti1Image, integer: bool) -> nib.Nifti1Image:
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
    """Register one pair and write its outputs (see the module doc); return the report."""
    import SimpleITK as sitk

    from ldm.data.ingest.registration import register_ctp
    from ldm.data.ingest.registration_qc import write_qc_png

    ctp_image, ctp = _read(ctp_path, 4)
    dwi_image, dwi = _read(dwi_path, 3)
    if ctp.shape[3] < 2:
        raise InputError(f"{ctp_path.name} has {ctp.shape[3]} frame(s): not a perfusion series")
    ct_masks = {}
    for name, path in (("mask", mask_path), ("brain", brain_mask_path)):
        if path is None:
            continue
        image, data = _read(path, 3)
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

    stem = out_path.parent / _stem(out_path)
    transform_path = transform_path or Path(f"{stem}_to_dwi.tfm")
    report_path = report_path or Path(f"{stem}_registration.json")
    qc_path = qc_path or Path(f"{stem}_qc.png")
    atomic_save_nifti(_ctp_image(result.ctp, dwi_image, ctp_image, ctp.dtype.kind in "iu"), out_path)
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
                 result.mi_after, title=_stem(ctp_path))
    report = {"ctp": str(ctp_path), "dwi": str(dwi_path), "out": str(out_path), "transform_file": str(transform_path),
              "qc": str(qc_path), "motion_correction": motion, **result.report(),
              "method": "rigid then affine, Mattes mutual information, 3 levels (SimpleITK; the paper used ANTs)"}
    atomic_write_json(report_path, report)
    return report


def register_patient(job: tuple[str, str, bool]) -> tuple[str, dict | None, str | None]:
    """Cohort mode, one patient folder into ``<output_dir>/<patient>/`` (staged, then renamed)."""
    folder, output_dir, motion = Path(job[0]), Path(job[1]), job[2]
    pid = folder.name
    try:
        ctp, dwi = find_map(folder, "ctp"), find_map(folder, "dwi")
        for name, path in (("ctp", ctp), ("dwi", dwi)):
            if path is None:
                raise PatientError(f"patient {pid}: {name}.nii.gz is missing")
        ct_brain = find_map(folder, "ctp_mask")
        with staged_folder(output_dir / pid) as tmp:
            (tmp / "registration").mkdir()
            for name in COPIED_MAPS:
                path = find_map(folder, name)
                if path is not None:
                    shutil.copyfile(path, tmp / path.name)
            has_mask = find_map(folder, "mask") is not None
            try:
                report = register_files(ctp, dwi, tmp / "ctp.nii.gz", tmp / "registration" / "qc.png",
                                        mask_path=ct_brain if not has_mask else None,
                                        mask_out=tmp / "mask.nii.gz", brain_mask_path=ct_brain, motion=motion,
                                        transform_path=tmp / "registration" / "ctp_to_dwi.tfm",
                                        report_path=tmp / "registration" / "registration.json")
            except InputError as e:
                raise PatientError(f"patient {pid}: {e}") from e
            for key in ("out", "transform_file", "qc"):  # where they will be, not the staging folder
                report[key] = report[key].replace(str(tmp), str(output_dir / pid))
            atomic_write_json(tmp / "registration" / "registration.json", report)
        return pid, report, None
    except PatientError as e:
        return pid, None, str(e)
    except Exception as e:  # one broken patient must not stop the others
        return pid, None, f"patient {pid}: unexpected {type(e).__name__}: {e}"


def register_cohort(input_dir: Path, output_dir: Path, motion: bool = False, workers: int = 1,
                    progress: bool = True) -> tuple[dict[str, dict], dict[str, str]]:
    from tqdm.auto import tqdm

    from ldm.data.preprocessing.pipeline import patient_folders

    folders = patient_folders(input_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(output_dir)
    done: dict[str, dict] = {}
    failed: dict[str, str] = {}
    jobs = [(str(f), str(output_dir), motion) for f in folders]
    with tqdm(total=len(jobs), desc=f"registering {input_dir.name}", unit="patient", disable=not progress) as bar:
        def collect(result):
            pid, report, error = result
            if error is None:
                done[pid] = report
            else:
                failed[pid] = error
            bar.update()

        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
                for future in as_completed([pool.submit(register_patient, job) for job in jobs]):
                    collect(future.result())
        else:
            for job in jobs:
                collect(register_patient(job))
    atomic_write_json(output_dir / "registration.json", {"registered": dict(sorted(done.items())),
                                                         "failed": dict(sorted(failed.items()))})
    return done, failed


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ctp", type=Path, help="4-D CTP (HU)")
    p.add_argument("--dwi", type=Path, help="the DWI whose space the CTP goes into")
    p.add_argument("--out", type=Path, help="registered CTP (NIfTI) on the DWI's grid")
    p.add_argument("--qc", type=Path, default=None, help="QC overlay PNG (default <OUT stem>_qc.png)")
    p.add_argument("--mask", type=Path, default=None, help="a CT-space mask to carry into DWI space")
    p.add_argument("--mask_out", type=Path, default=None, help="where it goes (default <OUT stem>_mask.nii.gz)")
    p.add_argument("--brain_mask", type=Path, default=None,
                   help="CT-space brain mask to skull-strip the mean CTP (default: derived from the CTP)")
    p.add_argument("--cohort", type=Path, default=None, help="batch mode: a folder of patient folders")
    p.add_argument("--output_dir", type=Path, default=None, help="batch mode: output root")
    p.add_argument("--motion", action="store_true", help="first align every frame to the first (rigid)")
    p.add_argument("--workers", type=int, default=1, help="batch mode: patients in parallel (processes)")
    p.add_argument("--threads", type=int, default=0,
                   help="SimpleITK threads per registration (default 0: all cores; 1 with several --workers)")
    p.add_argument("--no_progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = get_parser()
    opt = parser.parse_args(argv)
    pair = [opt.ctp, opt.dwi, opt.out]
    if opt.cohort is not None:
        if any(v is not None for v in pair) or opt.output_dir is None:
            parser.error("batch mode takes --cohort IN --output_dir OUT (and no --ctp/--dwi/--out)")
    elif any(v is None for v in pair):
        parser.error("give --ctp, --dwi and --out (or --cohort and --output_dir)")
    if opt.workers < 1 or opt.threads < 0:
        parser.error("--workers must be >= 1 and --threads >= 0")
    import SimpleITK as sitk

    threads = opt.threads or (1 if opt.workers > 1 else 0)
    if threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    if opt.cohort is not None:
        if not opt.cohort.is_dir():
            print(f"register_ctp.py: error: --cohort {str(opt.cohort)!r} is not a folder", file=sys.stderr)
            return EXIT_USER_ERROR
        try:
            done, failed = register_cohort(opt.cohort, opt.output_dir, opt.motion, opt.workers, not opt.no_progress)
        except FileNotFoundError as e:
            print(f"register_ctp.py: error: {e}", file=sys.stderr)
            return EXIT_USER_ERROR
        for pid, report in sorted(done.items()):
            print(f"{pid}: MI {report['mutual_information_before']:.3f} -> {report['mutual_information_after']:.3f} "
                  f"({report['seconds']:.1f} s)")
        print(f"registered {len(done)}/{len(done) + len(failed)} patients into {opt.output_dir}")
        if failed:
            print(f"failed ({len(failed)}):", file=sys.stderr)
            for message in failed.values():
                print(f"  {message}", file=sys.stderr)
            return 1
        return 0
    try:
        report = register_files(opt.ctp, opt.dwi, opt.out, opt.qc, opt.mask, opt.mask_out, opt.brain_mask, opt.motion)
    except InputError as e:
        print(f"register_ctp.py: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"{opt.out}: MI {report['mutual_information_before']:.3f} -> {report['mutual_information_after']:.3f} "
          f"in {report['seconds']:.1f} s; transform {report['transform_file']}, QC {report['qc']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
