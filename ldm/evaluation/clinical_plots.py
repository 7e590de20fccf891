"""PNG figures of the clinical read-out: Bland-Altman plots of core volume, error by std decile.

Rendered on matplotlib's Agg canvas directly (no global matplotlib state), written atomically.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ldm.evaluation.volumes import MODALITIES
from ldm.io import atomic_path


def _save(fig: Figure, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(str(tmp), format="png")
    return path


def bland_altman_png(points: Mapping[str, tuple[Sequence[float], Sequence[float]]], stats: Mapping[str, dict],
                     path: str | Path) -> Path:
    """One Bland-Altman panel per run: difference (synthesised - true ADC core) against their mean,
    with the mean difference and the 95% limits of agreement (``stats``: agreement.bland_altman)."""
    fig = Figure(figsize=(4.0 * len(points), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(points), squeeze=False, sharey=True)[0]
    for ax, (run, (synth, true)) in zip(axes, points.items()):
        synth, true = np.asarray(synth, dtype=float), np.asarray(true, dtype=float)
        ax.scatter((synth + true) / 2, synth - true, s=14, color="tab:blue")
        ba = stats[run]
        if ba["mean_diff"] is not None:
            ax.axhline(ba["mean_diff"], color="black", linewidth=1, label=f"mean {ba['mean_diff']:.2f}")
        if ba["loa_lower"] is not None:
            for value in (ba["loa_lower"], ba["loa_upper"]):
                ax.axhline(value, color="gray", linestyle="--", linewidth=1)
            ax.plot([], [], color="gray", linestyle="--",
                    label=f"95% LoA [{ba['loa_lower']:.2f}, {ba['loa_upper']:.2f}]")
        ax.axhline(0.0, color="lightgray", linewidth=0.5)
        ax.set_title(f"{run} (n = {ba['n']})", fontsize=9)
        ax.set_xlabel("mean of synthesised and true-ADC core (ml)", fontsize=8)
        if ba["mean_diff"] is not None:  # no measurable patient: nothing to label
            ax.legend(fontsize=7, loc="best")
    axes[0].set_ylabel("synthesised - true-ADC core (ml)", fontsize=8)
    return _save(fig, path)


def uncertainty_png(pooled: Sequence[dict], path: str | Path) -> Path:
    """Mean absolute error of the mean map by decile of voxel std, one panel per modality, a line
    per run (``pooled``: the ``patient_id == "all"`` rows of uncertainty.uncertainty_rows)."""
    modalities = [m for m in MODALITIES if any(r["modality"] == m for r in pooled)]
    fig = Figure(figsize=(3.6 * len(modalities), 3.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(modalities), squeeze=False)[0]
    for ax, modality in zip(axes, modalities):
        for row in (r for r in pooled if r["modality"] == modality):
            bins = sorted(int(k[len("abs_error_d"):]) for k in row if k.startswith("abs_error_d"))
            values = [row[f"abs_error_d{b}"] for b in bins]
            kept = [(b, v) for b, v in zip(bins, values) if v is not None]
            ax.plot([b for b, _ in kept], [v for _, v in kept], marker="o", markersize=3,
                    label=f"{row['run']} (rho {row['spearman_std_abs_error']:.2f})"
                    if row["spearman_std_abs_error"] is not None else row["run"])
        ax.set_title(modality.upper(), fontsize=9)
        ax.set_xlabel("decile of voxel std (1: lowest)", fontsize=8)
        ax.set_ylabel("mean |mean map - truth| (window units)", fontsize=8)
        ax.legend(fontsize=7)
    return _save(fig, path)
