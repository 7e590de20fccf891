"""The study's report: per-seed rows, the ceilings, pooled paired differences and the power reached.

Reads what ``evaluate.py`` wrote per seed (``metrics_summary.csv``: Table 1 per run;
``metrics_per_patient.csv``: the same per patient; ``lesion_contrast.csv``: the lesion in physical
units per patient; ``clinical_per_patient.csv``: the core volume against the true ADC's) and writes
``study.md``, ``study.csv`` (long format: one value per row) and ``study_differences.png``
(``study_plot.py``) into the study folder. Pooled differences are cLDM-PT minus the control over
patients x seeds, with the patient-cluster bootstrap and the minimum detectable effect of
``statistics.py``; a missing evaluation file is an :class:`ExperimentError` naming it.
"""
from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ldm.evaluation import lesion_contrast
from ldm.evaluation.evaluator import GROUND_TRUTH, GROUND_TRUTH_WINDOWED
from ldm.evaluation.run_evaluation import RECONSTRUCTION_NAME
from ldm.evaluation.tables import MISSING, write_csv
from ldm.experiments.runner import ExperimentError
from ldm.experiments.statistics import PooledDifference, means_by, pooled_difference
from ldm.experiments.study_design import BASELINES, CLDM, CONTROL, TARGETS, TARGET_RELATIVE_MDE, StudySettings
from ldm.io import atomic_write_text

MAPS = ("dwi", "adc")
# Table 1's metrics: (column, header, decimals, lower is better)
TABLE1 = (("mae", "MAE↓", 3, True), ("lesion_mae", "Lesion MAE↓", 3, True), ("psnr", "PSNR↑", 2, False),
          ("ms_ssim_mean", "MS-SSIM↑", 3, False), ("fid", "FID↓", 2, True))
# the lesion in physical units: (column of lesion_contrast.csv, header, decimals)
PHYSICAL = (("dwi_lesion_ratio", "DWI lesion / normal", 2), ("adc_lesion_mean", "ADC lesion mean (10⁻⁶ mm²/s)", 0),
            ("lesion_core_share", "lesion ADC < 620", 3), ("core_ml", "core (ml)", 1))
CORE_ERROR = ("abs_volume_error_ml", "core volume error against the true ADC (ml)", 1)
PLOT_FILE = "study_differences.png"


@dataclass
class Comparison:
    """One pooled difference of a target's cLDM-PT against the control."""

    target: str  # the cLDM-PT label
    metric: str
    modality: str  # dwi, adc, or "" for the lesion measures of both maps
    header: str
    decimals: int
    result: PooledDifference
    pairs: tuple[list, list, list, list]  # (patients, seeds, control, cLDM-PT) per (patient, seed)
    truth: float | None = None  # the ground truth's mean, for measures that have one
    closer: int | None = None  # patients whose mean over seeds is nearer the truth in cLDM-PT


def _number(text: str | None) -> float | None:
    return None if text in (None, "") else float(text)


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise ExperimentError(f"{path} is missing: run the study again to evaluate that seed")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _contrast_per_patient(folder: Path) -> list[dict]:
    """lesion_contrast.csv as lesion_contrast.per_patient's rows (numbers, one row per run and patient)."""
    rows = []
    for row in read_rows(folder / "lesion_contrast.csv"):
        typed = {k: _number(row.get(k)) for k in (*lesion_contrast.CONTRAST_COLUMNS, *lesion_contrast.KEPT_COLUMNS)}
        rows.append({"run": row["run"], "patient_id": row["patient_id"], **typed,
                     "lesion_voxels": int(float(row.get("lesion_voxels") or 0))})
    return lesion_contrast.per_patient(rows)


@dataclass
class SeedScores:
    """One seed's evaluation, as the report needs it."""

    summary: dict  # (run, modality) -> Table 1 row
    patients: dict  # (run, modality, patient) -> per-patient Table 1 row
    contrast: list[dict]  # per (run, patient): the lesion in physical units
    clinical: dict  # (run, patient) -> clinical row of sample 0

    @classmethod
    def read(cls, folder: Path) -> SeedScores:
        summary = {(r["run"], r["modality"]): r for r in read_rows(folder / "metrics_summary.csv")}
        patients = {(r["run"], r["modality"], r["patient_id"]): r
                    for r in read_rows(folder / "metrics_per_patient.csv")}
        clinical = {(r["run"], r["patient_id"]): r for r in read_rows(folder / "clinical_per_patient.csv")
                    if r.get("sample", "0") == "0"}
        return cls(summary, patients, _contrast_per_patient(folder), clinical)

    def contrast_of(self, run: str) -> dict[str, dict]:
        return {r["patient_id"]: r for r in self.contrast if r["run"] == run}


