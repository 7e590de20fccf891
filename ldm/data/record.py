"""What preprocessing records per patient (``index.json``) and per cohort (``reference.json``).

Layout of a preprocessed split (``python -m ldm.data.preprocessing --output_dir OUT``)::

    OUT/index.json                 {"version", "size", "spacing", "n_timepoints", "slice_rule",
                                    "reference", "patients": {id: record}}
    OUT/reference.json             cohort reference constants (see CohortReference)
    OUT/<patient_id>/ctp.npy       (S, T, H, W) float16, CTP in HU / 200 (unclipped)
    OUT/<patient_id>/mri.npy       (S, 2, H, W) float16, [DWI, ADC] (negatives 0) through the
                                   intensity window, (x - lo) / (hi - lo) (unclipped)
    OUT/<patient_id>/mask.npy      (S, H, W) uint8 brain mask
    OUT/<patient_id>/lesion.npy    (S, H, W) uint8 lesion mask
    OUT/<patient_id>/record.json   the patient's record (the index is rebuilt from these if lost)

``S`` runs over the kept axial slices ``slice_indices`` (z of the model grid); ``H`` is the grid's
first axis (X) and ``W`` its second (Y), cropped/padded to ``size``. The model grid is the source
grid (the DWI's, or the CTP's for a CTP-only patient) resampled to the preprocessing spacing
(ldm/data/transforms/resampling.py); when the source already is at that spacing the two are the same grid.
CTP-only patients have no
``mri.npy``/``lesion.npy``. Images are stored unmasked and unclipped: datasets augment them
jointly with the masks, then clip to [0, 1], mask and map to [-1, 1] (the reference's order).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ldm.data.transforms.intensity_window import IntensityWindow

MODALITIES = ("dwi", "adc")  # the MRI channels, in order (docs/data.md)
MASKS = ("mask", "lesion")  # the binary maps of a patient: brain and ischemic core
INDEX_FILE = "index.json"
REFERENCE_FILE = "reference.json"
RECORD_FILE = "record.json"
# 3: spacing harmonisation and CTP frame resampling (the model grid and the time axis are recorded);
# 2: unclipped storage and the slice rule (version 1 stored clipped maps)
INDEX_VERSION = 3


@dataclass
class PatientRecord:
    """Everything needed to read a patient's slices and to put them back into source space.

    ``crop[a] = (start, stop)`` is the source index range kept on in-plane axis ``a`` (X, then Y)
    and ``pad[a] = (before, after)`` the background added around it, so that on each axis
    ``stop - start + before + after == size[a]``. ``dwi_range``/``adc_range`` are the (lo, hi) of
    the linear map of each to [0, 1], set by the intensity ``window`` (``IntensityWindow.to_json``;
    ldm/data/transforms/intensity_window.py) (None for a CTP-only patient); ``ctp_range`` is (0, 200) HU. ``lesion_voxels`` counts lesion voxels per kept slice. ``data_dir`` is filled in
    by :func:`load_index` (absolute folder of the patient's arrays), never stored.

    Geometry: ``source_shape``/``affine``/``zooms``/``qform`` are the source grid, where outputs
    are written; ``grid_shape``/``grid_affine`` the model grid the slices, ``crop`` and
    ``slice_indices`` refer to (None: the source grid itself, nothing was resampled). Time:
    ``n_timepoints`` frames are stored, resampled from ``source_timepoints`` acquired ones at
    ``sample_times`` (None when left as acquired); ``frame_times`` are the acquisition times and
    ``timepoint_source`` says where they came from (ldm/data/transforms/timepoints.py).
    """

    patient_id: str
    source_shape: tuple[int, int, int]
    affine: np.ndarray
    zooms: tuple[float, float, float]
    size: tuple[int, int]
    slice_indices: list[int]
    crop: tuple[tuple[int, int], tuple[int, int]]
    pad: tuple[tuple[int, int], tuple[int, int]]
    n_timepoints: int
    has_mri: bool
    has_lesion: bool
    dwi_range: tuple[float, float] | None
    adc_range: tuple[float, float] | None
    ctp_range: tuple[float, float] = (0.0, 200.0)
    lesion_voxels: list[int] = field(default_factory=list)
    mask_source: str = "given"  # or "derived from ctp"
    slice_rule: str = "reference"  # which slices were kept (ldm/data/transforms/slice_selection.py)
    qform: np.ndarray | None = None
    qform_code: int = 1
    sform_code: int = 1
    source_dir: str = ""
    grid_shape: tuple[int, int, int] | None = None
    grid_affine: np.ndarray | None = None
    spacing: tuple[float, float, float] | None = None  # the model grid's voxel size (mm)
    ctp_resampled: bool = False  # the CTP came on another grid than the patient's
    source_timepoints: int | None = None
    timepoint_source: str = "as acquired"
    frame_times: list[float] | None = None
    sample_times: list[float] | None = None
    window: dict | None = None  # None: recorded before windows were (the reference's percentile window)
    data_dir: str | None = None
    # the plausibility measurements of the raw maps and what was corrected (validation.py, docs/data.md)
    checks: dict = field(default_factory=dict)

    @property
    def resampled(self) -> bool:
        """Whether the model grid differs from the source grid (outputs are resampled back)."""
        return self.grid_shape is not None

    @property
    def model_shape(self) -> tuple[int, int, int]:
        return tuple(self.grid_shape) if self.grid_shape is not None else tuple(self.source_shape)

    @property
    def model_affine(self) -> np.ndarray:
        return self.grid_affine if self.grid_affine is not None else self.affine

    @property
    def n_slices(self) -> int:
        return len(self.slice_indices)

    @property
    def intensity_window(self) -> IntensityWindow:
        return IntensityWindow.from_json(self.window)

    def intensity_range(self, modality: str) -> tuple[float, float] | None:
        if modality not in ("dwi", "adc", "ctp"):
            raise ValueError(f"unknown modality {modality!r}; expected 'dwi', 'adc' or 'ctp'")
        return getattr(self, f"{modality}_range")

    def array_path(self, name: str) -> Path:
        if self.data_dir is None:
            raise ValueError(f"patient {self.patient_id}: record has no data_dir (load it with load_index)")
        return Path(self.data_dir) / f"{name}.npy"

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("data_dir")
        out["affine"] = np.asarray(self.affine, dtype=float).tolist()
        out["qform"] = None if self.qform is None else np.asarray(self.qform, dtype=float).tolist()
        out["grid_affine"] = None if self.grid_affine is None else np.asarray(self.grid_affine, dtype=float).tolist()
        return out

    @classmethod
    def from_json(cls, data: dict, data_dir: str | Path | None = None) -> "PatientRecord":
        data = dict(data)
        data.pop("data_dir", None)
        pair = lambda v: None if v is None else (float(v[0]), float(v[1]))  # noqa: E731
        return cls(**{**data,
                      "source_shape": tuple(int(v) for v in data["source_shape"]),
                      "affine": np.asarray(data["affine"], dtype=np.float64),
                      "zooms": tuple(float(v) for v in data["zooms"]),
                      "size": tuple(int(v) for v in data["size"]),
                      "slice_indices": [int(v) for v in data["slice_indices"]],
                      "crop": tuple((int(a), int(b)) for a, b in data["crop"]),
                      "pad": tuple((int(a), int(b)) for a, b in data["pad"]),
                      "dwi_range": pair(data.get("dwi_range")), "adc_range": pair(data.get("adc_range")),
                      "ctp_range": pair(data.get("ctp_range", (0.0, 200.0))),
                      "qform": None if data.get("qform") is None else np.asarray(data["qform"], dtype=np.float64),
                      "grid_shape": None if data.get("grid_shape") is None
                      else tuple(int(v) for v in data["grid_shape"]),
                      "grid_affine": None if data.get("grid_affine") is None
                      else np.asarray(data["grid_affine"], dtype=np.float64),
                      "spacing": None if data.get("spacing") is None else tuple(float(v) for v in data["spacing"])},
                   data_dir=None if data_dir is None else str(data_dir))


@dataclass
class CohortReference:
    """Median per-patient intensity constants of a training cohort, under its intensity window.

    They put a synthesised DWI/ADC of a CTP-only patient (who has no MRI of its own to take
    a window from) back into physical units.
    """

    dwi_range: tuple[float, float]
    adc_range: tuple[float, float]
    n_patients: int
    source: str = ""
    window: IntensityWindow = field(default_factory=lambda: IntensityWindow(name="reference_percentile"))

    def intensity_range(self, modality: str) -> tuple[float, float]:
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; expected 'dwi' or 'adc'")
        return getattr(self, f"{modality}_range")

    def to_json(self) -> dict:
        return {"dwi_range": list(self.dwi_range), "adc_range": list(self.adc_range), "n_patients": self.n_patients,
                "source": self.source, "window": self.window.to_json()}

    @classmethod
    def from_json(cls, data: dict) -> "CohortReference":
        return cls(dwi_range=(float(data["dwi_range"][0]), float(data["dwi_range"][1])),
                   adc_range=(float(data["adc_range"][0]), float(data["adc_range"][1])),
                   n_patients=int(data["n_patients"]), source=str(data.get("source", "")),
                   window=IntensityWindow.from_json(data.get("window")))

    @classmethod
    def from_records(cls, records: list[PatientRecord], source: str = "",
                     window: IntensityWindow | None = None) -> "CohortReference | None":
        """Medians over the patients with MRI (preprocessed under ``window``); None when there are none."""
        with_mri = [r for r in records if r.has_mri and r.dwi_range is not None and r.adc_range is not None]
        if not with_mri:
            return None
        median = lambda values: float(np.median(np.asarray(values, dtype=np.float64)))  # noqa: E731
        return cls(dwi_range=(median([r.dwi_range[0] for r in with_mri]), median([r.dwi_range[1] for r in with_mri])),
                   adc_range=(median([r.adc_range[0] for r in with_mri]), median([r.adc_range[1] for r in with_mri])),
                   n_patients=len(with_mri), source=source,
                   window=window if window is not None else IntensityWindow(name="reference_percentile"))


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON ({e})") from e


def load_index(root: str | Path) -> dict[str, PatientRecord]:
    """Records of a preprocessed split, by patient id (sorted), with ``data_dir`` set."""
    root = Path(root)
    path = root / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {INDEX_FILE} in {str(root)!r}: run python -m ldm.data.preprocessing "
                                f"--input_dir <raw split> --output_dir {root} first")
    index = _read_json(path, "index")
    if index.get("version") != INDEX_VERSION:
        raise ValueError(f"{str(path)!r} has index version {index.get('version')!r}, expected {INDEX_VERSION}: "
                         "preprocess the split again")
    patients = sorted(index["patients"].items())
    return {pid: PatientRecord.from_json(data, (root / pid).resolve()) for pid, data in patients}


def load_reference(path: str | Path) -> CohortReference:
    """A cohort reference from a preprocessed training split's folder or its ``reference.json``."""
    path = Path(path)
    if path.is_dir():
        path = path / REFERENCE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no cohort reference at {str(path)!r}: preprocess the training split first "
                                "(it writes reference.json) and pass its output folder")
    return CohortReference.from_json(_read_json(path, "cohort reference"))


def index_settings(root: str | Path) -> dict:
    """The split-level settings of a preprocessed split's ``index.json``: size, spacing (None for
    mixed native grids), n_timepoints, slice_rule, window (an IntensityWindow)."""
    path = Path(root) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {INDEX_FILE} in {str(root)!r}")
    index = _read_json(path, "index")
    if index.get("version") != INDEX_VERSION:
        raise ValueError(f"{str(path)!r} has index version {index.get('version')!r}, expected {INDEX_VERSION}: "
                         "preprocess the split again")
    spacing = index.get("spacing")
    return {"size": [int(v) for v in index["size"]],
            "spacing": None if spacing is None else [float(v) for v in spacing],
            "n_timepoints": int(index["n_timepoints"]), "slice_rule": str(index.get("slice_rule", "reference")),
            "window": IntensityWindow.from_json(index.get("window"))}
