"""One validated patient onto the model grid and the model's frame count, before slicing.

The patient's grid is the DWI's (or the CTP's for a CTP-only patient); the model grid is that grid
at the preprocessing spacing (resampling.target_grid). DWI and ADC are resampled linearly, the
brain and lesion masks by fraction > 0.5; the CTP is first resampled in time to the model's frame
count (timepoints.py: fewer frames to interpolate spatially) and then, frame by frame, from its own
grid onto the model grid (one interpolation, also when it came on another grid than the DWI).
Nothing is touched when the patient already is at the spacing with the frame count: the arrays
are the very ones that were read, so such data preprocesses exactly as before.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ldm.data.record import MASKS, MODALITIES
from ldm.data.transforms.resampling import Grid, affine_zooms, coverage, resample, target_grid
from ldm.data.transforms.timepoints import FrameTimes, resample_frames
from ldm.data.ingest.validation import PatientError, PatientVolumes

MIN_BRAIN_COVERAGE = 0.5  # a CTP that covers less of the brain is not registered to the DWI


@dataclass(frozen=True)
class Harmonisation:
    """What was done: the source and model grids, and the time axis."""

    source: Grid
    source_zooms: tuple[float, float, float]  # the source header's voxel size
    grid: Grid
    ctp_resampled: bool
    source_timepoints: int
    frame_times: FrameTimes
    sample_times: np.ndarray | None

    @property
    def resampled(self) -> bool:
        return not self.grid.same_as(self.source)


def harmonise(volumes: PatientVolumes, spacing: Sequence[float] | None, n_timepoints: int
              ) -> tuple[PatientVolumes, Harmonisation]:
    """``volumes`` on the model grid at ``spacing`` (None: keep the patient's grid) with
    ``n_timepoints`` CTP frames. Raises PatientError for a CTP that does not cover the brain."""
    pid = volumes.patient_id
    source = Grid(volumes.spatial_shape, volumes.affine)
    grid = target_grid(source, spacing)
    ctp_grid = Grid(tuple(int(n) for n in volumes.ctp.shape[:3]),
                    volumes.affine if volumes.ctp_affine is None else volumes.ctp_affine)

    mri = {}
    for name in (*MODALITIES, *MASKS):
        volume = getattr(volumes, name)
        if volume is not None and grid is not source:
            volume = resample(volume, source.affine, grid, mask=volume.dtype == bool)
        mri[name] = volume
    if mri["mask"] is not None and not mri["mask"].any():
        raise PatientError(f"patient {pid}: mask.nii.gz is empty on the {_spacing(grid)} grid")

    if not ctp_grid.same_as(grid):
        share = coverage(ctp_grid, grid, mri["mask"])
        if share < (MIN_BRAIN_COVERAGE if mri["mask"] is not None else 1e-9):
            where = "of the brain mask" if mri["mask"] is not None else "of the field of view"
            raise PatientError(f"patient {pid}: {volumes.ctp_file} covers {100 * share:.0f}% {where} of "
                               f"{volumes.geometry_file}'s grid: is it registered to the DWI? "
                               f"(scripts/register_ctp.py)")
    try:
        ctp, sample_times = resample_frames(volumes.ctp, volumes.frame_times, n_timepoints)
    except ValueError as e:
        raise PatientError(f"patient {pid}: {volumes.ctp_file}: {e}") from e
    ctp = resample(ctp, ctp_grid.affine, grid)

    harmonised = replace(volumes, ctp=ctp, **mri, affine=np.asarray(grid.affine, dtype=np.float64),
                         zooms=volumes.zooms if grid is source else affine_zooms(grid.affine), ctp_affine=None)
    return harmonised, Harmonisation(source, volumes.zooms, grid, not ctp_grid.same_as(source),
                                     int(volumes.ctp.shape[3]),
                                     volumes.frame_times, sample_times)


def _spacing(grid: Grid) -> str:
    return " x ".join(f"{z:.3g}" for z in grid.zooms) + " mm"
