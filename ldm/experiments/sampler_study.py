"""Quality against time of the samplers (``scripts/sampler_study.py``): the same slices with DDIM and
DPM-Solver++ at several step counts, timed and scored.

Every setting (sampler, steps) samples every patient with ``scripts/sample_LDM.py``'s code and
options (:func:`ldm.inference.run_sampling.sample_run`; the same per-slice seeds, so every setting
starts each slice from the same x_T) into ``<outdir>/samples/<sampler>_<steps>``, timed (the
sampling loop with the volumes' writing, not the model's loading). Each sampling is a stage of the
runner whose record is ``timing.json``: a setting sampled before is not sampled again, and one
sampled with another seed, batch size or precision is refused rather than mixed in. Every setting is
then scored with ``scripts/evaluate.py``'s code twice: against the ground truth (Table 1's metrics)
and against the first setting, the reference (DDIM-200 by default, the paper's sampler; the
reference's DWI and ADC take the place of the ground truth's, its mask and lesion stay), with
per-patient paired differences against the reference and their 95% bootstrap intervals. Writes
``sampler_study.csv`` (one row per setting and map), ``paired_vs_reference.csv``,
``sampler_study.md`` (``sampler_study_report.py``) and ``sampler_study.png``
(``sampler_study_plot.py``), each atomically.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from ldm.data.record import MODALITIES
from ldm.evaluation.aggregate import per_patient, per_run
from ldm.evaluation.evaluator import evaluate_runs
from ldm.evaluation.paired import paired_statistics
from ldm.experiments.runner import ExperimentError, Runner, Stage, claim_folder
from ldm.experiments.sampler_study_report import COLUMNS, label, study_table
from ldm.inference.data_source import is_raw_cohort
from ldm.inference.run_sampling import sample_run
from ldm.inference.sampling_options import SAMPLER_CHOICES, sampling_parser
from ldm.io import atomic_write_text

KIND = "sampler study"
DEFAULT_SETTINGS = ("ddim:200", "ddim:100", "ddim:50", "ddim:20", "dpmsolver++:50", "dpmsolver++:20",
                    "dpmsolver++:10")
TIMING_FILE = "timing.json"


@dataclass
class SamplerStudy:
    """What the study samples and how (``scripts/sampler_study.py``'s options); ``settings`` are
    (sampler, steps), the first the reference; ``overrides`` go to every sampling as to sample_LDM.py."""

    run: str
    data: str
    gt: Path
    settings: list[tuple[str, int]]
    outdir: Path
    patients: list[str] | None = None
    batch_size: int = 32
    seed: int = 23
    precision: str = "32"
    device: str | None = None
    reference_split: str | None = None  # sample_LDM.py --reference
    progress: bool = True
    overrides: tuple[str, ...] = ()

    @property
    def reference(self) -> str:
        return label(*self.settings[0])

    def folder(self, name: str, steps: int) -> Path:
        return self.outdir / "samples" / f"{name}_{steps}"


@dataclass
class StudyFiles:
    csv: Path
    markdown: Path
    figure: Path


def parse_setting(text: str) -> tuple[str, int]:
    """``ddim:200`` -> ("ddim", 200)."""
    name, _, steps = text.partition(":")
    if name not in SAMPLER_CHOICES or not steps.isdigit() or int(steps) < 1:
        raise ExperimentError(f"--settings {text!r}: expected <sampler>:<steps> with a sampler of "
                              f"{', '.join(SAMPLER_CHOICES)} and steps >= 1")
    return name, int(steps)


def study_from_options(opt: argparse.Namespace, overrides: list[str]) -> SamplerStudy:
    """The study of ``scripts/sampler_study.py``'s parsed options; a mistake is one line
    (:class:`ExperimentError`), raised before anything is written."""
    settings = [parse_setting(s) for s in opt.settings]
    if len({label(*s) for s in settings}) != len(settings):
        raise ExperimentError("--settings lists a setting twice")
    if opt.gt:
        gt = Path(opt.gt)
    elif is_raw_cohort(opt.data):
        gt = Path(opt.data)
    else:
        raise ExperimentError("--data is a preprocessed split: give the raw cohort with its DWI/ADC as --gt")
    if Path(opt.resume).is_file() and not opt.outdir:
        raise ExperimentError("-r is a checkpoint file: give --outdir")
    outdir = Path(opt.outdir) if opt.outdir else Path(opt.resume) / "sampler_study"
    return SamplerStudy(run=opt.resume, data=opt.data, gt=gt, settings=settings, outdir=outdir, patients=opt.patients,
                        batch_size=opt.batch_size, seed=opt.seed, precision=opt.precision, device=opt.device,
                        reference_split=opt.reference, progress=not opt.no_progress, overrides=tuple(overrides))


def sample_setting(study: SamplerStudy, name: str, steps: int, runner: Runner) -> dict:
    """Sample one setting (or reuse it: its timing record holds the same settings); its timing."""
    out = study.folder(name, steps)
    args = ["-r", study.run, "--data", study.data, "--outdir", str(out), "--sampler", name, "--steps", str(steps),
            "--seed", str(study.seed), "--batch_size", str(study.batch_size), "--precision", study.precision]
    if study.device:
        args += ["--device", study.device]
    if study.patients:
        args += ["--patients", *study.patients]
    if study.reference_split:
        args += ["--reference", study.reference_split]
    if not study.progress:
        args.append("--no_progress")

    def sample_and_time() -> dict:
        report = sample_run(sampling_parser().parse_args(args), list(study.overrides))
        if not report.n_slices:  # every sample was there: sampled before, but its timing is lost
            raise ExperimentError(f"{str(out)!r} holds samples but no {TIMING_FILE}: remove the folder to time it "
                                  f"again")
        return {"slices": report.n_slices, "seconds": report.seconds,
                "seconds_per_slice": report.seconds / report.n_slices}

    # the batch size is a setting: it changes the time per slice, not the volumes
    settings = {"run": str(study.run), "data": str(study.data), "sampler": name, "steps": steps, "seed": study.seed,
                "batch_size": study.batch_size, "precision": study.precision, "patients": study.patients,
                "overrides": list(study.overrides)}
    return runner.run(Stage(f"{label(name, steps)}: sampling", out / TIMING_FILE, settings, action=sample_and_time,
                            verb="sampled and timed",
                            advice="remove the folder to sample and time it again, or give another --outdir"))


def reference_cohort(gt: Path, reference_samples: Path, out: Path, patients: list[str]) -> Path:
    """A cohort whose DWI and ADC are the reference setting's first sample (links), with the ground
    truth's mask, lesion and CTP, so that evaluate.py's code scores distance to that setting."""
    for pid in patients:
        folder = out / pid
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("mask", "lesion", "ctp"):
            source = gt / pid / f"{name}.nii.gz"
            if source.is_file() and not (folder / f"{name}.nii.gz").exists():
                (folder / f"{name}.nii.gz").symlink_to(source.resolve())
        for modality in MODALITIES:
            target = folder / f"{modality}.nii.gz"
            if target.is_symlink() or target.exists():
                target.unlink()
            target.symlink_to((reference_samples / pid / f"{modality}_sample_0.nii.gz").resolve())
    return out


def score(runs: dict[str, Path], gt: Path, patients: list[str] | None) -> tuple[list[dict], list[dict], list[dict]]:
    """(per-run records, per-patient records, slice rows) with evaluate.py's code and defaults."""
    evaluation = evaluate_runs(runs, gt, patients=patients, fid_skip_reason="not part of the sampler study",
                               log=lambda message: print(message))
    rows = [r for report in evaluation.runs for r in report.rows]
    return per_run(evaluation), per_patient(rows, evaluation.choices), rows


def setting_records(study: SamplerStudy, timings: dict[str, dict], vs_gt: dict, vs_ref: dict,
                    paired: dict) -> list[dict]:
    """The rows of ``sampler_study.csv``: per setting and map, its time, speed-up against the
    reference, scores against the ground truth (``gt_*``) and the reference (``ref_*``), and its
    per-patient lesion MAE difference against the reference with the 95% interval."""
    reference = study.reference
    records = []
    for name, steps in study.settings:
        key = label(name, steps)
        for modality in MODALITIES:
            row = {"setting": key, "sampler": name, "steps": steps, "modality": modality,
                   "seconds_per_slice": timings[key]["seconds_per_slice"],
                   "speedup_vs_reference": timings[reference]["seconds_per_slice"] / timings[key]["seconds_per_slice"],
                   **{f"gt_{c}": vs_gt[(key, modality)].get(c) for c, _, _ in COLUMNS}}
            ref_row = vs_ref.get((key, modality), {})
            row.update({f"ref_{c}": ref_row.get(c) for c, _, _ in COLUMNS})
            p = paired.get((key, modality))
            row.update({"lesion_mae_diff_vs_reference": p and p.difference,
                        "lesion_mae_diff_ci_low": p and p.ci_low, "lesion_mae_diff_ci_high": p and p.ci_high})
            records.append(row)
    return records


def run_sampler_study(study: SamplerStudy) -> StudyFiles:
    """Sample (or reuse), time and score every setting and write the study's files (module docstring)."""
    from ldm.experiments.sampler_study_plot import quality_time_png  # matplotlib, for the figure only

    out, reference = study.outdir, study.reference
    claim_folder(out, KIND, {}, adopt_unmarked=True)  # studies written before folders were marked
    runner = Runner("[study]")
    timings, folders = {}, {}
    for name, steps in study.settings:
        key = label(name, steps)
        folders[key] = study.folder(name, steps)
        runner.say(f"{key}: sampling into {folders[key]}")
        timings[key] = sample_setting(study, name, steps, runner)
        runner.say(f"{key}: {timings[key]['seconds_per_slice']:.3f} s per slice")

    per_run_gt, patient_records, slice_rows = score(folders, study.gt, study.patients)
    vs_gt = {(r["run"], r["modality"]): r for r in per_run_gt}
    scored = sorted({r["patient_id"] for r in patient_records})
    pairs = [(reference, key) for key in folders if key != reference]
    paired_results = paired_statistics(patient_records, slice_rows, pairs, seed=study.seed)
    paired = {(p.run_b, p.modality): p for p in paired_results if p.metric == "lesion_mae" and p.unit == "patient"}
    others = {k: v for k, v in folders.items() if k != reference}
    vs_ref = {}
    if others:
        cohort = reference_cohort(study.gt, folders[reference], out / "reference_as_truth", scored)
        vs_ref = {(r["run"], r["modality"]): r for r in score(others, cohort, scored)[0]}

    records = setting_records(study, timings, vs_gt, vs_ref, paired)
    files = StudyFiles(out / "sampler_study.csv", out / "sampler_study.md", out / "sampler_study.png")
    columns = list(records[0])
    atomic_write_text(files.csv, "\n".join([",".join(columns)] + [",".join("" if r[c] is None else str(r[c])
                                                                         for c in columns) for r in records]) + "\n")
    paired_columns = list(paired_results[0].to_record()) if paired_results else []
    atomic_write_text(out / "paired_vs_reference.csv", "\n".join(
        [",".join(paired_columns)] + [",".join(str(v) for v in p.to_record().values()) for p in paired_results]) + "\n")
    text = (f"# Sampler study: {study.run}\n\n{len(scored)} patients, {timings[reference]['slices']} slices per "
            f"setting, batch {study.batch_size}, precision {study.precision}, seed {study.seed}. Scores against the "
            f"ground truth (evaluate.py's defaults: brain-masked MAE and PSNR, pooled lesion MAE, all on [0, 1]); "
            f"\"vs {reference}\": per-patient lesion MAE difference relative to {reference}'s, with its 95% "
            f"bootstrap interval; \"to {reference}\": each setting scored against {reference}'s volumes.\n"
            + study_table(study.settings, timings, vs_gt, vs_ref, paired, reference) + "\n")
    atomic_write_text(files.markdown, text)
    quality_time_png(study.settings, timings, vs_gt, files.figure)
    return files
