"""The lambda sweep's table: Table 2 of the paper gathered from the runs' ``evaluate.py`` summaries.

``<outdir>/table2.csv`` and ``<outdir>/table2.md`` (written atomically) hold one row per scored run:
the model, the two weights of Eq. 8, then MAE, lesion MAE, PSNR, MS-SSIM and FID for DWI and for
ADC (evaluate.py's table variants: brain-masked MAE and PSNR, pooled lesion MAE); the markdown sets
the best value of a column in bold and, under the table, every run's per-patient differences against
the control (``eval/vs_control/paired_differences.csv``).
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from ldm.data.record import MODALITIES
from ldm.experiments.lambda_sweep_plan import SweepError, SweepRun, SweepSettings, fmt
from ldm.io import atomic_write_text

# (column in evaluate.py's metrics_summary.csv, header in Table 2); mae, lesion_mae and psnr are the
# table variants evaluate.py selects (brain-masked MAE/PSNR, pooled lesion MAE by default)
METRICS = (("mae", "MAE↓"), ("lesion_mae", "Lesion MAE↓"), ("psnr", "PSNR↑"),
           ("ms_ssim_mean", "MS-SSIM↑"), ("fid", "FID↓"))
DECIMALS = {"mae": 3, "lesion_mae": 3, "psnr": 2, "ms_ssim_mean": 3, "fid": 2}


def control_markdown(path: Path) -> str:
    """Per-patient lesion MAE and MAE differences of each run against the control (paired_differences.csv)."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["unit"] == "patient" and r["metric"] in ("lesion_mae", "mae")]
    if not rows:
        return ""
    lines = ["", "Against the control (cLDM continued, same steps without the image terms): run − control per "
             "patient, mean [95% bootstrap CI], Wilcoxon p", "",
             "| run | " + " | ".join(f"{m.upper()} {label}" for m in MODALITIES for label in ("Lesion MAE", "MAE"))
             + " |",
             "|---|" + "---|" * 4]
    for run in dict.fromkeys(r["run_b"] for r in rows):
        cells = []
        for m in MODALITIES:
            for metric in ("lesion_mae", "mae"):
                r = next((r for r in rows if r["run_b"] == run and r["modality"] == m and r["metric"] == metric), None)
                cells.append("–" if r is None else f"{float(r['difference']):+.3f} [{float(r['ci_low']):+.3f}, "
                             f"{float(r['ci_high']):+.3f}], p {float(r['p_value']):.2g}")
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def read_summary(path: Path, run_name: str) -> dict[str, dict[str, float | None]]:
    """{modality: {metric: value}} from evaluate.py's metrics_summary.csv (empty cell -> None)."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("run") == run_name]
    scores: dict[str, dict[str, float | None]] = {}
    for row in rows:
        scores[row["modality"]] = {key: float(row[key]) if row.get(key) not in (None, "") else None
                                   for key, _ in METRICS}
    missing = [m for m in MODALITIES if m not in scores]
    if missing:
        raise SweepError(f"{path}: no row for run {run_name!r} and modality {missing[0]!r}")
    return scores


def table_records(runs: Sequence[SweepRun], scores: dict[str, dict]) -> list[dict]:
    """One record per scored run, in the runs' order: model, weights, run, then ``<modality>_<metric>``."""
    records = []
    for run in runs:
        if run.name not in scores:
            continue
        record: dict = {"model": run.label, "lambda_image": fmt(run.lambda_image),
                        "lambda_lesion": fmt(run.lambda_lesion), "run": run.name}
        for modality in MODALITIES:
            for key, _ in METRICS:
                record[f"{modality}_{key}"] = scores[run.name][modality][key]
        records.append(record)
    return records


def table2_markdown(records: Sequence[dict]) -> str:
    """Table 2's layout: the two weights, then DWI and ADC metrics; the best value of a column in bold
    (ties all bold)."""
    header = ["Model", "λ_image", "λ_lesion"] + [f"{m.upper()} {h}" for m in MODALITIES for _, h in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best = {}
    for m in MODALITIES:
        for key, h in METRICS:
            values = [round(r[f"{m}_{key}"], DECIMALS[key]) for r in records if r[f"{m}_{key}"] is not None]
            if len(set(values)) > 1:  # nothing to single out when every row shows the same value
                best[f"{m}_{key}"] = max(values) if "↑" in h else min(values)
    for r in records:
        cells = [r["model"], r["lambda_image"], r["lambda_lesion"]]
        for m in MODALITIES:
            for key, _ in METRICS:
                v = r[f"{m}_{key}"]
                if v is None:
                    cells.append("–")
                    continue
                text = f"{v:.{DECIMALS[key]}f}"
                cells.append(f"**{text}**" if best.get(f"{m}_{key}") == round(v, DECIMALS[key]) else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(s: SweepSettings, runs: Sequence[SweepRun]) -> tuple[Path, Path]:
    """Write ``table2.md`` and ``table2.csv`` from the runs scored so far; their paths. No scored run
    is a :class:`SweepError`."""
    scores = {}
    for run in runs:
        path = s.eval_dir(run) / "metrics_summary.csv"
        if path.is_file():
            scores[run.name] = read_summary(path, run.name)
    records = table_records(runs, scores)
    if not records:
        raise SweepError(f"no scored run under {s.outdir / 'eval'}: nothing to tabulate")
    columns = list(records[0].keys())
    lines = [",".join(columns)] + [",".join("" if r[c] is None else str(r[c]) for c in columns) for r in records]
    csv_path, md_path = s.outdir / "table2.csv", s.outdir / "table2.md"
    atomic_write_text(csv_path, "\n".join(lines) + "\n")
    notes = [f"- {s.sampler} with {s.steps} steps; samples under {s.outdir / 'samples'}; per-run scores under "
             f"{s.outdir / 'eval'} (see each table1.md there for what was scored and left out). MAE and PSNR over the "
             f"brain mask, lesion MAE pooled over all lesion voxels (evaluate.py's defaults)."]
    if any(r["dwi_fid"] is None for r in records):
        notes.append("- FID skipped where '–' (no Inception weights; see --inception_weights).")
    paired = s.vs_control_dir / "paired_differences.csv"
    versus = control_markdown(paired) if paired.is_file() else ""
    atomic_write_text(md_path, table2_markdown(records) + "\n" + "\n".join(notes) + "\n" + versus)
    return md_path, csv_path
