"""The clinical read-out of ``scripts/evaluate.py --clinical``: core volume, agreement, uncertainty.

For each run and each patient it was scored on (Table 1's patients), the ischemic core is
segmented on every synthesised ADC sample and on the true ADC (``ldm.evaluation.clinical``). The
agreement over the test set (``ldm.evaluation.agreement``) uses one synthesised study per patient,
its first sample (k = 0 unless missing), the single study a reader would look at; every sample's
numbers are in the per-patient CSV, and ``sample_LDM.py --summary`` gives their spread. The
decision compared is "core < 70 ml", the DEFUSE 3 eligibility criterion (Albers et al., N Engl J
Med 2018;378:708-718), with the true-ADC core as the reference. Where prediction folders hold
``*_std.nii.gz`` maps, ``ldm.evaluation.uncertainty`` says whether they track the error.

Every number is computed before anything is written; then each file is written atomically, so a
bad input leaves no clinical output behind (one :class:`EvaluationInputError` line).
"""
from __future__ import annotations

import contextlib
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ldm.data.transforms.intensity_window import IntensityWindow
from ldm.evaluation.agreement import bland_altman, cohen_kappa, correlations, decision_table, icc_2_1
from ldm.evaluation.clinical import (
    ADC_CORE_THRESHOLD,
    CORE_THRESHOLD_ML,
    cluster_voxels,
    first_sample_rows,
    ground_truth_voxel_ml,
    patient_readouts,
    require_adc_units,
    segment_core,
)
from ldm.evaluation.clinical_plots import bland_altman_png, uncertainty_png
from ldm.evaluation.tables import MISSING, write_csv
from ldm.evaluation.uncertainty import patient_uncertainty, uncertainty_rows
from ldm.evaluation.volumes import EvaluationInputError, load_ground_truth, patient_folders
from ldm.io import atomic_write_text

OUTPUT_FILES = ("clinical_per_patient.csv", "clinical_agreement.csv", "clinical.md", "bland_altman.png")
UNCERTAINTY_FILES = ("uncertainty.csv", "uncertainty.png")


@dataclass
class ClinicalResults:
    per_patient: list[dict]
    agreement: list[dict]
    uncertainty: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)


def check_options(threshold: float, min_cluster_ml: float | None, core_threshold_ml: float) -> None:
    """Refuse settings that cannot mean anything (one line each)."""
    if not (np.isfinite(threshold) and threshold > 0):
        raise EvaluationInputError(f"--adc_core_threshold must be a positive ADC in 10^-6 mm^2/s, got {threshold}")
    if min_cluster_ml is not None and not (np.isfinite(min_cluster_ml) and min_cluster_ml >= 0):
        raise EvaluationInputError(f"--min_cluster_ml must be >= 0 ml, got {min_cluster_ml}")
    if not (np.isfinite(core_threshold_ml) and core_threshold_ml > 0):
        raise EvaluationInputError(f"--core_threshold_ml must be a positive volume in ml, got {core_threshold_ml}")


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def agreement_row(run: str, rows: Sequence[dict], core_threshold_ml: float) -> dict:
    """Agreement statistics of one run from one row per patient (``clinical.first_sample_rows``),
    over the patients whose synthesised core is measurable."""
    not_measurable = [r["patient_id"] for r in rows if not r.get("core_measurable", True)]
    rows = [r for r in rows if r.get("core_measurable", True)]
    synth = [r["core_ml_synth"] for r in rows]
    true = [r["core_ml_true_adc"] for r in rows]
    ba = bland_altman(synth, true)
    table = decision_table([t < core_threshold_ml for t in true], [s < core_threshold_ml for s in synth])
    rel = [r["rel_volume_error_pct"] for r in rows if r["rel_volume_error_pct"] is not None]
    return {
        "run": run, "n_patients": len(rows), "n_not_measurable": len(not_measurable),
        "not_measurable": ",".join(not_measurable),
        "samples_used": ",".join(sorted({str(r["sample"]) for r in rows})),
        "mean_core_ml_true_adc": _mean(true), "mean_core_ml_synth": _mean(synth),
        "mean_lesion_ml": _mean([r["lesion_ml"] for r in rows]),
        "mean_diff_ml": ba["mean_diff"], "sd_diff_ml": ba["sd_diff"],
        "loa_lower_ml": ba["loa_lower"], "loa_upper_ml": ba["loa_upper"],
        "mean_abs_error_ml": _mean([r["abs_volume_error_ml"] for r in rows]),
        "median_rel_error_pct": statistics.median(rel) if rel else None,
        "n_rel_error_undefined": len(rows) - len(rel),
        **correlations(synth, true),
        "icc_2_1": icc_2_1(np.column_stack([synth, true])) if rows else None,
        "mean_dice_synth_true_adc": _mean([r["dice_synth_true_adc"] for r in rows]),
        "mean_dice_synth_lesion": _mean([r["dice_synth_lesion"] for r in rows]),
        "mean_dice_true_adc_lesion": _mean([r["dice_true_adc_lesion"] for r in rows]),
        "core_threshold_ml": core_threshold_ml,
        "n_both_below": table["both"], "n_true_below_only": table["reference_only"],
        "n_synth_below_only": table["test_only"], "n_both_above": table["neither"],
        **cohen_kappa(table),
    }


