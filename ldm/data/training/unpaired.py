"""Unpaired training slices for CycleGAN (the paper's Table 1 baseline is trained without the pairing).

Each item is a CTPMRISlices item whose ``ctp`` (and brain ``mask``) come from slice i and whose
``mri`` and ``lesion`` come from a slice drawn uniformly at random from the same split, independently
per item and per epoch, as the CycleGAN release's unaligned data set draws its B images. Both slices
are augmented separately (each with the reference transforms). The drawn slice is named in
``mri_patient_id`` and ``mri_slice_index``. CTP-only patients are left out (they have no MRI to draw).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ldm.data.training.datasets import CTPMRISlices


class UnpairedCTPMRISlices(CTPMRISlices):
    """{ctp, mask from slice i; mri, lesion from a random slice j; patient_id, slice_index of i;
    mri_patient_id, mri_slice_index of j; has_mri True}. The draw uses torch's generator, which
    Lightning seeds per DataLoader worker (``seed_everything(workers=True)`` in main.py)."""

    def __init__(self, data_root: str | Path, augment: bool | Mapping[str, Any] = False,
                 patients: Iterable[str] | None = None, max_slices: int | None = None,
                 window: "str | Mapping[str, Any] | None" = None) -> None:
        super().__init__(data_root, augment=augment, patients=patients, max_slices=max_slices, require_mri=True,
                         window=window)

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        other = super().__getitem__(int(torch.randint(len(self), ())))
        item.update(mri=other["mri"], lesion=other["lesion"], mri_patient_id=other["patient_id"],
                    mri_slice_index=other["slice_index"])
        return item
