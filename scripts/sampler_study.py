"""Quality against time of the samplers: the same slices with DDIM and DPM-Solver++ at several step counts.

    python scripts/sampler_study.py -r logs/<run> --data data/preprocessed/test --gt data/raw/test \\
        [--settings ddim:200 ddim:100 ddim:50 ddim:20 dpmsolver++:50 dpmsolver++:20 dpmsolver++:10]

Every setting samples every patient of ``--data`` with ``scripts/sample_LDM.py``'s code (same
per-slice seeds, so every setting starts each slice from the same x_T) into
``<outdir>/samples/<sampler>_<steps>``, timed (the sampling loop with the volumes' writing, not the
model's loading). Each is then scored with ``scripts/evaluate.py``'s code twice: against the ground
truth ``--gt`` (MAE, lesion MAE, PSNR, MS-SSIM as in Table 1) and against the first setting
(DDIM-200 by default, the paper's sampler: how far a faster setting lands from it; the reference's
DWI and ADC volumes take the place of the ground truth's, its mask and lesion stay). Per-patient
paired differences against the first setting come with 95% bootstrap intervals (as evaluate.py's
``paired_differences.csv``). Written to ``<outdir>``: ``sampler_study.csv`` (one row per setting and
map), ``sampler_study.md`` (the table), ``sampler_study.png`` (metrics against seconds per slice),
``paired_vs_reference.csv``. Settings sampled before are not sampled again (their timing is kept in
``<outdir>/samples/<setting>/timing.json``, with the settings it was sampled with: a setting
sampled with another seed, batch size or precision is refused rather than mixed in); time nothing
while another heavy job runs.
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ldm.config import split_overrides  # noqa: E402
from ldm.data.record import MODALITIES  # noqa: E402
from ldm.experiments.runner import EXIT_USER_ERROR, Runner, Stage, claim_folder  # noqa: E402
from ldm.io import atomic_write_text  # noqa: E402
from ldm.samplers import SAMPLERS  # noqa: E402
from ldm.util import ConfigError  # noqa: E402

DEFAULT_SETTINGS = ("ddim:200", "ddim:100", "ddim:50", "ddim:20", "dpmsolver++:50", "dpmsolver++:20",
                    "dpmsolver++:10")
TIMING_FILE = "timing.json"
LABELS = {"ddim": "DDIM", "dpmsolver++": "DPM-Solver++"}
# columns of the table: (key in the summary, header, decimals)
COLUMNS = (("mae", "MAE", 4), ("lesion_mae", "lesion MAE", 4), ("psnr", "PSNR", 2), ("ms_ssim_mean", "MS-SSIM", 3))


def parse_setting(text: str) -> tuple[str, int]:
    name, _, steps = text.partition(":")
    if name not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
        raise ConfigError(f"--settings {text!r}: expected <sampler>:<steps> with a sampler of "
                          f"{', '.join(SAMPLERS)} and steps >= 1")
    return name, int(steps)


def label(name: str, steps: int) -> str:
    return f"{LABELS.get(name, name)}-{steps}"


def sample_setting(opt: argparse.Namespace, overrides: list[str], name: str, steps: int, out: Path) -> dict:
    """Sample one setting (or reuse it: its timing record holds the same settings) and return its timing."""
    from ldm.inference.run_sampling import sample_run

    args = ["-r", opt.resume, "--data", opt.data, "--outdir", str(out), "--sampler", name, "--steps", str(steps),
            "--seed", str(opt.seed), "--batch_size", str(opt.batch_size), "--precision", opt.precision]
    if opt.device:
        args += ["--device", opt.device]
    if opt.patients:
        args += ["--patients", *opt.patients]
    if opt.reference:
        args += ["--reference", opt.reference]
    if opt.no_progress:
        args.append("--no_progress")

    def sample_and_time() -> dict:
        report = sample_run(_sample_parser().parse_args(args), overrides)
        if not report.n_slices:  # every sample was there: sampled before, but its timing is lost
            raise ConfigError(f"{str(out)!r} holds samples but no {TIMING_FILE}: remove the folder to time it again")
        return {"slices": report.n_slices, "seconds": report.seconds,
                "seconds_per_slice": report.seconds / report.n_slices}

    # the batch size is a setting: it changes the time per slice, not the volumes
    settings = {"run": str(opt.resume), "data": str(opt.data), "sampler": name, "steps": steps, "seed": opt.seed,
                "batch_size": opt.batch_size, "precision": opt.precision, "patients": opt.patients,
                "overrides": overrides}
    return Runner("[study]").run(Stage(f"{label(name, steps)}: sampling", out / TIMING_FILE, settings,
                                       action=sample_and_time, verb="sampled and timed",
                                       advice="remove the folder to sample and time it again, or give another "
                                              "--outdir"))


@functools.lru_cache(maxsize=1)
def _sample_parser() -> argparse.ArgumentParser:
    import importlib.util

    spec = importlib.util.spec_from_file_location("sample_LDM", ROOT / "scripts" / "sample_LDM.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_parser()


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
    from ldm.evaluation.aggregate import per_patient, per_run
    from ldm.evaluation.evaluator import evaluate_runs

    evaluation = evaluate_runs(runs, gt, patients=patients, fid_skip_reason="not part of the sampler study",
                               log=lambda message: print(message))
    rows = [r for report in evaluation.runs for r in report.rows]
    return per_run(evaluation), per_patient(rows, evaluation.choices), rows


def _f(value: float | None, decimals: int) -> str:
    return "–" if value is None else f"{value:.{decimals}f}"


def study_table(settings: list[tuple[str, int]], timings: dict[str, dict], vs_gt: dict, vs_ref: dict,
                paired: dict, reference: str) -> str:
    lines = []
    for modality in MODALITIES:
        lines += ["", f"**{modality.upper()}**", "",
                  "| setting | s / slice | speed-up | " + " | ".join(h for _, h, _ in COLUMNS)
                  + " | lesion MAE vs " + reference + ": pooled, per patient [95% CI] | MAE to " + reference
                  + " | PSNR to " + reference + " |",
                  "|" + "---|" * (6 + len(COLUMNS))]
        base = timings[reference]["seconds_per_slice"]
        for name, steps in settings:
            key = label(name, steps)
            t = timings[key]["seconds_per_slice"]
            gt_row, ref_row = vs_gt[(key, modality)], vs_ref.get((key, modality))
            p = paired.get((key, modality))
            pooled, pooled_ref = gt_row.get("lesion_mae"), vs_gt[(reference, modality)].get("lesion_mae")
            if p is None or pooled is None or not pooled_ref:
                versus = "–"
            else:
                versus = (f"{100.0 * (pooled / pooled_ref - 1):+.1f}%, {100.0 * p.difference / p.mean_a:+.1f}% "
                          f"[{100 * p.ci_low / p.mean_a:+.1f}, {100 * p.ci_high / p.mean_a:+.1f}]")
            lines.append(f"| {key} | {t:.3f} | {base / t:.1f}x | "
                         + " | ".join(_f(gt_row.get(c), d) for c, _, d in COLUMNS)
                         + f" | {versus} | {_f(ref_row and ref_row.get('mae'), 4)} | "
                         f"{_f(ref_row and ref_row.get('psnr'), 2)} |")
    return "\n".join(lines)


def plot(settings: list[tuple[str, int]], timings: dict, vs_gt: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ldm.io import atomic_path

    fig, axes = plt.subplots(2, 2, figsize=(9, 7), constrained_layout=True)
    for col, modality in enumerate(MODALITIES):
        for row, (metric, header) in enumerate((("lesion_mae", "lesion MAE"), ("mae", "MAE (brain)"))):
            ax = axes[row][col]
            for name in dict.fromkeys(n for n, _ in settings):
                values = {s: vs_gt[(label(n, s), modality)][metric] for n, s in settings if n == name}
                points = sorted((timings[label(name, s)]["seconds_per_slice"], v, s)
                                for s, v in values.items() if v is not None)
                ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=LABELS.get(name, name))
                for x, y, s in points:
                    ax.annotate(str(s), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
            ax.set_xscale("log")
            ax.set_xlabel("seconds per slice (log)")
            ax.set_ylabel(header)
            ax.set_title(f"{modality.upper()}: {header} against time (labels: steps)")
            ax.legend()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def run(opt: argparse.Namespace, overrides: list[str]) -> int:
    from ldm.evaluation.paired import paired_statistics

    settings = [parse_setting(s) for s in opt.settings]
    if len({label(*s) for s in settings}) != len(settings):
        raise ConfigError("--settings lists a setting twice")
    gt = Path(opt.gt) if opt.gt else None
    if gt is None:
        from ldm.inference.data_source import is_raw_cohort

        if not is_raw_cohort(opt.data):
            raise ConfigError("--data is a preprocessed split: give the raw cohort with its DWI/ADC as --gt")
        gt = Path(opt.data)
    out = Path(opt.outdir) if opt.outdir else Path(opt.resume) / "sampler_study"
    if Path(opt.resume).is_file() and not opt.outdir:
        raise ConfigError("-r is a checkpoint file: give --outdir")
    reference = label(*settings[0])
    claim_folder(out, "sampler study", {}, adopt_unmarked=True)  # studies written before folders were marked
    timings, folders = {}, {}
    for name, steps in settings:
        key = label(name, steps)
        folders[key] = out / "samples" / f"{name}_{steps}"
        print(f"[study] {key}: sampling into {folders[key]}")
        timings[key] = sample_setting(opt, overrides, name, steps, folders[key])
        print(f"[study] {key}: {timings[key]['seconds_per_slice']:.3f} s per slice")

    per_run_gt, patient_records, slice_rows = score(folders, gt, opt.patients)
    vs_gt = {(r["run"], r["modality"]): r for r in per_run_gt}
    scored = sorted({r["patient_id"] for r in patient_records})
    pairs = [(reference, key) for key in folders if key != reference]
    paired_results = paired_statistics(patient_records, slice_rows, pairs, seed=opt.seed)
    paired = {(p.run_b, p.modality): p for p in paired_results if p.metric == "lesion_mae" and p.unit == "patient"}
    others = {k: v for k, v in folders.items() if k != reference}
    vs_ref = {}
    if others:
        cohort = reference_cohort(gt, folders[reference], out / "reference_as_truth", scored)
        vs_ref = {(r["run"], r["modality"]): r for r in score(others, cohort, scored)[0]}

    records = []
    for name, steps in settings:
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
    columns = list(records[0])
    csv = [",".join(columns)] + [",".join("" if r[c] is None else str(r[c]) for c in columns) for r in records]
    atomic_write_text(out / "sampler_study.csv", "\n".join(csv) + "\n")
    paired_columns = list(paired_results[0].to_record()) if paired_results else []
    atomic_write_text(out / "paired_vs_reference.csv", "\n".join(
        [",".join(paired_columns)] + [",".join(str(v) for v in p.to_record().values()) for p in paired_results]) + "\n")
    n_slices = timings[reference]["slices"]
    text = (f"# Sampler study: {opt.resume}\n\n{len(scored)} patients, {n_slices} slices per setting, batch "
            f"{opt.batch_size}, precision {opt.precision}, seed {opt.seed}. Scores against the ground truth "
            f"(evaluate.py's defaults: brain-masked MAE and PSNR, pooled lesion MAE, all on [0, 1]); "
            f"\"vs {reference}\": per-patient lesion MAE difference relative to {reference}'s, with its 95% "
            f"bootstrap interval; \"to {reference}\": each setting scored against {reference}'s volumes.\n"
            + study_table(settings, timings, vs_gt, vs_ref, paired, reference) + "\n")
    atomic_write_text(out / "sampler_study.md", text)
    plot(settings, timings, vs_gt, out / "sampler_study.png")
    print(text)
    print(f"wrote {out / 'sampler_study.csv'}, {out / 'sampler_study.md'}, {out / 'sampler_study.png'}")
    return 0


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-r", "--resume", required=True, help="run directory (or checkpoint, with --outdir)")
    p.add_argument("--data", required=True, help="preprocessed split or raw cohort to sample")
    p.add_argument("--gt", default=None, help="raw cohort with the true DWI/ADC (default: --data if it is raw)")
    p.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS), metavar="SAMPLER:STEPS",
                   help="settings to compare; the first is the reference (default: %(default)s)")
    p.add_argument("--outdir", default=None, help="output folder (default: <run>/sampler_study)")
    p.add_argument("--patients", nargs="+", default=None, help="only these patients")
    p.add_argument("--batch_size", type=int, default=32, help="slices per batch")
    p.add_argument("-s", "--seed", type=int, default=23, help="seed of the per-slice noise (and the bootstrap)")
    p.add_argument("--precision", default="32", help="sample_LDM.py --precision")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--reference", default=None, help="sample_LDM.py --reference (CTP-only patients)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    opt = get_parser().parse_args(args)
    try:
        return run(opt, overrides)
    except ConfigError as e:
        print(f"sampler_study.py: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as e:  # evaluate.py's input errors: one line as well
        from ldm.evaluation.volumes import EvaluationInputError

        if isinstance(e, EvaluationInputError):
            print(f"sampler_study.py: error: {e}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise


if __name__ == "__main__":
    sys.exit(main())
