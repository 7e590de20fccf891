"""Physical plausibility of the maps a patient brings: ADC units, DWI vs ADC, CTP in Hounsfield units.

The thresholds and where they come from are in docs/data.md ("Plausibility checks"). In short:

- ADC: the median inside the brain of a map in 10^-6 mm^2/s lies in ``ADC_MEDIAN_RANGE`` (normal
  tissue 600 - 1200, CSF up to about 3500, an infarct core down to about 400). A median in that range
  divided by 1000 is the same map in 10^-3 mm^2/s, divided by 10^6 in mm^2/s: both are converted
  (the factor is exact). Any other median is no ADC unit we know.
- DWI vs ADC: CSF is bright on ADC (about 4 x the brain median) and dark on a b = 1000 DWI (about
  0.2 x), so where one map is more than ``CSF_CONTRAST`` times brighter than the other (each
  relative to its brain median) the brighter one is the ADC. A lesion goes the other way (bright DWI,
  dark ADC) but never that far. The pair is as named, swapped, or unclear (too few such voxels, e.g.
  a mask without CSF); two maps that are one image (correlation above ``SAME_MAP_CORRELATION``) are no
  DWI/ADC pair.
- CTP: the median of the first frame (before the bolus arrives) inside the brain lies in
  ``CTP_BASELINE_HU`` (brain tissue is 20 - 60 HU before contrast). A baseline 1024 higher is a series
  whose rescale intercept (-1024) was not applied: corrected. Without a brain mask the same offset
  is recognised from the values themselves (no air below -500 HU, brain tissue 1024 too high).

This module measures and decides; it knows no patient. The checks raise :class:`ImplausibleMap`
with one line that starts with the ``who`` the caller passes (e.g. ``patient P001``); corrections
come back with their one-line note.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ldm.data.brain_mask import SOFT_TISSUE_HU

ADC_MEDIAN_RANGE = (300.0, 2500.0)  # brain median, 10^-6 mm^2/s
# unit name, factor to 10^-6 mm^2/s; checked in this order
ADC_UNITS = (("10^-6 mm^2/s", 1.0), ("10^-3 mm^2/s", 1e3), ("mm^2/s", 1e6))
CSF_CONTRAST = 5.0  # ratio of the two maps (each over its brain median) that only CSF reaches
CSF_MIN_SHARE = 0.002  # share of the brain that must show it before the evidence counts
CSF_DOMINANCE = 5.0  # ... and how many times more voxels than the other way
SAME_MAP_CORRELATION = 0.99
CTP_BASELINE_HU = (10.0, 100.0)  # brain median of the first frame
HU_OFFSET = 1024.0  # the usual rescale intercept (stored value 0 = -1024 HU)
AIR_HU = -500.0  # below this: air (or the padding of a series in HU)
AIR_MIN_SHARE = 0.01  # of the voxels that change over time: a head CT in HU has this much air
OFFSET_MIN_SHARE = 0.05  # of the voxels that change over time in the soft-tissue window + 1024
MIN_BASELINE_VOXELS = 10  # fewer brain voxels with CTP signal: nothing to judge (coverage checks refuse)


class ImplausibleMap(ValueError):
    """A map that is not what its name says (one line, naming who and the file)."""


@dataclass(frozen=True)
class Correction:
    """What a check changed: ``factor`` multiplies the map, then ``offset`` is added."""

    map: str
    factor: float = 1.0
    offset: float = 0.0
    reason: str = ""

    def to_json(self) -> dict:
        return {"factor": self.factor, "offset": self.offset, "reason": self.reason}


def brain_median(volume: np.ndarray, brain: np.ndarray) -> float:
    """Median of ``volume`` over the ``brain`` voxels (NaN when there are none)."""
    values = np.asarray(volume)[np.asarray(brain, dtype=bool)]
    return float(np.median(values)) if values.size else float("nan")


def adc_unit(median: float) -> tuple[str, float] | None:
    """(unit, factor to 10^-6 mm^2/s) whose scaled ``median`` is a brain's, else None."""
    lo, hi = ADC_MEDIAN_RANGE
    for unit, factor in ADC_UNITS:
        if lo <= median * factor <= hi:
            return unit, factor
    return None


