"""Sampling a trained run over a cohort: what ``scripts/sample_LDM.py`` does, as a function.

Resolves the run and its data contract, locks the output folder (a second run into a folder that a
live run writes is refused), refuses settings that would mix with samples already in the output
folder, loads the model (EMA weights when the checkpoint has them), preprocesses a raw
cohort on the fly at the run's spacing, size and frame count (``data_source.py``), samples every
patient into NIfTI volumes on the source grid (``volume_sampler.py``) and, with ``summary``, writes
the mean/std maps over the samples (``sample_summary.py``). Errors a user can make raise
:class:`~ldm.util.ConfigError`.
"""
from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ldm.inference.volume_sampler import SamplingReport

SETTINGS_FILE = "sampling.json"


def check_settings(outdir: Path, settings: dict) -> None:
    """Refuse to resume into a folder whose existing samples were made with other settings."""
    import json

    from ldm.util import ConfigError

    path = outdir / SETTINGS_FILE
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    keys = ["checkpoint", "sampler", "sampler_params", "steps", "eta", "seed", "overrides", "precision",
            "initial_noise"]
    if settings["eta"] > 0:
        keys.append("step_noise")
    old.setdefault("precision", "32")  # folders sampled before the setting existed ran in float32
    old.setdefault("initial_noise", "gaussian")  # ... and from x_T as drawn
    # ... with the only sampler of its model family (a bridge model can only use the bridge sampler)
    old.setdefault("sampler", "bridge" if settings.get("sampler") == "bridge" else "ddim")
    # ... and DDIM drew its eta > 0 noise per batch (the bridge sampler always per slice)
    old.setdefault("step_noise", "per_slice" if old.get("sampler") == "bridge" else "per_batch")
    old.setdefault("sampler_params", {})
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


@contextlib.contextmanager
def outdir_lock(outdir: Path) -> Iterator[None]:
    """Hold ``outdir``'s lock (ldm/folder_lock.py) while sampling into it; a folder that a live run
    is writing is a :class:`~ldm.util.ConfigError` naming it and that run."""
    from ldm.folder_lock import FolderBusy, folder_lock
    from ldm.util import ConfigError

    stack = contextlib.ExitStack()
    try:
        taken = stack.enter_context(folder_lock(outdir, "sampling"))
    except FolderBusy as e:
        raise ConfigError(str(e)) from e
    with stack:
        if taken is not None:
            print(taken.describe(outdir))
        yield


def to_plain(params: dict) -> dict:
    """Sampler params as JSON values (an OmegaConf node's children become plain containers)."""
    from omegaconf import OmegaConf

    return {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in params.items()}


def default_sampler(config) -> str:
    """The sampler of a model config that names none: the default of the model class's ``sampler``
    parameter (the first ``__init__`` in its MRO that has one: the bridge's for a Brownian bridge)."""
    import inspect

    from ldm.util import get_obj_from_str

    for cls in inspect.getmro(get_obj_from_str(config.model.target)):
        init = cls.__dict__.get("__init__")
        parameter = inspect.signature(init).parameters.get("sampler") if init is not None else None
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    return "ddim"


def sample_run(opt: argparse.Namespace, overrides: list[str]) -> "SamplingReport":
    """Sample ``opt.resume`` over ``opt.data`` (the options of ``sampling_options.sampling_parser``,
    scripts/sample_LDM.py's); returns what was sampled (and how long the sampling took). The output
    folder is locked while it is written."""
    with contextlib.ExitStack() as held:
        return _sample_run(opt, overrides, held)


