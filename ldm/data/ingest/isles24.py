"""ISLES'24 (Riedel et al. 2024, "ISLES'24: a real-world longitudinal multimodal stroke dataset")
into this project's raw layout: ``OUT/{train,val,test}/<subject>/{ctp,dwi,adc,mask,lesion}.nii.gz``.

ISLES'24 is the public cohort with CTP and DWI/ADC of the same patients (149 training cases, BIDS).
Its ``derivatives/`` folder holds every map linearly co-registered to the admission NCCT, so no
registration is needed here. The file names, in one table (``NAMES``), as the dataset's Zenodo
record describes its tree (``derivatives/<subject>/<session>/...``; the record's text says
``ses-0001``/``ses-0002``, the released archive has ``ses-01``/``ses-02``: both are accepted):

    map     session          file
    ctp     ses-01 (acute)   <subject>_ses-01_space-ncct_ctp.nii.gz
    dwi     ses-02 (follow)  <subject>_ses-02_space-ncct_dwi.nii.gz
    adc     ses-02           <subject>_ses-02_space-ncct_adc.nii.gz
    lesion  ses-02           <subject>_ses-02_space-ncct_lesion-msk.nii.gz

(the derivatives of the training archive also hold ``perfusion-maps/`` and CTA, not used). ``R``
may be the dataset root or a folder above it (e.g. holding ``train/derivatives``).

Per subject: the CTP is resampled in time to the model's frame count (timepoints.py: times from a
sidecar JSON or the header, else uniform), every map onto the DWI's grid at the target spacing
(resampling.py: images linear, the lesion by fraction > 0.5), a brain mask is derived from the CTP
(brain_mask.py: ISLES'24 CTP is not skull-stripped) and the CTP is skull-stripped with it, as the
paper's. Every map is read and checked as the patient loader does (ldm/data/ingest/validation.py and
plausibility.py, docs/data.md): a CTP stored without its rescale intercept is corrected, an ADC in
10^-3 mm^2/s or mm^2/s converted, each said in one line (and in the manifest); a swapped DWI/ADC pair
or an implausible map skips the subject by name. The split is seeded and patient-level over the
complete subjects; subjects with a missing file are reported by name and skipped, and so is a
subject whose files cannot be used (e.g. a CTP with fewer frames than the target). Each patient
folder appears whole or not at all; ``manifest.json`` records the source files, spacing, frames
and split.

How it differs from the paper's cohort: the DWI/ADC are follow-up scans 2-9 days after the CTP
(the paper's are acute, taken shortly after it), so the lesion has grown and evolved; every map is
in NCCT space (the paper registered CTP into DWI space); and the cohort is two centres (TUM,
Zurich), not the paper's.
"""
from __future__ import annotations

import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ldm.data.ingest import plausibility
from ldm.data.transforms.resampling import PAPER_SPACING, Grid, affine_zooms, resample, target_grid
from ldm.data.transforms.timepoints import read_frame_times, resample_frames
from ldm.data.ingest.validation import PatientError, binary_mask, brain_from_ctp, check_diffusion, read_map, thresholded_note
from ldm.io import atomic_write_json, remove_stale_staging, staged_folder

# map: (session folders, file suffix after "<subject>_<session>_")
NAMES: dict[str, tuple[tuple[str, ...], str]] = {
    "ctp": (("ses-01", "ses-0001"), "space-ncct_ctp.nii.gz"),
    "dwi": (("ses-02", "ses-0002"), "space-ncct_dwi.nii.gz"),
    "adc": (("ses-02", "ses-0002"), "space-ncct_adc.nii.gz"),
    "lesion": (("ses-02", "ses-0002"), "space-ncct_lesion-msk.nii.gz"),
}
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"


class SubjectError(ValueError):
    """A subject that cannot be imported (one line naming it and the file)."""


