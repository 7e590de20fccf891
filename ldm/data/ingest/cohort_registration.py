"""A cohort's CTPs registered into their DWIs' space, patient by patient (``scripts/register_ctp.py --cohort``).

Takes ``IN/<patient>/{ctp,dwi}.nii.gz`` (plus any of adc, lesion, mask: already in DWI space,
copied; and ``ctp_mask.nii.gz``, a CT-space brain mask, used to skull-strip the mean CTP and
registered as ``mask.nii.gz`` when there is no DWI-space one) and writes ``OUT/<patient>/`` in the
raw layout that preprocessing reads, with ``registration/{ctp_to_dwi.tfm,registration.json,qc.png}``
(:func:`ldm.data.ingest.registration_files.register_files` per patient). Each patient is written
whole or not at all (a staged folder, renamed when complete); a bad patient is reported in one line
naming it and the file, and the others go on. ``OUT/registration.json`` lists the registered
patients' reports and the failures.
"""
from __future__ import annotations

import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

from ldm.data.ingest.registration_files import InputError, register_files
from ldm.data.ingest.validation import PatientError, find_map, patient_folders
from ldm.io import atomic_write_json, remove_stale_staging, staged_folder

COPIED_MAPS = ("dwi", "adc", "lesion", "mask")
SUMMARY_FILE = "registration.json"


def register_patient(job: tuple[str, str, bool]) -> tuple[str, dict | None, str | None]:
    """One patient folder into ``<output_dir>/<patient>/``: (patient, report, None) or (patient,
    None, the one-line error). ``job`` is (folder, output_dir, motion), plain values for a worker
    process."""
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
    """Register every patient folder of ``input_dir`` (``workers`` processes); return ({patient:
    report}, {patient: error}). A missing or empty ``input_dir`` is a FileNotFoundError naming it."""
    folders = patient_folders(input_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(output_dir)  # what an interrupted run left half written
    done: dict[str, dict] = {}
    failed: dict[str, str] = {}
    jobs = [(str(f), str(output_dir), motion) for f in folders]
    with tqdm(total=len(jobs), desc=f"registering {input_dir.name}", unit="patient", disable=not progress) as bar:
        def collect(result: tuple[str, dict | None, str | None]) -> None:
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
    atomic_write_json(output_dir / SUMMARY_FILE, {"registered": dict(sorted(done.items())),
                                                  "failed": dict(sorted(failed.items()))})
    return done, failed