def collect(runs: Mapping[str, tuple[Path, Sequence[str]]], gt_dir: str | Path, *,
            threshold: float = ADC_CORE_THRESHOLD, min_cluster_ml: float | None = None,
            core_threshold_ml: float = CORE_THRESHOLD_ML, window: IntensityWindow | None = None) -> ClinicalResults:
    """Every number of the read-out for ``runs`` = {name: (prediction folder, patients)}; the ground
    truth of each patient is read once for all runs. ``window``: the intensity window whose range
    makes the uncertainty's errors comparable across patients (None: the default)."""
    check_options(threshold, min_cluster_ml, core_threshold_ml)
    folders = patient_folders(gt_dir)
    per_patient: list[dict] = []
    parts: dict[tuple[str, str], list] = {}
    converted: dict[str, float] = {}
    for pid in sorted({p for _, patients in runs.values() for p in patients}):
        if pid not in folders:
            raise EvaluationInputError(f"patient {pid}: no ground-truth folder in {str(gt_dir)!r}")
        gt = load_ground_truth(folders[pid])
        require_adc_units(gt)
        if "adc" in gt.checks.get("corrections", {}):  # converted on reading: the notes say so
            converted[pid] = gt.checks["corrections"]["adc"]["factor"]
        voxel_ml = ground_truth_voxel_ml(gt)
        true_core = segment_core(gt.adc, gt.mask, threshold, cluster_voxels(min_cluster_ml, voxel_ml))
        for name, (pred_dir, patients) in runs.items():
            if pid not in patients:
                continue
            folder = Path(pred_dir) / pid
            for row in patient_readouts(gt, folder, voxel_ml, true_core, threshold, min_cluster_ml):
                row["core_below_threshold_synth"] = (None if row["core_ml_synth"] is None
                                                     else row["core_ml_synth"] < core_threshold_ml)
                row["core_below_threshold_true_adc"] = row["core_ml_true_adc"] < core_threshold_ml
                per_patient.append({"run": name, **row})
            for modality, (std, err) in patient_uncertainty(gt, folder, window).items():
                parts.setdefault((name, modality), []).append((pid, std, err))
    order = {name: i for i, name in enumerate(runs)}
    per_patient.sort(key=lambda r: (order[r["run"]], r["patient_id"], r["sample"]))
    first = first_sample_rows(per_patient)
    agreement = [agreement_row(name, [r for r in first if r["run"] == name], core_threshold_ml) for name in runs]
    parts = dict(sorted(parts.items(), key=lambda kv: (order[kv[0][0]], kv[0][1] != "dwi")))
    settings = {"adc_threshold": threshold, "min_cluster_ml": min_cluster_ml, "core_threshold_ml": core_threshold_ml,
                "adc_converted": converted}
    return ClinicalResults(per_patient, agreement, uncertainty_rows(parts), settings)


