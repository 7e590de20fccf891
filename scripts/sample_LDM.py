"""Synthesise DWI and ADC volumes from CT perfusion with a trained (post-trained) latent diffusion model.

    python scripts/sample_LDM.py -r logs/<run> --data data/preprocessed/test --n_samples 1 \\
        --batch_size 48 [--sampler ddim|dpmsolver++] --steps 200 [--outdir OUT] [key=value ...]

``-r`` is a run directory (configs from ``<run>/configs/*.yaml``, weights from
``<run>/checkpoints/last.ckpt``) or a checkpoint file. ``--data`` is a preprocessed split or a raw
NIfTI cohort (preprocessed on the fly at the spacing, input size and CTP frame count the run was
trained at, from ``<run>/data_contract.json``; CTP-only patients get their DWI/ADC scale from
``<run>/reference.json``, so the run folder alone is enough). A preprocessed split made at another
spacing, size or frame count than the run's is refused. For every patient it writes
``<outdir>/<patient_id>/dwi_sample_{k}.nii.gz`` and ``adc_sample_{k}.nii.gz`` in the source
geometry (same shape and affine as the source volumes, physical units, zero outside the brain
mask), atomically, skipping samples that already exist (a second run resumes). EMA weights are used
when the checkpoint has them. Each slice's initial noise is seeded by (seed, patient, k, slice),
and so is the per-step noise of eta > 0, so the volumes do not depend on --batch_size (up to
float32 rounding: kernels sum in a batch-size dependent order, ~1e-6 relative). ``--sampler``
chooses DDIM (the paper's, 200 steps) or DPM-Solver++(2M) (deterministic; quality against time
in README "Samplers"); a Brownian bridge model uses its bridge sampler. A GAN run (Pix2Pix, CycleGAN,
PairedCycleGAN: ldm/models/gan, docs/baselines.md) is sampled the same way, with the same outputs: its
generator maps each slice in one forward pass (eval mode), so ``--sampler`` is refused and
``--steps``, ``--eta``, ``--initial_noise`` and ``--seed`` do not apply (default folder
``<run>/samples/direct``).
Mistakes on the command line or in configs end with one line and exit code 2.

``--summary`` (with ``--n_samples`` K >= 2) also writes per patient ``{dwi,adc}_mean.nii.gz`` and
``{dwi,adc}_std.nii.gz`` over the K samples on disk, in the same geometry, and the spread of the
ischemic core volume (ADC < --adc_core_threshold) over the samples in ``core_volume_spread.json``
and ``<outdir>/core_volume_spread.csv`` (see ldm/inference/sample_summary.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.precision import PRECISIONS  # noqa: E402
from ldm.samplers import SAMPLERS  # noqa: E402

EXIT_USER_ERROR = 2


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""


def get_parser() -> argparse.ArgumentParser:
    from ldm.evaluation.clinical import ADC_CORE_THRESHOLD

    p = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("-r", "--resume", required=True, help="run directory or checkpoint file")
    p.add_argument("-b", "--base", nargs="*", default=[], metavar="config.yaml",
                   help="configs merged after the run's own (needed for a checkpoint outside a run directory)")
    p.add_argument("--data", default=None,
                   help="preprocessed split or raw NIfTI cohort folder (default: the run's test, else "
                        "validation data_root)")
    p.add_argument("--reference", default=None,
                   help="preprocessed training split whose cohort reference values give the DWI/ADC "
                        "intensity scale of CTP-only patients (default: the run's own reference.json, else "
                        "its train data_root if it exists, else the data's own reference.json)")
    p.add_argument("--size", nargs=2, type=int, default=None, metavar=("H", "W"),
                   help="in-plane size for preprocessing a raw cohort (default: the model's input size, "
                        "model.params.image_size x the first stage's factor; needed only if that is unknown)")
    p.add_argument("--patients", nargs="+", default=None, help="sample only these patients")
    p.add_argument("-n", "--n_samples", type=int, default=1, help="samples per patient")
    p.add_argument("--batch_size", type=int, default=48, help="slices per batch")
    p.add_argument("--sampler", default=None, choices=tuple(SAMPLERS),
                   help="sampler (default: the model config's `sampler`, DDIM for the cLDM; docs/sampling.md)")
    p.add_argument("--steps", type=int, default=200, help="sampler steps = denoiser evaluations (the paper: 200 DDIM)")
    p.add_argument("--eta", type=float, default=0.0,
                   help="DDIM / bridge eta (0: deterministic; DPM-Solver++ takes 0 only)")
    p.add_argument("--initial_noise", choices=("zero_mean", "gaussian"), default="zero_mean",
                   help="x_T with its spatial mean removed per channel (the brightness of a sample no longer "
                        "follows the mean of the drawn noise; docs/sampling.md), or as drawn (CompVis, reference)")
    p.add_argument("--outdir", default=None,
                   help="output folder (default: <run>/samples/<steps> for DDIM, <run>/samples/<sampler>_<steps> else)")
    p.add_argument("-s", "--seed", type=int, default=23, help="seed of the per-slice initial noise")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--precision", default="32", choices=PRECISIONS,
                   help="bf16-mixed: UNet and decoder under bf16 autocast, for GPUs with bf16 (the sampler's "
                        "latent stays float32)")
    p.add_argument("--workers", type=int, default=1, help="processes for preprocessing a raw cohort")
    p.add_argument("--skip-bad", "--skip_bad", dest="skip_bad", action="store_true",
                   help="raw cohort: sample the patients preprocessing accepts and leave out the rejected ones "
                        "(default: a rejected patient is an error)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--summary", action="store_true",
                   help="also write voxel-wise mean/std maps over the samples and the core volume's spread "
                        "(needs --n_samples 2 or more)")
    p.add_argument("--adc_core_threshold", type=float, default=ADC_CORE_THRESHOLD,
                   help="with --summary: core = ADC below this (10^-6 mm^2/s) in the brain mask (RAPID's 620)")
    p.add_argument("--min_cluster_ml", type=float, default=None,
                   help="with --summary: drop core clusters (26-connected) smaller than this many ml "
                        "(None: keep all)")
    return p


def main(argv: list[str] | None = None) -> int:
    import signal

    from ldm.util import ConfigError

    from ldm.config import split_overrides

    args, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    opt, unknown = get_parser().parse_known_args(args)
    unknown += overrides
    # SIGTERM (a cluster's time limit, kill) unwinds like an exception: the temporary preprocessing
    # of a raw cohort and half-written files are removed on the way out
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    from ldm.inference.run_sampling import sample_run

    try:
        sample_run(opt, unknown)
        return 0
    except ConfigError as e:
        print(f"sample_LDM.py: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
