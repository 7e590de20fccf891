"""The registration's QC overlay: DWI slices with the CTP brain outline before and after.

Three axial DWI slices (at a quarter, half and three quarters of the registered CT brain's extent)
in grey, the registered CTP brain mask's contour in red and, dashed yellow, where the CTP's header
alone put it (before registration); the title gives the mutual information before and after.
Array axes, not reoriented to a viewing convention. Rendered on matplotlib's Agg canvas (no global
matplotlib state is touched), written atomically.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ldm.io import atomic_path


def qc_slices(mask: np.ndarray, n: int = 3) -> list[int]:
    """``n`` axial slice indices spread over the mask's z extent (the middle slice if it is empty)."""
    z = np.flatnonzero(mask.any(axis=(0, 1)))
    if z.size == 0:
        return [mask.shape[2] // 2]
    return sorted({int(round(z[0] + (z[-1] - z[0]) * f)) for f in np.linspace(0.25, 0.75, n)})


def write_qc_png(path: str | Path, dwi: np.ndarray, after: np.ndarray, before: np.ndarray | None,
                 mi_before: float, mi_after: float, title: str = "") -> Path:
    """Write the overlay PNG (see the module doc) and return its path."""
    slices = qc_slices(after)
    figure = Figure(figsize=(3.2 * len(slices), 3.6), dpi=100)
    FigureCanvasAgg(figure)
    inside = dwi[after] if after.any() else dwi
    vmax = float(np.percentile(inside, 99.5)) if inside.size else 1.0
    for i, z in enumerate(slices):
        ax = figure.add_subplot(1, len(slices), i + 1)
        ax.imshow(dwi[:, :, z].T, cmap="gray", origin="lower", vmin=0.0, vmax=max(vmax, 1e-6),
                  interpolation="nearest")
        if before is not None and before[:, :, z].any():
            ax.contour(before[:, :, z].T.astype(float), levels=[0.5], colors="yellow", linewidths=0.8,
                       linestyles="dashed")
        if after[:, :, z].any():
            ax.contour(after[:, :, z].T.astype(float), levels=[0.5], colors="red", linewidths=0.9)
        ax.set_title(f"z = {z}", fontsize=8)
        ax.axis("off")
    figure.suptitle(f"{title}  MI {mi_before:.3f} -> {mi_after:.3f} (red: registered CTP brain, "
                    f"yellow: header only)".strip(), fontsize=8)
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path
