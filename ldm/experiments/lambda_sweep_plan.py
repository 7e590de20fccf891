"""The plan of the loss-weight sweep (the paper's Table 2): its settings, its grid of weight pairs,
its runs and where their files go.

Every (lambda_image, lambda_lesion) pair weighs the image-space terms of the post-training loss
(paper Eq. 8: L = L_latent + lambda_image L_image (Eq. 6) + lambda_lesion L_lesion (Eq. 7)) and
becomes one post-training run. Two (0, 0) rows come beside them: "cLDM", the stage-2 model itself
(``baseline``: sampled and scored, not trained again), and the control "cLDM (continued)", the
same stage-3 run with both weights 0, which continues stage 2 for the same steps, on the same data
and augmentation with the same seed, so that only a gain over it can be put down to the image-space
terms. Layout under ``outdir``: ``runs/`` (main.py's run directories, ``logdir``),
``samples/<run>``, ``eval/<run>`` and ``eval/vs_control`` (the paired comparison), ``table2.*``.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ldm.experiments.runner import ExperimentError, script

DEFAULT_CONFIG = "configs/latent-diffusion/ldm_lapt.yaml"
DEFAULT_OUTDIR = "sweeps/table2"
DEFAULT_SAMPLER = "ddim"  # the paper's sampler, 200 steps
DEFAULT_STEPS = 200
DEFAULT_SEED = 23
# Table 2 of the paper: lambda_image -> the lambda_lesion values tested with it.
TABLE2_GRID: dict[float, tuple[float, ...]] = {
    0.01: (0.0, 0.01, 0.02, 0.05),
    0.05: (0.0, 0.1, 0.2),
    0.1: (0.0, 0.1, 0.2),
}
BASELINE_NAME = "baseline_stage2"
CONTROL_NAME = "control_li0_ll0"
VS_CONTROL = "vs_control"


class SweepError(ExperimentError):
    """A mistake on the command line (one line, exit code 2; a stage that failed is the runner's
    ExperimentError)."""


def fmt(value: float) -> str:
    """0.01 -> '0.01', 0.0 -> '0' (names and overrides without float noise)."""
    return f"{value:g}"


def run_name(lambda_image: float, lambda_lesion: float) -> str:
    """The post-training run of a weight pair (main.py puts a timestamp in front of it)."""
    return f"lapt_li{fmt(lambda_image)}_ll{fmt(lambda_lesion)}"


def table2_pairs() -> list[tuple[float, float]]:
    return [(li, ll) for li, lls in TABLE2_GRID.items() for ll in lls]


def parse_grid(text: str | None) -> list[tuple[float, float]]:
    """``"0.01:0,0.02;0.05:0.1"`` -> [(0.01, 0), (0.01, 0.02), (0.05, 0.1)]; None -> Table 2's grid."""
    if not text:
        return table2_pairs()
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
    if any(li == 0 and ll == 0 for li, ll in pairs):
        raise SweepError("--grid: the (0, 0) rows are the stage-2 model (--baseline RUN_DIR) and the control "
                         "run, which the sweep trains by itself")
    return pairs


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


@dataclass
class SweepSettings:
    """What the sweep trains, samples and scores (``scripts/lambda_sweep.py``'s options).

    ``overrides`` (``key=value``) go to every main.py run, ``sample_args`` to every sample_LDM.py
    call; ``data`` and ``gt`` are placeholders in a dry run that was not given them.
    """

    outdir: Path = Path(DEFAULT_OUTDIR)
    logdir: Path | None = None  # default <outdir>/runs
    base: list[str] = field(default_factory=lambda: [script(DEFAULT_CONFIG)])
    grid: list[tuple[float, float]] = field(default_factory=table2_pairs)
    baseline: Path | None = None
    control: bool = True
    data: str = "<DATA>"
    gt: str = "<GT>"
    sampler: str = DEFAULT_SAMPLER
    steps: int = DEFAULT_STEPS
    seed: int = DEFAULT_SEED
    inception_weights: str | None = None
    sample_args: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    python: str = sys.executable

    def __post_init__(self) -> None:
        self.outdir = Path(self.outdir)
        self.logdir = Path(self.logdir) if self.logdir is not None else self.outdir / "runs"

    def sample_dir(self, run: SweepRun) -> Path:
        return self.outdir / "samples" / run.name

    def eval_dir(self, run: SweepRun) -> Path:
        return self.outdir / "eval" / run.name

    @property
    def vs_control_dir(self) -> Path:
        return self.outdir / "eval" / VS_CONTROL


def settings_from_options(opt: argparse.Namespace, overrides: list[str]) -> SweepSettings:
    """The settings of ``scripts/lambda_sweep.py``'s parsed options, checked in the order a user
    reads them; a mistake is a :class:`SweepError` (one line), raised before anything is written."""
    if opt.steps < 1:
        raise SweepError(f"--steps must be at least 1, got {opt.steps}")
    if not opt.train_only and not opt.dry_run and (opt.data is None or opt.gt is None):
        raise SweepError("sampling and scoring need --data (what to sample) and --gt (the raw cohort); "
                         "or use --train-only")
    base = opt.base if opt.base is not None else [script(DEFAULT_CONFIG)]
    for path in base:
        if not Path(path).is_file():
            raise SweepError(f"config file {path!r} does not exist")
    if opt.baseline and not Path(opt.baseline).exists():
        raise SweepError(f"--baseline {opt.baseline!r} does not exist")
    return SweepSettings(
        outdir=Path(opt.outdir), logdir=Path(opt.logdir) if opt.logdir else None, base=list(base),
        grid=parse_grid(opt.grid), baseline=Path(opt.baseline) if opt.baseline else None,
        control=not opt.no_control, data=opt.data or "<DATA>", gt=opt.gt or "<GT>", sampler=opt.sampler,
        steps=opt.steps, seed=opt.seed, inception_weights=opt.inception_weights, sample_args=list(opt.sample_args),
        overrides=list(overrides), python=opt.python)


def plan_runs(settings: SweepSettings) -> list[SweepRun]:
    """The rows in table order: the stage-2 model (with a baseline), the control, then the grid."""
    runs = []
    if settings.baseline is not None:
        runs.append(SweepRun(0.0, 0.0, BASELINE_NAME, baseline=True, run_dir=settings.baseline))
    if settings.control:
        runs.append(SweepRun(0.0, 0.0, CONTROL_NAME, control=True))
    runs += [SweepRun(li, ll, run_name(li, ll)) for li, ll in settings.grid]
    return runs
