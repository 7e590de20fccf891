"""Synthesising DWI and ADC volumes for every patient of a preprocessed cohort, in source space.

For each patient and sample k, every kept slice is sampled from its CTP, and the stack is put back
into the source geometry by the data package's inverse mapping (exact shape and affine, skipped
slices as background, physical units: DWI signal, ADC in 10^-6 mm^2/s, zero outside the brain
mask). Files: ``<outdir>/<patient_id>/{dwi,adc}_sample_{k}.nii.gz``, each written atomically.

Slices are batched across patients (a batch may hold the end of one patient and the start of the
next), and a sample is written as soon as its last slice is done. Resuming: a sample whose two
files exist is not redone, a patient whose samples all exist is skipped. The initial noise of
every slice comes from ``ldm.inference.seeding``, so the result does not depend on the batching
(up to float32 rounding, since kernels may sum in a batch-size dependent order).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ldm.data.record import MODALITIES, CohortReference, PatientRecord
from ldm.inference.seeding import slice_noise
from ldm.io import atomic_save_nifti
from ldm.util import ConfigError

MODALITY_CHANNELS = {m: i for i, m in enumerate(MODALITIES)}  # channel of each MRI map in a sample


def sample_path(outdir: str | Path, patient_id: str, modality: str, k: int) -> Path:
    return Path(outdir) / patient_id / f"{modality}_sample_{k}.nii.gz"


def missing_samples(outdir: str | Path, patient_id: str, n_samples: int) -> list[int]:
    """The sample indices k < n_samples that do not have both files yet."""
    return [k for k in range(n_samples)
            if not all(sample_path(outdir, patient_id, m, k).is_file() for m in MODALITY_CHANNELS)]


@dataclass
class PatientSlices:
    """The model input of one patient: CTP slices (S, T, H, W) in [-1, 1] and their source slice indices."""

    patient_id: str
    slice_indices: list[int]
    ctp: torch.Tensor
    record: PatientRecord


@dataclass
class SamplingReport:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    n_slices: int = 0
    seconds: float = 0.0  # wall time of sampling the n_slices slices, writing the volumes included


def load_patient_slices(data_root: str | Path, patient_id: str, record: PatientRecord) -> PatientSlices:
    """All kept slices of one patient from the preprocessed split, in the record's slice order."""
    from ldm.data.training.datasets import CTPMRISlices

    dataset = CTPMRISlices(str(data_root), augment=False, patients=[patient_id])
    items = [dataset[i] for i in range(len(dataset))]
    indices = [int(item["slice_index"]) for item in items]
    if not items or indices != list(record.slice_indices):
        raise ConfigError(f"patient {patient_id}: the preprocessed data {str(data_root)!r} has slices {indices}, "
                          f"its index records {list(record.slice_indices)}")
    return PatientSlices(patient_id, indices, torch.stack([item["ctp"] for item in items]), record)


def write_sample(outdir: str | Path, record: PatientRecord, k: int, images: np.ndarray,
                 reference: CohortReference | None = None) -> list[Path]:
    """Put one sample's (S, 2, H, W) stack of ``record``'s patient back into source space and
    write DWI and ADC atomically, each with the range it could take as cal_min/cal_max.

    ``reference`` (a CohortReference) gives the intensity scale of a CTP-only patient.
    """
    from ldm.data.preprocessing.reassembly import output_range, slices_to_volume, volume_to_nifti

    paths = []
    for modality, channel in MODALITY_CHANNELS.items():
        try:
            volume = slices_to_volume(images[:, channel], record, modality, reference=reference)
            intensity = output_range(record, modality, reference)
        except ValueError as e:  # e.g. a CTP-only patient and no cohort reference
            raise ConfigError(str(e)) from e
        path = sample_path(outdir, record.patient_id, modality, k)
        atomic_save_nifti(volume_to_nifti(volume, record, modality, intensity_range=intensity), path)
        paths.append(path)
    return paths


@dataclass
class _Sample:
    patient: PatientSlices
    images: np.ndarray
    left: int


def _batches(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def sample_cohort(sampler: Callable, data_root: str | Path, outdir: str | Path, records: dict[str, PatientRecord], *,
                  n_samples: int = 1, batch_size: int = 8, seed: int = 0,
                  patients: Sequence[str] | None = None, reference: CohortReference | None = None,
                  progress: bool = True) -> SamplingReport:
    """Sample ``n_samples`` volumes per patient of ``records`` (``load_index(data_root)``).

    ``sampler(ctp, noise)`` is a slice sampler (ldm.inference.slice_sampler); every noise it
    draws (x_T, per-step noise) comes from ``noise``, per slice. ``reference`` gives CTP-only patients their intensity scale (see
    ldm.data.preprocessing.reassembly.slices_to_volume).
    """
    if n_samples < 1 or batch_size < 1:
        raise ConfigError(f"--n_samples and --batch_size must be at least 1, got {n_samples} and {batch_size}")
    report = SamplingReport()
    todo: list[tuple[str, list[int]]] = []
    for pid in (patients or sorted(records)):
        if pid not in records:
            raise ConfigError(f"patient {pid} is not in the preprocessed data {str(data_root)!r}")
        ks = missing_samples(outdir, pid, n_samples)
        if ks:
            todo.append((pid, ks))
        else:
            report.skipped.append(pid)
    total = sum(records[pid].n_slices * len(ks) for pid, ks in todo)
    pending: dict[tuple[str, int], _Sample] = {}
    samples_left = {pid: len(ks) for pid, ks in todo}

    def work() -> Iterator[tuple[str, int, int]]:
        for pid, ks in todo:
            patient = load_patient_slices(data_root, pid, records[pid])
            for k in ks:
                pending[(pid, k)] = _Sample(patient, np.zeros((len(patient.slice_indices), 2, *patient.ctp.shape[-2:]),
                                                              dtype=np.float32), len(patient.slice_indices))
                for j in range(len(patient.slice_indices)):
                    yield pid, k, j

    scope = getattr(sampler, "ema_scope", contextlib.nullcontext)
    start = time.perf_counter()
    with scope(), tqdm(total=total, desc="sampling slices", unit="slice", disable=not progress,
                       dynamic_ncols=True) as bar:
        for batch in _batches(work(), batch_size):
            entries = [(pending[(pid, k)], k, j) for pid, k, j in batch]
            ctp = torch.stack([s.patient.ctp[j] for s, _, j in entries])

            def noise(shape: Sequence[int], entries=entries) -> torch.Tensor:
                return torch.stack([slice_noise(seed, s.patient.patient_id, k, s.patient.slice_indices[j], shape)
                                    for s, k, j in entries])

            images = sampler(ctp, noise).float().cpu().numpy()
            for (s, k, j), image in zip(entries, images):
                s.images[j] = image
                s.left -= 1
                if s.left == 0:
                    write_sample(outdir, s.patient.record, k, s.images, reference)
                    del pending[(s.patient.patient_id, k)]
                    samples_left[s.patient.patient_id] -= 1
                    if samples_left[s.patient.patient_id] == 0:
                        report.written.append(s.patient.patient_id)
            report.n_slices += len(entries)
            bar.update(len(entries))
    if device_is_cuda(sampler):
        torch.cuda.synchronize()
    report.seconds = time.perf_counter() - start
    return report


def device_is_cuda(sampler: Callable) -> bool:
    device = getattr(sampler, "device", None)
    return device is not None and torch.device(device).type == "cuda"
