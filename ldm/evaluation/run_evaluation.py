"""What ``scripts/evaluate.py`` does with its options: score, compare, tabulate, draw, read out.

The script parses the command line; this module runs it: Table 1 (``evaluator``, ``aggregate``,
``tables``), the lesion contrast in physical units beside it (``lesion_contrast``), the paired
statistics (``paired``), Fig. 3-style panels (``panels``) and, with ``--clinical``, the clinical
read-out (``clinical_report``). Every input error is an :class:`EvaluationInputError` (one line).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ldm.data.transforms.intensity_window import IntensityWindow, WindowError
from ldm.evaluation.volumes import EvaluationInputError

RECONSTRUCTION_NAME = "VQGAN reconstruction"


def parse_runs(groups: list[list[str]]) -> dict[str, Path]:
    """``NAME=DIR`` or ``DIR`` (named after the folder) -> {name: folder}; names must be unique."""
    runs: dict[str, Path] = {}
    for item in (i for group in groups for i in group):
        name, sep, folder = item.partition("=")
        if not sep:
            name, folder = Path(item.rstrip("/")).name, item
        if not name or not folder:
            raise EvaluationInputError(f"--pred {item!r}: expected NAME=DIR or DIR")
        if name in runs:
            raise EvaluationInputError(f"--pred: the run name {name!r} is given twice (use NAME=DIR to tell them apart)")
        runs[name] = Path(folder)
    return runs


def parse_pair(text: str) -> tuple[str, str]:
    """``A:B`` -> (A, B)."""
    a, sep, b = text.partition(":")
    if not sep or not a or not b:
        raise ValueError(f"--pairs {text!r}: expected RUN_A:RUN_B")
    return a, b


def largest_lesions(lesion_voxels: dict[str, int], patients: list[str], k: int) -> list[str]:
    """The ``k`` patients with the largest lesion (voxels as evaluation read them: > 0.5, inside the
    brain), patients without lesion last."""
    return sorted(patients, key=lambda p: (-lesion_voxels.get(p, 0), p))[:k]


def run_evaluation(opt: argparse.Namespace) -> int:
    """Everything ``scripts/evaluate.py`` writes (its module doc); returns the exit code."""
    import torch

    from ldm.evaluation.aggregate import per_patient, per_run
    from ldm.evaluation.choices import MetricChoices
    from ldm.evaluation.evaluator import evaluate_runs
    from ldm.evaluation.fid import InceptionFeatures
    from ldm.evaluation.paired import paired_statistics, run_pairs
    from ldm.evaluation.panels import render_panels
    from ldm.evaluation.tables import contrast_markdown, contrast_rows, paired_markdown, table1_markdown, write_csv
    from ldm.io import atomic_write_text

    start = time.time()
    runs = parse_runs(opt.pred)
    ceilings = []
    if getattr(opt, "reconstruction", None):
        if RECONSTRUCTION_NAME in runs:
            raise EvaluationInputError(f"--pred: the run name {RECONSTRUCTION_NAME!r} is taken by --reconstruction")
        runs[RECONSTRUCTION_NAME] = Path(opt.reconstruction)
        ceilings.append(RECONSTRUCTION_NAME)
    try:
        window = IntensityWindow.from_arguments(opt.window, opt.adc_window, opt.dwi_headroom)
    except WindowError as e:
        raise EvaluationInputError(f"--window: {e}") from None
    compared = [name for name in runs if name not in ceilings]
    try:
        choices = MetricChoices(opt.metric_region, opt.lesion_mae, opt.failed_ratio)
        pairs = run_pairs(compared, None if opt.pairs is None else [parse_pair(p) for p in opt.pairs])
    except ValueError as e:
        raise EvaluationInputError(str(e)) from e
    if opt.bootstrap < 100:
        raise EvaluationInputError(f"--bootstrap must be at least 100 resamples, got {opt.bootstrap}")
    out = Path(opt.out)
    if opt.clinical:  # refuse bad settings before the long part
        from ldm.evaluation.clinical_report import check_options
        check_options(opt.adc_core_threshold, opt.min_cluster_ml, opt.core_threshold_ml)
    features, skip_reason = None, None
    if opt.inception_weights:
        device = opt.device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            features = InceptionFeatures(opt.inception_weights, device=device)
        except (FileNotFoundError, ValueError) as e:
            raise EvaluationInputError(str(e)) from e
    else:
        skip_reason = "no Inception weights given (--inception_weights PATH to a TorchScript Inception-v3)"
        print(f"FID skipped: {skip_reason}")

    evaluation = evaluate_runs(runs, opt.gt, features=features, fid_skip_reason=skip_reason,
                               patients=opt.patients, strict=opt.strict, slice_rule=opt.slices, choices=choices,
                               window=window, ceilings=ceilings)
    slices = [row for report in evaluation.runs for row in report.rows]
    patients = per_patient(slices, choices)
    summary = per_run(evaluation)
    paired = paired_statistics(patients, slices, pairs, n_boot=opt.bootstrap)
    write_csv(slices, out / "metrics_per_slice.csv")
    write_csv(patients, out / "metrics_per_patient.csv")
    write_csv(summary, out / "metrics_summary.csv")
    write_csv(contrast_rows(evaluation), out / "lesion_contrast.csv")
    write_csv([r.to_record() for r in paired], out / "paired_differences.csv",
              columns=None if paired else ["run_a", "run_b", "modality", "metric", "unit", "n"])
    markdown = table1_markdown(summary, evaluation)
    markdown += "\n### Lesion contrast in physical units\n\n" + contrast_markdown(evaluation)
    if paired:
        markdown += "\n### Paired differences\n\n" + paired_markdown(paired)
    atomic_write_text(out / "table1.md", markdown)

    scored = sorted(set.intersection(*(set(r.patients) for r in evaluation.runs)))
    chosen = opt.panels if opt.panels else largest_lesions(evaluation.lesion_voxels, scored, max(opt.n_panels, 0))
    unknown = [p for p in chosen if p not in scored]
    if unknown:
        print(f"panels: patient(s) {', '.join(unknown)} were not scored in every run: not rendered")
        chosen = [p for p in chosen if p in scored]
    panel_paths = [render_panels(opt.gt, runs, [pid], out / "panels" / f"{pid}.png", opt.panel_sample)
                   for pid in chosen]
    if len(chosen) > 1:
        panel_paths.append(render_panels(opt.gt, runs, chosen, out / "panels" / "fig3.png", opt.panel_sample))

    clinical_paths = []
    if opt.clinical:
        from ldm.evaluation.clinical_report import clinical_markdown, collect, write_clinical
        clinical = collect({r.name: (r.pred_dir, r.patients) for r in evaluation.runs}, opt.gt,
                           threshold=opt.adc_core_threshold, min_cluster_ml=opt.min_cluster_ml,
                           core_threshold_ml=opt.core_threshold_ml, window=window)
        clinical_paths = write_clinical(clinical, out)

    print(markdown)
    if opt.clinical:
        print(clinical_markdown(clinical))
        print(f"clinical read-out: {', '.join(str(p) for p in clinical_paths)}")
    print(f"wrote {out / 'table1.md'}, {out / 'metrics_summary.csv'}, {out / 'metrics_per_patient.csv'}, "
          f"{out / 'metrics_per_slice.csv'}, {out / 'lesion_contrast.csv'}, {out / 'paired_differences.csv'}")
    for path in panel_paths:
        print(f"panel: {path}")
    print(f"evaluation took {time.time() - start:.1f} s")
    return 0
