"""Raw patient folders for the sampling tests: an oblique, anisotropic grid written as NIfTI, a
preprocessed cohort of them, and a stand-in slice sampler whose output is a fixed function of its
inputs (so that batching, resuming and geometry can be checked without a model)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ldm.data.preprocessing.pipeline import preprocess_cohort
from ldm.data.record import load_index, load_reference
from ldm.inference.volume_sampler import sample_cohort

SOURCE_SHAPE = (36, 30, 7)   # X is cropped to 32, Y padded to 32
SIZE = (32, 32)
T = 15
# oblique, anisotropic (1 x 1 x 5 mm), not centred: any axis mix-up or dropped offset shows
AFFINE = np.array([[0.98, -0.17, 0.0, -20.5],
                   [0.17, 0.98, 0.05, -31.0],
                   [0.0, -0.01, 5.0, 12.25],
                   [0.0, 0.0, 0.0, 1.0]])


def write_raw_patient(folder: Path, seed: int, ctp_only: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(SOURCE_SHAPE[0]), np.arange(SOURCE_SHAPE[1]), indexing="ij")
    brain = ((x - 19) / 13) ** 2 + ((y - 14) / 12) ** 2 < 1
    mask = np.repeat(brain[..., None], SOURCE_SHAPE[2], axis=2)
    mask[..., [0, SOURCE_SHAPE[2] - 1]] = False  # empty-mask slices: skipped, must come back as 0
    ctp = rng.uniform(0, 150, size=SOURCE_SHAPE + (T,)) * mask[..., None]
    maps = {"ctp": ctp, "mask": mask}
    if not ctp_only:
        lesion = np.zeros(SOURCE_SHAPE, bool)
        lesion[15:20, 12:16, 3] = True
        maps.update(dwi=rng.uniform(100, 900, SOURCE_SHAPE) * mask, adc=rng.uniform(400, 3000, SOURCE_SHAPE) * mask,
                    lesion=lesion)
    folder.mkdir(parents=True)
    for name, array in maps.items():
        nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), AFFINE), str(folder / f"{name}.nii.gz"))
    return maps


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A raw split with a full patient and a CTP-only one, preprocessed at 32 x 32."""
    root = tmp_path_factory.mktemp("cohort")
    raw = root / "raw"
    write_raw_patient(raw / "P001", 1)
    write_raw_patient(raw / "P002", 2)
    write_raw_patient(raw / "P003", 3, ctp_only=True)
    npy = root / "npy"
    preprocess_cohort(raw, npy, size=SIZE, progress=False)
    return raw, npy


class FakeSliceSampler:
    """Each output slice is a fixed function of its own CTP and x_T (like DDIM with eta = 0)."""

    def __init__(self):
        self.calls = []

    def __call__(self, ctp, noise):
        x_T = noise((3, ctp.shape[-2] // 4, ctp.shape[-1] // 4))
        self.calls.append(ctp.shape[0])
        up = F.interpolate(x_T[:, :2], size=ctp.shape[-2:], mode="nearest")
        return torch.tanh(0.5 * up + ctp[:, :2])


def run(npy, outdir, sampler=None, **kw):
    records = load_index(npy)
    kw.setdefault("reference", load_reference(npy))
    return sample_cohort(sampler or FakeSliceSampler(), npy, outdir, records, progress=False, **kw)
