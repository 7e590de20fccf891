"""The sampler study's table: per map, each setting's time per slice, speed-up, scores against the
ground truth, its lesion MAE against the reference setting's (pooled, and per patient with the 95%
bootstrap interval), and its distance to the reference setting's volumes.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from ldm.data.record import MODALITIES

LABELS = {"ddim": "DDIM", "dpmsolver++": "DPM-Solver++"}
# columns of the table: (key in the summary, header, decimals)
COLUMNS = (("mae", "MAE", 4), ("lesion_mae", "lesion MAE", 4), ("psnr", "PSNR", 2), ("ms_ssim_mean", "MS-SSIM", 3))


def label(name: str, steps: int) -> str:
    """A setting as the tables name it: ``ddim``, 200 -> ``DDIM-200``."""
    return f"{LABELS.get(name, name)}-{steps}"


def _f(value: float | None, decimals: int) -> str:
    return "–" if value is None else f"{value:.{decimals}f}"


def study_table(settings: Sequence[tuple[str, int]], timings: Mapping[str, dict], vs_gt: Mapping, vs_ref: Mapping,
                paired: Mapping, reference: str) -> str:
    """The markdown tables, one per map. ``vs_gt`` and ``vs_ref``: {(setting, modality): evaluate.py's
    per-run record} against the ground truth and against the reference's volumes; ``paired``:
    {(setting, modality): the per-patient lesion MAE difference against the reference}."""
    lines = []
    for modality in MODALITIES:
        lines += ["", f"**{modality.upper()}**", "",
                  "| setting | s / slice | speed-up | " + " | ".join(h for _, h, _ in COLUMNS)
                  + " | lesion MAE vs " + reference + ": pooled, per patient [95% CI] | MAE to " + reference
                  + " | PSNR to " + reference + " |",
                  "|" + "---|" * (6 + len(COLUMNS))]
        base = timings[reference]["seconds_per_slice"]
        for name, steps in settings:
            key = label(name, steps)
            t = timings[key]["seconds_per_slice"]
            gt_row, ref_row = vs_gt[(key, modality)], vs_ref.get((key, modality))
            p = paired.get((key, modality))
            pooled, pooled_ref = gt_row.get("lesion_mae"), vs_gt[(reference, modality)].get("lesion_mae")
            if p is None or pooled is None or not pooled_ref:
                versus = "–"
            else:
                versus = (f"{100.0 * (pooled / pooled_ref - 1):+.1f}%, {100.0 * p.difference / p.mean_a:+.1f}% "
                          f"[{100 * p.ci_low / p.mean_a:+.1f}, {100 * p.ci_high / p.mean_a:+.1f}]")
            lines.append(f"| {key} | {t:.3f} | {base / t:.1f}x | "
                         + " | ".join(_f(gt_row.get(c), d) for c, _, d in COLUMNS)
                         + f" | {versus} | {_f(ref_row and ref_row.get('mae'), 4)} | "
                         f"{_f(ref_row and ref_row.get('psnr'), 2)} |")
    return "\n".join(lines)
