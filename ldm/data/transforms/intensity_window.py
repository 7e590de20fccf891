"""Which physical range of DWI and ADC is mapped to [0, 1]: the intensity window (docs/data.md).

Two windows, chosen by one key (``window`` in a dataset config, ``--window`` in preprocessing and
evaluation):

- ``lesion`` (default): keeps the lesion. ADC, a quantitative map, on a fixed physical range,
  (0, 2500) x 10^-6 mm^2/s by default, which holds the ischemic-core threshold (620) with room below
  it (acute cores lie near 300-600) and normal tissue (white matter ~700, grey matter ~850) well
  inside; only CSF (~3000) is clipped. DWI, whose scale is not comparable across scanners, on
  (0, ``dwi_headroom`` x the median DWI inside the brain mask): the median is a robust reference of
  normal tissue (a lesion moves it only when it fills half the brain), and a headroom of 3 keeps
  lesions up to three times normal tissue.
- ``reference_percentile``: the reference code's per-patient 0.5 / 99.5 percentiles inside the brain
  mask. It clips a lesion that covers less than about 0.5% of the brain: the top of the DWI window
  falls below a small bright lesion and the bottom of the ADC window above the core.

Either way the result is the (lo, hi) of the linear map ``u = (clip(x, lo, hi) - lo) / (hi - lo)``
(ldm/data/transforms/normalization.py), recorded per patient as ``dwi_range`` / ``adc_range``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ldm.data.transforms.normalization import PERCENTILES, percentile_range

WINDOWS = ("lesion", "reference_percentile")
DEFAULT_WINDOW = "lesion"
ADC_CORE_THRESHOLD = 620.0  # 10^-6 mm^2/s, RAPID (Purushotham et al., Int J Stroke 2015)
# What a lesion window must hold: the core threshold with room below it (acute cores reach ~300),
# normal tissue with room above it, and DWI lesions at 2-3 x normal tissue.
ADC_WINDOW_MAX_LO = ADC_CORE_THRESHOLD / 2.0
ADC_WINDOW_MIN_HI = 1500.0
MIN_DWI_HEADROOM = 2.0
_PARAMETERS = {"lesion": ("adc_range", "dwi_headroom"), "reference_percentile": ()}


class WindowError(ValueError):
    """A window setting that does not exist or cannot keep the lesion (one line naming the key)."""


@dataclass(frozen=True)
class IntensityWindow:
    """A window choice and its parameters (the module doc); build it with :meth:`from_config`."""

    name: str = DEFAULT_WINDOW
    adc_range: tuple[float, float] = (0.0, 2500.0)  # 10^-6 mm^2/s (lesion window)
    dwi_headroom: float = 3.0  # DWI hi = headroom x brain median (lesion window)

    def __post_init__(self) -> None:
        if self.name not in WINDOWS:
            raise WindowError(f"window {self.name!r} does not exist: choose one of {', '.join(WINDOWS)}")
        lo, hi = (float(v) for v in self.adc_range)
        object.__setattr__(self, "adc_range", (lo, hi))
        object.__setattr__(self, "dwi_headroom", float(self.dwi_headroom))
        if self.name != "lesion":
            return
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo < hi):
            raise WindowError(f"window adc_range {lo:g}..{hi:g} is not a range of ADC values (0 <= lo < hi)")
        if lo > ADC_WINDOW_MAX_LO or hi < ADC_WINDOW_MIN_HI:
            raise WindowError(f"window adc_range {lo:g}..{hi:g} cannot hold the core threshold "
                              f"{ADC_CORE_THRESHOLD:g} x 10^-6 mm^2/s with room below it and normal tissue above "
                              f"it: lo must be <= {ADC_WINDOW_MAX_LO:g} and hi >= {ADC_WINDOW_MIN_HI:g}")
        if not (math.isfinite(self.dwi_headroom) and self.dwi_headroom >= MIN_DWI_HEADROOM):
            raise WindowError(f"window dwi_headroom {self.dwi_headroom:g} leaves no room for DWI lesions at 2-3 x "
                              f"normal tissue: it must be >= {MIN_DWI_HEADROOM:g}")

    @classmethod
    def from_config(cls, value: "str | Mapping[str, Any] | IntensityWindow | None") -> "IntensityWindow":
        """``"lesion"``, ``"reference_percentile"``, ``{name: lesion, adc_range: [0, 2500],
        dwi_headroom: 3}``, an IntensityWindow, or None (the default window)."""
        if value is None:
            return cls()
        if isinstance(value, IntensityWindow):
            return value
        if isinstance(value, str):
            return cls(name=value)
        if not isinstance(value, Mapping):
            raise WindowError(f"window must be a name ({', '.join(WINDOWS)}) or a mapping, got {value!r}")
        params = dict(value)
        name = str(params.pop("name", DEFAULT_WINDOW))
        if name not in WINDOWS:
            raise WindowError(f"window {name!r} does not exist: choose one of {', '.join(WINDOWS)}")
        unknown = sorted(set(params) - set(_PARAMETERS[name]))
        if unknown:
            allowed = ", ".join(_PARAMETERS[name]) or "none"
            raise WindowError(f"window key {unknown[0]!r} does not exist for the {name} window (keys: {allowed})")
        if "adc_range" in params:
            pair = params["adc_range"]
            if isinstance(pair, (str, bytes)) or len(pair) != 2:
                raise WindowError(f"window adc_range must be two numbers [lo, hi], got {pair!r}")
            try:
                params["adc_range"] = (float(pair[0]), float(pair[1]))
            except (TypeError, ValueError):
                raise WindowError(f"window adc_range must be two numbers [lo, hi], got {pair!r}") from None
        if "dwi_headroom" in params:
            try:
                params["dwi_headroom"] = float(params["dwi_headroom"])
            except (TypeError, ValueError):
                raise WindowError(f"window dwi_headroom must be a number, got {params['dwi_headroom']!r}") from None
        return cls(name=name, **params)

    @classmethod
    def from_arguments(cls, name: str, adc_window: "Sequence[float] | None" = None,
                       dwi_headroom: float | None = None) -> "IntensityWindow":
        """The window of the ``--window`` / ``--adc_window LO HI`` / ``--dwi_headroom`` options."""
        params: dict[str, Any] = {"name": name}
        if adc_window is not None:
            params["adc_range"] = list(adc_window)
        if dwi_headroom is not None:
            params["dwi_headroom"] = dwi_headroom
        return cls.from_config(params)

    @classmethod
    def from_json(cls, data: "Mapping[str, Any] | None") -> "IntensityWindow":
        """What :meth:`to_json` wrote; None (a split preprocessed before windows were recorded) is the
        reference's percentile window, the only one that existed then."""
        if data is None:
            return cls(name="reference_percentile")
        return cls.from_config({k: v for k, v in data.items() if k != "percentiles"})

    def to_json(self) -> dict[str, Any]:
        if self.name == "reference_percentile":
            return {"name": self.name, "percentiles": list(PERCENTILES)}
        return {"name": self.name, "adc_range": list(self.adc_range), "dwi_headroom": self.dwi_headroom}

    def cli(self) -> str:
        """The preprocessing options that make this window."""
        if self.name == "reference_percentile":
            return "--window reference_percentile"
        lo, hi = self.adc_range
        return f"--window lesion --adc_window {lo:g} {hi:g} --dwi_headroom {self.dwi_headroom:g}"

    def describe(self) -> str:
        if self.name == "reference_percentile":
            return f"reference_percentile (per-patient {PERCENTILES[0]:g} / {PERCENTILES[1]:g} percentiles in the brain)"
        return (f"lesion (ADC {self.adc_range[0]:g}..{self.adc_range[1]:g} x 10^-6 mm^2/s, DWI 0..{self.dwi_headroom:g} x "
                f"the brain median)")

    def intensity_range(self, modality: str, volume: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
        """(lo, hi) of ``modality`` ("dwi" or "adc") for one patient's ``volume`` inside ``mask``."""
        if modality not in ("dwi", "adc"):
            raise ValueError(f"unknown modality {modality!r}; expected 'dwi' or 'adc'")
        if self.name == "reference_percentile":
            return percentile_range(volume, mask)
        if modality == "adc":
            return self.adc_range
        return 0.0, self.dwi_headroom * brain_median(volume, mask)


def brain_median(volume: np.ndarray, mask: np.ndarray) -> float:
    """Median of ``max(volume, 0)`` inside ``mask``: the DWI's reference of normal tissue."""
    values = np.maximum(np.asarray(volume)[np.asarray(mask, dtype=bool)], 0.0)
    if values.size == 0:
        raise ValueError("the brain mask is empty")
    return float(np.median(values))
