"""Run the loss-weight sweep of the paper's Table 2: post-train, sample and score one run per weight pair.

    python scripts/lambda_sweep.py --data data/npy/test --gt data/raw/test --outdir sweeps/table2 \\
        --baseline logs/<stage-2 run> model.params.ckpt_path=logs/<stage-2 run>/checkpoints/last.ckpt
    python scripts/lambda_sweep.py --dry-run                 # print the commands, run nothing
    python scripts/lambda_sweep.py --grid "0.01:0.02,0.05" --train-only lightning.trainer.max_epochs=200

Every (lambda_image, lambda_lesion) pair of Table 2 becomes its own ``main.py`` run (a subprocess)
of the LAPT config with ``model.params.lambda_image=..`` and ``model.params.lambda_lesion=..``; any
``key=value`` argument is passed on to every run. Each run is then sampled with
``scripts/sample_LDM.py`` and scored with ``scripts/evaluate.py``, and the scores are gathered into
``<outdir>/table2.md`` and ``<outdir>/table2.csv`` (Table 2's columns: the model, the two weights,
then MAE, lesion MAE, PSNR, MS-SSIM and FID for DWI and for ADC).

Two (0, 0) rows: "cLDM" is the stage-2 model itself (give its run directory with ``--baseline``; it
is sampled and scored, not trained again), and the control "cLDM (continued)" is the same stage-3
run with both weights 0: from the same stage-2 checkpoint, for the same steps, on the same data and
augmentation with the same seed, its loss is exactly stage 2's. Only a gain over the control can be
put down to the image-space terms rather than to the extra training (``--no-control`` leaves it
out). Every post-trained run is then compared with the control on the same patients
(``evaluate.py --pairs control:run``: per-patient differences with 95% bootstrap intervals and
Wilcoxon p-values), under the table and in ``<outdir>/eval/vs_control``.

The sweep can be stopped and started again: a run whose training, sampling or scoring finished is
not repeated (``--rerun`` repeats everything), and an interrupted training resumes from its
``last.ckpt``.
"""
from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ldm.config import split_overrides  # noqa: E402
from ldm.data.record import MODALITIES  # noqa: E402
from ldm.experiments.runner import (EXIT_USER_ERROR, ExperimentError, Runner, Stage, claim_folder,  # noqa: E402
                                    find_run_dir, script)
from ldm.io import atomic_write_text  # noqa: E402
from ldm.samplers import SAMPLERS  # noqa: E402

DEFAULT_CONFIG = "configs/latent-diffusion/ldm_lapt.yaml"
# Table 2 of the paper: lambda_image -> the lambda_lesion values tested with it.
TABLE2_GRID: dict[float, tuple[float, ...]] = {
    0.01: (0.0, 0.01, 0.02, 0.05),
    0.05: (0.0, 0.1, 0.2),
    0.1: (0.0, 0.1, 0.2),
}
# (column in evaluate.py's metrics_summary.csv, header in Table 2); mae, lesion_mae and psnr are the
# table variants evaluate.py selects (brain-masked MAE/PSNR, pooled lesion MAE by default)
METRICS = (("mae", "MAE↓"), ("lesion_mae", "Lesion MAE↓"), ("psnr", "PSNR↑"),
           ("ms_ssim_mean", "MS-SSIM↑"), ("fid", "FID↓"))
DECIMALS = {"mae": 3, "lesion_mae": 3, "psnr": 2, "ms_ssim_mean": 3, "fid": 2}
CONTROL_NAME = "control_li0_ll0"
VS_CONTROL = "vs_control"
TRAIN_DONE = "sweep_train_done.json"
SAMPLE_DONE = "sweep_sample_done.json"


class SweepError(ExperimentError):
    """A mistake on the command line (one line, exit code 2; a stage that failed is the runner's
    ExperimentError)."""


@dataclass
class SweepRun:
    """One row of Table 2 and where its files live."""

    lambda_image: float
    lambda_lesion: float
    name: str
    baseline: bool = False
    control: bool = False
    run_dir: Path | None = None  # known once trained (main.py puts a timestamp in front of the name)

    @property
    def label(self) -> str:
        return "cLDM" if self.baseline else "cLDM (continued)" if self.control else "cLDM-PT"


def fmt(value: float) -> str:
    """0.01 -> '0.01', 0.0 -> '0' (names and overrides without float noise)."""
    return f"{value:g}"


def run_name(lambda_image: float, lambda_lesion: float) -> str:
    return f"lapt_li{fmt(lambda_image)}_ll{fmt(lambda_lesion)}"


