"""The cohort report of a preprocessed split (``cohort_report.csv`` beside ``index.json``), in the
spirit of nnU-Net's dataset check: one row per patient with what its maps measured on reading
(brain medians of DWI and ADC, the CTP's baseline, corrections, the DWI/ADC contrast verdict), its
voxel size, slice counts and lesion volume, and flags where a value stands out.

Two kinds of flags (docs/data.md, "Plausibility checks"): a value outside the range of normal
tissue (accepted by the checks, but unusual: ADC median outside ``NORMAL_ADC``, CTP baseline outside
``NORMAL_BASELINE_HU``), and a value far from the rest of the cohort: a modified z-score
``0.6745 |x - median| / MAD`` above ``OUTLIER_Z`` (Iglewicz and Hoaglin 1993) once the cohort has
``MIN_PATIENTS``; where the cohort agrees exactly (MAD 0, e.g. one voxel size), any value more than
``EXACT_TOLERANCE`` (relative) away from it.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ldm.data.record import PatientRecord
from ldm.io import atomic_write_text

REPORT_FILE = "cohort_report.csv"
NORMAL_ADC = (600.0, 1400.0)  # brain median, 10^-6 mm^2/s: tissue with some CSF
NORMAL_BASELINE_HU = (20.0, 60.0)
OUTLIER_Z = 3.5
MIN_PATIENTS = 5
EXACT_TOLERANCE = 0.01
COLUMNS = ("patient_id", "has_mri", "mask_source", "voxel_x", "voxel_y", "voxel_z", "source_slices", "kept_slices",
           "lesion_ml", "dwi_median", "adc_median", "ctp_baseline_hu", "ctp_empty_share", "dwi_adc_contrast",
           "corrections", "flags")
# fields compared across the cohort; those whose cohort may agree exactly get the exact rule
COMPARED = ("dwi_median", "adc_median", "ctp_baseline_hu", "voxel_x", "voxel_y", "voxel_z", "kept_slices",
            "lesion_ml")
EXACT = ("voxel_x", "voxel_y", "voxel_z", "kept_slices")


def patient_row(record: PatientRecord) -> dict:
    """The report's row of one preprocessed patient."""
    checks = record.checks or {}
    spacing = record.spacing or record.zooms
    corrections = checks.get("corrections", {})
    return {
        "patient_id": record.patient_id, "has_mri": record.has_mri, "mask_source": record.mask_source,
        "voxel_x": round(float(record.zooms[0]), 4), "voxel_y": round(float(record.zooms[1]), 4),
        "voxel_z": round(float(record.zooms[2]), 4), "source_slices": int(record.source_shape[2]),
        "kept_slices": record.n_slices,
        "lesion_ml": round(sum(record.lesion_voxels) * float(np.prod(spacing)) / 1000.0, 3) if record.has_mri else None,
        "dwi_median": checks.get("dwi_median"), "adc_median": checks.get("adc_median"),
        "ctp_baseline_hu": checks.get("ctp_baseline_hu"), "ctp_empty_share": checks.get("ctp_empty_share"),
        "dwi_adc_contrast": checks.get("dwi_adc_contrast", {}).get("verdict"),
        "corrections": "; ".join(f"{name} x {c['factor']:g}" if c.get("factor", 1.0) != 1.0 else
                                 f"{name} {c['offset']:+g}" for name, c in sorted(corrections.items())),
        "flags": "",
    }


def _flags(rows: list[dict]) -> None:
    """Fill each row's ``flags`` (see the module doc)."""
    flags: dict[str, list[str]] = {row["patient_id"]: [] for row in rows}
    for row in rows:
        adc, baseline = row["adc_median"], row["ctp_baseline_hu"]
        if adc is not None and not NORMAL_ADC[0] <= adc <= NORMAL_ADC[1]:
            flags[row["patient_id"]].append("adc_median outside normal tissue")
        if baseline is not None and not NORMAL_BASELINE_HU[0] <= baseline <= NORMAL_BASELINE_HU[1]:
            flags[row["patient_id"]].append("ctp_baseline_hu outside normal tissue")
    for name in COMPARED:
        values = [(row["patient_id"], float(row[name])) for row in rows if row[name] is not None]
        if len(values) < MIN_PATIENTS:
            continue
        x = np.asarray([v for _, v in values])
        median = float(np.median(x))
        mad = float(np.median(np.abs(x - median)))
        for pid, value in values:
            if mad > 0:
                far = 0.6745 * abs(value - median) / mad > OUTLIER_Z
            else:
                far = name in EXACT and abs(value - median) > EXACT_TOLERANCE * max(abs(median), 1e-9)
            if far:
                flags[pid].append(f"{name} outlier ({value:g}, cohort median {median:g})")
    for row in rows:
        row["flags"] = "; ".join(flags[row["patient_id"]])


def cohort_rows(records: Iterable[PatientRecord]) -> list[dict]:
    """One row per patient (sorted by id), flags filled in."""
    rows = [patient_row(r) for r in sorted(records, key=lambda r: r.patient_id)]
    _flags(rows)
    return rows


def write_cohort_report(rows: list[dict], folder: str | Path) -> Path:
    """Write ``cohort_report.csv`` into ``folder`` atomically; returns its path."""
    path = Path(folder) / REPORT_FILE
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    atomic_write_text(path, text.getvalue())
    return path


def summary_line(rows: list[dict], path: Path) -> str:
    """One line: how many patients, which stand out (and why, briefly), where the report is."""
    flagged = [row for row in rows if row["flags"]]
    corrected = [row["patient_id"] for row in rows if row["corrections"]]
    unclear = [row["patient_id"] for row in rows if row["dwi_adc_contrast"] == "unclear"]
    parts = [f"cohort report {path}: {len(rows)} patients"]
    if flagged:
        parts.append(f"{len(flagged)} flagged ("
                     + ", ".join(f"{r['patient_id']}: {r['flags'].split(' (')[0]}" for r in flagged[:5])
                     + (", ..." if len(flagged) > 5 else "") + ")")
    if corrected:
        parts.append(f"{len(corrected)} corrected ({', '.join(corrected[:5])}{', ...' if len(corrected) > 5 else ''})")
    if unclear:
        parts.append(f"{len(unclear)} with DWI/ADC not told apart by their contrast")
    return ", ".join(parts)