def truth_contrast(scores: Mapping[int, SeedScores], run: str = GROUND_TRUTH) -> dict[str, dict]:
    """The ground truth's lesion per patient: the same in every seed, but a seed's evaluation holds
    only the patients that every run of it could be scored on, so the seeds are merged."""
    merged: dict[str, dict] = {}
    for s in scores.values():
        merged.update(s.contrast_of(run))
    return dict(sorted(merged.items()))


def _values(scores: Mapping[int, SeedScores], run_a: str, run_b: str, value) -> tuple[list, list, list, list]:
    """(patients, seeds, A, B) over the (patient, seed) pairs where both runs have a value."""
    patients, seeds, a, b = [], [], [], []
    for seed, s in scores.items():
        for pid, va, vb in value(s, run_a, run_b):
            if va is not None and vb is not None:
                patients.append(pid)
                seeds.append(seed)
                a.append(va)
                b.append(vb)
    return patients, seeds, a, b


def _closer(patients: Sequence[str], a: Sequence[float], b: Sequence[float], truth: Mapping[str, float]) -> int:
    """Patients whose B (mean over seeds) lies nearer their true value than their A."""
    mean_a, mean_b = means_by(patients, a), means_by(patients, b)
    return sum(1 for pid in mean_a if pid in truth and abs(mean_b[pid] - truth[pid]) < abs(mean_a[pid] - truth[pid]))


def compare(scores: Mapping[int, SeedScores], n_boot: int = 10_000) -> list[Comparison]:
    """Every pooled difference cLDM-PT minus control, for each target."""
    control = CONTROL[1]
    truth_rows = truth_contrast(scores)
    out = []
    for _, target, _ in TARGETS.values():
        for modality in MAPS:
            for metric, header, decimals, lower in TABLE1:
                if metric == "fid":
                    continue  # one value per run and seed: no per-patient pairs

                def table1(s, a, b, metric=metric, modality=modality):
                    for (run, m, pid), row in s.patients.items():
                        if run == a and m == modality and (b, m, pid) in s.patients:
                            yield pid, _number(row.get(metric)), _number(s.patients[(b, m, pid)].get(metric))

                pairs = _values(scores, control, target, table1)
                if pairs[0]:
                    out.append(Comparison(target, metric, modality, f"{modality.upper()} {header}", decimals,
                                          pooled_difference(*pairs, lower_is_better=lower, n_boot=n_boot), pairs))
        for metric, header, decimals in PHYSICAL:
            def physical(s, a, b, metric=metric):
                rows_a, rows_b = s.contrast_of(a), s.contrast_of(b)
                for pid, row in rows_a.items():
                    if pid in rows_b:
                        yield pid, row.get(metric), rows_b[pid].get(metric)

            pairs = _values(scores, control, target, physical)
            if not pairs[0]:
                continue
            truth = {pid: r[metric] for pid, r in truth_rows.items() if r.get(metric) is not None}
            values = [truth[p] for p in dict.fromkeys(pairs[0]) if p in truth]
            result = pooled_difference(*pairs, n_boot=n_boot)
            out.append(Comparison(target, metric, "", header, decimals, result, pairs,
                                  truth=sum(values) / len(values) if values else None,
                                  closer=_closer(pairs[0], pairs[2], pairs[3], truth)))
        metric, header, decimals = CORE_ERROR

        def core_error(s, a, b):
            for (run, pid), row in s.clinical.items():
                other = s.clinical.get((b, pid))
                # a core that the model's window could not show is not measurable (evaluate.py's clinical read-out)
                measurable = other is not None and row.get("core_measurable") == other.get("core_measurable") == "True"
                if run == a and measurable:
                    yield pid, _number(row.get(metric)), _number(other.get(metric))

        pairs = _values(scores, control, target, core_error)
        if pairs[0]:
            out.append(Comparison(target, metric, "", header, decimals, pooled_difference(*pairs, n_boot=n_boot),
                                  pairs))
    return out


