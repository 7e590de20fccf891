"""PNG panels like the paper's Fig. 3: CTP, then ground truth and synthesised DWI and ADC per run.

One row per patient on one axial slice (the slice with the largest lesion area, or the largest
brain area when the patient has no lesion). Columns: the CTP temporal maximum (a maximum-intensity
projection over the 15 time points), ground-truth DWI, each run's DWI, ground-truth ADC, each run's
ADC. DWI and ADC are shown in a display window that never clips the truth's lesion
(:func:`display_range`: the lesion window's range, widened to the truth's extremes inside the
lesion), the same for every column of a row, so a reader sees the lesion in the ground truth and
whether each model has it; the ground-truth lesion is outlined in red on every MRI image. Slices are shown as stored, rotated by 90 degrees
(array axes, not reoriented to a standard view). Rendering uses matplotlib's Agg canvas directly,
so importing this module changes no global matplotlib state.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ldm.data.transforms.intensity_window import IntensityWindow
from ldm.evaluation.intensity import to_unit_range
from ldm.evaluation.volumes import MODALITIES, GroundTruth, load_ground_truth, predicted_map, prediction_files
from ldm.io import atomic_path

CELL_INCHES = 2.0


def panel_slice(gt: GroundTruth) -> int:
    """The axial slice to show: largest lesion area, else largest brain area."""
    lesion_area = gt.lesion.sum(axis=(0, 1))
    if lesion_area.max() > 0:
        return int(np.argmax(lesion_area))
    return int(np.argmax(gt.mask.sum(axis=(0, 1))))


def _ctp_summary(ctp: np.ndarray | None, z: int, mask: np.ndarray) -> np.ndarray | None:
    if ctp is None:
        return None
    mip = ctp[:, :, z].max(axis=-1) if ctp.ndim == 4 else ctp[:, :, z]
    inside = mip[mask[:, :, z]]
    lo, hi = np.percentile(inside, [1, 99]) if inside.size else (mip.min(), mip.max())
    out = np.clip((mip - lo) / max(hi - lo, 1e-6), 0, 1)
    out[~mask[:, :, z]] = 0
    return out


def display_range(gt: GroundTruth, modality: str) -> tuple[float, float]:
    """A window for showing ``modality`` that holds the truth's lesion: the default lesion window's
    range (ADC 0..2500, DWI 0..3 x brain median), widened to the lesion's min and max if needed."""
    volume = getattr(gt, modality)
    lo, hi = IntensityWindow().intensity_range(modality, volume, gt.mask)
    lesion = volume[gt.lesion & gt.mask]
    if lesion.size:
        lo, hi = min(lo, float(lesion.min())), max(hi, float(lesion.max()))
    return lo, hi if hi > lo else lo + 1.0


def panel_row(gt: GroundTruth, runs: Mapping[str, str | Path], sample: int = 0) -> tuple[list[str], list, np.ndarray, int]:
    """Titles, images (None where absent), the lesion slice to outline and the slice index of one row."""
    z = panel_slice(gt)
    titles, images = ["CTP (temporal max)"], [_ctp_summary(gt.ctp, z, gt.mask)]
    for modality in MODALITIES:
        window = display_range(gt, modality)
        titles.append(f"{modality.upper()} ground truth ({window[0]:.0f}-{window[1]:.0f})")
        images.append(to_unit_range(getattr(gt, modality), window, gt.mask)[:, :, z])
        for name, pred_dir in runs.items():
            paths = prediction_files(Path(pred_dir) / gt.patient_id).get(sample, {})
            titles.append(f"{modality.upper()} {name}")
            if modality in paths:
                images.append(to_unit_range(predicted_map(paths[modality], gt, modality), window, gt.mask)[:, :, z])
            else:
                images.append(None)
    return titles, images, gt.lesion[:, :, z], z


def render_panels(gt_dir: str | Path, runs: Mapping[str, str | Path], patients: Sequence[str],
                  out_path: str | Path, sample: int = 0) -> Path:
    """Render one Fig. 3-style PNG with a row per patient; written atomically to ``out_path``."""
    rows = [(pid, *panel_row(load_ground_truth(Path(gt_dir) / pid), runs, sample)) for pid in patients]
    if not rows:
        raise ValueError("no patient to render")
    n_cols = len(rows[0][1])
    fig = Figure(figsize=(CELL_INCHES * n_cols, CELL_INCHES * len(rows) + 0.3), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for r, (pid, titles, images, lesion, z) in enumerate(rows):
        for c, (title, image) in enumerate(zip(titles, images)):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{pid} (slice {z})", fontsize=8)
            if image is None:
                ax.text(0.5, 0.5, "not available", ha="center", va="center", fontsize=7, transform=ax.transAxes)
                continue
            ax.imshow(np.rot90(image), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if c > 0 and lesion.any():
                ax.contour(np.rot90(lesion.astype(np.float32)), levels=[0.5], colors="red", linewidths=0.8)
    fig.tight_layout()
    out_path = Path(out_path)
    with atomic_path(out_path, suffix=".png") as tmp:
        fig.savefig(str(tmp), format="png")
    return out_path
