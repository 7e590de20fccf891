"""Voxel-wise mean and standard deviation over a patient's K samples, and the spread of its core volume.

What ``scripts/sample_LDM.py --n_samples K --summary`` writes next to the samples, per patient:
``{dwi,adc}_mean.nii.gz`` and ``{dwi,adc}_std.nii.gz`` (same shape, affine, qform/sform and units
as the samples, float32) and ``core_volume_spread.json``; and over the output folder
``core_volume_spread.csv`` (one row per patient folder holding a JSON). The maps are always
recomputed from the files ``{dwi,adc}_sample_k`` for k = 0 .. K-1 as they are on disk (samples a
resumed run kept are read like the new ones; samples with k >= K are not used), never from
memory. std is numpy's population standard deviation (ddof = 0), computed in float64 like the
mean. K must be at least 2: the std of one sample is 0 everywhere and says nothing.

The core volume of each sample is ``ADC < threshold`` inside the patient's brain mask (the mask
preprocessing used, put back into source space: where the sample is defined), as in
``ldm.evaluation.clinical``; the spread is the median and the 5th-95th percentiles over the K
samples (numpy's linear interpolation, so with few samples they lie between the extremes).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from ldm.data.record import PatientRecord
from ldm.data.preprocessing.reassembly import place_slices
from ldm.evaluation.clinical import ADC_CORE_THRESHOLD, cluster_voxels, segment_core, voxel_volume_ml
from ldm.evaluation.tables import write_csv
from ldm.evaluation.volumes import AFFINE_TOLERANCE_MM
from ldm.inference.volume_sampler import MODALITY_CHANNELS, sample_path
from ldm.io import atomic_save_nifti, atomic_write_json
from ldm.util import ConfigError

MIN_SAMPLES = 2
SPREAD_JSON = "core_volume_spread.json"
SPREAD_CSV = "core_volume_spread.csv"
STATISTICS = ("mean", "std")


def check_summary_options(n_samples: int, threshold: float, min_cluster_ml: float | None) -> None:
    """K >= 2 (refused rather than writing std maps of zeros), a positive threshold, a cluster size >= 0."""
    if n_samples < MIN_SAMPLES:
        raise ConfigError(f"--summary needs --n_samples {MIN_SAMPLES} or more (got {n_samples}): the standard "
                          f"deviation over one sample is 0 everywhere")
    if not (np.isfinite(threshold) and threshold > 0):
        raise ConfigError(f"--adc_core_threshold must be a positive ADC in 10^-6 mm^2/s, got {threshold}")
    if min_cluster_ml is not None and not (np.isfinite(min_cluster_ml) and min_cluster_ml >= 0):
        raise ConfigError(f"--min_cluster_ml must be >= 0 ml, got {min_cluster_ml}")


def summary_path(outdir: str | Path, patient_id: str, modality: str, statistic: str) -> Path:
    return Path(outdir) / patient_id / f"{modality}_{statistic}.nii.gz"


def source_brain_mask(record: PatientRecord) -> np.ndarray:
    """The brain mask preprocessing kept, in source space (X, Y Z); the samples are 0 outside it."""
    try:
        slices = np.load(record.array_path("mask"), mmap_mode="r") > 0
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"patient {record.patient_id}: no preprocessed brain mask for the core volume ({e})") from e
    return place_slices(slices, record, fill=False)


def _like(reference: nib.Nifti1Image, data: np.ndarray, description: str) -> nib.Nifti1Image:
    """A float32 image with ``reference``'s header, affine, qform and sform (codes included)."""
    image = nib.Nifti1Image(data.astype(np.float32), reference.affine, header=reference.header.copy())
    image.set_qform(reference.get_qform(), code=int(reference.header["qform_code"]))
    image.set_sform(reference.get_sform(), code=int(reference.header["sform_code"]))
    image.header.set_data_dtype(np.float32)
    image.header["descrip"] = description.encode()[:79]
    return image


