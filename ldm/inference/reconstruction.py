"""The first stage's reconstruction D(E(x)) of a cohort's MRI, written like synthesised volumes.

A latent model can at best write what its decoder gives back for the true latent: this is the
ceiling of every latent model's lesion (docs/data.md, evaluation). For every patient with MRI in a
preprocessed split, each kept slice [DWI, ADC] (in [-1, 1], unaugmented) goes through the VQGAN's
quantised round trip (encoder, codebook, decoder; what ``decode_first_stage`` of a latent model
does with a clean latent), and the stack is written as ``<outdir>/<patient_id>/{dwi,adc}_sample_0.nii.gz``
in the source geometry and physical units by the sampler's own writer, so ``scripts/evaluate.py
--reconstruction`` scores it beside the models. Patients already written are skipped.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from ldm.data.record import PatientRecord
from ldm.inference.volume_sampler import SamplingReport, missing_samples, write_sample
from ldm.util import ConfigError


def autoencoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The VQGAN itself, or a latent model's first stage."""
    autoencoder = getattr(model, "first_stage_model", model)
    if not all(hasattr(autoencoder, name) for name in ("encoder", "decoder", "quantize")):
        raise ConfigError(f"{type(model).__name__} is neither a VQGAN nor a latent model with one "
                          f"(no encoder / decoder / quantize)")
    return autoencoder


@torch.no_grad()
def round_trip(autoencoder: torch.nn.Module, mri: torch.Tensor) -> torch.Tensor:
    """D(E(x)) through the codebook, clamped to [-1, 1]: (B, 2, H, W) -> (B, 2, H, W)."""
    quant, _, _ = autoencoder.quantize(autoencoder.quant_conv(autoencoder.encoder(mri)))
    return autoencoder.decoder(autoencoder.post_quant_conv(quant)).clamp(-1.0, 1.0)


def reconstruct_cohort(model: torch.nn.Module, data_root: str | Path, outdir: str | Path,
                       records: dict[str, PatientRecord], *, batch_size: int = 32,
                       patients: Sequence[str] | None = None, progress: bool = True) -> SamplingReport:
    """Write D(E(x)) of every patient with MRI in ``records`` (``load_index(data_root)``)."""
    from ldm.data.training.datasets import MRISlices

    if batch_size < 1:
        raise ConfigError(f"--batch_size must be at least 1, got {batch_size}")
    autoencoder = autoencoder_of(model)
    device = next(autoencoder.parameters()).device
    chosen = list(patients or sorted(records))
    unknown = [p for p in chosen if p not in records]
    if unknown:
        raise ConfigError(f"patient {unknown[0]} is not in the preprocessed data {str(data_root)!r}")
    report = SamplingReport()
    todo = [p for p in chosen if records[p].has_mri]
    for pid in tqdm(todo, desc="reconstructing patients", unit="patient", disable=not progress):
        if not missing_samples(outdir, pid, 1):
            report.skipped.append(pid)
            continue
        dataset = MRISlices(str(data_root), patients=[pid])
        mri = torch.stack([dataset[i]["mri"] for i in range(len(dataset))])
        images = torch.cat([round_trip(autoencoder, batch.to(device)).float().cpu()
                            for batch in mri.split(batch_size)])
        write_sample(outdir, records[pid], 0, images.numpy())
        report.written.append(pid)
        report.n_slices += len(dataset)
    return report
