"""CSV files and a markdown table in the layout of the paper's Table 1 (runs side by side)."""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

from ldm.evaluation import lesion_contrast
from ldm.evaluation.evaluator import Evaluation
from ldm.evaluation.paired import PAIRED_METRICS, PairedResult
from ldm.evaluation.volumes import MODALITIES
from ldm.io import atomic_write_text

# (column key, header, decimals, lower is better) in Table 1's order.
TABLE1_COLUMNS = (
    ("mae", "MAE↓", 3, True),
    ("lesion_mae", "Lesion MAE↓", 3, True),
    ("psnr", "PSNR↑", 2, False),
    ("ms_ssim_mean", "MS-SSIM↑", 3, False),
    ("fid", "FID↓", 2, True),
)
MISSING = "–"


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_csv(records: Sequence[dict], path: str | Path, columns: Sequence[str] | None = None) -> None:
    """Write ``records`` as CSV atomically; undefined values (None) are empty cells, never 'nan'."""
    columns = list(columns or (records[0].keys() if records else []))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow([_cell(record.get(c)) for c in columns])
    atomic_write_text(path, buffer.getvalue())


def _ranked(values: list[float | None], lower_is_better: bool) -> list[float]:
    """Distinct values, best first (ties share a rank)."""
    return sorted({v for v in values if v is not None}, reverse=not lower_is_better)


def _highlight(text: str, value: float, ranked: list[float], n_runs: int) -> str:
    """As in the paper's tables: best in bold, second best underlined (with three runs or more)."""
    if n_runs >= 2 and len(ranked) >= 2 and value == ranked[0]:
        return f"**{text}**"
    if n_runs >= 3 and len(ranked) >= 3 and value == ranked[1]:
        return f"<u>{text}</u>"
    return text


def table1_markdown(summary: Sequence[dict], evaluation: Evaluation) -> str:
    """Table 1 layout: one row per run, DWI then ADC columns; best in bold, second underlined."""
    runs = [r.name for r in evaluation.runs]
    by_key = {(s["run"], s["modality"]): s for s in summary}
    n_cols = len(TABLE1_COLUMNS)
    groups = ["Model"] + [c for m in MODALITIES for c in [m.upper()] + [""] * (n_cols - 1)]
    metric_names = [""] + [h for _, h, _, _ in TABLE1_COLUMNS] * len(MODALITIES)
    lines = ["| " + " | ".join(groups) + " |", "|" + "---|" * len(groups),
             "| " + " | ".join(metric_names) + " |"]
    ranks = {}
    for modality in MODALITIES:
        for key, _, decimals, lower in TABLE1_COLUMNS:
            values = [by_key[(r, modality)][key] for r in runs]
            ranks[(modality, key)] = _ranked([None if v is None else round(v, decimals) for v in values], lower)
    for run in runs:
        cells = []
        for modality in MODALITIES:
            for key, _, decimals, _ in TABLE1_COLUMNS:
                value = by_key[(run, modality)][key]
                if value is None:
                    cells.append(MISSING)
                    continue
                cells.append(_highlight(f"{value:.{decimals}f}", round(value, decimals), ranks[(modality, key)],
                                        len(runs)))
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in table_notes(summary, evaluation)) + "\n"


def table_notes(summary: Sequence[dict], evaluation: Evaluation) -> list[str]:
    """The footnotes that make the table reproducible: what was scored, and what was left out."""
    rule = ("the reference's slice rule (DWI, ADC and CTP each with signal inside the brain mask)"
            if evaluation.slice_rule == "reference" else "every slice with brain (non-empty mask)")
    notes = [
        f"Images mapped to [0, 1] per patient with the ground truth's range under the {evaluation.window.describe()} "
        "intensity window (negatives to 0, zero outside the brain mask), the training normalisation; the same "
        "range is applied to the prediction.",
        f"Metrics per axial slice on the slices kept by {rule}; means over all slices of all patients "
        f"(and samples). {evaluation.choices.describe()}. MS-SSIM on the whole slice. The CSV files hold "
        f"every variant (mae_brain, mae_slice, psnr_brain, psnr_slice, lesion_mae_pooled, lesion_mae_slice_mean).",
        "MS-SSIM (torchmetrics): " + "; ".join(f"{size}: {desc}" for size, desc in
                                              sorted(evaluation.ms_ssim_settings.items())) + ".",
    ]
    if evaluation.patients_without_ctp:
        notes.append(f"{len(evaluation.patients_without_ctp)} patient(s) without ctp.nii.gz in the ground truth: "
                     f"their slices were selected on DWI and ADC only ({', '.join(evaluation.patients_without_ctp)}).")
    if evaluation.patients_without_lesion:
        ids = evaluation.patients_without_lesion
        notes.append(f"{len(ids)} patient(s) without lesion in the scored slices (no lesion MAE, left out "
                     f"of its mean): {', '.join(ids)}.")
    failed = []
    for s in summary:
        if s["failed_share"] is not None:
            failed.append(f"{s['run']} {s['modality'].upper()} {100 * s['failed_share']:.1f}% "
                          f"({s['n_failed']}/{s['n_slices']})")
    if failed:
        notes.append(f"Failed slices (synthesised brain mean below {evaluation.choices.failed_ratio:g} x the ground "
                     f"truth's): " + ", ".join(failed) + ".")
    for report in evaluation.runs:
        lesion_slices = {s["modality"]: s["n_lesion_slices"] for s in summary if s["run"] == report.name}
        slices = {s["modality"]: s["n_slices"] for s in summary if s["run"] == report.name}
        text = (f"{report.name}: {len(report.patients)} patient(s), {slices.get('dwi', 0)} slice(s) per modality "
                f"({lesion_slices.get('dwi', 0)} with lesion) from {report.pred_dir}")
        if report.missing:
            text += f"; missing predictions: {', '.join(report.missing)}"
        if report.excluded:
            text += "; excluded: " + "; ".join(report.excluded.values())
        if report.not_common:
            text += "; scored but left out so that every run has the same patients: " + "; ".join(
                f"{pid} ({why})" for pid, why in report.not_common.items())
        if report.unknown:
            text += f"; predictions without ground truth (ignored): {', '.join(report.unknown)}"
        notes.append(text + ".")
        if report.fid_note and report.fid_note != evaluation.fid_skip_reason:
            notes.append(f"FID for {report.name} skipped: {report.fid_note}.")
    if evaluation.fid_skip_reason:
        notes.append(f"FID skipped: {evaluation.fid_skip_reason}.")
    return notes


