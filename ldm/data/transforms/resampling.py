"""Voxel-spacing harmonisation: a grid at a target spacing, resampling onto it, and back.

The target grid of a source grid keeps its orientation (the affine's direction cosines) and its
field of view: ``n' = round(n * zoom / spacing)`` voxels per axis, centred on the source's centre.
Images are resampled by trilinear interpolation, masks by the same interpolation of their
indicator kept where the fraction is > 0.5 (a majority vote that neither grows nor shrinks a
mask, unlike nearest neighbour on a coarser grid). A voxel's value holds over its whole extent:
points beyond the outermost voxel centres but inside the field of view (within half a voxel) take
the edge value, so that a grid and its resampled copy cover each other exactly; points outside
the field of view get ``fill`` (0, the background of every map here).

Between two grids of the same orientation (the usual case: spacing only) the voxel-to-voxel map is
diagonal, so trilinear interpolation factorises into three 1-D passes (the same weights as
``scipy.ndimage.affine_transform(order=1)`` in a fraction of its time). Other pairs (a CTP on its
own, oblique grid) gather the eight corners of every target point, with indices and weights
computed once for all frames.

A grid whose voxel size is within ``SPACING_TOLERANCE`` (relative) of the target is left as it is:
headers round voxel sizes (an oblique 1 mm axis reads 0.995 mm), and resampling for a 1 % scale
difference would only blur the data.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PAPER_SPACING = (1.0, 1.0, 5.0)
SPACING_TOLERANCE = 0.01
AFFINE_TOLERANCE_MM = 1e-3  # NIfTI stores affines in float32: grids that differ by less are one grid


def affine_zooms(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel edge lengths (mm) of a voxel-to-world affine (its column norms)."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0))


def format_spacing(spacing: Sequence[float] | None) -> str:
    return "native" if spacing is None else " x ".join(f"{float(s):g}" for s in spacing) + " mm"


def at_spacing(zooms: Sequence[float], spacing: Sequence[float], tolerance: float = SPACING_TOLERANCE) -> bool:
    """True when every voxel edge is within ``tolerance`` (relative) of the target spacing."""
    return all(abs(float(z) - float(s)) <= tolerance * float(s) for z, s in zip(zooms, spacing))


def check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(values)) or min(values) <= 0:
        raise ValueError(f"spacing must be three positive voxel sizes in mm, got {list(spacing)}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class Grid:
    """A voxel grid: spatial shape (X, Y, Z) and its voxel-to-world (RAS mm) affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def zooms(self) -> tuple[float, float, float]:
        return affine_zooms(self.affine)

    def same_as(self, other: "Grid", tolerance_mm: float = AFFINE_TOLERANCE_MM) -> bool:
        return (tuple(self.shape) == tuple(other.shape)
                and float(np.max(np.abs(np.asarray(self.affine) - np.asarray(other.affine)))) <= tolerance_mm)

    def to_json(self) -> dict:
        return {"shape": [int(n) for n in self.shape], "affine": np.asarray(self.affine, dtype=float).tolist()}

    @classmethod
    def from_json(cls, data: dict) -> "Grid":
        return cls(tuple(int(n) for n in data["shape"]), np.asarray(data["affine"], dtype=np.float64))


def target_grid(source: Grid, spacing: Sequence[float] | None, tolerance: float = SPACING_TOLERANCE) -> Grid:
    """The grid at ``spacing`` covering ``source``'s field of view (``source`` itself when it is
    already at that spacing, or when ``spacing`` is None)."""
    if spacing is None or at_spacing(source.zooms, spacing, tolerance):
        return source
    spacing = np.asarray(check_spacing(spacing))
    zooms = np.asarray(source.zooms)
    shape = np.maximum(1, np.round(np.asarray(source.shape) * zooms / spacing)).astype(int)
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(source.affine, dtype=np.float64)[:3, :3] / zooms * spacing
    centre = np.asarray(source.affine, dtype=np.float64) @ np.append((np.asarray(source.shape) - 1) / 2.0, 1.0)
    affine[:3, 3] = centre[:3] - affine[:3, :3] @ ((shape - 1) / 2.0)
    return Grid(tuple(int(n) for n in shape), affine)


