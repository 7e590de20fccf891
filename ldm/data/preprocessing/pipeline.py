"""NIfTI cohort -> memory-mappable NPY slices plus a JSON index (the reference release's step 0).

    python -m ldm.data.preprocessing --input_dir data/raw/train --output_dir data/npy/train
    python -m ldm.data.preprocessing --input_dir data/raw/val --output_dir data/npy/val \\
        --reference data/npy/train [--spacing 1 1 5] [--timepoints 15]

Per patient (``<input_dir>/<patient_id>/``, see validation.py): validate; resample every map to
``--spacing`` (default the paper's 1 x 1 x 5 mm; ``native`` keeps each patient's grid) and the CTP
to ``--timepoints`` frames (harmonisation.py; data already at both is left untouched); take the
brain mask (or derive it from the CTP, brain_mask.py); keep the axial slices of ``--slices`` (slice_selection.py:
by default the reference's rule, DWI, ADC and CTP each with signal in the brain; ``brain`` keeps
every slice with brain); crop or pad in-plane to ``--size`` around the brain (cropping.py); scale
CTP, DWI and ADC with the constants of docs/data.md (normalization.py), unclipped so that training
augmentation can warp them before the clipping, as the reference does; store float16 arrays and
the record (record.py). A patient is written into a hidden temporary folder that is renamed into
place only when complete, so a rejected or interrupted patient leaves nothing behind;
``index.json`` is written last, after ``cohort_report.csv`` (cohort_report.py). Reading checks the
maps for what they claim (validation.py, docs/data.md "Plausibility checks"); ``--strict`` stops at
the first rejected patient (exit 2, no index). The output folder is locked for the run
(ldm/folder_lock.py): a second run into it is refused while this one lives.

The training split's output also gets ``reference.json``: the median per-patient DWI/ADC
percentile constants, which give a CTP-only patient's synthesised MRI its physical scale. Pass
``--reference <training output>`` for val/test/clinical data so that they use the training
cohort's constants; without it a split uses its own patients' medians.

Storage dtype: float16. On [0, 1] its rounding error is at most 2^-12 (2.4e-4), i.e. at most
2.4e-4 x (hi - lo) in physical units after inversion (e.g. < 0.05 HU for CTP, ~0.7 for a
3000-wide ADC range); paper scale takes 18 GB instead of 36 GB for the training CTP. Stored values
outside [0, 1] are bounded to +-STORAGE_BOUND (float16 overflows to inf at 65504; anything beyond
1 is clipped to 1 after augmentation anyway).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ldm.data.transforms.cropping import InPlaneWindow, brain_window
from ldm.data.ingest.harmonisation import Harmonisation, harmonise
from ldm.data.transforms.intensity_window import WINDOWS, IntensityWindow
from ldm.data.transforms.normalization import CTP_RANGE_HU, scale_to_unit
from ldm.data.transforms.slice_selection import SLICE_RULES, select_slices
from ldm.data.record import (INDEX_FILE, INDEX_VERSION, RECORD_FILE, REFERENCE_FILE, CohortReference,
                             PatientRecord, load_reference)
from ldm.data.transforms.resampling import PAPER_SPACING, SPACING_TOLERANCE, at_spacing, check_spacing, format_spacing
from ldm.data.ingest.validation import PatientError, PatientVolumes, load_patient, patient_folders, with_brain_mask
from ldm.data.ingest.cohort_report import cohort_rows, summary_line, write_cohort_report
from ldm.cli import user_error
from ldm.folder_lock import FolderBusy, folder_lock
from ldm.io import atomic_write_json, remove_stale_staging, staged_folder

STORAGE_DTYPE = np.float16
STORAGE_BOUND = 1024.0
PAPER_SIZE = (192, 224)


class CohortError(RuntimeError):
    """Some patients failed (the others were written); ``summary`` has the details."""

    def __init__(self, summary: "PreprocessSummary") -> None:
        super().__init__(f"{len(summary.failures)} of {summary.n_patients} patients failed:\n"
                         + summary.failure_lines())
        self.summary = summary


@dataclass
class PreprocessSummary:
    output_dir: Path
    records: dict[str, PatientRecord] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    reference: CohortReference | None = None
    report: str | None = None  # the cohort report's one line (cohort_report.py)

    @property
    def n_patients(self) -> int:
        return len(self.records) + len(self.failures)

    def failure_lines(self) -> str:
        return "\n".join(f"  {message}" for _, message in sorted(self.failures.items()))

    def __str__(self) -> str:
        records = self.records.values()
        slices = sum(r.n_slices for r in records)
        lesion = sum(sum(1 for v in r.lesion_voxels if v > 0) for r in records)
        ctp_only = sum(not r.has_mri for r in records)
        derived = sum(r.mask_source != "given" for r in records)
        resampled = sum(r.resampled or r.ctp_resampled for r in records)
        retimed = sum(r.sample_times is not None for r in records)
        lines = [f"preprocessed {len(self.records)}/{self.n_patients} patients into {self.output_dir} "
                 f"({ctp_only} CTP-only, {derived} with a mask derived from CTP, {resampled} resampled in space, "
                 f"{retimed} in time): {slices} slices, "
                 f"{lesion} with lesion ({100.0 * lesion / max(slices, 1):.1f}%)"]
        if self.reference is not None:
            lines.append(f"reference constants from {self.reference.source or 'this split'} "
                         f"({self.reference.n_patients} patients): DWI {self.reference.dwi_range[0]:.4g}.."
                         f"{self.reference.dwi_range[1]:.4g}, ADC {self.reference.adc_range[0]:.4g}.."
                         f"{self.reference.adc_range[1]:.4g}")
        if self.report:
            lines.append(self.report)
        lines += [f"warning: {w}" for w in self.warnings]
        if self.failures:
            lines.append(f"failed ({len(self.failures)}):")
            lines.append(self.failure_lines())
        return "\n".join(lines)


def _scaled_stack(volume: np.ndarray, kept: np.ndarray, window: InPlaneWindow, size: tuple[int, int],
                  lo: float, hi: float, zero_negatives: bool = True) -> np.ndarray:
    """(S, [C,] H, W) slices of ``volume`` (X, Y, Z[, C]) scaled by (lo, hi) but not clipped (within
    +-STORAGE_BOUND), unmasked, zero padded."""
    sx, sy = window.source_slices
    tx, ty = window.target_slices
    region = scale_to_unit(volume[sx, sy][:, :, kept], lo, hi, clip=False, zero_negatives=zero_negatives)
    np.clip(region, -STORAGE_BOUND, STORAGE_BOUND, out=region)  # (h, w, S[, C])
    region = np.moveaxis(region, (0, 1), (-2, -1))  # (S[, C], h, w)
    out = np.zeros((*region.shape[:-2], *size), dtype=STORAGE_DTYPE)
    out[..., tx, ty] = region
    return out


def _mask_stack(mask: np.ndarray, kept: np.ndarray, window: InPlaneWindow, size: tuple[int, int]) -> np.ndarray:
    sx, sy = window.source_slices
    tx, ty = window.target_slices
    out = np.zeros((kept.size, *size), dtype=np.uint8)
    out[:, tx, ty] = np.moveaxis(mask[sx, sy][:, :, kept], -1, 0)
    return out


def _intensity_range(volumes: PatientVolumes, name: str, mask: np.ndarray,
                     window: IntensityWindow) -> tuple[float, float]:
    lo, hi = window.intensity_range(name, getattr(volumes, name), mask)
    if not hi > lo:
        raise PatientError(f"patient {volumes.patient_id}: {name}.nii.gz is constant ({lo:g}) inside the brain mask")
    return lo, hi


def _build(volumes: PatientVolumes, size: tuple[int, int], slice_rule: str = "reference",
           harmonisation: Harmonisation | None = None,
           window: IntensityWindow | None = None) -> tuple[PatientRecord, dict[str, np.ndarray], list[str]]:
    """Slices and record of a patient on its model grid; ``harmonisation`` (harmonise()) says
    which source grid and time axis that grid came from (None: the volumes are the source);
    ``window`` maps DWI and ADC to [0, 1] (intensity_window.py; None: the default window)."""
    window = IntensityWindow.from_config(window)
    pid = volumes.patient_id
    volumes, notes = with_brain_mask(volumes)  # the given mask, else derived from the CTP (validation.py)
    mask, mask_source = volumes.mask, volumes.mask_source
    kept = select_slices(mask, slice_rule, dwi=volumes.dwi, adc=volumes.adc, ctp=volumes.ctp)
    if kept.size == 0:
        maps = "DWI, ADC and CTP" if volumes.has_mri else "CTP"
        raise PatientError(f"patient {pid}: no axial slice has {maps} signal inside the brain mask "
                           f"(slice rule {slice_rule!r})")
    plane, cuts = brain_window(mask, size)
    if cuts:
        notes.append(f"patient {pid}: the {size[0]}x{size[1]} window crops brain voxels "
                     f"(grid {volumes.ctp.shape[0]}x{volumes.ctp.shape[1]}, kept {plane.crop})")

    arrays = {"ctp": _scaled_stack(volumes.ctp, kept, plane, size, *CTP_RANGE_HU, zero_negatives=False),  # (S, T, H, W)
              "mask": _mask_stack(mask, kept, plane, size)}
    dwi_range = adc_range = None
    lesion_voxels: list[int] = []
    if volumes.has_mri:
        dwi_range = _intensity_range(volumes, "dwi", mask, window)
        adc_range = _intensity_range(volumes, "adc", mask, window)
        dwi = _scaled_stack(volumes.dwi, kept, plane, size, *dwi_range)
        adc = _scaled_stack(volumes.adc, kept, plane, size, *adc_range)
        arrays["mri"] = np.stack([dwi, adc], axis=1)
        lesion = volumes.lesion & mask  # a lesion outside the brain is a labelling slip: drop it
        arrays["lesion"] = _mask_stack(lesion, kept, plane, size)
        lesion_voxels = [int(v) for v in arrays["lesion"].reshape(kept.size, -1).sum(axis=1)]

    record = PatientRecord(
        patient_id=pid, source_shape=tuple(int(n) for n in volumes.ctp.shape[:3]), affine=volumes.affine,
        zooms=volumes.zooms, size=tuple(size), slice_indices=[int(z) for z in kept], crop=plane.crop, pad=plane.pad,
        n_timepoints=int(volumes.ctp.shape[3]), has_mri=volumes.has_mri, has_lesion=any(v > 0 for v in lesion_voxels),
        dwi_range=dwi_range, adc_range=adc_range, ctp_range=CTP_RANGE_HU, lesion_voxels=lesion_voxels,
        mask_source=mask_source, slice_rule=slice_rule, qform=volumes.qform, qform_code=volumes.qform_code,
        sform_code=volumes.sform_code, source_dir=str(volumes.folder.resolve()),
        spacing=tuple(round(float(z), 6) for z in volumes.zooms), window=window.to_json())
    if harmonisation is not None:
        _record_harmonisation(record, harmonisation)
    return record, arrays, notes


def _record_harmonisation(record: PatientRecord, h: Harmonisation) -> None:
    """Source grid (where outputs go), model grid and time axis into ``record``."""
    record.source_shape = tuple(int(n) for n in h.source.shape)
    record.affine = np.asarray(h.source.affine, dtype=np.float64)
    record.zooms = h.source_zooms
    record.spacing = tuple(round(float(z), 6) for z in h.grid.zooms)
    if h.resampled:
        record.grid_shape = tuple(int(n) for n in h.grid.shape)
        record.grid_affine = np.asarray(h.grid.affine, dtype=np.float64)
    record.ctp_resampled = h.ctp_resampled
    record.source_timepoints = h.source_timepoints
    record.frame_times = None if h.frame_times.seconds is None else [float(t) for t in h.frame_times.seconds]
    if h.sample_times is not None:
        record.timepoint_source = h.frame_times.source
        record.sample_times = [float(t) for t in h.sample_times]


def preprocess_patient(folder: str | Path, output_dir: str | Path, size: tuple[int, int] = PAPER_SIZE,
                       n_timepoints: int = 15, slice_rule: str = "reference",
                       spacing: Sequence[float] | None = None,
                       window: IntensityWindow | None = None) -> tuple[PatientRecord, list[str]]:
    """Preprocess one patient into ``<output_dir>/<patient_id>/``; return its record and warnings.

    ``spacing`` (mm) is the model grid's voxel size; None keeps the patient's own grid. ``window``:
    the DWI/ADC intensity window (None: the default, intensity_window.py). Raises
    :class:`PatientError` for an invalid patient, leaving nothing in ``output_dir``.
    """
    folder, output_dir = Path(folder), Path(output_dir)
    volumes, harmonisation = harmonise(load_patient(folder, n_timepoints), spacing, n_timepoints)
    record, arrays, notes = _build(volumes, tuple(int(s) for s in size), slice_rule, harmonisation, window)
    notes = volumes.notes + notes  # what reading corrected or thresholded (validation.py), said once
    record.checks = dict(volumes.checks)
    output_dir.mkdir(parents=True, exist_ok=True)
    with staged_folder(output_dir / record.patient_id) as tmp:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array, allow_pickle=False)
        (tmp / RECORD_FILE).write_text(json.dumps(record.to_json(), indent=1))
    return record, notes


def _worker(job: tuple) -> tuple[str, dict | None, str | None, list[str]]:
    folder, output_dir, size, n_timepoints, slice_rule, spacing, window = job
    pid = Path(folder).name
    try:
        record, notes = preprocess_patient(folder, output_dir, size, n_timepoints, slice_rule, spacing, window)
        return pid, record.to_json(), None, notes
    except PatientError as e:
        return pid, None, str(e), []
    except Exception as e:  # one broken patient must not stop the others: report it like a rejection
        return pid, None, f"patient {pid}: unexpected {type(e).__name__}: {e}", []


def preprocess_cohort(input_dir: str | Path, output_dir: str | Path, size: tuple[int, int] = PAPER_SIZE,
                      workers: int = 1, skip_bad: bool = False, reference_dir: str | Path | None = None,
                      n_timepoints: int = 15, progress: bool = True, slice_rule: str = "reference",
                      spacing: Sequence[float] | None = None,
                      window: IntensityWindow | str | None = None, strict: bool = False) -> PreprocessSummary:
    """Preprocess every patient folder of ``input_dir`` into ``output_dir`` (see the module doc).

    ``spacing`` (mm): the model grid's voxel size (the command line's default is the paper's
    1 x 1 x 5 mm); None keeps every patient's own grid. ``window``: the DWI/ADC intensity window
    (intensity_window.py; None: the default). A ``reference_dir`` made with another window is refused.

    Writes ``index.json`` (this run's good patients), ``reference.json`` and ``cohort_report.csv``.
    When a patient fails the others are still written; then, unless ``skip_bad``,
    :class:`CohortError` is raised at the end (its ``summary`` lists the failures). ``strict``: the
    first refused patient stops the run with its :class:`PatientError`, and no index is written.
    The output folder is locked for the run (ldm/folder_lock.py): a live run's folder is refused
    with :class:`FolderBusy`, a killed run's lock is taken over (a warning says so).
    """
    with folder_lock(output_dir, "preprocessing") as taken:
        summary = _preprocess_cohort(input_dir, output_dir, size, workers, skip_bad, reference_dir, n_timepoints,
                                     progress, slice_rule, spacing, window, strict,
                                     [] if taken is None else [taken.describe(Path(output_dir))])
    return summary


def _preprocess_cohort(input_dir: str | Path, output_dir: str | Path, size: tuple[int, int], workers: int,
                       skip_bad: bool, reference_dir: str | Path | None, n_timepoints: int, progress: bool,
                       slice_rule: str, spacing: Sequence[float] | None, window: IntensityWindow | str | None,
                       strict: bool, warnings: list[str]) -> PreprocessSummary:
    """:func:`preprocess_cohort` with the output folder locked."""
    from tqdm.auto import tqdm

    size = (int(size[0]), int(size[1]))
    if min(size) < 1:
        raise ValueError(f"size must be positive, got {size}")
    if slice_rule not in SLICE_RULES:
        raise ValueError(f"slice rule must be one of {SLICE_RULES}, got {slice_rule!r}")
    spacing = None if spacing is None else check_spacing(spacing)
    window = IntensityWindow.from_config(window)
    folders = patient_folders(input_dir)
    reference = load_reference(reference_dir) if reference_dir is not None else None
    if reference is not None and reference.window != window:
        raise ValueError(f"--reference {str(reference_dir)!r} was preprocessed with the window "
                         f"{reference.window.describe()}, this split asks for {window.describe()}: "
                         f"preprocess both with the same --window")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(output_dir)  # left by a run that was killed
    # The old index and reference describe the old patient folders: drop them before the first
    # folder is republished, so that at every instant either no index exists (readers refuse the
    # folder) or the index this run writes last, which matches every folder it lists.
    for stale in (INDEX_FILE, REFERENCE_FILE):  # (a --reference of this folder was read above)
        (output_dir / stale).unlink(missing_ok=True)

    summary = PreprocessSummary(output_dir, warnings=list(warnings))
    jobs = [(str(f), str(output_dir), size, n_timepoints, slice_rule, spacing, window) for f in folders]
    bar = tqdm(total=len(jobs), desc=f"preprocessing {Path(input_dir).name}", unit="patient", disable=not progress)

    def collect(result: tuple[str, dict | None, str | None, list[str]]) -> None:
        pid, record, error, notes = result
        if error is None:
            summary.records[pid] = PatientRecord.from_json(record, (output_dir / pid).resolve())
        else:
            if strict:  # stop: no index is written, so the folder is not taken for a complete split
                shutil.rmtree(output_dir / pid, ignore_errors=True)
                bar.close()
                raise PatientError(error)
            summary.failures[pid] = error
            shutil.rmtree(output_dir / pid, ignore_errors=True)  # output from an earlier run is stale now
        summary.warnings.extend(notes)
        bar.update()

    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
            futures = [pool.submit(_worker, job) for job in jobs]
            try:
                for future in as_completed(futures):
                    collect(future.result())
            except PatientError:  # --strict: the patients not started are not started
                for future in futures:
                    future.cancel()
                raise
    else:
        for job in jobs:
            collect(_worker(job))
    bar.close()
    summary.records = dict(sorted(summary.records.items()))

    if reference is None:
        reference = CohortReference.from_records(list(summary.records.values()), source=str(output_dir.resolve()),
                                                 window=window)
    elif not reference.source:
        reference.source = str(Path(reference_dir).resolve())
    summary.reference = reference
    if reference is not None:
        atomic_write_json(output_dir / REFERENCE_FILE, reference.to_json())
    else:
        (output_dir / REFERENCE_FILE).unlink(missing_ok=True)
        if summary.records:
            summary.warnings.append("no patient with MRI and no --reference: no reference.json, so synthesised "
                                    "MRI of these CTP-only patients cannot be put into physical units")
    rows = cohort_rows(summary.records.values())
    summary.report = summary_line(rows, write_cohort_report(rows, output_dir))
    atomic_write_json(output_dir / INDEX_FILE, {
        "version": INDEX_VERSION, "size": list(size), "spacing": split_spacing(spacing, summary.records.values()),
        "requested_spacing": None if spacing is None else list(spacing),
        "n_timepoints": n_timepoints, "slice_rule": slice_rule, "window": window.to_json(),
        "dtype": np.dtype(STORAGE_DTYPE).name, "input_dir": str(Path(input_dir).resolve()),
        "reference": None if reference is None else reference.to_json(),
        "patients": {pid: r.to_json() for pid, r in summary.records.items()},
        "failed": dict(sorted(summary.failures.items()))})
    if summary.failures and not skip_bad:
        raise CohortError(summary)
    return summary


def split_spacing(spacing: Sequence[float] | None, records) -> list[float] | None:
    """The split's voxel size: the requested one, else the patients' own when they all agree
    (within the resampling tolerance), else None (mixed grids)."""
    if spacing is not None:
        return [float(s) for s in spacing]
    zooms = [tuple(r.spacing) for r in records if r.spacing is not None]
    if zooms and all(at_spacing(z, zooms[0], SPACING_TOLERANCE) for z in zooms):
        return [round(float(z), 4) for z in zooms[0]]
    return None


def parse_spacing(values: Sequence[str]) -> tuple[float, float, float] | None:
    """``--spacing X Y Z`` (mm) or ``--spacing native``."""
    if len(values) == 1 and values[0].lower() == "native":
        return None
    try:
        return check_spacing([float(v) for v in values])
    except ValueError:
        raise ValueError(f"--spacing takes three voxel sizes in mm (e.g. 1 1 5) or 'native', got {' '.join(values)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input_dir", required=True, help="raw split: <input_dir>/<patient_id>/{ctp,dwi,...}.nii.gz")
    parser.add_argument("--output_dir", required=True, help="where the NPY arrays and index.json go")
    parser.add_argument("--size", type=int, nargs=2, default=list(PAPER_SIZE), metavar=("H", "W"),
                        help="in-plane size after crop/pad (default 192 224)")
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--skip-bad", "--skip_bad", dest="skip_bad", action="store_true",
                        help="exit 0 even if some patients were rejected")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first rejected patient (implausible maps included) with exit code 2 and "
                             "write no index.json (default: reject it by name, write the others, list the failures)")
    parser.add_argument("--reference", default=None,
                        help="the training split's output folder (or its reference.json), for val/test/new data")
    parser.add_argument("--timepoints", type=int, default=15,
                        help="CTP frames the model takes (default 15): a CTP with more is resampled in time "
                             "(acquisition times from a sidecar JSON or the header, else uniform over the frames)")
    parser.add_argument("--spacing", nargs="+", default=[str(v) for v in PAPER_SPACING], metavar="MM",
                        help="voxel size X Y Z of the model grid in mm (default the paper's 1 1 5); 'native' "
                             "keeps each patient's grid")
    parser.add_argument("--slices", choices=SLICE_RULES, default="reference",
                        help="reference (default): keep a slice only if DWI, ADC and CTP each have signal in the "
                             "brain mask, as the reference preprocessing; brain: every slice with brain")
    parser.add_argument("--window", choices=WINDOWS, default="lesion",
                        help="DWI/ADC intensity window (docs/data.md): lesion (default; ADC on a fixed physical "
                             "range, DWI on a multiple of the brain median, so lesions are kept) or "
                             "reference_percentile (the reference code's per-patient 0.5/99.5 percentiles)")
    parser.add_argument("--adc_window", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                        help="lesion window: the ADC range in 10^-6 mm^2/s (default 0 2500)")
    parser.add_argument("--dwi_headroom", type=float, default=None,
                        help="lesion window: DWI range 0 .. this x the brain median (default 3)")
    args = parser.parse_args(argv)
    if min(args.size) < 1 or args.workers < 1 or args.timepoints < 1:
        parser.error("--size, --workers and --timepoints must be positive")
    try:
        spacing = parse_spacing(args.spacing)
    except ValueError as e:
        parser.error(str(e))
    try:
        window = IntensityWindow.from_arguments(args.window, args.adc_window, args.dwi_headroom)
    except ValueError as e:
        return user_error(e)
    print(f"model grid: {format_spacing(spacing)}, {args.timepoints} CTP frames, {args.size[0]} x {args.size[1]}; "
          f"window {window.describe()}")
    try:
        summary = preprocess_cohort(args.input_dir, args.output_dir, tuple(args.size), args.workers, args.skip_bad,
                                    args.reference, args.timepoints, slice_rule=args.slices, spacing=spacing,
                                    window=window, strict=args.strict)
    except CohortError as e:
        print(e.summary, file=sys.stderr)
        return 1
    except (PatientError, FolderBusy, FileNotFoundError, ValueError) as e:
        # --strict's first rejection, a folder a live run writes, a missing input folder, another bad input
        return user_error(e)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
