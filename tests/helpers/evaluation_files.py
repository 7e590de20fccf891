"""Ground-truth and prediction NIfTI files for the evaluation tests."""
from __future__ import annotations

import nibabel as nib
import numpy as np

SHAPE = (24, 28, 5)
AFFINE = np.array([[0.0, -1.0, 0.0, 90.0],
                   [1.0, 0.0, 0.0, -126.0],
                   [0.0, 0.0, 5.0, -72.0],
                   [0.0, 0.0, 0.0, 1.0]])


def save(array, path, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), affine), str(path))