@dataclass
class ImportSummary:
    output_dir: Path
    imported: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        counts = {s: sum(1 for e in self.imported.values() if e["split"] == s) for s in SPLITS}
        lines = [f"imported {len(self.imported)} subjects into {self.output_dir} "
                 f"(train {counts['train']}, val {counts['val']}, test {counts['test']})"]
        lines += [note for _, entry in sorted(self.imported.items()) for note in entry.get("notes", [])]
        if self.skipped:
            lines.append(f"skipped ({len(self.skipped)}):")
            lines += [f"  {message}" for _, message in sorted(self.skipped.items())]
        return "\n".join(lines)


def derivatives_root(root: str | Path) -> Path:
    """The ``derivatives`` folder of an ISLES'24 tree at or below ``root`` (one level down at most)."""
    root = Path(root)
    for candidate in (root / "derivatives", *sorted(root.glob("*/derivatives"))):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no derivatives/ folder in {str(root)!r} or one level below it "
                            f"(give the ISLES'24 root, e.g. the folder holding train/derivatives)")


def find_subject_files(subject_dir: Path) -> dict[str, Path]:
    """{map: path} of a subject; raises SubjectError naming the first missing file."""
    subject = subject_dir.name
    files = {}
    for name, (sessions, suffix) in NAMES.items():
        found = []
        for session in sessions:
            folder = subject_dir / session
            if folder.is_dir():
                found += sorted(folder.glob(f"{subject}_*{suffix}"))
        if not found:
            raise SubjectError(f"{subject}: no {sessions[0]}/{subject}_{sessions[0]}_{suffix} "
                               f"in {subject_dir}")
        if len(found) > 1:
            raise SubjectError(f"{subject}: several {suffix} files: {', '.join(p.name for p in found)}")
        files[name] = found[0]
    return files


def split_subjects(subjects: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """A seeded patient-level split: {subject: split}, counts by rounding (test takes the rest)."""
    fractions = [float(f) for f in fractions]
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"--split takes three fractions (train val test) that sum to 1, got {fractions}")
    order = [sorted(subjects)[i] for i in np.random.default_rng(seed).permutation(len(subjects))]
    n_train = int(round(fractions[0] * len(order)))
    n_val = min(int(round(fractions[1] * len(order))), len(order) - n_train)
    return {s: "train" if i < n_train else "val" if i < n_train + n_val else "test" for i, s in enumerate(order)}


def _read(subject: str, path: Path, ndim: int) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The patient loader's reading (validation.read_map), its errors as SubjectError."""
    try:
        image, data = read_map(subject, path)
    except PatientError as e:
        raise SubjectError(str(e)) from e
    if ndim == 3 and data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != ndim:
        raise SubjectError(f"{subject}: {path.name} is {data.ndim}-D, expected {ndim}-D")
    return image, data


def _nifti(data: np.ndarray, grid: Grid, time_step: float | None = None) -> nib.Nifti1Image:
    image = nib.Nifti1Image(data, grid.affine)
    image.set_qform(grid.affine, code=1)
    image.set_sform(grid.affine, code=1)
    image.header.set_xyzt_units("mm", "sec" if time_step else "unknown")
    if time_step:
        image.header.set_zooms((*image.header.get_zooms()[:3], float(time_step)))
    return image


def import_subject(files: dict[str, Path], folder: Path, spacing: Sequence[float], n_timepoints: int) -> dict:
    """Write one subject into ``folder`` (a staging folder); return its manifest entry (with the
    ``notes`` of what was corrected or thresholded). The maps are checked as the patient loader checks
    them (validation.py): a CTP without its rescale intercept is corrected, an ADC in 10^-3 mm^2/s or
    mm^2/s converted, a swapped DWI/ADC pair or an implausible map refused."""
    try:
        return _import_subject(files, folder, spacing, n_timepoints)
    except (PatientError, plausibility.ImplausibleMap) as e:
        raise SubjectError(str(e)) from e


