"""The MNI152 2009a (nonlinear symmetric, 1 mm) T1, grey- and white-matter templates.

The synthetic cohort's anatomy comes from these files, kept in ``mni152/`` beside this module:
byte-for-byte copies of the ones the nilearn 0.14.1 wheel ships
(``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``). Copied, not
read from an installed nilearn, because nilearn pulls pandas and scikit-learn (about 175 MB) into
the environment for three data files; nothing is downloaded.

Provenance and licence: ``mni152/NOTICE`` (ICBM 2009a Nonlinear Symmetric template, McConnell
Brain Imaging Centre, Montreal Neurological Institute; Fonov et al., NeuroImage 2011). The T1 is
skull-stripped: ``T1 > 0`` is the brain including the ventricles and sulcal CSF.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
# Centre of the template's brain bounding box in MNI mm (x: -72..72, y: -107..73, z: -72..82).
BRAIN_CENTRE_MM = np.array([0.0, -17.0, 5.0])
# Extent of that bounding box in mm: the synthetic field of view must hold it.
BRAIN_EXTENT_MM = np.array([145.0, 181.0, 155.0])
TEMPLATE_DIR = Path(__file__).resolve().parent / "mni152"


def template_dir() -> Path:
    """Folder of the template files (``mni152/`` beside this module); says which file is missing."""
    missing = [name for name in TEMPLATE_FILES.values() if not (TEMPLATE_DIR / name).is_file()]
    if missing:
        raise FileNotFoundError(f"the MNI152 template file {missing[0]} is missing from {TEMPLATE_DIR} "
                                "(it is part of the repository: see mni152/NOTICE)")
    return TEMPLATE_DIR


@dataclass(frozen=True)
class Template:
    """Template channels in one (4, 197, 233, 189) float32 stack (t1, gm, wm, brain) and its affine.

    ``t1`` is scaled so that mean white matter is 1; ``gm``/``wm`` are probabilities in [0, 1];
    ``brain`` is the indicator ``T1 > 0``. After :func:`load_template` with a blur, every channel
    is smoothed the same way (partial volume of the target voxel).
    """

    channels: np.ndarray
    affine: np.ndarray

    names = ("t1", "gm", "wm", "brain")


@lru_cache(maxsize=1)
def _raw_template() -> Template:
    folder = template_dir()
    data = {k: np.asarray(nib.load(str(folder / f)).dataobj, dtype=np.float32) for k, f in TEMPLATE_FILES.items()}
    affine = nib.load(str(folder / TEMPLATE_FILES["t1"])).affine
    gm, wm = data["gm"] / 255.0, data["wm"] / 255.0
    brain = (data["t1"] > 0).astype(np.float32)
    t1 = data["t1"] / max(float(data["t1"][wm > 0.9].mean()), 1e-6)
    return Template(np.stack([t1, gm, wm, brain]), affine)


@lru_cache(maxsize=4)
def load_template(voxel_mm: tuple[float, float, float] = (1.0, 1.0, 5.0)) -> Template:
    """The template smoothed to the partial volume of a ``voxel_mm`` voxel (cached per size).

    A Gaussian with FWHM equal to the voxel edge stands in for the slab/box average of a thick
    slice (5 mm) or a coarse demo voxel; edges of 1 mm or less are not smoothed.
    """
    raw = _raw_template()
    sigma = [max(float(v) ** 2 - 1.0, 0.0) ** 0.5 / 2.355 for v in voxel_mm]
    if not any(s > 0 for s in sigma):
        return raw
    blurred = np.stack([ndimage.gaussian_filter(c, sigma, mode="constant", truncate=3.0) for c in raw.channels])
    return Template(blurred, raw.affine)
