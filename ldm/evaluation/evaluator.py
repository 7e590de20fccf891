"""Evaluating one or several prediction folders against one ground-truth cohort (Table 1).

For every ground-truth patient (read once, shared by all runs) and every run, each predicted sample
``k`` is scored slice by slice on the slices that preprocessing keeps (``slice_rule``, by default
the reference's: DWI, ADC and CTP each with signal in the brain) after mapping both volumes to
[0, 1] with the ground truth's intensity window (``ldm.evaluation.intensity``), and its lesion
contrast is measured in physical units (``ldm.evaluation.lesion_contrast``), beside two ceilings
computed here: the ground truth itself and the ground truth through the training window. Problems that concern one
patient (no prediction, a prediction on another grid, unreadable files) are reported in one line,
recorded, and the patient is left out; ``strict=True`` turns them into errors instead.

Runs are compared on the same patients: a patient that one run could not be scored on is left out
of every run (and listed, with the reason), so that one missing or rejected scan cannot change
which run "wins" the table.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ldm.data.transforms.intensity_window import IntensityWindow
from ldm.data.transforms.slice_selection import SLICE_RULES
from ldm.evaluation.choices import MetricChoices
from ldm.evaluation.clinical import ground_truth_voxel_ml
from ldm.evaluation.fid import InceptionFeatures, fid_from_features
from ldm.evaluation.lesion_contrast import kept_fractions, lesion_contrast, through_window
from ldm.evaluation.ms_ssim import scale_set_for
from ldm.evaluation.scoring import axial_stack, score_slices, slice_rows, unit_range_pair
from ldm.evaluation.volumes import (
    MODALITIES,
    EvaluationInputError,
    GroundTruth,
    load_ground_truth,
    load_prediction_pair,
    patient_folders,
    prediction_files,
)


@dataclass
class RunReport:
    """What was scored for one run, and what was left out and why."""

    name: str
    pred_dir: Path
    rows: list[dict] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    not_common: dict[str, str] = field(default_factory=dict)  # scored here, left out: another run lacks it
    unknown: list[str] = field(default_factory=list)
    fid: dict[str, float | None] = field(default_factory=dict)
    fid_note: str | None = None
    contrast: list[dict] = field(default_factory=list)  # lesion contrast, one row per patient and sample
    ceiling: bool = False  # a first-stage reconstruction: scored like a run, never compared in pairs


@dataclass
class Evaluation:
    gt_dir: Path
    runs: list[RunReport]
    patients_without_lesion: list[str]
    ms_ssim_settings: dict[str, str]
    fid_skip_reason: str | None = None
    slice_rule: str = "reference"
    patients_without_ctp: list[str] = field(default_factory=list)
    choices: MetricChoices = field(default_factory=MetricChoices)
    window: IntensityWindow = field(default_factory=IntensityWindow)
    truth_contrast: dict[str, list[dict]] = field(default_factory=dict)  # "ground truth", "... (training window)"
    lesion_voxels: dict[str, int] = field(default_factory=dict)  # ground-truth lesion (> 0.5, in the brain)


GROUND_TRUTH = "ground truth"
GROUND_TRUTH_WINDOWED = "ground truth (training window)"


@dataclass
class _Scored:
    rows: list[dict]
    features: dict[str, list[np.ndarray]]
    contrast: list[dict]
    notes: list[str] = field(default_factory=list)  # what reading the predictions converted


@dataclass
class _Truth:
    """What every run of one patient is compared with: the ground truth and its lesion contrast."""

    gt: GroundTruth
    slices: np.ndarray
    voxel_ml: float
    window: IntensityWindow
    contrast: dict

    def contrast_of(self, dwi: np.ndarray, adc: np.ndarray) -> dict:
        row = lesion_contrast(dwi, adc, self.gt.lesion, self.gt.mask, self.slices, self.voxel_ml)
        return {**row, **kept_fractions(row, self.contrast)}

    def windowed(self, modality: str) -> np.ndarray:
        volume = getattr(self.gt, modality)
        return through_window(volume, self.window.intensity_range(modality, volume, self.gt.mask))


def _score_patient(run_name: str, truth: _Truth, pred_folder: Path,
                   features: InceptionFeatures | None) -> _Scored:
    gt, slices = truth.gt, truth.slices
    samples = prediction_files(pred_folder)
    complete = {k: v for k, v in samples.items() if all(m in v for m in MODALITIES)}
    if not complete:
        found = "no dwi_sample_k/adc_sample_k pair" if samples else "no prediction files"
        raise EvaluationInputError(f"patient {gt.patient_id}: {found} in {str(pred_folder)!r}")
    scale_set = scale_set_for(*gt.shape[:2])
    lesion = axial_stack(gt.lesion, slices)
    brain = axial_stack(gt.mask, slices)
    rows, feats, contrast, notes = [], {m: [] for m in MODALITIES}, [], []
    for k, paths in complete.items():
        physical, pair_notes = load_prediction_pair(paths, gt)  # readable, on the grid, not swapped
        notes += pair_notes
        for modality in MODALITIES:
            x, x_hat = unit_range_pair(gt, modality, physical[modality], truth.window)
            x_hat = axial_stack(x_hat, slices)
            scores = score_slices(axial_stack(x, slices), x_hat, lesion, brain, scale_set)
            rows += slice_rows(run_name, gt.patient_id, k, modality, slices, scores)
            if features is not None:
                feats[modality].append(features(x_hat))
        contrast.append({"run": run_name, "patient_id": gt.patient_id, "sample": k,
                         **truth.contrast_of(physical["dwi"], physical["adc"])})
    return _Scored(rows, feats, contrast, notes)


def evaluate_runs(runs: Mapping[str, str | Path], gt_dir: str | Path, *,
                  features: InceptionFeatures | None = None, fid_skip_reason: str | None = None,
                  patients: Sequence[str] | None = None, strict: bool = False, slice_rule: str = "reference",
                  choices: MetricChoices | None = None, log: Callable[[str], None] = tqdm.write,
                  window: IntensityWindow | None = None, ceilings: Sequence[str] = ()) -> Evaluation:
    """Score every run in ``runs`` ({name: prediction folder}) against the cohort in ``gt_dir``.

    ``window``: the intensity window that maps both to [0, 1] (the one the models were trained
    under; None: the default). ``ceilings``: names in ``runs`` that are first-stage reconstructions."""
    window = IntensityWindow.from_config(window)
    unknown_ceilings = [c for c in ceilings if c not in runs]
    if unknown_ceilings:
        raise EvaluationInputError(f"ceiling {unknown_ceilings[0]!r} is not one of the runs")
    if not runs:
        raise EvaluationInputError("no prediction folder given")
    if slice_rule not in SLICE_RULES:
        raise EvaluationInputError(f"slice rule must be one of {SLICE_RULES}, got {slice_rule!r}")
    gt_folders = patient_folders(gt_dir, required="dwi")
    if not gt_folders:
        raise EvaluationInputError(f"no patient folder with dwi.nii.gz under {str(gt_dir)!r} "
                                   f"(expected <gt>/<patient_id>/{{dwi,adc,mask,lesion}}.nii.gz)")
    if patients:
        unknown = [p for p in patients if p not in gt_folders]
        if unknown:
            raise EvaluationInputError(f"patient(s) {', '.join(unknown)} not in the ground truth {str(gt_dir)!r}")
        gt_folders = {p: gt_folders[p] for p in patients}
    reports = []
    for name, pred_dir in runs.items():
        if not Path(pred_dir).is_dir():
            raise EvaluationInputError(f"run {name}: prediction folder {str(pred_dir)!r} does not exist")
        report = RunReport(name, Path(pred_dir), ceiling=name in ceilings)
        report.unknown = sorted(set(patient_folders(pred_dir)) - set(gt_folders))
        for pid in report.unknown:
            log(f"run {name}: patient {pid} has predictions but no ground truth DWI/ADC in {str(gt_dir)!r} "
                f"(no folder, or a CTP-only patient): left out")
        reports.append(report)

    def problem(report: RunReport, pid: str, message: str, missing: bool = False) -> None:
        if strict:
            raise EvaluationInputError(f"run {report.name}: {message}")
        (report.missing.append(pid) if missing else report.excluded.__setitem__(pid, message))
        log(f"run {report.name}: {message}: left out")

    scored: dict[str, dict[str, _Scored]] = {r.name: {} for r in reports}
    real: dict[str, dict[str, np.ndarray]] = {}

    def leave_out_everywhere(pid: str, message: str) -> None:
        """A ground-truth problem: an error under ``strict``, else the patient leaves every run."""
        if strict:
            raise EvaluationInputError(message)
        for report in reports:
            report.excluded[pid] = message
        log(f"{message}: left out of every run")

    lesion_patients, without_ctp, settings = set(), [], {}
    truth_rows: dict[str, dict[str, dict]] = {GROUND_TRUTH: {}, GROUND_TRUTH_WINDOWED: {}}
    lesion_voxels: dict[str, int] = {}
    for pid, folder in tqdm(gt_folders.items(), desc="evaluating patients", unit="patient"):
        try:
            gt = load_ground_truth(folder)
        except EvaluationInputError as e:
            leave_out_everywhere(pid, str(e))
            continue
        for note in gt.notes:  # corrected or thresholded on reading: said once per patient
            log(note)
        lesion_voxels[pid] = int(gt.lesion.sum())
        if gt.ctp is None and slice_rule == "reference":
            without_ctp.append(pid)
        slices = gt.scored_slices(slice_rule)
        if slices.size == 0:
            leave_out_everywhere(pid, f"patient {pid}: no axial slice to score under the slice rule {slice_rule!r}")
            continue
        settings[f"{gt.shape[0]}x{gt.shape[1]}"] = scale_set_for(*gt.shape[:2]).describe()
        try:
            truth = _truth(gt, slices, window)
        except EvaluationInputError as e:
            leave_out_everywhere(pid, str(e))
            continue
        truth_rows[GROUND_TRUTH][pid] = {"run": GROUND_TRUTH, "patient_id": pid, "sample": 0, **truth.contrast}
        truth_rows[GROUND_TRUTH_WINDOWED][pid] = {"run": GROUND_TRUTH_WINDOWED, "patient_id": pid, "sample": 0,
                                                  **truth.contrast_of(truth.windowed("dwi"), truth.windowed("adc"))}
        for report in reports:
            pred_folder = report.pred_dir / pid
            if not pred_folder.is_dir():
                problem(report, pid, f"patient {pid} has no prediction folder in {str(report.pred_dir)!r}", True)
                continue
            try:
                scored[report.name][pid] = _score_patient(report.name, truth, pred_folder, features)
            except EvaluationInputError as e:
                problem(report, pid, str(e))
                continue
            for note in scored[report.name][pid].notes:
                log(f"run {report.name}: {note}")
        if features is not None and any(pid in s for s in scored.values()):
            real[pid] = {m: features(axial_stack(unit_range_pair(gt, m, getattr(gt, m), window)[0], slices))
                         for m in MODALITIES}
        if gt.lesion[..., slices].any():
            lesion_patients.add(pid)

    common = set(gt_folders)
    for report in reports:
        if not scored[report.name]:
            raise EvaluationInputError(f"run {report.name}: no patient of {str(gt_dir)!r} could be scored "
                                       f"from {str(report.pred_dir)!r}")
        common &= set(scored[report.name])
    if not common:
        raise EvaluationInputError("no patient could be scored in every run: the runs have no patient in common")
    for report in reports:
        for pid in sorted(set(scored[report.name]) - common):
            lacking = [r.name for r in reports if pid not in scored[r.name]]
            report.not_common[pid] = f"not scored in {', '.join(lacking)}"
        fake: dict[str, list[np.ndarray]] = {m: [] for m in MODALITIES}
        for pid in sorted(common):
            result = scored[report.name][pid]
            report.rows += result.rows
            report.contrast += result.contrast
            report.patients.append(pid)
            for m in MODALITIES:
                fake[m] += result.features[m]
        real_features = {m: [real[pid][m] for pid in sorted(common)] for m in MODALITIES} if real else None
        report.fid, report.fid_note = _fid(real_features, fake, features, fid_skip_reason)
    without_lesion = sorted(common - lesion_patients)
    truth_contrast = {name: [rows[pid] for pid in sorted(common)] for name, rows in truth_rows.items()}
    return Evaluation(Path(gt_dir), reports, without_lesion, settings, fid_skip_reason, slice_rule,
                      sorted(without_ctp), choices or MetricChoices(), window, truth_contrast, lesion_voxels)


def _truth(gt: GroundTruth, slices: np.ndarray, window: IntensityWindow) -> _Truth:
    voxel_ml = ground_truth_voxel_ml(gt)
    contrast = lesion_contrast(gt.dwi, gt.adc, gt.lesion, gt.mask, slices, voxel_ml)
    return _Truth(gt, slices, voxel_ml, window, {**contrast, **kept_fractions(contrast, contrast)})


def _fid(real: dict[str, list] | None, fake: dict[str, list], features: InceptionFeatures | None,
         skip_reason: str | None) -> tuple[dict[str, float | None], str | None]:
    if features is None or real is None:
        return {m: None for m in MODALITIES}, skip_reason or "no Inception feature extractor given"
    out: dict[str, float | None] = {}
    note = None
    for m in MODALITIES:
        r, f = np.concatenate(real[m]), np.concatenate(fake[m])
        if min(len(r), len(f)) < 2:
            out[m], note = None, f"too few slices for FID ({min(len(r), len(f))})"
            continue
        out[m] = fid_from_features(r, f)
    return out, note