def _f(value: float | None, decimals: int, sign: bool = False) -> str:
    if value is None:
        return MISSING
    return f"{value:+.{decimals}f}" if sign else f"{value:.{decimals}f}"


def _runs(scores: Mapping[int, SeedScores]) -> list[str]:
    """The latent models, the Table 1 baselines the study scored (STUDY_BASELINES), the ceiling."""
    scored = {run for s in scores.values() for run, _ in s.summary}
    baselines = [label for label, _ in BASELINES.values() if label in scored]
    return [CLDM[1], CONTROL[1], *(label for _, label, _ in TARGETS.values()), *baselines, RECONSTRUCTION_NAME]


def table1_rows(scores: Mapping[int, SeedScores]) -> list[dict]:
    """Per-seed Table 1 rows of every model and of the VQGAN reconstruction (the ceiling)."""
    runs = _runs(scores)
    rows = []
    for run in runs:
        for seed, s in scores.items():
            row = {"model": run, "seed": seed}
            for modality in MAPS:
                summary = s.summary.get((run, modality), {})
                for metric, *_ in TABLE1:
                    row[f"{modality}_{metric}"] = _number(summary.get(metric))
            rows.append(row)
    return rows


def contrast_rows(scores: Mapping[int, SeedScores]) -> list[dict]:
    """Per-seed rows of the lesion in physical units; the ground truth (the same in every seed) once."""
    runs = _runs(scores)
    rows = []
    sources = [(truth, {"all": truth_contrast(scores, truth)}) for truth in (GROUND_TRUTH, GROUND_TRUTH_WINDOWED)]
    sources += [(run, {seed: s.contrast_of(run) for seed, s in scores.items()}) for run in runs]
    for run, per_seed in sources:
        for seed, patients in per_seed.items():
            summary = lesion_contrast.summarise(list(patients.values()))
            rows.append({"model": run, "seed": seed,
                         **{metric: summary.get(metric) for metric, _, _ in PHYSICAL},
                         "n_with_lesion_core": summary["n_with_lesion_core"],
                         "n_lesion_patients": summary["n_lesion_patients"]})
    return rows


