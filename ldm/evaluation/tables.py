"""CSV files and a markdown table in the layout of the paper's Table 1 (runs side by side)."""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

from ldm.evaluation.evaluator import Evaluation
from ldm.evaluation.volumes import MODALITIES
from ldm.io import atomic_write_text

# (column key, header, decimals, lower is better) in Table 1's order.
TABLE1_COLUMNS = (
    ("mae_mean", "MAE↓", 3, True),
    ("lesion_mae_mean", "Lesion MAE↓", 3, True),
    ("psnr_mean", "PSNR↑", 2, False),
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
    notes = [
        "Images mapped to [0, 1] per patient with the ground truth's 0.5/99.5 percentile window inside "
        "the brain mask (negatives to 0, zero outside the mask), the training normalisation; the same "
        "window is applied to the prediction.",
        "Metrics per axial brain slice (non-empty mask); means over all slices of all patients (and samples). "
        "Lesion MAE = sum(M|x - x_hat|) / sum(M) per slice, averaged over slices with lesion only.",
        "MS-SSIM (torchmetrics): " + "; ".join(f"{size}: {desc}" for size, desc in
                                              sorted(evaluation.ms_ssim_settings.items())) + ".",
    ]
    if evaluation.patients_without_lesion:
        ids = evaluation.patients_without_lesion
        notes.append(f"{len(ids)} patient(s) without lesion in the scored slices (no lesion MAE, left out "
                     f"of its mean): {', '.join(ids)}.")
    for report in evaluation.runs:
        lesion_slices = {s["modality"]: s["n_lesion_slices"] for s in summary if s["run"] == report.name}
        slices = {s["modality"]: s["n_slices"] for s in summary if s["run"] == report.name}
        text = (f"{report.name}: {len(report.patients)} patient(s), {slices.get('dwi', 0)} slice(s) per modality "
                f"({lesion_slices.get('dwi', 0)} with lesion) from {report.pred_dir}")
        if report.missing:
            text += f"; missing predictions: {', '.join(report.missing)}"
        if report.excluded:
            text += "; excluded: " + "; ".join(report.excluded.values())
        if report.unknown:
            text += f"; predictions without ground truth (ignored): {', '.join(report.unknown)}"
        notes.append(text + ".")
        if report.fid_note and report.fid_note != evaluation.fid_skip_reason:
            notes.append(f"FID for {report.name} skipped: {report.fid_note}.")
    if evaluation.fid_skip_reason:
        notes.append(f"FID skipped: {evaluation.fid_skip_reason}.")
    return notes
