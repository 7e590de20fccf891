"""`make study`: cLDM-PT against its control over several training seeds, with a powered test set.

    make study                                          # CPU defaults: 3 seeds, about 57 minutes on 2 cores
    STUDY_SEEDS=2 STUDY_SCALE=0.2 make study            # a quick run
    STUDY_SCALE=20 STUDY_ACCELERATOR=gpu make study     # on a GPU, every stage 20x longer (not measured)
    python scripts/study.py --dry-run                   # print the stages' commands, run nothing

The knobs are environment variables (STUDY_SEEDS, STUDY_SCALE, STUDY_OUT, STUDY_ACCELERATOR,
STUDY_N_TRAIN, STUDY_N_VAL, STUDY_N_TEST, STUDY_SLICES, STUDY_SAMPLER, STUDY_SAMPLE_STEPS,
STUDY_COHORT_SEED, STUDY_SIZE, ...); what the study runs, its power computation and its time budget are in
ldm/experiments/study.py. It writes ``<STUDY_OUT>/study.md``, ``study.csv`` and
``study_differences.png``; a study started again skips every stage it finished. Mistakes end with
one line and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.cli import user_error  # noqa: E402
from ldm.experiments.runner import ExperimentError  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="print the commands of the stages still to run")
    p.add_argument("--python", default=sys.executable, help="interpreter for the stages (default: this one)")
    return p


def main(argv: list[str] | None = None) -> int:
    from ldm.experiments.study import run_study, settings_from_env

    opt = get_parser().parse_args(argv)
    try:
        report = run_study(settings_from_env(os.environ, python=opt.python), dry_run=opt.dry_run)
    except ExperimentError as e:
        return user_error(e, "study.py")
    if report is not None:
        print(report.read_text())
        print(f"[study] wrote {report}, {report.with_suffix('.csv')} and {report.parent / 'study_differences.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