def _f(value: float | None, decimals: int) -> str:
    return MISSING if value is None else f"{value:.{decimals}f}"


def clinical_markdown(results: ClinicalResults) -> str:
    """Runs side by side (one row each), the 2 x 2 decision tables, uncertainty, and the notes."""
    s = results.settings
    limit = f"{s['core_threshold_ml']:g} ml"
    lines = ["| Model | n | True-ADC core (ml) | Synth. core (ml) | Diff. (ml) [95% LoA] | Pearson r | Spearman ρ "
             f"| ICC(2,1) | Dice vs true-ADC core | Dice vs lesion | Core < {limit} agree | κ |",
             "|" + "---|" * 12]
    for a in results.agreement:
        loa = "" if a["loa_lower_ml"] is None else f" [{a['loa_lower_ml']:.2f}, {a['loa_upper_ml']:.2f}]"
        agree = f"{a['n_both_below'] + a['n_both_above']}/{a['n_patients']}"
        lines.append(f"| {a['run']} | {a['n_patients']} | {_f(a['mean_core_ml_true_adc'], 2)} | "
                     f"{_f(a['mean_core_ml_synth'], 2)} | {_f(a['mean_diff_ml'], 2)}{loa} | {_f(a['pearson_r'], 3)} | "
                     f"{_f(a['spearman_rho'], 3)} | {_f(a['icc_2_1'], 3)} | {_f(a['mean_dice_synth_true_adc'], 3)} | "
                     f"{_f(a['mean_dice_synth_lesion'], 3)} | {agree} | {_f(a['kappa'], 3)} |")
    lines += ["", f'Decision "core < {limit}" (DEFUSE 3 eligibility), true-ADC core in rows, synthesised in columns:',
              ""]
    for a in results.agreement:
        lines += [f"| {a['run']} | synth. < {limit} | synth. ≥ {limit} |", "|---|---|---|",
                  f"| true < {limit} | {a['n_both_below']} | {a['n_true_below_only']} |",
                  f"| true ≥ {limit} | {a['n_synth_below_only']} | {a['n_both_above']} |",
                  "", f"{a['run']}: agreement {_f(a['percent_agreement'], 1)}%, Cohen's κ {_f(a['kappa'], 3)}.", ""]
    pooled = [r for r in results.uncertainty if r["patient_id"] == "all"]
    if pooled:
        lines += ["Uncertainty: voxel std over the samples against |mean map - truth| inside the brain:", "",
                  "| Model | Modality | Patients | Spearman ρ | MAE, lowest std decile | MAE, highest std decile |",
                  "|---|---|---|---|---|---|"]
        for r in pooled:
            bins = sorted(int(k[len("abs_error_d"):]) for k in r if k.startswith("abs_error_d"))
            lines.append(f"| {r['run']} | {r['modality'].upper()} | {r['n_patients']} | "
                         f"{_f(r['spearman_std_abs_error'], 3)} | {_f(r[f'abs_error_d{bins[0]}'], 4)} | "
                         f"{_f(r[f'abs_error_d{bins[-1]}'], 4)} |")
        lines.append("")
    return "\n".join(lines) + "\n" + "\n".join(f"- {n}" for n in clinical_notes(results)) + "\n"