def check_adc_unit(who: str, file: str, adc: np.ndarray, brain: np.ndarray
                   ) -> tuple[np.ndarray, Correction | None, float]:
    """The ADC in 10^-6 mm^2/s, the conversion applied (None: none) and its brain median."""
    median = brain_median(adc, brain)
    unit = adc_unit(median) if np.isfinite(median) else None
    if unit is None:
        lo, hi = ADC_MEDIAN_RANGE
        raise ImplausibleMap(f"{who}: {file} has a brain median of {median:.4g}: no ADC unit gives that "
                             f"(10^-6 mm^2/s: {lo:g}-{hi:g}, 10^-3 mm^2/s: {lo / 1e3:g}-{hi / 1e3:g}, mm^2/s: "
                             f"{lo / 1e6:g}-{hi / 1e6:g}; docs/data.md)")
    name, factor = unit
    if factor == 1.0:
        return adc, None, median
    converted = np.asarray(adc, dtype=np.float32) * np.float32(factor)
    return converted, Correction("adc", factor=factor, reason=f"brain median {median:.3g} is an ADC in {name}"), \
        median * factor


@dataclass(frozen=True)
class DiffusionContrast:
    """How two maps relate where CSF is: ``csf_share`` of the brain is CSF-like for the pair as named
    (ADC bright, DWI dark, ratio above CSF_CONTRAST), ``reversed_share`` the other way round;
    ``dwi_ratio``/``adc_ratio`` are each map's median there over its brain median (of the larger set)."""

    csf_share: float
    reversed_share: float
    correlation: float
    dwi_ratio: float
    adc_ratio: float

    @property
    def verdict(self) -> str:
        """'as named', 'swapped', 'same image' or 'unclear'."""
        if self.correlation > SAME_MAP_CORRELATION:
            return "same image"
        if self.csf_share >= CSF_MIN_SHARE and self.csf_share >= CSF_DOMINANCE * self.reversed_share:
            return "as named"
        if self.reversed_share >= CSF_MIN_SHARE and self.reversed_share >= CSF_DOMINANCE * self.csf_share:
            return "swapped"
        return "unclear"

    def to_json(self) -> dict:
        return {"verdict": self.verdict, "csf_share": round(self.csf_share, 5),
                "reversed_share": round(self.reversed_share, 5), "correlation": round(self.correlation, 4)}


def diffusion_contrast(dwi: np.ndarray, adc: np.ndarray, brain: np.ndarray) -> DiffusionContrast:
    """:class:`DiffusionContrast` of a DWI/ADC pair inside ``brain`` (voxels where either is <= 0 are
    left out: no ratio there)."""
    brain = np.asarray(brain, dtype=bool)
    d = np.asarray(dwi, dtype=np.float64)[brain]
    a = np.asarray(adc, dtype=np.float64)[brain]
    n = max(int(brain.sum()), 1)
    valid = (d > 0) & (a > 0)
    if valid.sum() < 2:
        return DiffusionContrast(0.0, 0.0, float("nan"), float("nan"), float("nan"))
    d, a = d[valid] / np.median(d), a[valid] / np.median(a)  # medians over the brain, zeros included
    ratio = a / d
    csf, reverse = ratio > CSF_CONTRAST, ratio < 1.0 / CSF_CONTRAST
    chosen = csf if csf.sum() >= reverse.sum() else reverse
    with np.errstate(invalid="ignore"):
        correlation = float(np.corrcoef(d, a)[0, 1]) if d.std() > 0 and a.std() > 0 else float("nan")
    return DiffusionContrast(
        csf_share=float(csf.sum()) / n, reversed_share=float(reverse.sum()) / n,
        correlation=correlation if np.isfinite(correlation) else 0.0,
        dwi_ratio=float(np.median(d[chosen])) if chosen.any() else float("nan"),
        adc_ratio=float(np.median(a[chosen])) if chosen.any() else float("nan"))


