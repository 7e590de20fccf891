"""The options of sampling a trained run over a cohort (``scripts/sample_LDM.py``), as a parser that
other command lines reuse (the sampler study samples each setting with them), so that both read
the same defaults; :func:`ldm.inference.run_sampling.sample_run` takes what it parses.
"""
from __future__ import annotations

import argparse

from ldm.cli import HelpFormatter
from ldm.data.transforms.intensity_window import ADC_CORE_THRESHOLD
from ldm.precision import PRECISIONS
from ldm.samplers import SAMPLERS

SAMPLER_CHOICES = tuple(SAMPLERS)  # the names --sampler takes: ldm.samplers' registry


def sampling_parser(description: str | None = None) -> argparse.ArgumentParser:
    """``scripts/sample_LDM.py``'s parser; ``description`` is its help text (the script's docstring)."""
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
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
    p.add_argument("--sampler", default=None, choices=SAMPLER_CHOICES,
                   help="sampler (default: the model config's `sampler`, DDIM for the cLDM; docs/sampling.md)")
    p.add_argument("--steps", type=int, default=200, help="sampler steps = denoiser evaluations (the paper: 200 DDIM)")
    p.add_argument("--clip_x0", action=argparse.BooleanOptionalAction, default=None,
                   help="clip each x0_hat to the first stage's codebook range (DDIM, DPM-Solver++; default: the "
                        "sampler config's, off as in the reference; docs/sampling.md, Clipping x0_hat)")
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
