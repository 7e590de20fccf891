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
``last.ckpt``. The sweep itself is ldm/experiments/lambda_sweep.py (its plan lambda_sweep_plan.py,
the table lambda_sweep_report.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ldm.cli import run_main, user_error  # noqa: E402
from ldm.config import split_overrides  # noqa: E402
from ldm.experiments import lambda_sweep_plan as plan  # noqa: E402
from ldm.experiments.lambda_sweep import run_sweep  # noqa: E402
from ldm.experiments.runner import ExperimentError  # noqa: E402
from ldm.samplers import SAMPLERS  # noqa: E402

PROG = "lambda_sweep.py"


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", nargs="+", default=None,
                   help=f"config file(s) of the post-training runs (default {plan.DEFAULT_CONFIG})")
    p.add_argument("--outdir", default=plan.DEFAULT_OUTDIR, help="folder for runs, samples, scores and the table")
    p.add_argument("--logdir", default=None, help="where main.py puts the runs (default <outdir>/runs)")
    p.add_argument("--grid", default=None,
                   help="weight pairs as 'LI:LL,LL;LI:LL' (default: Table 2's ten post-trained rows)")
    p.add_argument("--baseline", default=None, metavar="RUN_DIR",
                   help="stage-2 run directory (or checkpoint): sampled and scored as the (0, 0) row")
    p.add_argument("--data", default=None, help="data to sample (passed to sample_LDM.py --data)")
    p.add_argument("--gt", default=None, help="raw ground-truth cohort folder (passed to evaluate.py --gt)")
    p.add_argument("--sampler", default=plan.DEFAULT_SAMPLER, choices=tuple(SAMPLERS),
                   help="sampler (passed to sample_LDM.py; the paper: DDIM)")
    p.add_argument("--steps", type=int, default=plan.DEFAULT_STEPS, help="sampler steps (paper: 200 DDIM steps)")
    p.add_argument("--seed", type=int, default=plan.DEFAULT_SEED, help="seed for training and sampling")
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
    if opt.overrides_unparsed:
        return user_error(f"unrecognised argument {opt.overrides_unparsed[0]!r} (overrides look like a.b.c=value)",
                          PROG)

    def sweep() -> int:
        tables = run_sweep(plan.settings_from_options(opt, overrides), train_only=opt.train_only, rerun=opt.rerun,
                           dry_run=opt.dry_run)
        if tables is not None:
            md_path, csv_path = tables
            print(md_path.read_text())
            print(f"[sweep] wrote {md_path} and {csv_path}")
        return 0

    return run_main(sweep, PROG, ExperimentError)


if __name__ == "__main__":
    sys.exit(main())