def check_diffusion_pair(who: str, files: tuple[str, str], dwi: np.ndarray, adc: np.ndarray,
                         brain: np.ndarray) -> DiffusionContrast:
    """Refuse a pair whose contrast says it is swapped or one image; return the measurement.

    A swap is refused, not corrected (docs/data.md): the evidence is a statistic of the images, and
    a wrong "correction" would exchange the channels of a good patient without a word.
    """
    contrast = diffusion_contrast(dwi, adc, brain)
    dwi_file, adc_file = files
    if contrast.verdict == "same image":
        raise ImplausibleMap(f"{who}: {dwi_file} and {adc_file} are one image (correlation "
                             f"{contrast.correlation:.4f} inside the brain), not a DWI and an ADC")
    if contrast.verdict == "swapped":
        raise ImplausibleMap(
            f"{who}: {dwi_file} and {adc_file} look swapped: in {100 * contrast.reversed_share:.1f}% of the brain "
            f"{dwi_file} is bright ({contrast.dwi_ratio:.2g} x its median) where {adc_file} is dark "
            f"({contrast.adc_ratio:.2g} x), as CSF is on an ADC and not on a b=1000 DWI "
            f"({100 * contrast.csf_share:.1f}% the other way); exchange the two files if so")
    return contrast


def check_dwi_signal(who: str, file: str, dwi: np.ndarray, brain: np.ndarray) -> float:
    """The DWI's brain median; a DWI without signal in the brain is refused."""
    median = brain_median(dwi, brain)
    if not (np.isfinite(median) and median > 0):
        raise ImplausibleMap(f"{who}: {file} has no signal in the brain (brain median {median:.4g})")
    return median


def _in_baseline_range(value: float) -> bool:
    return CTP_BASELINE_HU[0] <= value <= CTP_BASELINE_HU[1]


def hu_offset_correction(baseline: float) -> Correction:
    """The correction of a CTP whose brain baseline is ``baseline`` (brain tissue + HU_OFFSET)."""
    return Correction("ctp", offset=-HU_OFFSET,
                      reason=f"brain baseline {baseline:.0f} is brain tissue + {HU_OFFSET:g}: the rescale intercept "
                             f"was not applied")


def check_ctp_baseline(who: str, file: str, first_frame_in_brain: np.ndarray
                       ) -> tuple[Correction | None, float | None]:
    """Judge a CTP by the first frame's values inside a given brain mask: (the offset correction or
    None, the baseline in HU after it; None when there are too few voxels to judge)."""
    values = np.asarray(first_frame_in_brain, dtype=np.float64)
    if values.size < MIN_BASELINE_VOXELS:
        return None, None
    baseline = float(np.median(values))
    if _in_baseline_range(baseline):
        return None, baseline
    if _in_baseline_range(baseline - HU_OFFSET):
        return hu_offset_correction(baseline), baseline - HU_OFFSET
    lo, hi = CTP_BASELINE_HU
    raise ImplausibleMap(f"{who}: {file}: brain baseline (first frame, median in the brain mask) is {baseline:.4g} HU: "
                         f"neither brain tissue before contrast ({lo:g}-{hi:g} HU) nor that + {HU_OFFSET:g} (a missing "
                         f"rescale intercept); is it a CTP in Hounsfield units?")


def ctp_offset_without_mask(first_frame: np.ndarray, varying: np.ndarray) -> bool:
    """Whether a CTP without a brain mask looks stored without its rescale intercept: among the
    voxels that change over time no air in HU (< AIR_HU) and a real share of soft tissue + 1024.
    The caller confirms it by finding a brain in the corrected series."""
    values = np.asarray(first_frame)[np.asarray(varying, dtype=bool)]
    if values.size == 0:
        return False
    air = float(np.mean(values < AIR_HU))
    lo, hi = SOFT_TISSUE_HU
    shifted = float(np.mean((values > lo + HU_OFFSET) & (values < hi + HU_OFFSET)))
    return air < AIR_MIN_SHARE and shifted >= OFFSET_MIN_SHARE


def apply(volume: np.ndarray, correction: Correction | None) -> np.ndarray:
    """``volume`` with ``correction`` applied (float32), or itself when there is none."""
    if correction is None:
        return volume
    out = np.asarray(volume, dtype=np.float32)
    if correction.factor != 1.0:
        out = out * np.float32(correction.factor)
    if correction.offset:
        out = out + np.float32(correction.offset)
    return out


def correction_note(who: str, file: str, correction: Correction) -> str:
    """The one line that says what was changed in ``file``."""
    if correction.map == "adc":
        return f"{who}: {file}: {correction.reason}: converted to 10^-6 mm^2/s (x {correction.factor:g})"
    return f"{who}: {file}: {correction.reason}; corrected by {correction.offset:+g} HU"
