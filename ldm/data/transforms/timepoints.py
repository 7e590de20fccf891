"""The CTP's time axis: acquisition times of its frames, and resampling to the model's frame count.

The model takes a fixed number of frames (15 in the paper) spanning the bolus passage; clinical CTP
comes with 20-50 frames, often at irregular times (dense during the bolus, sparse after it). The
frames are resampled by linear interpolation in time onto ``n`` uniform times over the acquired
span [first, last]. Acquisition times come from, in this order:

1. a sidecar JSON beside the NIfTI (``ctp.json`` for ``ctp.nii.gz``; BIDS style) with a list under
   ``FrameTimesStart`` (BIDS PET), ``AcquisitionTimes``, ``FrameTimes`` or ``TimePoints``: seconds,
   or clock times ``HH:MM:SS[.ffffff]`` (taken relative to the first);
2. the NIfTI header: ``toffset + k * pixdim[4]`` when pixdim[4] > 0 and the time unit is set
   (uniform times; ms and us are converted to s);
3. otherwise the frame index (uniform over the frames).

A CTP whose frame count already equals the target is left exactly as it is; one with fewer frames
is refused by the caller (interpolation cannot add the bolus phases that were never acquired).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIDECAR_KEYS = ("FrameTimesStart", "AcquisitionTimes", "FrameTimes", "TimePoints")
_TIME_UNITS = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2}(?:\.\d*)?)$")


@dataclass(frozen=True)
class FrameTimes:
    """Acquisition times (s) of a CTP's frames and where they came from; ``seconds`` is None
    when nothing gives them (then frames are taken as uniform over their index)."""

    seconds: tuple[float, ...] | None
    source: str  # "sidecar <name> <key>", "header pixdim[4]" or "frame index"


def sidecar_path(nifti: Path) -> Path:
    name = nifti.name
    stem = name[:-7] if name.endswith(".nii.gz") else name[:-4] if name.endswith(".nii") else nifti.stem
    return nifti.with_name(stem + ".json")


def _seconds(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _CLOCK.match(str(value).strip())
    if not match:
        raise ValueError(f"{value!r} is neither seconds nor a clock time HH:MM:SS")
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600.0 + int(minutes) * 60.0 + float(seconds)


def read_frame_times(nifti: str | Path, header, n_frames: int) -> FrameTimes:
    """Frame times of a 4-D NIfTI (see the module doc). Raises ValueError for a sidecar that does
    not fit (wrong length, unreadable, times not increasing)."""
    nifti = Path(nifti)
    sidecar = sidecar_path(nifti)
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{sidecar.name} cannot be read ({e})") from e
        for key in SIDECAR_KEYS:
            if isinstance(meta, dict) and key in meta:
                values = meta[key]
                if not isinstance(values, list) or len(values) != n_frames:
                    length = len(values) if isinstance(values, list) else "not a list"
                    raise ValueError(f"{sidecar.name}: {key} has {length} entries, {nifti.name} has {n_frames} frames")
                seconds = [_seconds(v) for v in values]
                if any(isinstance(v, str) for v in values):  # clock times: relative to the first frame
                    seconds = [s - seconds[0] for s in seconds]
                check_increasing(seconds, f"{sidecar.name} {key}")
                return FrameTimes(tuple(seconds), f"sidecar {sidecar.name} {key}")
    try:
        step = float(header["pixdim"][4])
        unit = header.get_xyzt_units()[1]
        offset = float(header["toffset"])
    except (KeyError, IndexError, TypeError, ValueError):
        step, unit, offset = 0.0, "unknown", 0.0
    if step > 0 and unit in _TIME_UNITS:
        factor = _TIME_UNITS[unit]
        return FrameTimes(tuple(float(offset + k * step) * factor for k in range(n_frames)), "header pixdim[4]")
    return FrameTimes(None, "frame index")


def check_increasing(seconds: list[float] | tuple[float, ...], what: str) -> None:
    if not all(np.isfinite(seconds)) or any(b <= a for a, b in zip(seconds, seconds[1:])):
        raise ValueError(f"{what}: frame times are not strictly increasing")


def target_times(times: FrameTimes, n_frames: int, n_target: int) -> np.ndarray:
    """``n_target`` uniform sample times over the acquired span (frame-index units without times)."""
    source = np.arange(n_frames, dtype=np.float64) if times.seconds is None else np.asarray(times.seconds)
    return np.linspace(source[0], source[-1], n_target)


def resample_frames(ctp: np.ndarray, times: FrameTimes, n_target: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(X, Y, Z, T) -> (X, Y, Z, n_target) by linear interpolation in time; also the sample times.

    ``ctp`` itself (and None) when it already has ``n_target`` frames. Requires T >= n_target.
    """
    n_frames = int(ctp.shape[-1])
    if n_frames == n_target:
        return ctp, None
    if n_frames < n_target:
        raise ValueError(f"{n_frames} frames cannot be resampled to {n_target} (fewer frames than the target)")
    source = np.arange(n_frames, dtype=np.float64) if times.seconds is None else np.asarray(times.seconds)
    samples = target_times(times, n_frames, n_target)
    upper = np.clip(np.searchsorted(source, samples, side="right"), 1, n_frames - 1)
    lower = upper - 1
    frac = np.clip((samples - source[lower]) / (source[upper] - source[lower]), 0.0, 1.0)
    # frame by frame (no float copy of the whole input); frames contiguous in memory as NIfTI's are
    out = np.empty((*ctp.shape[:-1], n_target), dtype=np.float32, order="F")
    for k in range(n_target):
        out[..., k] = ctp[..., lower[k]] * np.float32(1.0 - frac[k])
        out[..., k] += ctp[..., upper[k]] * np.float32(frac[k])
    return out, samples
