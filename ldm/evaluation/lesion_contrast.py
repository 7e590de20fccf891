"""Lesion contrast in physical units: does a synthesised MRI show the lesion at all?

Table 1's metrics are errors in [0, 1] after the intensity window; they cannot tell a model that
draws the lesion faintly from one that draws none, and a window that clips the lesion hides it from
them altogether. These measures read the volumes in physical units (DWI signal, ADC in
10^-6 mm^2/s), per patient, on the scored axial slices that contain lesion, with the ground-truth
lesion and brain masks:

- ``dwi_lesion_ratio``: mean DWI in the lesion / mean DWI in the normal brain (brain minus lesion)
  of the same slices; the truth's infarct is bright (about 1.5 - 3), a model that lost it gives ~1;
- ``adc_lesion_mean`` and ``adc_lesion_ratio`` (the same ratio for ADC; the core is dark, < 1);
- ``lesion_core_share``: the share of lesion voxels with ADC < 620 (the RAPID core threshold);
- ``core_ml``: the ischemic core volume (ADC < 620 inside the brain mask, whole volume), as the
  clinical read-out counts it.

Against the ground truth: ``dwi_excess_kept`` = (ratio - 1) / (true ratio - 1), the share of the
true DWI lesion excess a model keeps, and ``core_share_kept`` = share / true share. Two ceilings
are rows of their own: the ground truth through the training window (what every model is trained
to reproduce) and the first stage's reconstruction D(E(x)) (what a latent model can at best write).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ldm.data.transforms.intensity_window import ADC_CORE_THRESHOLD

CONTRAST_COLUMNS = ("dwi_lesion_ratio", "adc_lesion_mean", "adc_lesion_ratio", "lesion_core_share", "core_ml")
KEPT_COLUMNS = ("dwi_excess_kept", "core_share_kept")


def lesion_slices(lesion: np.ndarray, slices: np.ndarray) -> np.ndarray:
    """The axial slices of ``slices`` that hold lesion voxels."""
    slices = np.asarray(slices, dtype=int)
    return slices[np.asarray(lesion, dtype=bool)[..., slices].any(axis=(0, 1))]


def _ratio(volume: np.ndarray, lesion: np.ndarray, normal: np.ndarray) -> float | None:
    reference = float(volume[normal].mean()) if normal.any() else 0.0
    return float(volume[lesion].mean()) / reference if reference > 0 else None


def lesion_contrast(dwi: np.ndarray, adc: np.ndarray, lesion: np.ndarray, brain: np.ndarray,
                    slices: np.ndarray, voxel_ml: float,
                    threshold: float = ADC_CORE_THRESHOLD) -> dict[str, float | int | None]:
    """The module's measures for one patient's (X, Y, Z) DWI and ADC (physical units).

    ``slices``: the scored axial slices; only those with lesion count for the ratios and the share
    (None when there are none). ``core_ml`` counts ADC < ``threshold`` in the brain over the volume.
    """
    brain = np.asarray(brain, dtype=bool)
    lesion = np.asarray(lesion, dtype=bool) & brain
    dwi, adc = np.asarray(dwi, dtype=np.float64), np.asarray(adc, dtype=np.float64)
    core_ml = float(((adc < threshold) & brain).sum()) * voxel_ml
    z = lesion_slices(lesion, slices)
    out: dict[str, float | int | None] = {name: None for name in CONTRAST_COLUMNS}
    out.update(core_ml=core_ml, lesion_voxels=0)
    if z.size == 0:
        return out
    in_slices = np.zeros(lesion.shape[-1], dtype=bool)
    in_slices[z] = True
    in_lesion = lesion & in_slices
    normal = brain & ~lesion & in_slices
    lesion_adc = adc[in_lesion]
    out.update(dwi_lesion_ratio=_ratio(dwi, in_lesion, normal), adc_lesion_mean=float(lesion_adc.mean()),
               adc_lesion_ratio=_ratio(adc, in_lesion, normal),
               lesion_core_share=float((lesion_adc < threshold).mean()), lesion_voxels=int(in_lesion.sum()))
    return out


def kept_fractions(row: dict, truth: dict) -> dict[str, float | None]:
    """``dwi_excess_kept`` and ``core_share_kept`` of ``row`` against the ground truth's ``truth``."""
    def fraction(value, reference, offset):
        if value is None or reference is None or reference - offset == 0:
            return None
        return (value - offset) / (reference - offset)

    return {"dwi_excess_kept": fraction(row.get("dwi_lesion_ratio"), truth.get("dwi_lesion_ratio"), 1.0),
            "core_share_kept": fraction(row.get("lesion_core_share"), truth.get("lesion_core_share"), 0.0)}


def through_window(volume: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """What a model trained under ``window`` can at best give back: ``clip(max(x, 0), lo, hi)``."""
    return np.clip(np.maximum(np.asarray(volume, dtype=np.float32), 0.0), *window)


def per_patient(rows: Sequence[dict]) -> list[dict]:
    """One row per (run, patient): the mean over its samples of every measure (None stays None)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["run"], row["patient_id"]), []).append(row)
    out = []
    for (run, pid), group in groups.items():
        merged: dict = {"run": run, "patient_id": pid, "n_samples": len(group),
                        "lesion_voxels": group[0].get("lesion_voxels", 0)}
        for name in (*CONTRAST_COLUMNS, *KEPT_COLUMNS):
            values = [r[name] for r in group if r.get(name) is not None]
            merged[name] = float(np.mean(values)) if values else None
        out.append(merged)
    return out


def summarise(rows: Sequence[dict]) -> dict[str, float | int | None]:
    """Summary of one run over its patients (``rows``: one per patient, :func:`per_patient`): the mean
    of each measure over the lesion patients (core_ml over all), the median of the kept fractions,
    and how many lesion patients show a core (ADC < 620) in the lesion."""
    lesion_rows = [r for r in rows if r.get("lesion_voxels")]
    out: dict[str, float | int | None] = {"n_lesion_patients": len(lesion_rows)}
    for name in CONTRAST_COLUMNS:
        values = [r[name] for r in (lesion_rows if name != "core_ml" else rows) if r.get(name) is not None]
        out[name] = float(np.mean(values)) if values else None
    for name in KEPT_COLUMNS:
        values = [r[name] for r in lesion_rows if r.get(name) is not None]
        out[f"median_{name}"] = float(np.median(values)) if values else None
    out["n_with_lesion_core"] = sum(1 for r in lesion_rows if (r.get("lesion_core_share") or 0) > 0)
    return out