def _axis_pass(volume: np.ndarray, axis: int, positions: np.ndarray, fill: float) -> np.ndarray:
    """Linear interpolation of ``volume`` along ``axis`` at source ``positions`` (voxel units)."""
    n = volume.shape[axis]
    if positions.size == n and np.allclose(positions, np.arange(n), rtol=0, atol=1e-6):
        return volume  # this axis is already on the target's points
    valid = (positions >= -0.5) & (positions <= n - 0.5)
    clipped = np.clip(positions, 0.0, n - 1.0)
    lower = np.minimum(np.floor(clipped).astype(np.intp), max(n - 2, 0))
    upper = np.minimum(lower + 1, n - 1)
    shape = [1] * volume.ndim
    shape[axis] = positions.size
    # lower + frac * (upper - lower), in place: two gathers and three passes over the output
    out = np.take(volume, lower, axis=axis)
    step = np.take(volume, upper, axis=axis)
    step -= out
    step *= (clipped - lower).astype(np.float32).reshape(shape)
    out += step
    del step
    if not valid.all():
        index = [slice(None)] * volume.ndim
        index[axis] = ~valid
        out[tuple(index)] = fill
    return out


class _Gather:
    """Trilinear interpolation at arbitrary (here: oblique) source positions of a fixed target grid.

    The same weights as ``scipy.ndimage.affine_transform(order=1)``, with the edge value up to half
    a voxel beyond the outermost centres and ``fill`` outside the field of view.
    """

    def __init__(self, source_shape: Sequence[int], matrix: np.ndarray, target_shape: Sequence[int]) -> None:
        n = np.asarray(source_shape[:3])
        index = np.indices(tuple(target_shape), dtype=np.float64).reshape(3, -1)
        points = matrix[:3, :3] @ index + matrix[:3, 3, None]
        self.inside = np.all((points >= -0.5) & (points <= (n - 0.5)[:, None]), axis=0)
        clipped = np.clip(points, 0.0, (n - 1.0)[:, None])
        self.lower = np.minimum(np.floor(clipped).astype(np.intp), np.maximum(n - 2, 0)[:, None])
        self.frac = (clipped - self.lower).astype(np.float32)
        self.step = (n > 1).astype(np.intp)  # no upper neighbour on a single-voxel axis
        self.shape = tuple(int(v) for v in target_shape)
        self.source_shape = tuple(int(v) for v in n)
        self._layout: tuple | None = None
        self._corners: list[tuple[np.ndarray, np.ndarray]] = []

    def _prepare(self, strides: tuple[int, ...]) -> None:
        if self._layout == strides:
            return
        base = sum(self.lower[a] * strides[a] for a in range(3))
        self._corners = []
        for corner in range(8):
            bits = [(corner >> a) & 1 for a in range(3)]
            offset = sum(bits[a] * self.step[a] * strides[a] for a in range(3))
            weight = np.ones(base.shape, dtype=np.float32)
            for a in range(3):
                weight *= self.frac[a] if bits[a] else 1.0 - self.frac[a]
            self._corners.append((base + offset, weight))
        self._layout = strides

    def __call__(self, frame: np.ndarray, fill: float) -> np.ndarray:
        if not (frame.flags.c_contiguous or frame.flags.f_contiguous):
            frame = np.ascontiguousarray(frame)
        self._prepare(tuple(s // frame.itemsize for s in frame.strides))
        flat = frame.ravel(order="K")  # memory order: no copy for a contiguous frame
        out = np.zeros(self.inside.shape, dtype=np.float32)
        for index, weight in self._corners:
            out += np.take(flat, index) * weight
        out[~self.inside] = fill
        return out.reshape(self.shape)


def index_map(source_affine: np.ndarray, target: Grid) -> np.ndarray:
    """4 x 4 map from target voxel indices to source voxel indices."""
    return np.linalg.inv(np.asarray(source_affine, dtype=np.float64)) @ np.asarray(target.affine, dtype=np.float64)


def resample(volume: np.ndarray, source_affine: np.ndarray, target: Grid, mask: bool = False,
             fill: float = 0.0) -> np.ndarray:
    """``volume`` ((X, Y, Z) or (X, Y, Z, T), voxel-to-world ``source_affine``) on ``target``.

    Images come back float32 (trilinear); ``mask=True`` returns a boolean mask (fraction > 0.5).
    A volume already on ``target`` comes back unchanged (the same array).
    """
    volume = np.asarray(volume)
    if Grid(tuple(volume.shape[:3]), np.asarray(source_affine)).same_as(target):
        return volume
    data = volume.astype(np.float32, copy=False)
    matrix = index_map(source_affine, target)
    linear, offset = matrix[:3, :3], matrix[:3, 3]
    scale = np.abs(np.diag(linear)).max()
    if np.abs(linear - np.diag(np.diag(linear))).max() <= 1e-9 * max(scale, 1.0):
        positions = [linear[a, a] * np.arange(target.shape[a]) + offset[a] for a in range(3)]
        # shrink first: the passes that cut the array most go first (fewer voxels to interpolate later)
        order = sorted(range(3), key=lambda a: target.shape[a] / max(volume.shape[a], 1))

        def spatial(frame: np.ndarray) -> np.ndarray:
            # gathers are fastest on a C-ordered array: an F-ordered frame (as NIfTI stores them) is
            # one seen transposed, so work on that view with the axes reversed, without a copy
            if frame.flags.f_contiguous and not frame.flags.c_contiguous:
                flipped = frame.T
                for axis in order:
                    flipped = _axis_pass(flipped, 2 - axis, positions[axis], fill)
                return flipped.T
            frame = np.ascontiguousarray(frame)
            for axis in order:
                frame = _axis_pass(frame, axis, positions[axis], fill)
            return frame

        if data.ndim == 3:
            out = spatial(data)
        else:  # frame by frame: 3-D passes stay in cache, and NIfTI frames are contiguous (F order)
            out = np.empty((*target.shape, data.shape[3]), dtype=np.float32, order="F")
            for t in range(data.shape[3]):
                out[..., t] = spatial(data[..., t])
    else:  # another orientation: trilinear gathers, the 8 corners and weights computed once for all frames
        gather = _Gather(volume.shape[:3], matrix, target.shape)
        if data.ndim == 3:
            out = gather(data, fill)
        else:
            out = np.empty((*target.shape, data.shape[3]), dtype=np.float32, order="F")
            for t in range(data.shape[3]):
                out[..., t] = gather(data[..., t], fill)
    return out > 0.5 if mask else out


def _inside(source_shape: Sequence[int], matrix: np.ndarray, target_shape: Sequence[int],
            where: np.ndarray | None = None) -> np.ndarray:
    """Whether each target voxel centre (or each of ``where``) lies in the source's field of view."""
    index = np.argwhere(where) if where is not None else np.indices(target_shape).reshape(3, -1).T
    points = index @ matrix[:3, :3].T + matrix[:3, 3]
    inside = np.all((points >= -0.5) & (points <= np.asarray(source_shape[:3]) - 0.5), axis=1)
    return inside if where is not None else inside.reshape(tuple(target_shape))


def coverage(source: Grid, target: Grid, where: np.ndarray | None = None) -> float:
    """Share of ``target``'s voxels (or of those in ``where``) whose centre lies in ``source``'s field
    of view: how much of a grid a volume on another grid can fill."""
    inside = _inside(source.shape, index_map(source.affine, target), target.shape, where)
    return float(inside.mean()) if inside.size else 0.0
