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
while another heavy job runs. The study itself is ldm/experiments/sampler_study.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ldm.cli import run_main  # noqa: E402
from ldm.config import split_overrides  # noqa: E402
from ldm.evaluation.volumes import EvaluationInputError  # noqa: E402
from ldm.experiments.sampler_study import DEFAULT_SETTINGS, run_sampler_study, study_from_options  # noqa: E402
from ldm.util import ConfigError  # noqa: E402


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

    def study() -> int:
        files = run_sampler_study(study_from_options(opt, overrides))
        print(files.markdown.read_text())
        print(f"wrote {files.csv}, {files.markdown}, {files.figure}")
        return 0

    # a mistake in the options or configs, or in evaluate.py's inputs: one line
    return run_main(study, "sampler_study.py", (ConfigError, EvaluationInputError))


if __name__ == "__main__":
    sys.exit(main())