def contrast_rows(evaluation: Evaluation) -> list[dict]:
    """Per-patient lesion contrast of the ground truth, its windowed version and every run."""
    rows = [row for rows in evaluation.truth_contrast.values() for row in rows]
    for report in evaluation.runs:
        rows += lesion_contrast.per_patient(report.contrast)
    return rows


def _pct(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:.0f}%"


def _num(value: float | None, decimals: int) -> str:
    return MISSING if value is None else f"{value:.{decimals}f}"


def contrast_markdown(evaluation: Evaluation) -> str:
    """The lesion in physical units, one row per source: the ground truth, the ceilings, the runs."""
    per_patient = contrast_rows(evaluation)
    names = [*evaluation.truth_contrast, *(r.name for r in evaluation.runs)]
    ceilings = {r.name for r in evaluation.runs if r.ceiling}
    lines = ["| Source | DWI lesion / normal | DWI excess kept | ADC lesion mean | ADC lesion / normal | "
             "Lesion ADC < 620 | Share kept | Core in lesion | Core (ml) |", "|" + "---|" * 9]
    for name in names:
        s = lesion_contrast.summarise([r for r in per_patient if r["run"] == name])
        label = f"{name} (ceiling)" if name in ceilings else name
        lines.append(f"| {label} | {_num(s['dwi_lesion_ratio'], 2)} | {_pct(s['median_dwi_excess_kept'])} | "
                     f"{_num(s['adc_lesion_mean'], 0)} | {_num(s['adc_lesion_ratio'], 2)} | "
                     f"{_pct(s['lesion_core_share'])} | {_pct(s['median_core_share_kept'])} | "
                     f"{s['n_with_lesion_core']}/{s['n_lesion_patients']} | {_num(s['core_ml'], 1)} |")
    n = sum(1 for r in evaluation.truth_contrast.get("ground truth", []) if r.get("lesion_voxels"))
    notes = [
        f"Physical units on the scored slices with lesion of the {n} lesion patient(s): means over patients (each "
        "patient's mean over its samples); DWI and ADC lesion / normal = lesion mean over the mean of the brain "
        "outside the lesion on the same slices; ADC in 10^-6 mm^2/s; lesion ADC < 620 = share of lesion voxels "
        "below the RAPID core threshold; core in lesion = patients with any lesion voxel below it; core (ml) = "
        "ADC < 620 in the whole brain, all patients.",
        "DWI excess kept = median over patients of (ratio - 1) / (true ratio - 1); share kept = median of the "
        "share below 620 over the truth's. Ceilings: the ground truth through the training window (clipped to "
        f"the {evaluation.window.name} window's range) is what every model is trained to reproduce; a first-stage "
        "reconstruction D(E(x)) is what a latent model can at best write.",
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def _fmt(value: float, metric: str) -> str:
    decimals = 2 if metric == "psnr" else 3
    return f"{value:.{decimals}f}"


def paired_markdown(results: Sequence[PairedResult]) -> str:
    """One table per compared pair: both runs' means, B - A with its 95% bootstrap interval, the
    Wilcoxon p-value and how many units favour B; per patient, then per lesion slice."""
    labels = {key: label for key, label, _ in PAIRED_METRICS}
    lines: list[str] = []
    pairs = list(dict.fromkeys((r.run_a, r.run_b) for r in results))
    for a, b in pairs:
        rows = [r for r in results if (r.run_a, r.run_b) == (a, b)]
        lines += [f"#### {b} vs {a} (difference {b} − {a})", "",
                  f"| Unit | Metric | {a} | {b} | Difference [95% CI] | Wilcoxon p | {b} better |",
                  "|---|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (r.unit != "patient", MODALITIES.index(r.modality))):
            label = f"{r.modality.upper()} {labels.get(r.metric, r.metric)}"
            p = "–" if r.p_value is None else f"{r.p_value:.3g}"
            lines.append(f"| {r.unit} (n={r.n}) | {label} | {_fmt(r.mean_a, r.metric)} | {_fmt(r.mean_b, r.metric)} | "
                         f"{_fmt(r.difference, r.metric)} [{_fmt(r.ci_low, r.metric)}, {_fmt(r.ci_high, r.metric)}] | "
                         f"{p} | {r.n_b_better}/{r.n} |")
        lines.append("")
    if pairs:
        lines.append("Per patient: each patient's mean in both runs (bootstrap over patients, Wilcoxon over "
                     "patients). Per lesion slice: the lesion MAE of each lesion-bearing slice (cluster bootstrap "
                     "over patients; the Wilcoxon p-value over slices treats them as independent, which they are "
                     "not, so it is optimistic). An interval that contains 0 does not show a difference.")
    return "\n".join(lines) + "\n"