def _table1_markdown(rows: Sequence[dict]) -> str:
    header = ["Model", "seed"] + [f"{m.upper()} {h}" for m in MAPS for _, h, _, _ in TABLE1]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        label = f"{r['model']} (ceiling)" if r["model"] == RECONSTRUCTION_NAME else r["model"]
        cells = [_f(r[f"{m}_{metric}"], d) for m in MAPS for metric, _, d, _ in TABLE1]
        lines.append(f"| {label} | {r['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _contrast_markdown(rows: Sequence[dict]) -> str:
    lines = ["| Source | seed | " + " | ".join(h for _, h, _ in PHYSICAL) + " | core in lesion |",
             "|" + "---|" * (len(PHYSICAL) + 3)]
    for r in rows:
        label = r["model"] + (" (ceiling)" if r["model"] in (RECONSTRUCTION_NAME, GROUND_TRUTH_WINDOWED) else "")
        cells = [_f(r[m], d) for m, _, d in PHYSICAL]
        lines.append(f"| {label} | {r['seed']} | " + " | ".join(cells)
                     + f" | {r['n_with_lesion_core']}/{r['n_lesion_patients']} |")
    return "\n".join(lines)


def _ci(c: Comparison) -> str:
    r, d = c.result, c.decimals + (1 if c.decimals < 3 else 0)
    return f"{_f(r.difference, d, True)} [{_f(r.ci_low, d, True)}, {_f(r.ci_high, d, True)}]"


def _differences_markdown(comparisons: Sequence[Comparison], target: str) -> str:
    lines = ["| Measure | control | cLDM-PT | truth | difference [95% CI] | per seed | patients better | n |",
             "|" + "---|" * 8]
    for c in (c for c in comparisons if c.target == target):
        r, d = c.result, c.decimals + (1 if c.decimals < 3 else 0)
        per_seed = ", ".join(f"{_f(v, d, True)}" for v in r.per_seed.values())
        better = (f"{c.closer}/{r.n_patients} nearer the truth" if c.closer is not None
                  else f"{r.n_patients_b_better}/{r.n_patients}")
        lines.append(f"| {c.header} | {_f(r.mean_a, c.decimals)} | {_f(r.mean_b, c.decimals)} | "
                     f"{_f(c.truth, c.decimals)} | {_ci(c)} | {per_seed} | {better} | "
                     f"{_n(r)} |")
    return "\n".join(lines)


def _n(r: PooledDifference) -> str:
    """patients × seeds, and the pairs when evaluate.py left some (patient, seed) out."""
    full = r.n_patients * r.n_seeds
    return f"{r.n_patients} × {r.n_seeds}" + (f" ({r.n_pairs} pairs)" if r.n_pairs != full else "")


def _verdict(c: Comparison) -> str:
    r = c.result
    if r.n_patients < 2:
        return "too few patients for an interval"
    if r.ci_low <= 0 <= r.ci_high:
        return "no difference shown (the interval holds 0)"
    better = (r.difference < 0) == r.lower_is_better
    return f"{'better' if better else 'worse'} than the control (the interval excludes 0)"


def power_rows(comparisons: Sequence[Comparison]) -> list[dict]:
    """The MDE reached on the primary outcome (lesion MAE, each map and target)."""
    rows = []
    for c in comparisons:
        if c.metric != "lesion_mae":
            continue
        r = c.result
        relative = None if r.mde is None or not r.mean_a else r.mde / r.mean_a
        rows.append({"target": c.target, "modality": c.modality, "control": r.mean_a, "n": _n(r),
                     "sd_patient_difference": r.sd_patient_difference, "mde": r.mde,
                     "mde_relative": relative,
                     "meets_target": relative is not None and relative <= TARGET_RELATIVE_MDE})
    return rows


def _power_markdown(plan: Mapping, rows: Sequence[dict]) -> str:
    lines = [
        f"Primary outcome: the lesion MAE per patient (each patient's mean over the seeds), cLDM-PT − control. "
        f"Minimum detectable effect at 80% power, two-sided alpha 0.05, paired (normal approximation): "
        f"MDE = (z_0.975 + z_0.8) × sd_diff / √n = 2.802 × sd_diff / √n, n lesion patients, sd_diff the SD of "
        f"their per-patient differences. Target: MDE ≤ {TARGET_RELATIVE_MDE:.0%} of the control's lesion MAE.",
        "",
        f"- **Planned** (before the study, sd_diff = {plan['planning_relative_sd']:.0%} of the control's lesion MAE, "
        f"the demo's larger relative SD): {plan['patients_needed']} lesion patients needed; this cohort has "
        f"{plan['n_lesion_patients']}, planned MDE {plan['planned_relative_mde']:.1%} of the control.",
        "- **Reached** (sd_diff estimated from this study's own per-patient differences):",
        "",
        "| target | map | control lesion MAE | n patients × seeds | sd_diff | MDE | MDE / control | ≤ target |",
        "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rel = MISSING if r["mde_relative"] is None else f"{r['mde_relative']:.1%}"
        lines.append(f"| {r['target']} | {r['modality'].upper()} | {_f(r['control'], 3)} | {r['n']} | "
                     f"{_f(r['sd_patient_difference'], 4)} | {_f(r['mde'], 4)} | {rel} | "
                     f"{'yes' if r['meets_target'] else 'no'} |")
    return "\n".join(lines)


def csv_records(t1: Sequence[dict], contrast: Sequence[dict], comparisons: Sequence[Comparison]) -> list[dict]:
    """Long format: one value per row (per-seed values, then pooled differences with their statistics)."""
    records = []
    for r in t1:
        for modality in MAPS:
            for metric, *_ in TABLE1:
                records.append({"table": "per_seed", "model": r["model"], "seed": r["seed"], "modality": modality,
                                "metric": metric, "value": r[f"{modality}_{metric}"]})
    for r in contrast:
        for metric, _, _ in PHYSICAL:
            records.append({"table": "per_seed_lesion", "model": r["model"], "seed": r["seed"], "modality": "",
                            "metric": metric, "value": r[metric]})
    for c in comparisons:
        r = c.result
        records.append({"table": "pooled_difference", "model": c.target, "seed": "all", "modality": c.modality,
                        "metric": c.metric, "value": r.difference, "ci_low": r.ci_low, "ci_high": r.ci_high,
                        "control": r.mean_a, "cldm_pt": r.mean_b, "truth": c.truth, "n_patients": r.n_patients,
                        "n_seeds": r.n_seeds, "sd_patient_difference": r.sd_patient_difference, "mde": r.mde,
                        "mde_relative": None if r.mde is None or not r.mean_a else r.mde / r.mean_a})
    return records


CSV_COLUMNS = ("table", "model", "seed", "modality", "metric", "value", "ci_low", "ci_high", "control", "cldm_pt",
               "truth", "n_patients", "n_seeds", "sd_patient_difference", "mde", "mde_relative")


def write_report(settings: StudySettings, evaluations: Mapping[int, Path], plan: Mapping,
                 seconds: Mapping[str, float], n_boot: int = 10_000) -> Path:
    """Write study.md, study.csv and the plot into ``settings.out``; the markdown's path."""
    from ldm.experiments.study_plot import differences_png

    scores = {seed: SeedScores.read(folder) for seed, folder in evaluations.items()}
    comparisons = compare(scores, n_boot=n_boot)
    t1, contrast = table1_rows(scores), contrast_rows(scores)
    power = power_rows(comparisons)
    out = Path(settings.out)
    steps = settings.steps
    n_lesion = sum(1 for r in truth_contrast(scores).values() if r.get("lesion_voxels"))
    outcome = []
    for c in comparisons:
        if c.metric == "lesion_mae":
            rel = f" ({100 * c.result.difference / c.result.mean_a:+.1f}% of the control)" if c.result.mean_a else ""
            outcome.append(f"- {c.target} − control, {c.modality.upper()} lesion MAE: {_ci(c)}{rel}: {_verdict(c)}.")
    time_line = ", ".join(f"{k} {v / 60:.1f}" for k, v in seconds.items())
    text = "\n".join([
        "# Study: cLDM-PT against its control",
        "",
        f"{settings.seeds} training seeds ({', '.join(str(s) for s in scores)}) on one synthetic cohort "
        f"({settings.n_train} / {settings.n_val} / {settings.n_test} patients, {n_lesion} test patients with lesion "
        f"in the scored slices, "
        f"64 × 64, {settings.slices} slices, cohort seed {settings.cohort_seed}). Per seed: VQGAN {steps['vqgan']} "
        f"steps, cLDM {steps['ldm']}, then from that cLDM's checkpoint with the same {steps['pt']} steps, data, "
        f"augmentation and seed: the control {CONTROL[1]} (λ_image = λ_lesion = 0) and cLDM-PT with each image "
        f"target; sampled with {settings.sampler}, {settings.sample_steps} steps; scored by evaluate.py "
        f"(lesion window, brain-masked MAE and PSNR, pooled lesion MAE, on [0, 1]). Measured minutes per kind of "
        f"stage: {time_line or MISSING} (total {sum(seconds.values()) / 60:.1f}).",
        "",
        "## Outcome",
        "",
        *outcome,
        "",
        "## Power",
        "",
        _power_markdown(plan, power),
        "",
        "## Table 1 metrics per seed",
        "",
        _table1_markdown(t1),
        "",
        "FID is '–' without Inception weights (evaluate.py --inception_weights). The ground truth scores MAE 0 "
        "against itself; its ceiling is in the lesion table below.",
        "",
        "## The lesion in physical units per seed",
        "",
        _contrast_markdown(contrast),
        "",
        "Means over the lesion patients on the scored slices with lesion (core volume: ADC < 620 in the whole "
        "brain, all patients), as in evaluate.py's table1.md. Ceilings: the ground truth through the training "
        "window, the VQGAN's reconstruction D(E(x)).",
        "",
        "## Pooled paired differences, cLDM-PT − control",
        "",
        "Over patients × seeds: each (patient, seed) difference, the mean over all of them, and a 95% percentile "
        "bootstrap interval that resamples patients with all their seeds (10,000 resamples). 'per seed': the "
        "mean difference within each seed. 'patients better': patients whose mean difference over the seeds "
        "favours cLDM-PT; for the physical measures, whose mean lies nearer the ground truth's.",
        "",
        *[part for _, target, _ in TARGETS.values()
          for part in (f"### {target}", "", _differences_markdown(comparisons, target), "")],
        "## Per-patient differences by seed",
        "",
        f"![per-patient lesion MAE differences]({PLOT_FILE})",
        "",
    ])
    write_csv(csv_records(t1, contrast, comparisons), out / "study.csv", CSV_COLUMNS)
    differences_png([c for c in comparisons if c.metric == "lesion_mae"], out / PLOT_FILE)
    atomic_write_text(out / "study.md", text)
    return out / "study.md"
