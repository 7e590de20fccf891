"""Physical plausibility of the maps a patient brings: ADC units, DWI vs ADC, CTP in Hounsfield units.

The thresholds and where they come from are in docs/data.md ("Plausibility checks"). In short:

- ADC: the median inside the brain of a map in 10^-6 mm^2/s lies in ``ADC_MEDIAN_RANGE`` (normal
  tissue 600 - 1200, CSF up to about 3500, an infarct core down to about 400). A median in that range
  divided by 1000 is the same map in 10^-3 mm^2/s, divided by 10^6 in mm^2/s: both are converted
  (the factor is exact). Any other median is no ADC unit we know.
- DWI vs ADC: CSF is bright on ADC (about 4 x white matter) and dark on a b = 1000 DWI (about 0.2 x),
  so the ratio of CSF to tissue signal runs opposite ways in the two maps. CSF and tissue are found
  on the CTP (its temporal mean in HU), which is independent of both maps; a ratio of at least
  ``CSF_BRIGHT`` is bright CSF, at most its inverse dark CSF. The pair is as named, swapped, or
  unclear (no CTP, too few CSF voxels, no contrast); two maps that are one image (correlation above
  ``SAME_MAP_CORRELATION``) are no DWI/ADC pair.
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

from ldm.data.transforms.brain_mask import SOFT_TISSUE_HU

ADC_MEDIAN_RANGE = (300.0, 2500.0)  # brain median, 10^-6 mm^2/s
# unit name, factor to 10^-6 mm^2/s; checked in this order
ADC_UNITS = (("10^-6 mm^2/s", 1.0), ("10^-3 mm^2/s", 1e3), ("mm^2/s", 1e6))
CSF_HU = (-15.0, 15.0)  # temporal-mean CTP of CSF (0-15 HU); white matter 20-30, grey matter 35-45
TISSUE_HU = (20.0, 60.0)  # temporal-mean CTP of white and grey matter (with the bolus' enhancement)
CSF_BRIGHT = 1.5  # CSF / tissue ratio of a map at or above this: CSF bright (ADC); at or below 1/1.5: dark (DWI)
MIN_CSF_VOXELS = 10  # fewer CSF (or tissue) voxels: the pair cannot be told apart
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
class CtpSummary:
    """What the DWI/ADC check needs of a CTP (X, Y, Z, T) in HU: its temporal mean (HU) and whether
    each voxel's curve changes over time (the zero fill around a stripped brain does not)."""

    mean: np.ndarray
    varying: np.ndarray

    @classmethod
    def of(cls, ctp: np.ndarray) -> "CtpSummary":
        ctp = np.asarray(ctp)
        return cls(ctp.mean(axis=-1, dtype=np.float32), ctp.max(axis=-1) > ctp.min(axis=-1))


def has_signal(ctp: np.ndarray) -> np.ndarray:
    """(X, Y, Z): whether a voxel of the CTP (X, Y, Z, T) is non-zero in any frame (frame by frame:
    no 4-D temporary for a clinical series)."""
    out = np.zeros(np.shape(ctp)[:3], dtype=bool)
    for t in range(np.shape(ctp)[3]):
        out |= np.asarray(ctp[..., t]) != 0
    return out


