"""Synthesise DWI and ADC volumes from CT perfusion with a trained (post-trained) latent diffusion model.

    python scripts/sample_LDM.py -r logs/<run> --data data/preprocessed/test --n_samples 1 \\
        --batch_size 48 --steps 200 [--outdir OUT] [key=value ...]

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
so with ``--eta 0`` (deterministic DDIM) the volumes do not depend on --batch_size (up to float32
rounding: kernels sum in a batch-size dependent order, ~1e-6 relative); with eta > 0
DDIM's per-step noise is seeded per batch: reproducible for the same --batch_size only.
Mistakes on the command line or in configs end with one line and exit code 2.

``--summary`` (with ``--n_samples`` K >= 2) also writes per patient ``{dwi,adc}_mean.nii.gz`` and
``{dwi,adc}_std.nii.gz`` over the K samples on disk, in the same geometry, and the spread of the
ischemic core volume (ADC < --adc_core_threshold) over the samples in ``core_volume_spread.json``
and ``<outdir>/core_volume_spread.csv`` (see ldm/inference/sample_summary.py).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.precision import PRECISIONS  # noqa: E402

EXIT_USER_ERROR = 2
SETTINGS_FILE = "sampling.json"


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
    p.add_argument("--steps", type=int, default=200, help="DDIM steps (the paper uses 200)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    p.add_argument("--initial_noise", choices=("zero_mean", "gaussian"), default="zero_mean",
                   help="x_T with its spatial mean removed per channel (the brightness of a sample no longer "
                        "follows the mean of the drawn noise; docs/sampling.md), or as drawn (CompVis, reference)")
    p.add_argument("--outdir", default=None, help="output folder (default: <run>/samples/<steps>)")
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


def check_settings(outdir: Path, settings: dict) -> None:
    """Refuse to resume into a folder whose existing samples were made with other settings."""
    import json

    from ldm.util import ConfigError

    path = outdir / SETTINGS_FILE
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    keys = ["checkpoint", "steps", "eta", "seed", "overrides", "precision", "initial_noise"]
    if settings["eta"] > 0:
        keys.append("batch_size")
    old.setdefault("precision", "32")  # folders sampled before the setting existed ran in float32
    old.setdefault("initial_noise", "gaussian")  # ... and from x_T as drawn
    differ = [k for k in keys if old.get(k) != settings.get(k)]
    if differ:
        k = differ[0]
        raise ConfigError(f"--outdir {str(outdir)!r} holds samples made with {k}={old.get(k)!r} (now "
                          f"{settings.get(k)!r}): resuming would mix them; choose another --outdir")


def check_input_size(records: dict, size: tuple[int, int] | None, data_root: Path) -> None:
    """The preprocessed slices must have the in-plane size the model was trained at (the UNet is
    convolutional and would run at another size, but it has not learnt that geometry)."""
    from ldm.util import ConfigError

    sizes = sorted({tuple(r.size) for r in records.values()})
    if size is not None and sizes and sizes != [tuple(size)]:
        raise ConfigError(f"{str(data_root)!r} holds {' and '.join(f'{h}x{w}' for h, w in sizes)} slices but the model "
                          f"takes {size[0]}x{size[1]} (model.params.image_size x the first stage's factor): "
                          f"preprocess the data at that size")


def run(opt: argparse.Namespace, overrides: list[str]) -> int:
    import torch

    from ldm.config import parse_overrides
    from ldm.data.contract import DataContract, check_split, load_run_contract
    from ldm.data.record import INDEX_FILE, REFERENCE_FILE, load_index
    from ldm.inference.data_source import (configured_data_root, is_raw_cohort, load_cohort_reference,
                                           model_input_size, model_timepoints, preprocessed_data, reference_source)
    from ldm.inference.run_loading import choose_device, load_model, load_run_config, resolve_run
    from ldm.inference.slice_sampler import make_slice_sampler
    from ldm.inference.volume_sampler import sample_cohort
    from ldm.io import atomic_write_json
    from ldm.util import ConfigError

    start = time.time()
    parse_overrides(overrides)
    for name in ("n_samples", "batch_size", "steps"):
        if getattr(opt, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(opt, name)}")
    if opt.eta < 0:
        raise ConfigError(f"--eta must be >= 0, got {opt.eta}")
    if opt.size is not None and min(opt.size) < 1:
        raise ConfigError(f"--size must be two positive numbers, got {opt.size[0]} {opt.size[1]}")
    if opt.summary:  # before the model loads: K < 2 and meaningless thresholds are refused
        from ldm.inference.sample_summary import check_summary_options
        check_summary_options(opt.n_samples, opt.adc_core_threshold, opt.min_cluster_ml)
    run_files = resolve_run(opt.resume, opt.base)
    config = load_run_config(run_files, overrides)
    data = opt.data or configured_data_root(config, ("test", "validation"))
    if not data:
        raise ConfigError("no --data given and the run's config names no test or validation data_root")
    reference_path = reference_source(opt.reference, config)
    if opt.reference is None and run_files.logdir is not None and (run_files.logdir / REFERENCE_FILE).is_file():
        reference_path = run_files.logdir  # the training split's reference, carried by the run
    try:
        contract = load_run_contract(run_files.logdir)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    train = configured_data_root(config, ("train",))
    if contract is None and train and (Path(train) / INDEX_FILE).is_file():  # a run from before contracts
        try:
            contract = DataContract.from_split(train)
        except (FileNotFoundError, ValueError):
            contract = None
    if opt.outdir:
        outdir = Path(opt.outdir)
    elif run_files.logdir is not None:
        outdir = run_files.logdir / "samples" / str(opt.steps)
    else:
        raise ConfigError("give --outdir")
    blocking = next((p for p in (outdir, *outdir.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ConfigError(f"--outdir {str(outdir)!r}: {str(blocking)!r} is a file, not a folder")
    settings = {"checkpoint": str(run_files.checkpoint.resolve()), "configs": [str(c) for c in run_files.configs],
                "overrides": list(overrides), "data": str(data), "steps": opt.steps, "eta": opt.eta,
                "seed": opt.seed, "n_samples": opt.n_samples, "batch_size": opt.batch_size,
                "precision": opt.precision, "initial_noise": opt.initial_noise}
    check_settings(outdir, settings)

    device = choose_device(opt.device)
    model = load_model(config, run_files.checkpoint, device)
    try:
        sampler = make_slice_sampler(model, steps=opt.steps, eta=opt.eta, precision=opt.precision,
                                     initial_noise=opt.initial_noise)
    except ValueError as e:  # e.g. more steps than the model's T
        raise ConfigError(f"--steps {opt.steps} / --eta {opt.eta}: {e}") from e
    ema = "EMA" if getattr(model, "use_ema", False) else "raw (no EMA in the checkpoint)"
    print(f"model {config.model.target} from {run_files.checkpoint} ({ema} weights) on {device}")
    model_size = model_input_size(config)
    size = tuple(opt.size) if opt.size else model_size or (contract.size if contract else None)
    if contract is not None:
        print(f"the run expects {contract.describe()} ({contract.source})")
    raw = Path(data).is_dir() and is_raw_cohort(data)
    with preprocessed_data(data, size, reference_path, opt.workers,
                           contract.n_timepoints if contract else model_timepoints(config), opt.patients,
                           spacing=contract.spacing if contract else None,
                           slice_rule=contract.slice_rule if contract else "reference",
                           skip_bad=opt.skip_bad) as data_root:
        try:
            records = load_index(data_root)
            if contract is not None and not raw:
                check_split(contract, data_root)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(str(e)) from e
        check_input_size(records, model_size, data_root)
        reference = load_cohort_reference(reference_path, data_root)
        ctp_only = [p for p in (opt.patients or records) if p in records and not records[p].has_mri]
        if ctp_only and reference is None:
            raise ConfigError(f"{len(ctp_only)} CTP-only patient(s) (e.g. {ctp_only[0]}) need a DWI/ADC intensity "
                              f"scale: give --reference <preprocessed training split>")
        if ctp_only:
            print(f"{len(ctp_only)} CTP-only patient(s): DWI/ADC scale from the cohort reference "
                  f"({reference.source or 'reference.json'})")
        print(f"sampling {len(opt.patients or records)} patient(s) of {data}: {opt.n_samples} sample(s), "
              f"{opt.steps} DDIM steps, eta {opt.eta}, batch {opt.batch_size}, precision {opt.precision} -> {outdir}")
        outdir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(outdir / SETTINGS_FILE, settings)
        with torch.inference_mode():
            report = sample_cohort(sampler, data_root, outdir, records, n_samples=opt.n_samples,
                                   batch_size=opt.batch_size, seed=opt.seed, patients=opt.patients,
                                   reference=reference, progress=not opt.no_progress)
        if opt.summary:
            from ldm.inference.sample_summary import summarise_cohort
            spread_csv = summarise_cohort(outdir, records, opt.patients or sorted(records), opt.n_samples,
                                          threshold=opt.adc_core_threshold, min_cluster_ml=opt.min_cluster_ml)
    if report.skipped:
        print(f"skipped {len(report.skipped)} patient(s) already sampled: {', '.join(report.skipped)}")
    print(f"wrote {len(report.written)} patient(s), {report.n_slices} slice(s) in {time.time() - start:.1f} s "
          f"to {outdir}")
    if opt.summary:
        print(f"summary: {{dwi,adc}}_{{mean,std}}.nii.gz over {opt.n_samples} samples per patient, core volume "
              f"spread in {spread_csv}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import signal

    from ldm.util import ConfigError

    opt, unknown = get_parser().parse_known_args(argv)
    if opt.patients:  # "--patients P001 a.b=c": the override is not a patient id
        unknown += [p for p in opt.patients if "=" in p]
        opt.patients = [p for p in opt.patients if "=" not in p] or None
    unknown += [b for b in opt.base if "=" in b and not b.endswith((".yaml", ".yml"))]  # same for -b
    opt.base = [b for b in opt.base if not ("=" in b and not b.endswith((".yaml", ".yml")))]
    # SIGTERM (a cluster's time limit, kill) unwinds like an exception: the temporary preprocessing
    # of a raw cohort and half-written files are removed on the way out
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return run(opt, unknown)
    except ConfigError as e:
        print(f"sample_LDM.py: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
