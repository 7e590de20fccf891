"""Score synthesised DWI / ADC volumes against the ground truth with the metrics of Table 1.

    python scripts/evaluate.py --pred cLDM=samples/cldm cLDM-PT=samples/cldm_pt \\
        --gt data/raw/test --out results/table1 [--inception_weights inception-2015-12-05.pt]

Predictions: ``<pred>/<patient_id>/{dwi,adc}_sample_{k}.nii.gz`` (what scripts/sample_LDM.py
writes); ground truth: the raw cohort ``<gt>/<patient_id>/{dwi,adc,mask,lesion,ctp}.nii.gz``. Both
are mapped to [0, 1] with the ground truth's per-patient 0.5/99.5 percentile window inside the
brain mask (the training normalisation) and scored on the axial slices that preprocessing keeps
(``--slices``, the reference's rule by default). MAE and PSNR are reported over the brain mask by
default (``--metric_region slice``: the whole slice), the lesion MAE pooled over all lesion voxels
(``--lesion_mae slice_mean``: the mean of per-slice values); the CSV files hold every variant.
Runs are scored on the patients that all of them have; each pair of runs gets paired differences
per patient and per lesion slice with 95% bootstrap intervals and Wilcoxon p-values
(``paired_differences.csv`` and under the table). Writes ``metrics_per_slice.csv``,
``metrics_per_patient.csv``, ``metrics_summary.csv``, ``paired_differences.csv``, ``table1.md``
and Fig. 3-style panels ``panels/*.png`` into ``--out``. Input errors end with one line and exit
code 2; a patient that cannot be scored is reported and left out of every run (``--strict`` makes
it an error).

``--clinical`` adds the clinical read-out (ischemic core volume from ADC, its agreement with the
true ADC, the "core < 70 ml" decision, and the voxel std maps of ``sample_LDM.py --summary`` where
present): ``clinical_per_patient.csv``, ``clinical_agreement.csv``, ``clinical.md``,
``bland_altman.png`` [, ``uncertainty.csv``, ``uncertainty.png``] (see ldm/evaluation/clinical_report.py).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EXIT_USER_ERROR = 2


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""


def get_parser() -> argparse.ArgumentParser:
    from ldm.evaluation.clinical import ADC_CORE_THRESHOLD, CORE_THRESHOLD_ML

    p = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--pred", nargs="+", action="append", required=True, metavar="[NAME=]DIR",
                   help="prediction folder(s), optionally named (cLDM=DIR); repeat or list several "
                        "to put runs side by side")
    p.add_argument("--gt", required=True, help="raw ground-truth cohort folder (one folder per patient)")
    p.add_argument("--out", required=True, help="output folder for CSV, markdown and panels")
    p.add_argument("--patients", nargs="+", default=None, help="evaluate only these patients")
    p.add_argument("--inception_weights", default=None,
                   help="local TorchScript Inception-v3 (e.g. inception-2015-12-05.pt) for FID; "
                        "without it FID is skipped and the table says so")
    p.add_argument("--device", default=None, help="device for the Inception network (default: cuda if available)")
    p.add_argument("--panels", nargs="+", default=None, metavar="PATIENT_ID",
                   help="patients to render as Fig. 3-style panels")
    p.add_argument("--n_panels", type=int, default=3,
                   help="without --panels: render this many patients, largest lesions first (0: none)")
    p.add_argument("--panel_sample", type=int, default=0, help="which sample k to show in the panels")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first patient that cannot be scored instead of leaving it out")
    p.add_argument("--slices", choices=("reference", "brain"), default="reference",
                   help="slices to score: the reference's rule (DWI, ADC and CTP with signal in the brain, as "
                        "preprocessing keeps by default) or every slice with brain")
    p.add_argument("--metric_region", choices=("brain", "slice"), default="brain",
                   help="MAE and PSNR of the table over the brain mask or the whole slice (field-of-view dependent)")
    p.add_argument("--lesion_mae", choices=("pooled", "slice_mean"), default="pooled",
                   help="lesion MAE of the table: pooled over all lesion voxels, or the mean of per-slice values")
    p.add_argument("--failed_ratio", type=float, default=0.5,
                   help="a slice whose synthesised brain mean is below this fraction of the ground truth's "
                        "counts as failed (dark); the share is reported")
    p.add_argument("--pairs", nargs="+", default=None, metavar="A:B",
                   help="run pairs for the paired statistics (B - A); default: every pair in the order given")
    p.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples of the paired intervals")
    p.add_argument("--clinical", action="store_true",
                   help="also write the clinical read-out: core volume from ADC, agreement, uncertainty")
    p.add_argument("--adc_core_threshold", type=float, default=ADC_CORE_THRESHOLD,
                   help="core = ADC below this (10^-6 mm^2/s) inside the brain mask; 620 is RAPID's "
                        "(Purushotham et al., Int J Stroke 2015)")
    p.add_argument("--min_cluster_ml", type=float, default=None,
                   help="drop core clusters (26-connected) smaller than this many ml (None: keep all)")
    p.add_argument("--core_threshold_ml", type=float, default=CORE_THRESHOLD_ML,
                   help="decision compared: core below this many ml (70: DEFUSE 3 eligibility)")
    return p


def parse_runs(groups: list[list[str]]) -> dict[str, Path]:
    """``NAME=DIR`` or ``DIR`` (named after the folder) -> {name: folder}; names must be unique."""
    from ldm.evaluation.volumes import EvaluationInputError

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


def run(opt: argparse.Namespace) -> int:
    import torch

    from ldm.evaluation.aggregate import per_patient, per_run
    from ldm.evaluation.choices import MetricChoices
    from ldm.evaluation.evaluator import evaluate_runs
    from ldm.evaluation.fid import InceptionFeatures
    from ldm.evaluation.paired import paired_statistics, run_pairs
    from ldm.evaluation.panels import render_panels
    from ldm.evaluation.tables import paired_markdown, table1_markdown, write_csv
    from ldm.evaluation.volumes import EvaluationInputError
    from ldm.io import atomic_write_text

    start = time.time()
    runs = parse_runs(opt.pred)
    try:
        choices = MetricChoices(opt.metric_region, opt.lesion_mae, opt.failed_ratio)
        pairs = run_pairs(list(runs), None if opt.pairs is None else [parse_pair(p) for p in opt.pairs])
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
                               patients=opt.patients, strict=opt.strict, slice_rule=opt.slices, choices=choices)
    slices = [row for report in evaluation.runs for row in report.rows]
    patients = per_patient(slices, choices)
    summary = per_run(evaluation)
    paired = paired_statistics(patients, slices, pairs, n_boot=opt.bootstrap)
    write_csv(slices, out / "metrics_per_slice.csv")
    write_csv(patients, out / "metrics_per_patient.csv")
    write_csv(summary, out / "metrics_summary.csv")
    write_csv([r.to_record() for r in paired], out / "paired_differences.csv",
              columns=None if paired else ["run_a", "run_b", "modality", "metric", "unit", "n"])
    markdown = table1_markdown(summary, evaluation)
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
                           core_threshold_ml=opt.core_threshold_ml)
        clinical_paths = write_clinical(clinical, out)

    print(markdown)
    if opt.clinical:
        print(clinical_markdown(clinical))
        print(f"clinical read-out: {', '.join(str(p) for p in clinical_paths)}")
    print(f"wrote {out / 'table1.md'}, {out / 'metrics_summary.csv'}, {out / 'metrics_per_patient.csv'}, "
          f"{out / 'metrics_per_slice.csv'}, {out / 'paired_differences.csv'}")
    for path in panel_paths:
        print(f"panel: {path}")
    print(f"evaluation took {time.time() - start:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    from ldm.evaluation.volumes import EvaluationInputError

    opt = get_parser().parse_args(argv)
    try:
        return run(opt)
    except EvaluationInputError as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
