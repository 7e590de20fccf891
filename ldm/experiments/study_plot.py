"""The study's figure: per-patient differences cLDM-PT − control by seed, with the pooled mean and
its 95% interval, one panel per image target and map.

Rendered on matplotlib's Agg canvas directly (no global matplotlib state), written atomically, as
``ldm/evaluation/clinical_plots.py`` does.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ldm.io import atomic_path

if TYPE_CHECKING:
    from ldm.experiments.study_report import Comparison


def differences_png(comparisons: Sequence[Comparison], path: str | Path) -> Path:
    """Each comparison a panel: patients on x (ordered by their mean difference), one marker colour
    per seed, the pooled difference as a line in its interval's band, and 0."""
    columns = sorted({c.modality for c in comparisons}, key=["dwi", "adc", ""].index)
    rows = list(dict.fromkeys(c.target for c in comparisons))
    fig = Figure(figsize=(5.2 * max(1, len(columns)), 3.4 * max(1, len(rows))), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, len(rows)), max(1, len(columns)), squeeze=False)
    for c in comparisons:
        ax = axes[rows.index(c.target)][columns.index(c.modality)]
        patients, seeds, a, b = c.pairs
        by_patient: dict[str, list[float]] = {}
        for pid, va, vb in zip(patients, a, b):
            by_patient.setdefault(pid, []).append(vb - va)
        order = sorted(by_patient, key=lambda p: sum(by_patient[p]) / len(by_patient[p]))
        x_of = {pid: i for i, pid in enumerate(order)}
        seed_list = list(dict.fromkeys(seeds))
        width = 0.5 / max(1, len(seed_list))
        for k, seed in enumerate(seed_list):
            points = [(x_of[pid] + (k - (len(seed_list) - 1) / 2) * width, vb - va)
                      for pid, s, va, vb in zip(patients, seeds, a, b) if s == seed]
            ax.scatter([p[0] for p in points], [p[1] for p in points], s=16, label=f"seed {seed}")
        r = c.result
        ax.axhspan(r.ci_low, r.ci_high, color="tab:gray", alpha=0.25, label="pooled 95% CI")
        ax.axhline(r.difference, color="black", linewidth=1.2, label=f"pooled {r.difference:+.3f}")
        ax.axhline(0.0, color="black", linewidth=0.6, linestyle=":")
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels(order, rotation=90, fontsize=6)
        ax.set_ylabel(f"{c.header}: cLDM-PT − control")
        ax.set_title(f"{c.target} − control, {c.modality.upper() or 'lesion'} ({r.n_patients} patients)", fontsize=9)
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(str(tmp), format="png")
    return path