def parse_grid(text: str | None) -> list[tuple[float, float]]:
    """``"0.01:0,0.02;0.05:0.1"`` -> [(0.01, 0), (0.01, 0.02), (0.05, 0.1)]; None -> Table 2's grid."""
    if not text:
        return [(li, ll) for li, lls in TABLE2_GRID.items() for ll in lls]
    pairs = []
    for group in filter(None, (g.strip() for g in text.split(";"))):
        head, sep, tail = group.partition(":")
        if not sep or not tail.strip():
            raise SweepError(f"--grid: {group!r} is not LAMBDA_IMAGE:LAMBDA_LESION[,LAMBDA_LESION...]")
        try:
            li = float(head)
            pairs += [(li, float(v)) for v in tail.split(",") if v.strip()]
        except ValueError as e:
            raise SweepError(f"--grid: {group!r} holds a value that is not a number ({e})") from e
    if len({(fmt(a), fmt(b)) for a, b in pairs}) != len(pairs):
        raise SweepError(f"--grid: {text!r} lists a weight pair twice")
    return pairs


def train_command(opt: argparse.Namespace, run: SweepRun, resume_dir: Path | None) -> list[str]:
    if resume_dir is not None:
        # a resumed run reloads its own configs (with the lambdas it was started with)
        return [opt.python, script("main.py"), "-r", str(resume_dir), "-t", *opt.overrides]
    return [opt.python, script("main.py"), "--base", *opt.base, "-t", "-n", run.name, "-l", str(opt.logdir),
            "-s", str(opt.seed), f"model.params.lambda_image={fmt(run.lambda_image)}",
            f"model.params.lambda_lesion={fmt(run.lambda_lesion)}", *opt.overrides]


def sample_command(opt: argparse.Namespace, run_dir: str | Path, out: Path) -> list[str]:
    return [opt.python, script("scripts/sample_LDM.py"), "-r", str(run_dir), "--data", str(opt.data),
            "--outdir", str(out), "--sampler", opt.sampler, "--steps", str(opt.steps), "--seed", str(opt.seed),
            *opt.sample_args]


def evaluate_command(opt: argparse.Namespace, run: SweepRun, pred: Path, out: Path) -> list[str]:
    cmd = [opt.python, script("scripts/evaluate.py"), "--pred", f"{run.name}={pred}", "--gt", str(opt.gt),
           "--out", str(out), "--n_panels", "0"]
    if opt.inception_weights:
        cmd += ["--inception_weights", str(opt.inception_weights)]
    return cmd


def plan_runs(opt: argparse.Namespace) -> list[SweepRun]:
    runs = []
    if opt.baseline:
        runs.append(SweepRun(0.0, 0.0, "baseline_stage2", baseline=True, run_dir=Path(opt.baseline)))
    if not opt.no_control:
        runs.append(SweepRun(0.0, 0.0, CONTROL_NAME, control=True))
    for li, ll in parse_grid(opt.grid):
        if li == 0 and ll == 0:
            raise SweepError("--grid: the (0, 0) rows are the stage-2 model (--baseline RUN_DIR) and the control "
                             "run, which the sweep trains by itself")
        runs.append(SweepRun(li, ll, run_name(li, ll)))
    return runs


def sample_dir(opt: argparse.Namespace, run: SweepRun) -> Path:
    return Path(opt.outdir) / "samples" / run.name


def eval_dir(opt: argparse.Namespace, run: SweepRun) -> Path:
    return Path(opt.outdir) / "eval" / run.name


def train(opt: argparse.Namespace, run: SweepRun, runner: Runner) -> None:
    if run.baseline:
        return
    existing = None if opt.rerun else find_run_dir(opt.logdir, run.name)
    resume = existing if existing is not None and (existing / "checkpoints" / "last.ckpt").is_file() else None

    def record() -> Path | None:  # main.py puts a timestamp in front of the name: known once it ran
        found = find_run_dir(opt.logdir, run.name)
        return None if found is None else found / TRAIN_DONE

    # the weights are in the run's name: a record in it stands for them
    runner.run(Stage(f"{run.name}: training" + (" (resumed)" if resume else ""), record,
                     command=train_command(opt, run, resume), verb="trained",
                     info={"lambda_image": run.lambda_image, "lambda_lesion": run.lambda_lesion}))
    run.run_dir = find_run_dir(opt.logdir, run.name)
    if run.run_dir is None:
        if not runner.dry_run:
            raise SweepError(f"{run.name}: main.py finished but no run directory *_{run.name} is in {opt.logdir}")
        run.run_dir = Path(opt.logdir) / f"<timestamp>_{run.name}"


