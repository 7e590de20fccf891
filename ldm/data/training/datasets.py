"""Slice datasets over a preprocessed split (``ldm/data/preprocessing/pipeline.py`` output).

``CTPMRISlices`` feeds the LDM: CTP condition, MRI target, brain and lesion masks. ``MRISlices``
feeds the VQGAN: the MRI pair and the brain mask. Both read the memory-mapped float16 arrays
lazily in each DataLoader worker, augment (``augment``, training only: ``true`` for the reference's
transforms or a mapping of :class:`SliceAugmentation` parameters) all maps of a slice jointly on
their scaled but unclipped values, then clip to [0, 1], mask and map to [-1, 1] with the
background exactly -1 (the reference's order, docs/data.md). ``window`` names the intensity window
the config expects (ldm/data/transforms/intensity_window.py); a split preprocessed under another window is
refused, naming the key and the split's index.json (None: whatever window the split was made with).

Item tensors are float32: ``ctp`` (T, H, W), ``mri`` (2, H, W) = [DWI, ADC], ``mask`` and
``lesion`` (1, H, W) in {0, 1}; H runs along the source volume's first axis (X), W along its
second (Y); ``slice_index`` is the source z index.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ldm.data.training.augmentation import SliceAugmentation
from ldm.data.transforms.intensity_window import IntensityWindow, WindowError
from ldm.data.transforms.normalization import to_model_range
from ldm.data.record import INDEX_FILE, PatientRecord, index_settings, load_index
from ldm.data.training.slice_store import SliceStore
from ldm.util import ConfigError


def _select(records: dict[str, PatientRecord], patients: Iterable[str] | None, root: Path) -> dict[str, PatientRecord]:
    if patients is None:
        return records
    patients = [patients] if isinstance(patients, str) else [str(p) for p in patients]
    unknown = [p for p in patients if p not in records]
    if unknown:
        raise ValueError(f"patient {unknown[0]} is not in the preprocessed split {str(root)!r} "
                         f"({len(records)} patients in its index.json)")
    return {p: records[p] for p in patients}


def check_window(data_root: Path, window: "str | Mapping[str, Any] | None") -> IntensityWindow:
    """The split's intensity window; ConfigError when the config's ``window`` differs from it."""
    made_with = index_settings(data_root)["window"]
    if window is None:
        return made_with
    try:
        expected = IntensityWindow.from_config(window)
    except WindowError as e:
        raise ConfigError(f"data window: {e}") from None
    if expected != made_with:
        raise ConfigError(f"window: the config asks for {expected.describe()}, but {str(data_root / INDEX_FILE)!r} "
                          f"was preprocessed with {made_with.describe()}: preprocess it again with {expected.cli()}, "
                          f"or set the dataset's window to {made_with.to_json()}")
    return expected


def _evenly_spaced(items: list, limit: int | None) -> list:
    """At most ``limit`` items spread over the whole list (every patient keeps a share)."""
    if limit is None or len(items) <= limit:
        return items
    if limit < 1:
        raise ValueError(f"max_slices must be at least 1, got {limit}")
    picks = np.unique(np.linspace(0, len(items) - 1, int(limit)).round().astype(int))
    return [items[i] for i in picks]


class _PreprocessedSlices(Dataset):
    """Shared index building, lazy array access and augmentation of the two datasets."""

    def __init__(self, data_root: str | Path, augment: bool | Mapping[str, Any], patients: Iterable[str] | None,
                 max_slices: int | None, mri_only: bool, window: "str | Mapping[str, Any] | None" = None) -> None:
        self.data_root = Path(data_root)
        records = _select(load_index(self.data_root), patients, self.data_root)
        self.window = check_window(self.data_root, window)
        if mri_only:
            records = {p: r for p, r in records.items() if r.has_mri}
        if not records:
            raise ValueError(f"the preprocessed split {str(self.data_root)!r} has no "
                             f"{'patient with MRI' if mri_only else 'patient'} to read"
                             f"{'' if patients is None else ' among the patients asked for'}")
        sizes = {tuple(r.size) for r in records.values()}
        if len(sizes) != 1:
            raise ValueError(f"{str(self.data_root)!r} mixes in-plane sizes {sorted(sizes)}: preprocess it again")
        self.size: tuple[int, int] = sizes.pop()
        self.records = records
        self.store = SliceStore(records)
        self.augmentation = SliceAugmentation.from_config(augment)
        self.slices = _evenly_spaced([(p, i) for p, r in records.items() for i in range(r.n_slices)], max_slices)

    def __len__(self) -> int:
        return len(self.slices)

    def _read(self, patient_id: str, position: int, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        arrays = self.store.arrays(patient_id)
        out = {}
        for name in names:
            # copy the slice out of the memory map, then widen in torch (much faster than NumPy's float16)
            slice_ = torch.from_numpy(np.array(arrays[name][position])).float()
            if not bool(torch.isfinite(slice_).all()):  # one NaN would turn every weight into NaN
                z = self.records[patient_id].slice_indices[position]
                raise ValueError(f"patient {patient_id}: {name}.npy holds NaN/inf values in slice {z} "
                                 f"({self.data_root / patient_id}); preprocess the patient again")
            out[name] = slice_ if slice_.ndim == 3 else slice_[None]
        return out

    def _augment(self, images: list[torch.Tensor], masks: list[torch.Tensor]) -> tuple[list, list]:
        if self.augmentation is None:
            return images, masks
        image_split, mask_split = [t.shape[0] for t in images], [t.shape[0] for t in masks]
        warped_images, warped_masks = self.augmentation(torch.cat(images), torch.cat(masks))
        return list(warped_images.split(image_split)), list(warped_masks.split(mask_split))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.data_root)!r}: {len(self.records)} patients, {len(self)} slices, "
                f"{self.size[0]}x{self.size[1]}, augment={self.augmentation is not None})")


class CTPMRISlices(_PreprocessedSlices):
    """LDM data: {ctp (T,H,W), mri (2,H,W), mask (1,H,W), lesion (1,H,W), patient_id, slice_index, has_mri}.

    ``lesion_oversample=k`` lists every slice with lesion k times (k >= 1). ``patients`` restricts
    to those ids; ``max_slices`` keeps that many slices spread evenly over the split (before
    oversampling). A CTP-only patient (no MRI, e.g. for sampling) gives ``mri`` all -1, ``lesion``
    0 and ``has_mri`` False; ``require_mri=True`` leaves such patients out (use it for training).
    """

    def __init__(self, data_root: str | Path, augment: bool | Mapping[str, Any] = False, lesion_oversample: int = 1,
                 patients: Iterable[str] | None = None, max_slices: int | None = None,
                 require_mri: bool = False, window: "str | Mapping[str, Any] | None" = None) -> None:
        super().__init__(data_root, augment, patients, max_slices, mri_only=require_mri, window=window)
        if int(lesion_oversample) != lesion_oversample or lesion_oversample < 1:
            raise ValueError(f"lesion_oversample must be a whole number >= 1, got {lesion_oversample!r}")
        self.lesion_oversample = int(lesion_oversample)
        if self.lesion_oversample > 1:
            extra = [(p, i) for p, i in self.slices
                     if self.records[p].lesion_voxels and self.records[p].lesion_voxels[i] > 0]
            self.slices = self.slices + extra * (self.lesion_oversample - 1)
        timepoints = {r.n_timepoints for r in self.records.values()}
        if len(timepoints) != 1:
            raise ValueError(f"{str(self.data_root)!r} mixes CTP time points {sorted(timepoints)}")
        self.n_timepoints: int = timepoints.pop()
        ctp_only = [p for p, r in self.records.items() if not r.has_mri]
        if self.augmentation is not None and ctp_only:
            warnings.warn(f"{len(ctp_only)} CTP-only patients (e.g. {ctp_only[0]}) in augmented (training) data: "
                          f"their MRI target is all background; pass require_mri=True to leave them out",
                          stacklevel=2)

    def __getitem__(self, index: int) -> dict:
        patient_id, position = self.slices[index]
        record = self.records[patient_id]
        if record.has_mri:
            x = self._read(patient_id, position, ("ctp", "mri", "mask", "lesion"))
            (ctp, mri), (mask, lesion) = self._augment([x["ctp"], x["mri"]], [x["mask"], x["lesion"]])
        else:
            x = self._read(patient_id, position, ("ctp", "mask"))
            (ctp,), (mask,) = self._augment([x["ctp"]], [x["mask"]])
            mri = torch.zeros((2, *self.size), dtype=torch.float32)
            lesion = torch.zeros((1, *self.size), dtype=torch.float32)
        mask = (mask > 0.5).float()
        return {"ctp": to_model_range(ctp, mask), "mri": to_model_range(mri, mask), "mask": mask,
                "lesion": (lesion > 0.5).float() * mask, "patient_id": patient_id,
                "slice_index": int(record.slice_indices[position]), "has_mri": bool(record.has_mri)}


class MRISlices(_PreprocessedSlices):
    """VQGAN data: {mri (2,H,W) [DWI, ADC] in [-1, 1], mask (1,H,W), lesion (1,H,W)}; CTP-only
    patients are left out. The lesion mask serves a lesion-weighted reconstruction loss."""

    def __init__(self, data_root: str | Path, augment: bool | Mapping[str, Any] = False,
                 patients: Iterable[str] | None = None,
                 max_slices: int | None = None, window: "str | Mapping[str, Any] | None" = None) -> None:
        super().__init__(data_root, augment, patients, max_slices, mri_only=True, window=window)

    def __getitem__(self, index: int) -> dict:
        patient_id, position = self.slices[index]
        x = self._read(patient_id, position, ("mri", "mask", "lesion"))
        (mri,), (mask, lesion) = self._augment([x["mri"]], [x["mask"], x["lesion"]])
        mask = (mask > 0.5).float()
        return {"mri": to_model_range(mri, mask), "mask": mask, "lesion": (lesion > 0.5).float() * mask}
