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
own, oblique grid) go through SimpleITK's resampler (linear), frame by frame on one thread: the same
trilinear weights, 2.3 to 2.7 times faster (paired medians) than gathering the eight corners in
numpy, which this module did before. ITK keeps a point when its index is in [-0.5, n - 0.5),
half-open, where this module's rule is closed; so the frame is padded by one edge voxel on every
side (ITK then reaches the edge value everywhere this module does) and ``fill`` is set by this
module's own rule (:func:`_inside`).

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


class _ObliqueResampler:
    """Trilinear interpolation onto a target grid through an arbitrary (oblique) index map, by
    SimpleITK's resampler; set up once for all frames of a series.

    Both images are given unit spacing, identity direction and zero origin, so ITK's physical
    points are voxel indices and the transform is the index map itself (``matrix``): no RAS/LPS
    conversion is involved. The source is padded by one edge voxel (index ``p`` becomes ``p + 1``).
    """

    def __init__(self, source_shape: Sequence[int], matrix: np.ndarray, target_shape: Sequence[int]) -> None:
        import SimpleITK as sitk

        n = tuple(int(v) for v in source_shape[:3])
        self.shape = tuple(int(v) for v in target_shape)
        self.outside = ~_inside(n, matrix, self.shape)
        transform = sitk.AffineTransform(3)
        transform.SetMatrix([float(v) for v in np.asarray(matrix, dtype=np.float64)[:3, :3].ravel()])
        transform.SetTranslation([float(v) + 1.0 for v in np.asarray(matrix, dtype=np.float64)[:3, 3]])
        self.filter = sitk.ResampleImageFilter()
        self.filter.SetSize(list(self.shape))
        self.filter.SetTransform(transform)
        self.filter.SetInterpolator(sitk.sitkLinear)
        self.filter.SetOutputPixelType(sitk.sitkFloat32)
        # one thread: preprocessing runs one patient per core (--workers); ITK's default of every
        # core oversubscribes those, and on a busy machine was no faster
        self.filter.SetNumberOfThreads(1)
        # (Z, Y, X): SimpleITK's array axis order, the transpose of ours
        self.padded = np.empty((n[2] + 2, n[1] + 2, n[0] + 2), dtype=np.float32)

    def __call__(self, frame: np.ndarray, fill: float, out: np.ndarray | None = None) -> np.ndarray:
        """``frame`` (X, Y, Z) on the target grid, float32, into ``out`` when given."""
        import SimpleITK as sitk

        padded = self.padded
        padded[1:-1, 1:-1, 1:-1] = frame.T
        # replicate the edges axis by axis: each step copies from faces the previous steps completed
        padded[:, :, 0], padded[:, :, -1] = padded[:, :, 1], padded[:, :, -2]
        padded[:, 0, :], padded[:, -1, :] = padded[:, 1, :], padded[:, -2, :]
        padded[0], padded[-1] = padded[1], padded[-2]
        self.filter.SetDefaultPixelValue(float(fill))
        result = self.filter.Execute(sitk.GetImageFromArray(padded))
        if out is None:
            out = np.empty(self.shape, dtype=np.float32, order="F")
        out[...] = sitk.GetArrayViewFromImage(result).T  # the view lives as long as ``result``
        out[self.outside] = fill
        return out


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
    else:  # another orientation: SimpleITK, the transform and the fill region set up once for all frames
        oblique = _ObliqueResampler(volume.shape[:3], matrix, target.shape)
        if data.ndim == 3:
            out = oblique(data, fill)
        else:
            out = np.empty((*target.shape, data.shape[3]), dtype=np.float32, order="F")
            for t in range(data.shape[3]):
                oblique(data[..., t], fill, out[..., t])
    return out > 0.5 if mask else out


def _inside(source_shape: Sequence[int], matrix: np.ndarray, target_shape: Sequence[int],
            where: np.ndarray | None = None) -> np.ndarray:
    """Whether each target voxel centre (or each of ``where``) lies in the source's field of view.

    The map is affine, so each source coordinate is a sum of one term per target axis: summed by
    broadcasting (about 20 ms for 192 x 224 x 32) rather than a (voxels, 3) @ (3, 3) product over
    integer indices, which numpy does outside BLAS (about a second).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    i, j, k = (np.arange(int(n), dtype=np.float64) for n in target_shape)
    inside = np.ones(tuple(int(n) for n in target_shape), dtype=bool)
    for a in range(3):
        points = ((matrix[a, 0] * i)[:, None, None] + (matrix[a, 1] * j)[None, :, None]
                  + (matrix[a, 2] * k + matrix[a, 3])[None, None, :])
        inside &= (points >= -0.5) & (points <= float(source_shape[a]) - 0.5)
    return inside if where is None else inside[np.asarray(where, dtype=bool)]


def coverage(source: Grid, target: Grid, where: np.ndarray | None = None) -> float:
    """Share of ``target``'s voxels (or of those in ``where``) whose centre lies in ``source``'s field
    of view: how much of a grid a volume on another grid can fill."""
    inside = _inside(source.shape, index_map(source.affine, target), target.shape, where)
    return float(inside.mean()) if inside.size else 0.0