def sample(opt: argparse.Namespace, run: SweepRun, runner: Runner) -> None:
    out = sample_dir(opt, run)
    runner.run(Stage(f"{run.name}: sampling", out / SAMPLE_DONE, {"sampler": opt.sampler, "steps": opt.steps},
                     command=sample_command(opt, run.run_dir, out), verb="sampled", info={"run_dir": run.run_dir},
                     describe=lambda s: f"{s.get('sampler')} {s.get('steps')} steps",
                     advice="give another --outdir (scores of the two would mix in one table)"))


def evaluate(opt: argparse.Namespace, run: SweepRun, runner: Runner) -> None:
    out = eval_dir(opt, run)
    runner.run(Stage(f"{run.name}: scoring", None, command=evaluate_command(opt, run, sample_dir(opt, run), out),
                     outputs=[out / "metrics_summary.csv"]))


def compare_with_control(opt: argparse.Namespace, runs: Sequence[SweepRun], runner: Runner) -> Path | None:
    """Score the control and every other run together, with paired statistics against the control
    (every time: runs may have been added since)."""
    control = next((r for r in runs if r.control), None)
    others = [r for r in runs if not r.control]
    if control is None or not others:
        return None
    out = Path(opt.outdir) / "eval" / VS_CONTROL
    cmd = [opt.python, script("scripts/evaluate.py"), "--pred",
           *[f"{r.name}={sample_dir(opt, r)}" for r in [control, *others]], "--gt", str(opt.gt), "--out", str(out),
           "--n_panels", "0", "--pairs", *[f"{control.name}:{r.name}" for r in others]]
    runner.run(Stage("paired comparison with the control", None, command=cmd))
    return out


def control_markdown(path: Path) -> str:
    """Per-patient lesion MAE and MAE differences of each run against the control (paired_differences.csv)."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["unit"] == "patient" and r["metric"] in ("lesion_mae", "mae")]
    if not rows:
        return ""
    lines = ["", "Against the control (cLDM continued, same steps without the image terms): run − control per "
             "patient, mean [95% bootstrap CI], Wilcoxon p", "",
             "| run | " + " | ".join(f"{m.upper()} {label}" for m in MODALITIES for label in ("Lesion MAE", "MAE")) + " |",
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


def read_summary(path: Path, run_name_: str) -> dict[str, dict[str, float | None]]:
    """{modality: {metric: value}} from evaluate.py's metrics_summary.csv (empty cell -> None)."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("run") == run_name_]
    scores: dict[str, dict[str, float | None]] = {}
    for row in rows:
        scores[row["modality"]] = {key: float(row[key]) if row.get(key) not in (None, "") else None
                                   for key, _ in METRICS}
    missing = [m for m in MODALITIES if m not in scores]
    if missing:
        raise SweepError(f"{path}: no row for run {run_name_!r} and modality {missing[0]!r}")
    return scores


def table_records(runs: Sequence[SweepRun], scores: dict[str, dict]) -> list[dict]:
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