def _import_subject(files: dict[str, Path], folder: Path, spacing: Sequence[float], n_timepoints: int) -> dict:
    subject = files["ctp"].parents[1].name
    ctp_image, ctp = _read(subject, files["ctp"], 4)
    if ctp.shape[3] < n_timepoints:
        raise SubjectError(f"{subject}: {files['ctp'].name} has {ctp.shape[3]} time points, expected {n_timepoints} "
                           f"or more (fewer cannot cover the bolus passage)")
    try:
        times = read_frame_times(files["ctp"], ctp_image.header, int(ctp.shape[3]))
    except ValueError as e:
        raise SubjectError(f"{subject}: {files['ctp'].name}: {e}") from e
    dwi_image, dwi = _read(subject, files["dwi"], 3)
    grid = target_grid(Grid(tuple(int(n) for n in dwi.shape), np.asarray(dwi_image.affine, dtype=np.float64)),
                       spacing)
    maps = {"dwi": resample(dwi, dwi_image.affine, grid)}
    notes = []
    for name in ("adc", "lesion"):
        image, data = _read(subject, files[name], 3)
        if name == "lesion":
            data, text = binary_mask(data)
            note = thresholded_note(subject, {files[name].name: text} if text else {})
            notes += [] if note is None else [note]
        maps[name] = resample(data, image.affine, grid, mask=name == "lesion")
    frames, samples = resample_frames(ctp, times, n_timepoints)
    frames = resample(frames, ctp_image.affine, grid)
    # the CTP in HU (an offset of 1024 corrected) and the brain derived from it
    frames, brain, correction, baseline = brain_from_ctp(subject, files["ctp"].name, frames,
                                                         affine_zooms(grid.affine), hint="")
    checks: dict = {"ctp_baseline_hu": round(baseline, 2)}
    if correction is not None:
        checks["corrections"] = {"ctp": correction.to_json()}
        notes.append(plausibility.correction_note(subject, files["ctp"].name, correction))
    names = {name: files[name].name for name in ("dwi", "adc")}
    maps["adc"], measured, converted = check_diffusion(subject, names, maps["dwi"], maps["adc"], brain,
                                                       plausibility.CtpSummary.of(frames))
    checks.setdefault("corrections", {}).update(measured.pop("corrections", {}))
    checks.update(measured)
    notes += converted
    if not checks["corrections"]:
        del checks["corrections"]
    stripped = np.where(brain[..., None], frames, 0)  # skull-stripped, as the paper's CTP
    stripped = np.rint(stripped).astype(np.int16) if ctp.dtype.kind in "iu" else stripped.astype(np.float32)
    # (an integer CTP stays int16 in HU: a corrected offset moves it into int16's range)
    written = None if times.seconds is None else (list(times.seconds) if samples is None else
                                                  [float(t) for t in samples])
    step = None if written is None else float((written[-1] - written[0]) / max(len(written) - 1, 1))

    nib.save(_nifti(stripped, grid, step), str(folder / "ctp.nii.gz"))
    if written is not None:  # the frame times travel with the frames (BIDS sidecar)
        atomic_write_json(folder / "ctp.json", {"FrameTimesStart": written})
    nib.save(_nifti(maps["dwi"].astype(np.float32), grid), str(folder / "dwi.nii.gz"))
    nib.save(_nifti(maps["adc"].astype(np.float32), grid), str(folder / "adc.nii.gz"))
    nib.save(_nifti(brain.astype(np.uint8), grid), str(folder / "mask.nii.gz"))
    nib.save(_nifti(maps["lesion"].astype(np.uint8), grid), str(folder / "lesion.nii.gz"))
    return {"sources": {k: str(v) for k, v in files.items()}, "grid_shape": list(grid.shape),
            "spacing": [round(z, 6) for z in grid.zooms],
            "source_spacing": [round(z, 6) for z in affine_zooms(dwi_image.affine)],
            "frames": {"source": int(ctp.shape[3]), "target": n_timepoints,
                       "times_source": times.source if samples is not None else "as acquired",
                       "acquisition_times": None if times.seconds is None else list(times.seconds),
                       "sample_times": None if samples is None else [float(t) for t in samples]},
            "mask": "derived from ctp", "lesion_voxels": int(maps["lesion"].sum()), "checks": checks, "notes": notes}