def _load_samples(outdir: Path, patient_id: str, modality: str, n_samples: int) -> tuple[nib.Nifti1Image, np.ndarray]:
    paths = [sample_path(outdir, patient_id, modality, k) for k in range(n_samples)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ConfigError(f"patient {patient_id}: {missing[0]} is missing in {str(outdir / patient_id)!r}: "
                          f"cannot summarise {n_samples} samples")
    images = [nib.load(str(p)) for p in paths]
    ref = images[0]
    for path, image in zip(paths[1:], images[1:]):
        if image.shape != ref.shape or not np.allclose(image.affine, ref.affine, rtol=0, atol=AFFINE_TOLERANCE_MM):
            raise ConfigError(f"patient {patient_id}: {path.name} has another shape or affine than {paths[0].name}")
    stack = np.stack([np.asarray(image.dataobj, dtype=np.float32) for image in images])
    if not np.isfinite(stack).all():
        bad = next(p for p, s in zip(paths, stack) if not np.isfinite(s).all())
        raise ConfigError(f"patient {patient_id}: {bad.name} holds NaN or inf")
    return ref, stack


def summarise_patient(outdir: str | Path, record: PatientRecord, n_samples: int, *,
                      threshold: float = ADC_CORE_THRESHOLD, min_cluster_ml: float | None = None) -> dict:
    """Write one patient's mean/std maps and core volume spread; returns the spread record.

    Everything is read and checked before the first file is written, so a bad sample leaves the
    patient's earlier summary as it was (each file is written atomically).
    """
    check_summary_options(n_samples, threshold, min_cluster_ml)
    outdir, pid = Path(outdir), record.patient_id
    loaded = {modality: _load_samples(outdir, pid, modality, n_samples) for modality in MODALITY_CHANNELS}
    ref, adc = loaded["adc"]
    mask = source_brain_mask(record)
    if mask.shape != adc.shape[1:]:
        raise ConfigError(f"patient {pid}: adc_sample_0 has shape {adc.shape[1:]} but the preprocessed record's "
                          f"source shape is {mask.shape}")
    try:
        voxel_ml = voxel_volume_ml(ref.header)
    except ValueError as e:
        raise ConfigError(f"patient {pid}: adc_sample_0: {e}") from e
    min_voxels = cluster_voxels(min_cluster_ml, voxel_ml)
    core_ml = [float(segment_core(sample, mask, threshold, min_voxels).sum()) * voxel_ml for sample in adc]
    p5, median, p95 = (float(v) for v in np.percentile(core_ml, [5, 50, 95]))
    for modality, (image, stack) in loaded.items():
        stack64 = stack.astype(np.float64)
        unit = "ADC 1e-6 mm2/s" if modality == "adc" else "DWI"
        for statistic, values in (("mean", stack64.mean(axis=0)), ("std", stack64.std(axis=0))):
            atomic_save_nifti(_like(image, values, f"{statistic} of {n_samples} samples, {unit}"),
                              summary_path(outdir, pid, modality, statistic))
    spread = {"patient_id": pid, "samples": list(range(n_samples)), "adc_threshold": threshold,
              "min_cluster_ml": min_cluster_ml, "voxel_ml": voxel_ml, "core_ml": core_ml,
              "median_ml": median, "p5_ml": p5, "p95_ml": p95, "min_ml": min(core_ml), "max_ml": max(core_ml)}
    atomic_write_json(outdir / pid / SPREAD_JSON, spread)
    return spread


def summarise_cohort(outdir: str | Path, records: dict[str, PatientRecord], patients: Sequence[str], n_samples: int,
                     *, threshold: float = ADC_CORE_THRESHOLD, min_cluster_ml: float | None = None) -> Path:
    """:func:`summarise_patient` for ``patients``, then ``core_volume_spread.csv`` over every patient
    folder of ``outdir`` with a spread JSON (so a run on a few ``--patients`` keeps the others)."""
    outdir = Path(outdir)
    for pid in patients:
        summarise_patient(outdir, records[pid], n_samples, threshold=threshold, min_cluster_ml=min_cluster_ml)
    rows = []
    for path in sorted(outdir.glob(f"*/{SPREAD_JSON}")):
        s = json.loads(path.read_text())
        rows.append({"patient_id": s["patient_id"], "n_samples": len(s["samples"]), "median_ml": s["median_ml"],
                     "p5_ml": s["p5_ml"], "p95_ml": s["p95_ml"], "min_ml": s["min_ml"], "max_ml": s["max_ml"],
                     "adc_threshold": s["adc_threshold"], "min_cluster_ml": s["min_cluster_ml"]})
    write_csv(rows, outdir / SPREAD_CSV)
    return outdir / SPREAD_CSV