def write_tables(opt: argparse.Namespace, runs: Sequence[SweepRun]) -> tuple[Path, Path]:
    scores = {}
    for run in runs:
        path = eval_dir(opt, run) / "metrics_summary.csv"
        if path.is_file():
            scores[run.name] = read_summary(path, run.name)
    records = table_records(runs, scores)
    if not records:
        raise SweepError(f"no scored run under {Path(opt.outdir) / 'eval'}: nothing to tabulate")
    columns = list(records[0].keys())
    lines = [",".join(columns)] + [",".join("" if r[c] is None else str(r[c]) for c in columns) for r in records]
    out = Path(opt.outdir)
    csv_path, md_path = out / "table2.csv", out / "table2.md"
    atomic_write_text(csv_path, "\n".join(lines) + "\n")
    notes = [f"- {opt.sampler} with {opt.steps} steps; samples under {out / 'samples'}; per-run scores under {out / 'eval'} "
             f"(see each table1.md there for what was scored and left out). MAE and PSNR over the brain mask, "
             f"lesion MAE pooled over all lesion voxels (evaluate.py's defaults)."]
    if any(r["dwi_fid"] is None for r in records):
        notes.append("- FID skipped where '–' (no Inception weights; see --inception_weights).")
    paired = out / "eval" / VS_CONTROL / "paired_differences.csv"
    versus = control_markdown(paired) if paired.is_file() else ""
    atomic_write_text(md_path, table2_markdown(records) + "\n" + "\n".join(notes) + "\n" + versus)
    return md_path, csv_path


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", nargs="+", default=None,
                   help=f"config file(s) of the post-training runs (default {DEFAULT_CONFIG})")
    p.add_argument("--outdir", default="sweeps/table2", help="folder for runs, samples, scores and the table")
    p.add_argument("--logdir", default=None, help="where main.py puts the runs (default <outdir>/runs)")
    p.add_argument("--grid", default=None,
                   help="weight pairs as 'LI:LL,LL;LI:LL' (default: Table 2's ten post-trained rows)")
    p.add_argument("--baseline", default=None, metavar="RUN_DIR",
                   help="stage-2 run directory (or checkpoint): sampled and scored as the (0, 0) row")
    p.add_argument("--data", default=None, help="data to sample (passed to sample_LDM.py --data)")
    p.add_argument("--gt", default=None, help="raw ground-truth cohort folder (passed to evaluate.py --gt)")
    p.add_argument("--sampler", default="ddim", choices=tuple(SAMPLERS),
                   help="sampler (passed to sample_LDM.py; the paper: DDIM)")
    p.add_argument("--steps", type=int, default=200, help="sampler steps (paper: 200 DDIM steps)")
    p.add_argument("--seed", type=int, default=23, help="seed for training and sampling")
    p.add_argument("--inception_weights", default=None, help="passed to evaluate.py for FID")
    p.add_argument("--sample-arg", dest="sample_args", action="append", default=[], metavar="ARG",
                   help="extra argument for sample_LDM.py (repeat, e.g. --sample-arg=--batch_size=48)")
    p.add_argument("--no-control", dest="no_control", action="store_true",
                   help="leave out the control run (both weights 0, same steps; see above)")
    p.add_argument("--python", default=sys.executable, help="interpreter for the runs")
    p.add_argument("--train-only", action="store_true", help="train the runs, do not sample or score")
    p.add_argument("--rerun", action="store_true", help="repeat steps that finished before")
    p.add_argument("--dry-run", action="store_true", help="print the commands the sweep would run, run nothing")
    p.add_argument("overrides_unparsed", nargs="*", metavar="key=value",
                   help="dotlist overrides passed to every run (e.g. lightning.trainer.max_epochs=200)")
    return p


def main(argv: list[str] | None = None) -> int:
    tokens = list(sys.argv[1:] if argv is None else argv)
    # key=value tokens are taken out first: --base takes several files and would swallow them
    args, overrides = split_overrides(tokens)
    opt = get_parser().parse_args(args)
    opt.overrides = overrides
    try:
        if opt.overrides_unparsed:
            raise SweepError(f"unrecognised argument {opt.overrides_unparsed[0]!r} (overrides look like a.b.c=value)")
        opt.logdir = Path(opt.logdir or Path(opt.outdir) / "runs")
        if opt.steps < 1:
            raise SweepError(f"--steps must be at least 1, got {opt.steps}")
        if not opt.train_only and not opt.dry_run and (opt.data is None or opt.gt is None):
            raise SweepError("sampling and scoring need --data (what to sample) and --gt (the raw cohort); "
                             "or use --train-only")
        if opt.base is None:
            opt.base = [script(DEFAULT_CONFIG)]
        for path in opt.base:
            if not Path(path).is_file():
                raise SweepError(f"config file {path!r} does not exist")
        if opt.baseline and not Path(opt.baseline).exists():
            raise SweepError(f"--baseline {opt.baseline!r} does not exist")
        opt.data = opt.data or "<DATA>"
        opt.gt = opt.gt or "<GT>"
        runs = plan_runs(opt)
        if not opt.dry_run:  # sweeps written before folders were marked are taken as sweeps
            claim_folder(opt.outdir, "lambda sweep", {}, adopt_unmarked=True)
        runner = Runner("[sweep]", dry_run=opt.dry_run, rerun=opt.rerun)
        print(f"[sweep] {len(runs)} run(s): " + ", ".join(r.name for r in runs), flush=True)
        for run in runs:
            train(opt, run, runner)
            if opt.train_only:
                continue
            sample(opt, run, runner)
            evaluate(opt, run, runner)
        if not opt.train_only:
            compare_with_control(opt, runs, runner)
        if opt.dry_run or opt.train_only:
            return 0
        md_path, csv_path = write_tables(opt, runs)
        print(md_path.read_text())
        print(f"[sweep] wrote {md_path} and {csv_path}")
        return 0
    except ExperimentError as e:
        print(f"lambda_sweep.py: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
