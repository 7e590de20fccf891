"""The sampler study's figure: lesion MAE and brain MAE against seconds per slice, one line per
sampler (points labelled with their steps), one column per map.

Rendered on matplotlib's Agg canvas directly (no global matplotlib state), written atomically, as
``ldm/evaluation/clinical_plots.py`` does.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ldm.data.record import MODALITIES
from ldm.experiments.sampler_study_report import LABELS, label
from ldm.io import atomic_path


def quality_time_png(settings: Sequence[tuple[str, int]], timings: Mapping[str, dict], vs_gt: Mapping,
                     path: str | Path) -> Path:
    """``vs_gt``: {(setting, modality): evaluate.py's per-run record against the ground truth}."""
    fig = Figure(figsize=(9, 7), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, squeeze=False)
    for col, modality in enumerate(MODALITIES):
        for row, (metric, header) in enumerate((("lesion_mae", "lesion MAE"), ("mae", "MAE (brain)"))):
            ax = axes[row][col]
            for name in dict.fromkeys(n for n, _ in settings):
                values = {s: vs_gt[(label(n, s), modality)][metric] for n, s in settings if n == name}
                points = sorted((timings[label(name, s)]["seconds_per_slice"], v, s)
                                for s, v in values.items() if v is not None)
                ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=LABELS.get(name, name))
                for x, y, s in points:
                    ax.annotate(str(s), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
            ax.set_xscale("log")
            ax.set_xlabel("seconds per slice (log)")
            ax.set_ylabel(header)
            ax.set_title(f"{modality.upper()}: {header} against time (labels: steps)")
            ax.legend()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(str(tmp), format="png")
    return path