def csf_and_tissue(ctp: CtpSummary, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSF and brain tissue told by the CTP, on the MRI's grid: brain voxels whose curve changes over
    time with a temporal mean in ``CSF_HU`` (CSF) or ``TISSUE_HU`` (white and grey matter; vessels are
    brighter). The CTP knows nothing of DWI and ADC, so it can tell which is which."""
    inside = np.asarray(brain, dtype=bool) & ctp.varying
    csf = inside & (ctp.mean >= CSF_HU[0]) & (ctp.mean < CSF_HU[1])
    tissue = inside & (ctp.mean >= TISSUE_HU[0]) & (ctp.mean <= TISSUE_HU[1])
    return csf, tissue


@dataclass(frozen=True)
class DiffusionContrast:
    """CSF against tissue on a DWI/ADC pair: each map's median over the CSF voxels divided by its
    median over the tissue voxels (``csf`` and ``tissue`` voxel counts, from :func:`csf_and_tissue`),
    and the correlation of the two maps inside the brain."""

    csf_voxels: int
    tissue_voxels: int
    dwi_ratio: float
    adc_ratio: float
    correlation: float

    @property
    def verdict(self) -> str:
        """'as named', 'swapped', 'same image' or 'unclear' (no CTP, too little CSF, no contrast)."""
        if self.correlation > SAME_MAP_CORRELATION:
            return "same image"
        if min(self.csf_voxels, self.tissue_voxels) < MIN_CSF_VOXELS or not (
                np.isfinite(self.dwi_ratio) and np.isfinite(self.adc_ratio)):
            return "unclear"
        if self.adc_ratio >= CSF_BRIGHT and self.dwi_ratio <= 1.0 / CSF_BRIGHT:
            return "as named"
        if self.dwi_ratio >= CSF_BRIGHT and self.adc_ratio <= 1.0 / CSF_BRIGHT:
            return "swapped"
        return "unclear"

    def to_json(self) -> dict:
        def number(v: float) -> float | None:
            return round(float(v), 4) if np.isfinite(v) else None

        return {"verdict": self.verdict, "csf_voxels": self.csf_voxels, "tissue_voxels": self.tissue_voxels,
                "dwi_csf_ratio": number(self.dwi_ratio), "adc_csf_ratio": number(self.adc_ratio),
                "correlation": number(self.correlation)}


def _ratio(volume: np.ndarray, csf: np.ndarray, tissue: np.ndarray) -> float:
    if not (csf.any() and tissue.any()):
        return float("nan")
    base = float(np.median(volume[tissue]))
    return float(np.median(volume[csf])) / base if base > 0 else float("nan")


def diffusion_contrast(dwi: np.ndarray, adc: np.ndarray, brain: np.ndarray,
                       ctp: CtpSummary | None) -> DiffusionContrast:
    """:class:`DiffusionContrast` of a DWI/ADC pair inside ``brain``, CSF and tissue found on ``ctp``
    (on the same grid; None: no CTP, the pair cannot be told apart and only 'same image' is checked)."""
    brain = np.asarray(brain, dtype=bool)
    d, a = np.asarray(dwi)[brain].astype(np.float64), np.asarray(adc)[brain].astype(np.float64)
    correlation = 0.0
    if d.size > 2 and d.std() > 0 and a.std() > 0:
        correlation = float(np.corrcoef(d, a)[0, 1])
    if ctp is None:
        return DiffusionContrast(0, 0, float("nan"), float("nan"), correlation)
    csf, tissue = csf_and_tissue(ctp, brain)
    return DiffusionContrast(int(csf.sum()), int(tissue.sum()), _ratio(np.asarray(dwi), csf, tissue),
                             _ratio(np.asarray(adc), csf, tissue), correlation)


def check_diffusion_pair(who: str, files: tuple[str, str], dwi: np.ndarray, adc: np.ndarray,
                         brain: np.ndarray, ctp: CtpSummary | None) -> DiffusionContrast:
    """Refuse a pair whose contrast says it is swapped or one image; return the measurement.

    A swap is refused, not corrected (docs/data.md): the evidence is a statistic of the images, and
    a wrong "correction" would exchange the channels of a good patient without a word.
    """
    contrast = diffusion_contrast(dwi, adc, brain, ctp)
    dwi_file, adc_file = files
    if contrast.verdict == "same image":
        raise ImplausibleMap(f"{who}: {dwi_file} and {adc_file} are one image (correlation "
                             f"{contrast.correlation:.4f} inside the brain), not a DWI and an ADC")
    if contrast.verdict == "swapped":
        raise ImplausibleMap(
            f"{who}: {dwi_file} and {adc_file} look swapped: CSF (found on the CTP, {contrast.csf_voxels} voxels) "
            f"is {contrast.dwi_ratio:.2f} x white/grey matter on {dwi_file} and {contrast.adc_ratio:.2f} x on "
            f"{adc_file}, but CSF is bright on an ADC and dark on a b=1000 DWI; exchange the two files if so")
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
