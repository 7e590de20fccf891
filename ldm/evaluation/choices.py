"""Which variant of each metric the tables report (every variant is in the CSV files).

- ``region``: "brain" (default) computes MAE and PSNR over the brain mask of each slice; "slice"
  over the whole slice, background included. The whole-slice numbers depend on the field of view:
  the more background a slice holds, the smaller its MAE and the higher its PSNR, for the same
  brain. (MS-SSIM is computed on the whole slice in both: its windows need the full image.)
- ``lesion``: "pooled" (default) is sum(M |x - x_hat|) / sum(M) over every lesion voxel of the
  run's scored slices, each voxel counting once; "slice_mean" is the mean over lesion slices of the
  per-slice ratio, where a slice with 3 lesion voxels weighs as much as one with 300.
- ``failed_ratio``: a synthesised slice whose brain mean intensity (on [0, 1]) is below this
  fraction of the ground truth's counts as failed (came out dark); the share is reported.
"""
from __future__ import annotations

from dataclasses import dataclass

REGIONS = ("brain", "slice")
LESION_AGGREGATES = ("pooled", "slice_mean")
FAILED_RATIO = 0.5


@dataclass(frozen=True)
class MetricChoices:
    region: str = "brain"
    lesion: str = "pooled"
    failed_ratio: float = FAILED_RATIO

    def __post_init__(self) -> None:
        if self.region not in REGIONS:
            raise ValueError(f"metric region must be one of {REGIONS}, got {self.region!r}")
        if self.lesion not in LESION_AGGREGATES:
            raise ValueError(f"lesion MAE aggregate must be one of {LESION_AGGREGATES}, got {self.lesion!r}")
        if not 0 < float(self.failed_ratio) < 1:
            raise ValueError(f"failed-slice ratio must be in (0, 1), got {self.failed_ratio!r}")

    @property
    def mae_key(self) -> str:
        return f"mae_{self.region}"

    @property
    def psnr_key(self) -> str:
        return f"psnr_{self.region}"

    @property
    def lesion_key(self) -> str:
        return "lesion_mae_pooled" if self.lesion == "pooled" else "lesion_mae_slice_mean"

    def describe(self) -> str:
        region = ("over the brain mask of each slice" if self.region == "brain"
                  else "over the whole slice, background included (depends on the field of view)")
        lesion = ("pooled: sum(M|x - x_hat|) / sum(M) over all lesion voxels of the scored slices"
                  if self.lesion == "pooled" else
                  "per-slice sum(M|x - x_hat|) / sum(M), averaged over slices with lesion")
        return f"MAE and PSNR {region}; lesion MAE {lesion}"
