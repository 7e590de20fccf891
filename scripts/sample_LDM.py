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
in docs/results.md, "Samplers"); a Brownian bridge model uses its bridge sampler. A GAN run (Pix2Pix, CycleGAN,
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
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.cli import run_main  # noqa: E402
from ldm.config import split_overrides  # noqa: E402
from ldm.inference.run_sampling import sample_run  # noqa: E402
from ldm.inference.sampling_options import sampling_parser  # noqa: E402
from ldm.util import ConfigError  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    return sampling_parser(__doc__)


def main(argv: list[str] | None = None) -> int:
    args, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    opt, unknown = get_parser().parse_known_args(args)
    unknown += overrides
    # SIGTERM (a cluster's time limit, kill) unwinds like an exception: the temporary preprocessing
    # of a raw cohort and half-written files are removed on the way out
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return run_main(lambda: sample_run(opt, unknown), "sample_LDM.py", ConfigError)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
