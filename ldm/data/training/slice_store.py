"""Lazily opened, memory-mapped patient arrays of a preprocessed split, with a bounded cache.

Each DataLoader worker opens the ``.npy`` files itself on first use (``mmap_mode="r"``: only the
slices read are paged in). Every open memory map holds a file descriptor, and a paper-scale split
has 571 patients x 4 arrays, more than a default limit of 1024 descriptors per process: so at
most ``max_open`` patients stay open, least recently used closed first. Nothing open is pickled:
a worker started by ``spawn`` begins with an empty cache.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from ldm.data.record import PatientRecord


class SliceStore:
    def __init__(self, records: dict[str, PatientRecord], max_open: int = 64) -> None:
        self.records = records
        self.max_open = max_open
        self._open: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()

    def arrays(self, patient_id: str) -> dict[str, np.ndarray]:
        """{ctp, mask[, mri, lesion]} memory maps of one patient."""
        if patient_id in self._open:
            self._open.move_to_end(patient_id)
            return self._open[patient_id]
        record = self.records[patient_id]
        names = ("ctp", "mask", "mri", "lesion") if record.has_mri else ("ctp", "mask")
        arrays = {}
        for name in names:
            path = Path(record.array_path(name))
            try:
                arrays[name] = np.load(path, mmap_mode="r")
            except FileNotFoundError:
                raise FileNotFoundError(f"patient {patient_id}: {path} is missing; "
                                        "preprocess the split again") from None
            if arrays[name].shape[0] != record.n_slices:
                raise ValueError(f"patient {patient_id}: {path.name} has {arrays[name].shape[0]} slices, "
                                 f"the index says {record.n_slices}; preprocess the split again")
        self._open[patient_id] = arrays
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return arrays

    def __getstate__(self) -> dict:
        return {"records": self.records, "max_open": self.max_open, "_open": OrderedDict()}