def _worker(job: tuple) -> tuple[str, dict | None, str | None]:
    subject, files, folder, spacing, n_timepoints = job
    try:
        with staged_folder(folder) as tmp:
            entry = import_subject({k: Path(v) for k, v in files.items()}, tmp, spacing, n_timepoints)
        return subject, entry, None
    except SubjectError as e:
        return subject, None, str(e)
    except Exception as e:  # one broken subject must not stop the others
        return subject, None, f"{subject}: unexpected {type(e).__name__}: {e}"


def import_isles24(isles_root: str | Path, output_dir: str | Path, spacing: Sequence[float] = PAPER_SPACING,
                   n_timepoints: int = 15, split: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0,
                   workers: int = 1, progress: bool = True, strict: bool = False) -> ImportSummary:
    """Import every subject of ``isles_root`` (see the module doc) into ``output_dir``.

    ``strict``: a complete subject whose files cannot be used (unreadable, implausible) stops the
    import with its :class:`SubjectError`; no manifest is written. Incomplete subjects are listed.
    """
    from tqdm.auto import tqdm

    derivatives = derivatives_root(isles_root)
    output_dir = Path(output_dir)
    summary = ImportSummary(output_dir)
    complete: dict[str, dict[str, Path]] = {}
    for subject_dir in sorted(p for p in derivatives.iterdir() if p.is_dir() and p.name.startswith("sub-")):
        try:
            complete[subject_dir.name] = find_subject_files(subject_dir)
        except SubjectError as e:
            summary.skipped[subject_dir.name] = str(e)
    if not complete:
        raise FileNotFoundError(f"no complete ISLES'24 subject in {str(derivatives)!r} "
                                f"({len(summary.skipped)} incomplete)")
    splits = split_subjects(list(complete), split, seed)
    for name in SPLITS:
        (output_dir / name).mkdir(parents=True, exist_ok=True)
        remove_stale_staging(output_dir / name)
    jobs = [(s, {k: str(v) for k, v in files.items()}, str(output_dir / splits[s] / s), tuple(spacing), n_timepoints)
            for s, files in complete.items()]
    with tqdm(total=len(jobs), desc="importing ISLES'24", unit="subject", disable=not progress) as bar:
        def collect(result):
            subject, entry, error = result
            if error is None:
                summary.imported[subject] = {"split": splits[subject], **entry}
            elif strict:
                raise SubjectError(error)
            else:
                summary.skipped[subject] = error
            for name in SPLITS:  # an earlier import of the subject elsewhere (or of a now failing one) is stale
                if error is not None or name != splits[subject]:
                    shutil.rmtree(output_dir / name / subject, ignore_errors=True)
            bar.update()

        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
                futures = [pool.submit(_worker, job) for job in jobs]
                try:
                    for future in as_completed(futures):
                        collect(future.result())
                except SubjectError:  # strict: the subjects not started are not started
                    for future in futures:
                        future.cancel()
                    raise
        else:
            for job in jobs:
                collect(_worker(job))
    atomic_write_json(output_dir / MANIFEST, {
        "source": str(derivatives.resolve()), "dataset": "ISLES'24 (Riedel et al. 2024), derivatives in NCCT space",
        "spacing": [float(s) for s in spacing], "n_timepoints": n_timepoints, "split_fractions": list(split),
        "seed": seed, "splits": {name: sorted(s for s, e in summary.imported.items() if e["split"] == name)
                                 for name in SPLITS},
        "subjects": dict(sorted(summary.imported.items())), "skipped": dict(sorted(summary.skipped.items()))})
    return summary