def clinical_notes(results: ClinicalResults) -> list[str]:
    """What the numbers are and what they are not."""
    s = results.settings
    cluster = (f"connected components (26-connectivity) under {s['min_cluster_ml']:g} ml removed"
               if s["min_cluster_ml"] else "no minimum cluster size")
    first = first_sample_rows(results.per_patient)
    no_core = sorted({r["patient_id"] for r in first if r["core_ml_true_adc"] == 0})
    notes = [
        f"Ischemic core: ADC < {s['adc_threshold']:g} x 10^-6 mm^2/s inside the brain mask (the RAPID definition, "
        f"Purushotham et al., Int J Stroke 2015), {cluster}; the same rule on the synthesised and on the true ADC. "
        "Volumes in ml from the voxel size in each patient's dwi.nii.gz header.",
        "One synthesised study per patient: its first sample (k = 0); every sample's numbers are in "
        "clinical_per_patient.csv.",
        "Diff. = synthesised - true-ADC core; 95% limits of agreement = mean +- 1.96 SD (Bland & Altman 1986). "
        "ICC(2,1): two-way random, absolute agreement, single measure (Shrout & Fleiss 1979). Cohen's κ of the "
        f"decision core < {s['core_threshold_ml']:g} ml (DEFUSE 3, Albers et al. 2018).",
        "Undefined values are shown as –: limits of agreement with < 2 patients, correlations with < 3 or a constant "
        "volume, ICC when all volumes are equal, κ when both put every patient on the same side of the threshold, "
        "relative volume error when the true-ADC core is 0 ml. Dice of two empty masks is 1 (both say: no core).",
    ]
    if no_core:
        notes.append(f"{len(no_core)} patient(s) without true-ADC core: {', '.join(no_core)}.")
    if s.get("adc_converted"):
        notes.append("Ground-truth ADC converted to 10^-6 mm^2/s on reading (its brain median gave the unit): "
                     + ", ".join(f"{pid} (x {factor:g})" for pid, factor in sorted(s["adc_converted"].items())) + ".")
    for a in results.agreement:
        if a.get("n_not_measurable"):
            notes.append(f"{a['run']}: core not measurable for {a['n_not_measurable']} patient(s) "
                         f"({a['not_measurable'].replace(',', ', ')}): the ADC range the model could write for them "
                         f"starts at or above {s['adc_threshold']:g} (its intensity window), so a core of 0 ml would "
                         "say nothing; left out of this run's agreement (n counts the measurable ones).")
    notes.append("An ADC-threshold core is a proxy for the infarct core, and the lesion masks may come from other "
                 "(e.g. follow-up) imaging than the acute ADC; these numbers describe agreement with the ground-truth "
                 "ADC, they are not clinical validation. On the synthetic cohort they are not clinical evidence.")
    return notes


def write_clinical(results: ClinicalResults, out: str | Path) -> list[Path]:
    """Write the CSVs, clinical.md and the PNGs into ``out`` (each atomically); returns the paths."""
    out = Path(out)
    write_csv(results.per_patient, out / "clinical_per_patient.csv")
    write_csv(results.agreement, out / "clinical_agreement.csv")
    atomic_write_text(out / "clinical.md", clinical_markdown(results))
    first = first_sample_rows(results.per_patient)
    measurable = [r for r in first if r.get("core_measurable", True)]
    points = {a["run"]: ([r["core_ml_synth"] for r in measurable if r["run"] == a["run"]],
                         [r["core_ml_true_adc"] for r in measurable if r["run"] == a["run"]])
              for a in results.agreement}
    ba = {a["run"]: {"n": a["n_patients"], "mean_diff": a["mean_diff_ml"], "loa_lower": a["loa_lower_ml"],
                     "loa_upper": a["loa_upper_ml"]} for a in results.agreement}
    bland_altman_png(points, ba, out / "bland_altman.png")
    paths = [out / name for name in OUTPUT_FILES]
    if results.uncertainty:
        write_csv(results.uncertainty, out / "uncertainty.csv")
        uncertainty_png([r for r in results.uncertainty if r["patient_id"] == "all"], out / "uncertainty.png")
        paths += [out / name for name in UNCERTAINTY_FILES]
    else:  # no std maps this time: an uncertainty.csv of an earlier evaluation in this folder would mislead
        for name in UNCERTAINTY_FILES:
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
    return paths
