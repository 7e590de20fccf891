"""Evaluating one or several prediction folders against one ground-truth cohort (Table 1).

For every ground-truth patient (read once, shared by all runs) and every run, each predicted sample
``k`` is scored slice by slice on the brain slices (non-empty mask) after mapping both volumes to
[0, 1] with the ground truth's window (``ldm.evaluation.intensity``). Problems that concern one
patient (no prediction, a prediction on another grid, unreadable files) are reported in one line,
recorded, and the patient is left out; ``strict=True`` turns them into errors instead.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ldm.evaluation.fid import InceptionFeatures, fid_from_features
from ldm.evaluation.ms_ssim import scale_set_for
from ldm.evaluation.scoring import axial_stack, score_slices, slice_rows, unit_range_pair
from ldm.evaluation.volumes import (
    MODALITIES,
    EvaluationInputError,
    GroundTruth,
    load_ground_truth,
    load_prediction,
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
    unknown: list[str] = field(default_factory=list)
    fid: dict[str, float | None] = field(default_factory=dict)
    fid_note: str | None = None


@dataclass
class Evaluation:
    gt_dir: Path
    runs: list[RunReport]
    patients_without_lesion: list[str]
    ms_ssim_settings: dict[str, str]
    fid_skip_reason: str | None = None


def _scored_patient(run: RunReport, gt: GroundTruth, pred_folder: Path, slices: np.ndarray,
                    features: InceptionFeatures | None, fake: dict[str, list]) -> None:
    samples = prediction_files(pred_folder)
    complete = {k: v for k, v in samples.items() if all(m in v for m in MODALITIES)}
    if not complete:
        found = "no dwi_sample_k/adc_sample_k pair" if samples else "no prediction files"
        raise EvaluationInputError(f"patient {gt.patient_id}: {found} in {str(pred_folder)!r}")
    scale_set = scale_set_for(*gt.shape[:2])
    lesion = axial_stack(gt.lesion, slices)
    rows, feats = [], {m: [] for m in MODALITIES}
    for k, paths in complete.items():
        for modality in MODALITIES:
            x, x_hat = unit_range_pair(gt, modality, load_prediction(paths[modality], gt))
            x_hat = axial_stack(x_hat, slices)
            scores = score_slices(axial_stack(x, slices), x_hat, lesion, scale_set)
            rows += slice_rows(run.name, gt.patient_id, k, modality, slices, scores)
            if features is not None:
                feats[modality].append(features(x_hat))
    run.rows += rows  # only once the whole patient scored: no half patient in the tables
    run.patients.append(gt.patient_id)
    for modality in MODALITIES:
        fake[modality] += feats[modality]


def evaluate_runs(runs: Mapping[str, str | Path], gt_dir: str | Path, *,
                  features: InceptionFeatures | None = None, fid_skip_reason: str | None = None,
                  patients: Sequence[str] | None = None, strict: bool = False,
                  log: Callable[[str], None] = tqdm.write) -> Evaluation:
    """Score every run in ``runs`` ({name: prediction folder}) against the cohort in ``gt_dir``."""
    if not runs:
        raise EvaluationInputError("no prediction folder given")
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
        report = RunReport(name, Path(pred_dir))
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

    fake = {r.name: {m: [] for m in MODALITIES} for r in reports}
    real = {r.name: {m: [] for m in MODALITIES} for r in reports}
    without_lesion, settings = [], {}
    for pid, folder in tqdm(gt_folders.items(), desc="evaluating patients", unit="patient"):
        try:
            gt = load_ground_truth(folder)
        except EvaluationInputError as e:
            if strict:
                raise
            for report in reports:
                report.excluded[pid] = str(e)
            log(f"{e}: left out of every run")
            continue
        slices = gt.brain_slices()
        settings[f"{gt.shape[0]}x{gt.shape[1]}"] = scale_set_for(*gt.shape[:2]).describe()
        gt_features: dict[str, np.ndarray] | None = None
        for report in reports:
            pred_folder = report.pred_dir / pid
            if not pred_folder.is_dir():
                problem(report, pid, f"patient {pid} has no prediction folder in {str(report.pred_dir)!r}", True)
                continue
            try:
                _scored_patient(report, gt, pred_folder, slices, features, fake[report.name])
            except EvaluationInputError as e:
                problem(report, pid, str(e))
                continue
            if features is not None:
                if gt_features is None:
                    gt_features = {m: features(axial_stack(unit_range_pair(gt, m, getattr(gt, m))[0], slices))
                                   for m in MODALITIES}
                for m in MODALITIES:
                    real[report.name][m].append(gt_features[m])
        if not gt.lesion[..., slices].any() and any(pid in r.patients for r in reports):
            without_lesion.append(pid)

    for report in reports:
        if not report.patients:
            raise EvaluationInputError(f"run {report.name}: no patient of {str(gt_dir)!r} could be scored "
                                       f"from {str(report.pred_dir)!r}")
        report.fid, report.fid_note = _fid(real[report.name], fake[report.name], features, fid_skip_reason)
    return Evaluation(Path(gt_dir), reports, without_lesion, settings, fid_skip_reason)


def _fid(real: dict[str, list], fake: dict[str, list], features: InceptionFeatures | None,
         skip_reason: str | None) -> tuple[dict[str, float | None], str | None]:
    if features is None:
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
