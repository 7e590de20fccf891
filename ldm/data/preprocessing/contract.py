"""What a training run carries for inference: the data it expects and the cohort intensity reference.

When a run trains on a preprocessed split, its folder gets (written atomically by SetupCallback)

    <run>/reference.json       the training split's cohort reference (record.CohortReference)
    <run>/data_contract.json   {"spacing", "size", "n_timepoints", "slice_rule", "window",
                                "index_version", "train_data_root", "reference"}

so that ``sample_LDM.py -r <run> --data <raw CTP-only folder>`` works on another machine with
nothing but the run: the raw data is preprocessed at the run's spacing, size and frame count, and
CTP-only patients get their DWI/ADC scale from the run's reference. A preprocessed split whose
spacing, size, frame count or intensity window differs from the contract is refused, naming both
values.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ldm.data.transforms.intensity_window import IntensityWindow
from ldm.data.record import INDEX_FILE, INDEX_VERSION, REFERENCE_FILE, CohortReference, index_settings, load_reference
from ldm.data.transforms.resampling import SPACING_TOLERANCE, at_spacing, format_spacing
from ldm.io import atomic_write_json

CONTRACT_FILE = "data_contract.json"


@dataclass
class DataContract:
    size: tuple[int, int]
    spacing: tuple[float, float, float] | None  # None: trained on native grids of mixed spacing
    n_timepoints: int
    slice_rule: str
    window: IntensityWindow = field(default_factory=lambda: IntensityWindow(name="reference_percentile"))
    train_data_root: str = ""
    reference: CohortReference | None = None
    source: str = ""  # where the contract was read from

    def to_json(self) -> dict:
        return {"spacing": None if self.spacing is None else list(self.spacing), "size": list(self.size),
                "n_timepoints": self.n_timepoints, "slice_rule": self.slice_rule, "window": self.window.to_json(),
                "index_version": INDEX_VERSION,
                "train_data_root": self.train_data_root,
                "reference": None if self.reference is None else self.reference.to_json()}

    @classmethod
    def from_json(cls, data: dict, source: str = "") -> "DataContract":
        spacing = data.get("spacing")
        reference = data.get("reference")
        return cls(size=tuple(int(v) for v in data["size"]),  # type: ignore[arg-type]
                   spacing=None if spacing is None else tuple(float(v) for v in spacing),  # type: ignore[arg-type]
                   n_timepoints=int(data["n_timepoints"]), slice_rule=str(data.get("slice_rule", "reference")),
                   window=IntensityWindow.from_json(data.get("window")),
                   train_data_root=str(data.get("train_data_root", "")),
                   reference=None if reference is None else CohortReference.from_json(reference), source=source)

    @classmethod
    def from_split(cls, data_root: str | Path) -> "DataContract":
        """The contract a preprocessed split sets (its index.json and reference.json)."""
        settings = index_settings(data_root)
        reference_path = Path(data_root) / REFERENCE_FILE
        reference = load_reference(reference_path) if reference_path.is_file() else None
        spacing = settings["spacing"]
        return cls(size=tuple(settings["size"]),  # type: ignore[arg-type]
                   spacing=None if spacing is None else tuple(spacing),  # type: ignore[arg-type]
                   n_timepoints=settings["n_timepoints"], slice_rule=settings["slice_rule"],
                   window=settings["window"], train_data_root=str(Path(data_root).resolve()), reference=reference,
                   source=str(Path(data_root) / INDEX_FILE))

    def describe(self) -> str:
        return (f"{format_spacing(self.spacing)}, {self.size[0]} x {self.size[1]}, {self.n_timepoints} CTP frames, "
                f"window {self.window.name}")


def train_data_root(config: DictConfig) -> str | None:
    root = OmegaConf.select(config, "data.params.train.params.data_root", default=None)
    return str(root) if root else None


def write_run_contract(run_dir: str | Path, config: DictConfig) -> DataContract | None:
    """Store the training split's contract and reference in ``run_dir`` (None when the run does
    not train on a preprocessed split, e.g. a config without a train data_root)."""
    root = train_data_root(config)
    if not root or not (Path(root) / INDEX_FILE).is_file():
        return None
    contract = DataContract.from_split(root)
    run_dir = Path(run_dir)
    if contract.reference is not None:
        atomic_write_json(run_dir / REFERENCE_FILE, contract.reference.to_json())
    atomic_write_json(run_dir / CONTRACT_FILE, contract.to_json())
    return contract


def load_run_contract(run_dir: str | Path | None) -> DataContract | None:
    if run_dir is None or not (Path(run_dir) / CONTRACT_FILE).is_file():
        return None
    path = Path(run_dir) / CONTRACT_FILE
    try:
        return DataContract.from_json(json.loads(path.read_text()), source=str(path))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{str(path)!r} cannot be read ({e})") from e


def check_split(contract: DataContract, data_root: str | Path) -> None:
    """Refuse a preprocessed split made at another spacing, size, frame count or intensity window
    than ``contract``."""
    settings = index_settings(data_root)
    spacing = settings["spacing"]
    problems = []
    if contract.spacing is not None and spacing is not None and not at_spacing(spacing, contract.spacing,
                                                                                SPACING_TOLERANCE):
        problems.append(f"spacing {format_spacing(spacing)} (the run: {format_spacing(contract.spacing)}; "
                        f"--spacing {' '.join(f'{s:g}' for s in contract.spacing)})")
    if tuple(settings["size"]) != tuple(contract.size):
        problems.append(f"size {settings['size'][0]}x{settings['size'][1]} (the run: "
                        f"{contract.size[0]}x{contract.size[1]}; --size {contract.size[0]} {contract.size[1]})")
    if settings["n_timepoints"] != contract.n_timepoints:
        problems.append(f"{settings['n_timepoints']} CTP frames (the run: {contract.n_timepoints}; "
                        f"--timepoints {contract.n_timepoints})")
    if settings["window"] != contract.window:
        problems.append(f"the window {settings['window'].describe()} (the run: {contract.window.describe()}; "
                        f"{contract.window.cli()})")
    if problems:
        raise ValueError(f"{str(data_root)!r} was preprocessed with {'; '.join(problems)} ({contract.source}): "
                         f"preprocess it again with the run's settings, or give the raw cohort")
