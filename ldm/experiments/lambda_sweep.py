"""The loss-weight sweep of the paper's Table 2 as stages of the runner: post-train, sample and score
one run per weight pair (``scripts/lambda_sweep.py``; the plan is ``lambda_sweep_plan.py``, the
table ``lambda_sweep_report.py``).

Every pair becomes its own ``main.py`` run (a subprocess) of the LAPT config with
``model.params.lambda_image=..`` and ``model.params.lambda_lesion=..`` and the user's overrides;
each run is sampled with ``scripts/sample_LDM.py`` and scored with ``scripts/evaluate.py``, and every
post-trained run is compared with the control on the same patients (``evaluate.py --pairs
control:run``: per-patient differences with 95% bootstrap intervals and Wilcoxon p-values). Each
step is a :class:`~ldm.experiments.runner.Stage`: a sweep stopped and started again repeats no
training, sampling or scoring it finished (``rerun`` repeats everything), an interrupted training
resumes from its ``last.ckpt``, and a sample folder made with another sampler or step count is
refused (its scores would mix in one table).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ldm.experiments.lambda_sweep_plan import SweepError, SweepRun, SweepSettings, fmt, plan_runs
from ldm.experiments.lambda_sweep_report import write_tables
from ldm.experiments.runner import Runner, Stage, claim_folder, find_run_dir, resumable_run, script

KIND = "lambda sweep"
TRAIN_DONE = "sweep_train_done.json"  # in the run directory: the weights are in its name
SAMPLE_DONE = "sweep_sample_done.json"


def train_command(s: SweepSettings, run: SweepRun, resume_dir: Path | None) -> list[str]:
    if resume_dir is not None:
        # a resumed run reloads its own configs (with the lambdas it was started with)
        return [s.python, script("main.py"), "-r", str(resume_dir), "-t", *s.overrides]
    return [s.python, script("main.py"), "--base", *s.base, "-t", "-n", run.name, "-l", str(s.logdir),
            "-s", str(s.seed), f"model.params.lambda_image={fmt(run.lambda_image)}",
            f"model.params.lambda_lesion={fmt(run.lambda_lesion)}", *s.overrides]


def sample_command(s: SweepSettings, run_dir: str | Path, out: Path) -> list[str]:
    return [s.python, script("scripts/sample_LDM.py"), "-r", str(run_dir), "--data", str(s.data),
            "--outdir", str(out), "--sampler", s.sampler, "--steps", str(s.steps), "--seed", str(s.seed),
            *s.sample_args]


def evaluate_command(s: SweepSettings, predictions: Sequence[SweepRun], out: Path,
                     control: SweepRun | None = None) -> list[str]:
    """evaluate.py on the runs' samples; with ``control``, paired statistics of every other run
    against it, and no FID (each run's own scoring has it; it has no per-patient differences)."""
    cmd = [s.python, script("scripts/evaluate.py"), "--pred", *[f"{r.name}={s.sample_dir(r)}" for r in predictions],
           "--gt", str(s.gt), "--out", str(out), "--n_panels", "0"]
    if control is not None:
        cmd += ["--pairs", *[f"{control.name}:{r.name}" for r in predictions if r is not control]]
    elif s.inception_weights:
        cmd += ["--inception_weights", str(s.inception_weights)]
    return cmd


def train(s: SweepSettings, run: SweepRun, runner: Runner) -> None:
    """Train ``run`` (resume it from its last.ckpt) unless it is the stage-2 model; sets its run_dir."""
    if run.baseline:
        return
    resume = None if runner.rerun else resumable_run(s.logdir, run.name)

    def record() -> Path | None:  # main.py puts a timestamp in front of the name: known once it ran
        found = find_run_dir(s.logdir, run.name)
        return None if found is None else found / TRAIN_DONE

    # the weights are in the run's name: a record in it stands for them
    runner.run(Stage(f"{run.name}: training" + (" (resumed)" if resume else ""), record,
                     command=train_command(s, run, resume), verb="trained",
                     info={"lambda_image": run.lambda_image, "lambda_lesion": run.lambda_lesion}))
    run.run_dir = find_run_dir(s.logdir, run.name)
    if run.run_dir is None:
        if not runner.dry_run:
            raise SweepError(f"{run.name}: main.py finished but no run directory *_{run.name} is in {s.logdir}")
        run.run_dir = s.logdir / f"<timestamp>_{run.name}"


def sample(s: SweepSettings, run: SweepRun, runner: Runner) -> None:
    out = s.sample_dir(run)
    runner.run(Stage(f"{run.name}: sampling", out / SAMPLE_DONE, {"sampler": s.sampler, "steps": s.steps},
                     command=sample_command(s, run.run_dir, out), verb="sampled", info={"run_dir": run.run_dir},
                     describe=lambda old: f"{old.get('sampler')} {old.get('steps')} steps",
                     advice="give another --outdir (scores of the two would mix in one table)"))


def evaluate(s: SweepSettings, run: SweepRun, runner: Runner) -> None:
    out = s.eval_dir(run)
    runner.run(Stage(f"{run.name}: scoring", None, command=evaluate_command(s, [run], out),
                     outputs=[out / "metrics_summary.csv"]))


def compare_with_control(s: SweepSettings, runs: Sequence[SweepRun], runner: Runner) -> Path | None:
    """Score the control and every other run together, with paired statistics against the control
    (every time: runs may have been added since); the folder, None without a control or other runs."""
    control = next((r for r in runs if r.control), None)
    others = [r for r in runs if not r.control]
    if control is None or not others:
        return None
    out = s.vs_control_dir
    runner.run(Stage("paired comparison with the control", None,
                     command=evaluate_command(s, [control, *others], out, control=control)))
    return out


def run_sweep(s: SweepSettings, train_only: bool = False, rerun: bool = False,
              dry_run: bool = False) -> tuple[Path, Path] | None:
    """Run (or resume) the sweep; Table 2's markdown and CSV paths, None in a dry run or with
    ``train_only``. A dry run prints every command still to run and writes nothing."""
    runs = plan_runs(s)
    if not dry_run:  # sweeps written before folders were marked are taken as sweeps
        claim_folder(s.outdir, KIND, {}, adopt_unmarked=True)
    runner = Runner("[sweep]", dry_run=dry_run, rerun=rerun)
    runner.say(f"{len(runs)} run(s): " + ", ".join(r.name for r in runs))
    for run in runs:
        train(s, run, runner)
        if train_only:
            continue
        sample(s, run, runner)
        evaluate(s, run, runner)
    if not train_only:
        compare_with_control(s, runs, runner)
    if dry_run or train_only:
        return None
    return write_tables(s, runs)
