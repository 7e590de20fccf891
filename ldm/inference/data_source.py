"""What ``--data`` points at: a preprocessed split, or a raw NIfTI cohort preprocessed on the fly.

A raw cohort (``<root>/<patient_id>/ctp.nii.gz`` ...) is preprocessed into a temporary folder
with the in-plane size, voxel spacing and CTP frame count the model was trained at (the run's
data_contract.json, ldm/data/preprocessing/contract.py), and removed afterwards; the index it writes records each
patient's source geometry, so the outputs land in source space.
"""
from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ldm.util import ConfigError


def is_raw_cohort(root: str | Path) -> bool:
    """True when ``root`` holds patient folders with a CTP NIfTI (the raw layout)."""
    root = Path(root)
    return any((p / "ctp.nii.gz").is_file() or (p / "ctp.nii").is_file() for p in root.iterdir() if p.is_dir())


def configured_data_root(config: DictConfig, splits: tuple[str, ...]) -> str | None:
    """The ``data_root`` of the first of ``splits`` (e.g. test, validation) in the run's data config."""
    for split in splits:
        root = OmegaConf.select(config, f"data.params.{split}.params.data_root", default=None)
        if root:
            return str(root)
    return None


def model_input_size(config: DictConfig) -> tuple[int, int] | None:
    """The in-plane size the model was trained at: latent ``image_size`` x the first stage's factor, or
    ``image_size`` itself for a model without a first stage (the GANs work on the images)."""
    image_size = OmegaConf.select(config, "model.params.image_size", default=None)
    ch_mult = OmegaConf.select(config, "model.params.first_stage_config.params.ddconfig.ch_mult", default=None)
    has_first_stage = OmegaConf.select(config, "model.params.first_stage_config", default=None) is not None
    if image_size is None or (ch_mult is None and has_first_stage):
        return None
    factor = 2 ** (len(ch_mult) - 1) if has_first_stage else 1
    sizes = [int(image_size)] * 2 if isinstance(image_size, (int, float)) else [int(s) for s in image_size]
    if len(sizes) != 2:
        return None
    return sizes[0] * factor, sizes[1] * factor


def reference_source(explicit: str | None, config: DictConfig) -> Path | None:
    """Where CTP-only patients get their DWI/ADC scale: ``--reference``, else the run's training split.

    docs/data.md / preprocessing: the cohort reference (median percentile constants) of the *training*
    split. Without either, a preprocessed split's own ``reference.json`` is used (see
    :func:`load_cohort_reference`).
    """
    from ldm.data.record import REFERENCE_FILE

    if explicit:
        path = Path(explicit)
        if not (path.is_file() or (path / REFERENCE_FILE).is_file()):
            raise ConfigError(f"--reference {explicit!r}: no {REFERENCE_FILE} there (give the training split's "
                              f"preprocessed folder or its {REFERENCE_FILE})")
        return path
    train = configured_data_root(config, ("train",))
    if train and (Path(train) / REFERENCE_FILE).is_file():
        return Path(train)
    return None


def load_cohort_reference(source: Path | None, data_root: Path):
    """The CohortReference from ``source``, else from the data's own reference.json, else None."""
    from ldm.data.record import REFERENCE_FILE, load_reference

    for path in (source, data_root / REFERENCE_FILE):
        if path is not None and (Path(path).is_file() or (Path(path) / REFERENCE_FILE).is_file()):
            try:
                return load_reference(path)
            except (ValueError, KeyError) as e:
                raise ConfigError(f"cohort reference {str(path)!r} could not be read: {e}") from e
    return None


def model_timepoints(config: DictConfig, default: int = 15) -> int:
    """CTP time points the model takes (the SpatialRescaler's input channels; a GAN's generator's)."""
    value = OmegaConf.select(config, "model.params.cond_stage_config.params.in_channels", default=None)
    if value is None:
        value = OmegaConf.select(config, "model.params.generator_config.params.in_channels", default=None)
    return int(value) if value is not None else default


@contextlib.contextmanager
def preprocessed_data(data: str | Path, size: tuple[int, int] | None, reference: str | Path | None = None,
                      workers: int = 1, n_timepoints: int = 15,
                      patients: Sequence[str] | None = None, spacing: Sequence[float] | None = None,
                      slice_rule: str = "reference", skip_bad: bool = False, window=None) -> Iterator[Path]:
    """Yield a preprocessed split for ``data``: itself, or a temporary preprocessing of a raw cohort
    (only of ``patients`` when given) at ``spacing`` (None: the patients' own grids) under the
    intensity ``window`` (an IntensityWindow; None: the default). A patient that
    preprocessing rejects is an error naming it, unless ``skip_bad`` (then it is reported and left
    out). The temporary folder is removed on every exit (the caller turns SIGTERM into SystemExit)."""
    from ldm.data.record import INDEX_FILE

    data = Path(data)
    if not data.is_dir():
        raise ConfigError(f"--data {str(data)!r} is not a folder")
    if not is_raw_cohort(data):
        if not (data / INDEX_FILE).is_file():
            raise ConfigError(f"--data {str(data)!r} is neither a preprocessed split (no {INDEX_FILE}) nor a raw "
                              f"cohort (no <patient>/ctp.nii.gz)")
        yield data
        return
    if size is None:
        raise ConfigError(f"--data {str(data)!r} is a raw cohort: give --size H W (the model's input size could "
                          f"not be read from the config)")
    from ldm.data.preprocessing.pipeline import preprocess_cohort

    with tempfile.TemporaryDirectory(prefix="sample_ldm_") as tmp:
        source = data
        if patients:
            missing = [p for p in patients if not (data / p).is_dir()]
            if missing:
                raise ConfigError(f"patient {missing[0]} is not in the raw cohort {str(data)!r}")
            source = Path(tmp) / "selected"  # links to the chosen patient folders only
            source.mkdir()
            for pid in patients:
                (source / pid).symlink_to((data / pid).resolve(), target_is_directory=True)
        from ldm.data.transforms.resampling import format_spacing

        print(f"preprocessing the raw cohort {data} at {size[0]} x {size[1]}, {format_spacing(spacing)}, "
              f"{n_timepoints} CTP frames into a temporary folder")
        try:
            summary = preprocess_cohort(str(source), Path(tmp) / "preprocessed", size=tuple(size), workers=workers,
                                        skip_bad=True,
                                        reference_dir=None if reference is None else str(reference),
                                        n_timepoints=n_timepoints, spacing=spacing, slice_rule=slice_rule,
                                        window=window)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"--data {str(data)!r}: {e}") from e
        print(summary)
        if not summary.records:
            raise ConfigError(f"--data {str(data)!r}: no patient could be preprocessed")
        if summary.failures and not skip_bad:
            first = summary.failures[sorted(summary.failures)[0]]
            raise ConfigError(f"{len(summary.failures)} patient(s) of {str(data)!r} rejected ({first}); fix them, "
                              f"or pass --skip-bad to sample the others")
        yield Path(tmp) / "preprocessed"
