"""One synthetic head seen twice: a CTP and an MRI (DWI/ADC) on their own grids, with a known
misregistration, for tests and benchmarks of CTP-to-DWI registration (registration.py).

The anatomy is the MNI152 template (mni_template.py) scaled by ``scale`` about the brain centre
(1: a real brain; < 1 a smaller one, so that a small test volume at clinical voxel sizes holds a
whole brain) with one lesion (lesion_model.py); each modality samples it at its own voxel centres
with the template blurred to its voxel (partial volume). The CTP (perfusion.py, then a skull,
scalp and air around the brain: head.py) is unstripped, like a clinical one; DWI/ADC come from
mri_signal.py. The CT header is wrong by the rigid transform ``T``: the CT voxel the header puts at
``x`` truly images the point ``T(x)`` of the MRI's world. A registration that maps DWI world points
into CT world points therefore has to find ``T^-1``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ldm.data.synthetic.anatomy import rotation_matrix
from ldm.data.synthetic.skull import add_skull
from ldm.data.synthetic.lesion import lesion_fields, sample_lesion
from ldm.data.synthetic.mni_template import BRAIN_CENTRE_MM, load_template
from ldm.data.synthetic.mri_signal import synthesize_dwi_adc
from ldm.data.synthetic.perfusion import acquisition_times, synthesize_ctp


@dataclass
class RegistrationPair:
    ctp: np.ndarray  # (X, Y, Z, T) int16 HU, unstripped
    ctp_affine: np.ndarray  # what the CT header says
    ctp_brain: np.ndarray  # truth on the CT grid (bool)
    ctp_lesion: np.ndarray
    frame_times: np.ndarray  # s
    dwi: np.ndarray  # float32
    adc: np.ndarray
    mri_affine: np.ndarray
    mri_brain: np.ndarray  # truth on the MRI grid (bool)
    mri_lesion: np.ndarray
    true_transform: np.ndarray  # 4 x 4 T (RAS mm): CT header world -> MRI world


def rigid_matrix(rotation_deg: Sequence[float], shift_mm: Sequence[float]) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = rotation_matrix(np.asarray(rotation_deg, dtype=float))
    matrix[:3, 3] = np.asarray(shift_mm, dtype=float)
    return matrix


def centred_affine(shape: Sequence[int], voxel_mm: Sequence[float]) -> np.ndarray:
    """Axial grid of ``voxel_mm`` voxels centred on the world origin."""
    affine = np.diag([*map(float, voxel_mm), 1.0])
    affine[:3, 3] = -np.asarray(voxel_mm, dtype=float) * (np.asarray(shape) - 1) / 2.0
    return affine


def _tissue(shape: Sequence[int], voxel_to_world: np.ndarray, voxel_mm: Sequence[float], scale: float):
    """Template channels (t1, gm, wm, brain) and MNI coordinates at the grid's voxel centres."""
    template = load_template(tuple(round(float(v) / scale, 3) for v in voxel_mm))
    index = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = voxel_to_world[:3, :3].astype(np.float32) @ index + voxel_to_world[:3, 3, None].astype(np.float32)
    mni = world / np.float32(scale) + BRAIN_CENTRE_MM.astype(np.float32)[:, None]
    to_index = np.linalg.inv(template.affine).astype(np.float32)
    coords = to_index[:3, :3] @ mni + to_index[:3, 3, None]
    channels = [ndimage.map_coordinates(c, coords, order=1, mode="constant", cval=0.0, prefilter=False).reshape(shape)
                for c in template.channels]
    return channels, mni.reshape(3, *shape)


def _modality_fractions(channels):
    _, gm, wm, brain_fraction = channels
    brain = brain_fraction > 0.5
    gm, wm = np.clip(gm, 0, 1), np.clip(wm, 0, 1)
    over = np.maximum(gm + wm, 1.0)
    gm = np.where(brain, gm / over, 0.0).astype(np.float32)
    wm = np.where(brain, wm / over, 0.0).astype(np.float32)
    return brain, {"gm": gm, "wm": wm, "csf": np.where(brain, 1.0 - gm - wm, 0.0).astype(np.float32)}


def make_registration_pair(seed: int = 0, ct_shape: Sequence[int] = (128, 160, 64),
                           ct_voxel_mm: Sequence[float] = (0.5, 0.5, 1.0), mri_shape: Sequence[int] = (72, 88, 14),
                           mri_voxel_mm: Sequence[float] = (1.0, 1.0, 5.0),
                           rotation_deg: Sequence[float] = (3.0, -4.0, 6.0),
                           shift_mm: Sequence[float] = (4.0, -3.0, 3.0), scale: float = 0.4, n_frames: int = 6,
                           lesion_ml: float = 60.0) -> RegistrationPair:
    """A pair as the module doc describes (``lesion_ml`` in template space: scaled by scale^3).

    The default rotation is 7.8 degrees about an oblique axis and the shift 5.8 mm.
    """
    rng = np.random.default_rng(seed)
    true = rigid_matrix(rotation_deg, shift_mm)
    lesion = sample_lesion(rng, lesion_ml, "MCA deep")
    mri_affine = centred_affine(mri_shape, mri_voxel_mm)
    ctp_affine = centred_affine(ct_shape, ct_voxel_mm)

    channels, mni = _tissue(ct_shape, true @ ctp_affine, ct_voxel_mm, scale)
    ct_brain, fractions = _modality_fractions(channels)
    core, penumbra = lesion_fields([lesion], mni)
    core, penumbra = core * ct_brain, penumbra * ct_brain
    zeros = np.zeros(ct_brain.shape, dtype=np.float32)
    ctp = synthesize_ctp(rng, {"artery": zeros, "vein": zeros, **fractions}, core, penumbra, ct_brain, n_frames)
    ctp = add_skull(ctp, ct_brain, ct_voxel_mm, rng)
    ct_lesion = (core > 0.5) & ct_brain

    channels, mni = _tissue(mri_shape, mri_affine, mri_voxel_mm, scale)
    mri_brain, fractions = _modality_fractions(channels)
    core, _ = lesion_fields([lesion], mni)
    core = core * mri_brain
    dwi, adc = synthesize_dwi_adc(rng, fractions, core, mri_brain, mni)
    return RegistrationPair(ctp, ctp_affine, ct_brain, ct_lesion, acquisition_times(n_frames), dwi, adc,
                            mri_affine, mri_brain, (core > 0.5) & mri_brain, true)
