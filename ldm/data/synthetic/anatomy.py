"""One synthetic patient's brain anatomy: the MNI152 template warped into an acquisition grid.

A patient voxel ``ijk`` maps to head coordinates ``h = v * (ijk - centre)`` (mm, the grid centred
on the brain), then through the patient's own head (rotation, anisotropic scale, shift and a
small smooth elastic displacement) to MNI coordinates, where the blurred template is sampled
(trilinear). The NIfTI affine the generator writes is ``O @ V``: ``V`` the voxel-to-head map and
``O`` a random rigid placement of the head in the scanner (oblique rotation, non-zero origin), so
the files carry a realistic non-identity affine while slices stay axial to the head.

Voxel size: 1 x 1 x 5 mm whenever the requested in-plane size holds the brain (paper scale
192 x 224). Smaller demo grids (e.g. 64 x 64) cannot hold a 145 x 181 mm brain at 1 mm, so their
in-plane voxel grows (3.5 mm at 64 x 64; 6.75 mm at 32 x 32) and the affine records the true size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ldm.data.synthetic.mni_template import BRAIN_CENTRE_MM, BRAIN_EXTENT_MM, load_template

SLICE_THICKNESS_MM = 5.0
# Fraction of the field of view the template brain may fill, leaving room for head variation.
_FILL_FRACTION = 0.85


def inplane_voxel_mm(size: tuple[int, int]) -> float:
    """1 mm when the brain fits ``size`` (X, Y) at 1 mm, else the smallest 0.25 mm step that fits."""
    need = max(BRAIN_EXTENT_MM[0] / (_FILL_FRACTION * size[0]), BRAIN_EXTENT_MM[1] / (_FILL_FRACTION * size[1]))
    return max(1.0, math.ceil(need * 4.0) / 4.0)


def default_n_slices() -> int:
    """Axial 5 mm slices covering the template brain (155 mm) plus a little margin."""
    return int(math.ceil(BRAIN_EXTENT_MM[2] / SLICE_THICKNESS_MM)) + 1


def rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation about x, then y, then z (degrees), as a 3 x 3 matrix."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class HeadPose:
    """The patient's head relative to the template: ``h = R diag(scale) (m - c) + shift`` (mm)."""

    rotation_deg: np.ndarray
    scale: np.ndarray
    shift_mm: np.ndarray
    warp_waves: np.ndarray  # (K, 3) wave vectors (rad/mm) of the elastic displacement
    warp_phases: np.ndarray  # (K,)
    warp_amplitudes: np.ndarray  # (K, 3) displacement (mm) per wave and axis

    @classmethod
    def sample(cls, rng: np.random.Generator, vary: bool = True) -> "HeadPose":
        if not vary:
            return cls(np.zeros(3), np.ones(3), np.zeros(3), np.zeros((0, 3)), np.zeros(0), np.zeros((0, 3)))
        n_waves = 6
        directions = rng.normal(size=(n_waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wavelengths = rng.uniform(40.0, 110.0, size=(n_waves, 1))
        return cls(rotation_deg=rng.uniform([-4, -5, -8], [4, 5, 8]),
                   scale=rng.uniform(0.92, 1.06) * rng.uniform(0.97, 1.03, size=3),
                   shift_mm=rng.normal(0.0, [3.0, 3.0, 5.0]),
                   warp_waves=2 * np.pi * directions / wavelengths,
                   warp_phases=rng.uniform(0, 2 * np.pi, size=n_waves),
                   warp_amplitudes=rng.normal(0.0, 1.2, size=(n_waves, 3)))


@dataclass
class Anatomy:
    """Tissue of one patient on its acquisition grid (all arrays (X, Y, Z))."""

    affine: np.ndarray  # voxel -> scanner mm, written to every NIfTI of the patient
    voxel_mm: tuple[float, float, float]
    mni: np.ndarray  # (3, X, Y, Z) float32: MNI mm coordinates of each voxel centre
    gm: np.ndarray  # tissue fractions inside the brain, gm + wm + csf = 1 there, 0 outside
    wm: np.ndarray
    csf: np.ndarray
    t1: np.ndarray  # template T1 (white matter = 1), for texture
    brain: np.ndarray  # bool brain mask

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.brain.shape  # type: ignore[return-value]


def scanner_placement(rng: np.random.Generator) -> np.ndarray:
    """A random rigid 4 x 4 placement of the head in scanner space: oblique, origin off-centre."""
    placement = np.eye(4)
    placement[:3, :3] = rotation_matrix(rng.uniform([-12, -8, -10], [12, 8, 10]))
    placement[:3, 3] = rng.uniform([-15, -35, -25], [15, 5, 45])
    return placement


def build_anatomy(rng: np.random.Generator, shape: tuple[int, int, int], voxel_xy_mm: float,
                  vary: bool = True) -> Anatomy:
    """Warp the template into a grid of ``shape`` (X, Y, Z) with voxels of ``voxel_xy_mm`` x 5 mm."""
    voxel = np.array([voxel_xy_mm, voxel_xy_mm, SLICE_THICKNESS_MM])
    template = load_template(tuple(float(v) for v in voxel))
    pose = HeadPose.sample(rng, vary)

    centre = (np.asarray(shape) - 1) / 2.0
    voxel_to_head = np.eye(4)
    voxel_to_head[:3, :3] = np.diag(voxel)
    voxel_to_head[:3, 3] = -voxel * centre
    affine = scanner_placement(rng) @ voxel_to_head

    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    head = (grid - centre.astype(np.float32)[:, None, None, None]) * voxel.astype(np.float32)[:, None, None, None]
    # Inverse pose: m = c + diag(1/s) R^T (h - shift) + elastic(h)
    head_to_mni = (np.diag(1.0 / pose.scale) @ rotation_matrix(pose.rotation_deg).T).astype(np.float32)
    shifted = head - pose.shift_mm.astype(np.float32)[:, None, None, None]
    mni = np.einsum("ij,j...->i...", head_to_mni, shifted) + BRAIN_CENTRE_MM.astype(np.float32)[:, None, None, None]
    for wave, phase, amplitude in zip(pose.warp_waves, pose.warp_phases, pose.warp_amplitudes):
        field = np.cos(np.einsum("i,i...->...", wave.astype(np.float32), head) + np.float32(phase))
        mni += amplitude.astype(np.float32)[:, None, None, None] * field

    mni_to_index = np.linalg.inv(template.affine).astype(np.float32)
    index = np.einsum("ij,j...->i...", mni_to_index[:3, :3], mni) + mni_to_index[:3, 3, None, None, None]
    sampled = [ndimage.map_coordinates(channel, index, order=1, mode="constant", cval=0.0, prefilter=False)
               for channel in template.channels]
    t1, gm, wm, brain_fraction = sampled

    brain = brain_fraction > 0.5
    gm = np.clip(gm, 0.0, 1.0)
    wm = np.clip(wm, 0.0, 1.0)
    tissue = gm + wm
    # Inside the mask the voxel is all brain: tissue where the template says so, CSF for the rest.
    over = np.maximum(tissue, 1.0)
    gm = np.where(brain, gm / over, 0.0).astype(np.float32)
    wm = np.where(brain, wm / over, 0.0).astype(np.float32)
    csf = np.where(brain, 1.0 - gm - wm, 0.0).astype(np.float32)
    return Anatomy(affine=affine, voxel_mm=tuple(float(v) for v in voxel), mni=mni, gm=gm, wm=wm, csf=csf,
                   t1=t1.astype(np.float32), brain=brain)