def _sample_run(opt: argparse.Namespace, overrides: list[str], held: contextlib.ExitStack) -> "SamplingReport":
    """:func:`sample_run`; ``held`` keeps the output folder's lock until the caller returns."""
    import torch

    from ldm.config import parse_overrides
    from ldm.data.preprocessing.contract import DataContract, check_split, load_run_contract
    from ldm.data.record import INDEX_FILE, REFERENCE_FILE, load_index
    from ldm.inference.data_source import (configured_data_root, is_raw_cohort, load_cohort_reference,
                                           model_input_size, model_timepoints, preprocessed_data, reference_source)
    from ldm.inference.run_loading import choose_device, load_model, load_run_config, resolve_run
    from ldm.inference.slice_sampler import DirectSliceSampler, make_slice_sampler, translates_directly
    from ldm.inference.volume_sampler import sample_cohort
    from ldm.io import atomic_write_json
    from ldm.samplers import sampler_class, sampler_name, with_sampler_params
    from ldm.util import ConfigError, get_obj_from_str

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
    direct = translates_directly(get_obj_from_str(config.model.target))
    if direct:  # a GAN: one forward pass per slice, nothing to sample with
        if getattr(opt, "clip_x0", None) is not None:
            raise ConfigError(f"--clip_x0: {config.model.target} is a GAN; it has no x0_hat to clip (leave --clip_x0 out)")
        if opt.sampler:
            raise ConfigError(f"--sampler {opt.sampler}: {config.model.target} is a GAN; it translates each slice "
                              f"in one forward pass and takes no sampler (leave --sampler out)")
        sampler, name = None, DirectSliceSampler.name
    else:
        sampler = opt.sampler or config.model.get("params", {}).get("sampler") or default_sampler(config)
        name = sampler_name(sampler)  # an unknown name fails here, before the model loads
        if getattr(opt, "clip_x0", None) is not None:
            sampler = with_sampler_params(sampler, clip_x0=bool(opt.clip_x0))
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
    elif run_files.logdir is not None and direct:
        outdir = run_files.logdir / "samples" / name
    elif run_files.logdir is not None:  # DDIM's folder keeps the name it had before there were other samplers
        clipped = "_clip" if sampler_class(sampler)[1].get("clip_x0") else ""
        outdir = run_files.logdir / "samples" / ((str(opt.steps) if name == "ddim" else f"{name}_{opt.steps}") + clipped)
    else:
        raise ConfigError("give --outdir")
    blocking = next((p for p in (outdir, *outdir.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ConfigError(f"--outdir {str(outdir)!r}: {str(blocking)!r} is a file, not a folder")
    settings = {"checkpoint": str(run_files.checkpoint.resolve()), "configs": [str(c) for c in run_files.configs],
                "overrides": list(overrides), "data": str(data), "sampler": name, "steps": opt.steps, "eta": opt.eta,
                "step_noise": "per_slice", "sampler_params": {} if direct else to_plain(sampler_class(sampler)[1]),
                "seed": opt.seed, "n_samples": opt.n_samples, "batch_size": opt.batch_size,
                "precision": opt.precision, "initial_noise": opt.initial_noise}
    if direct:  # what a GAN's output does not depend on is recorded as such, so resuming never trips on it
        settings.update(steps=1, eta=0.0, seed=None, initial_noise=None, step_noise=None)
    held.enter_context(outdir_lock(outdir))  # one run per output folder: a second would mix its samples in
    check_settings(outdir, settings)

    device = choose_device(opt.device)
    model = load_model(config, run_files.checkpoint, device)
    try:
        slice_sampler = make_slice_sampler(model, steps=opt.steps, eta=opt.eta, precision=opt.precision,
                                           initial_noise=opt.initial_noise, sampler=sampler)
    except ValueError as e:  # e.g. more steps than the model's T
        raise ConfigError(f"--sampler {name} --steps {opt.steps} --eta {opt.eta}: {e}") from e
    if direct:
        print(f"model {config.model.target} from {run_files.checkpoint} (a GAN: one forward pass per slice in eval "
              f"mode; --steps, --eta, --initial_noise and --seed do not apply) on {device}")
        if opt.n_samples > 1:
            print(f"note: a GAN's samples are identical: --n_samples {opt.n_samples} writes {opt.n_samples} equal copies")
    else:
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
                           skip_bad=opt.skip_bad, window=contract.window if contract else None) as data_root:
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
        how = "the generator in one pass" if direct else f"{name} with {opt.steps} steps, eta {opt.eta}"
        print(f"sampling {len(opt.patients or records)} patient(s) of {data}: {opt.n_samples} sample(s), "
              f"{how}, batch {opt.batch_size}, precision {opt.precision} -> {outdir}")
        outdir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(outdir / SETTINGS_FILE, settings)
        with torch.inference_mode():
            report = sample_cohort(slice_sampler, data_root, outdir, records, n_samples=opt.n_samples,
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
    return report


