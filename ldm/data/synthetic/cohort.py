"""A synthetic acute-stroke cohort in the raw layout of docs/data.md, for tests, the demo and users
without data: ``<out>/{train,val,test}/<patient_id>/{ctp,dwi,adc,mask,lesion}.nii.gz``.

    python -m ldm.data.synthetic --out data/synthetic --size demo --n_train 16 --n_val 4 --n_test 4

Anatomy is the MNI152 2009a template (see ``mni_template.py``) warped per patient (rotation,
scale, shift, elastic; ``anatomy.py``) into a 1 x 1 x 5 mm grid with an oblique, off-centre
affine (at the 64 x 64 demo size the in-plane voxel is 3.5 mm so that the brain fits; the affine
says so). Each patient gets lesions (``lesion_model.py``), a 15-point CTP bolus (``perfusion.py``,
``vessels.py``) and DWI/ADC (``mri_signal.py``). The same seed writes byte-identical files.
``--n_clinical N`` adds a ``clinical`` split of CTP-only patients (ctp + mask, or ctp alone with
``--clinical_without_mask``): the clinical use case where no MRI exists yet.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ldm.data.synthetic.anatomy import build_anatomy, default_n_slices, inplane_voxel_mm
from ldm.data.synthetic.lesion import lesion_fields, sample_lesions, stratified_quantiles
from ldm.data.synthetic.mri_signal import synthesize_dwi_adc
from ldm.data.synthetic.perfusion import acquisition_times, synthesize_ctp
from ldm.data.record import MASKS, MODALITIES
from ldm.data.synthetic.vessels import ARTERIES, VEINS, vessel_fraction
from ldm.io import atomic_save_nifti, atomic_write_json

SIZES = {"paper": (192, 224), "demo": (64, 64)}
MAPS = ("ctp", *MODALITIES, *MASKS)
LESION_STRATA_STREAM = 7919  # seeds the per-split lesion-volume strata apart from the patients' own streams
DESCRIPTIONS = {"ctp": "CT perfusion (HU)", "dwi": "DWI b=1000", "adc": "ADC 1e-6 mm2/s",
                "mask": "brain mask", "lesion": "ischemic lesion (core)"}


@dataclass
class SyntheticPatient:
    """One patient's volumes, (X, Y, Z) and (X, Y, Z, T) for the CTP, sharing ``affine``."""

    patient_id: str
    affine: np.ndarray
    ctp: np.ndarray  # int16 HU
    dwi: np.ndarray  # float32
    adc: np.ndarray  # float32, 1e-6 mm^2/s
    mask: np.ndarray  # uint8
    lesion: np.ndarray  # uint8
    timepoint_s: float
    info: dict = field(default_factory=dict)


def parse_size(text: str | Sequence[int]) -> tuple[int, int]:
    """``demo`` | ``paper`` | ``HxW`` (or an (H, W) pair) to (H, W)."""
    if not isinstance(text, str):
        h, w = (int(v) for v in text)
    elif text in SIZES:
        return SIZES[text]
    else:
        try:
            h, w = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise ValueError(f"size {text!r} is not 'demo', 'paper' or HxW (e.g. 192x224)") from None
    if h < 8 or w < 8:
        raise ValueError(f"size {h}x{w} is too small (at least 8x8)")
    return h, w


def generate_patient(seed: int | Sequence[int] | np.random.Generator, size: tuple[int, int] = SIZES["paper"],
                     n_slices: int | None = None, n_timepoints: int = 15, patient_id: str = "P0000",
                     vary: bool = True, lesion_volume_ml: float | None = None, lesion_territory: str | None = None,
                     fov_jitter: int = 0, lesion_quantile: float | None = None) -> SyntheticPatient:
    """Synthesise one patient in memory.

    ``vary=False`` puts the unwarped template at the grid centre (MNI x = 0 on the middle of the
    first axis: mirror images are contralateral). ``lesion_volume_ml`` fixes the main lesion's
    volume (0: none; None: the law's value at ``lesion_quantile``, random when that is None too),
    ``lesion_territory`` its territory (lesion_model.TERRITORIES).
    ``fov_jitter`` varies the in-plane grid by up to that many
    voxels per axis (scanners differ), so preprocessing must crop or pad.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    n_slices = n_slices or default_n_slices()
    voxel_xy = inplane_voxel_mm(size)
    jitter = rng.integers(-fov_jitter, fov_jitter + 1, size=2) if fov_jitter else np.zeros(2, dtype=int)
    shape = (int(size[0] + jitter[0]), int(size[1] + jitter[1]), int(n_slices))
    anatomy = build_anatomy(rng, shape, voxel_xy, vary=vary)

    lesions = sample_lesions(rng, lesion_volume_ml, lesion_territory, quantile=lesion_quantile)
    core, penumbra = lesion_fields(lesions, anatomy.mni)
    tissue = anatomy.gm + anatomy.wm
    core *= anatomy.brain
    penumbra *= anatomy.brain
    lesion = ((core * tissue) > 0.5) & anatomy.brain

    artery = vessel_fraction(ARTERIES, anatomy.mni, voxel_xy) * anatomy.brain
    vein = vessel_fraction(VEINS, anatomy.mni, voxel_xy) * anatomy.brain
    vessel_total = np.minimum(artery + vein, 1.0)
    scale = np.where(vessel_total > 1e-6, np.minimum(1.0, 1.0 / np.maximum(artery + vein, 1e-6)), 1.0)
    artery, vein = artery * scale, vein * scale
    tissue_share = 1.0 - vessel_total
    ctp_fractions = {"artery": artery, "vein": vein, "gm": anatomy.gm * tissue_share,
                     "wm": anatomy.wm * tissue_share, "csf": anatomy.csf * tissue_share}
    # Noise sd falls with the in-plane voxel edge: a coarse demo voxel averages many 1 mm ones.
    noise_scale = 1.0 / voxel_xy
    ctp = synthesize_ctp(rng, ctp_fractions, core, penumbra, anatomy.brain, n_timepoints, noise_scale)
    mri_fractions = {"gm": anatomy.gm, "wm": anatomy.wm, "csf": anatomy.csf}
    dwi, adc = synthesize_dwi_adc(rng, mri_fractions, core, anatomy.brain, anatomy.mni, noise_scale)

    voxel_ml = float(np.prod(anatomy.voxel_mm)) / 1000.0
    info = {"voxel_mm": list(anatomy.voxel_mm), "shape": list(shape),
            "lesion_ml": round(float(lesion.sum()) * voxel_ml, 3),
            "lesion_slices": int(lesion.any(axis=(0, 1)).sum()),
            "brain_slices": int(anatomy.brain.any(axis=(0, 1)).sum()),
            "territories": [lesion_.territory for lesion_ in lesions]}
    times = acquisition_times(n_timepoints)
    step = float(times[1] - times[0]) if n_timepoints > 1 else 0.0
    return SyntheticPatient(patient_id, anatomy.affine, ctp, dwi, adc, anatomy.brain.astype(np.uint8),
                            lesion.astype(np.uint8), step, info)


def _nifti(data: np.ndarray, patient: SyntheticPatient, name: str) -> nib.Nifti1Image:
    image = nib.Nifti1Image(data, patient.affine)
    header = image.header
    header.set_data_dtype(data.dtype)
    header.set_xyzt_units("mm", "sec")
    image.set_sform(patient.affine, code=1)
    image.set_qform(patient.affine, code=1)
    if name == "ctp":
        zooms = header.get_zooms()
        header.set_zooms((*zooms[:3], patient.timepoint_s))
    header["descrip"] = DESCRIPTIONS[name].encode()
    return image


def write_patient(patient: SyntheticPatient, folder: str | Path, maps: Sequence[str] = MAPS) -> None:
    """Write the chosen ``maps`` as ``<folder>/<map>.nii.gz`` (atomically, one file at a time)."""
    folder = Path(folder)
    for name in maps:
        if name not in MAPS:
            raise ValueError(f"unknown map {name!r}; choose from {', '.join(MAPS)}")
        atomic_save_nifti(_nifti(getattr(patient, name), patient, name), folder / f"{name}.nii.gz")


def strip_to_ctp_only(folder: str | Path, keep_mask: bool = True) -> None:
    """Turn a written patient into a CTP-only one (no MRI yet): delete dwi, adc, lesion (and mask)."""
    for name in ("dwi", "adc", "lesion") + (() if keep_mask else ("mask",)):
        (Path(folder) / f"{name}.nii.gz").unlink(missing_ok=True)


def _make_patient(job: tuple) -> tuple[str, str, dict]:
    split, index, patient_id, out_dir, seed, size, n_slices, n_timepoints, maps, fov_jitter, quantile = job
    patient = generate_patient([seed, index], size, n_slices, n_timepoints, patient_id, fov_jitter=fov_jitter,
                               lesion_quantile=quantile)
    write_patient(patient, Path(out_dir) / split / patient_id, maps)
    return split, patient_id, patient.info


def generate_cohort(out_dir: str | Path, n_train: int, n_val: int, n_test: int,
                    size: tuple[int, int] | str = SIZES["paper"], n_slices: int | None = None,
                    n_timepoints: int = 15, seed: int = 0, *, n_clinical: int = 0, clinical_mask: bool = True,
                    fov_jitter: int = 0, workers: int = 1, progress: bool = True) -> None:
    """Write a cohort of ``n_train + n_val + n_test`` patients (ids P0001, P0002, ... across splits)
    plus ``n_clinical`` CTP-only patients in ``<out>/clinical``, and ``<out>/cohort.json`` with the
    settings and per-patient facts (lesion volume and slices, territories). Lesion volumes are
    stratified within each split (lesion_model.stratified_quantiles)."""
    from tqdm.auto import tqdm

    size = parse_size(size)
    if n_timepoints < 2:
        raise ValueError(f"n_timepoints must be at least 2, got {n_timepoints}")
    n_slices = n_slices or default_n_slices()
    jobs = []
    counts = {"train": n_train, "val": n_val, "test": n_test, "clinical": n_clinical}
    index = 0
    for split_number, (split, count) in enumerate(counts.items()):
        maps = ("ctp", "mask") if clinical_mask else ("ctp",)
        quantiles = stratified_quantiles(np.random.default_rng([seed, split_number, LESION_STRATA_STREAM]), count)
        for quantile in quantiles:
            index += 1
            jobs.append((split, index, f"P{index:04d}", str(out_dir), seed, size, n_slices, n_timepoints,
                         maps if split == "clinical" else MAPS, fov_jitter, float(quantile)))
    results: dict[str, dict[str, dict]] = {split: {} for split, count in counts.items() if count}
    bar = tqdm(total=len(jobs), desc="synthetic cohort", unit="patient", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for split, patient_id, info in pool.map(_make_patient, jobs):
                results[split][patient_id] = info
                bar.update()
    else:
        for job in jobs:
            split, patient_id, info = _make_patient(job)
            results[split][patient_id] = info
            bar.update()
    bar.close()
    atomic_write_json(Path(out_dir) / "cohort.json", {
        "generator": "ldm.data.synthetic", "seed": seed, "size": list(size), "n_slices": n_slices,
        "n_timepoints": n_timepoints, "voxel_mm": [inplane_voxel_mm(size)] * 2 + [5.0],
        "fov_jitter": fov_jitter, "patients": results})


def summarize(out_dir: str | Path) -> str:
    """One line per split: patients, lesion-free patients, share of brain slices with lesion."""
    import json

    cohort = json.loads((Path(out_dir) / "cohort.json").read_text())
    lines = []
    for split, patients in cohort["patients"].items():
        brain = sum(p["brain_slices"] for p in patients.values())
        lesion = sum(p["lesion_slices"] for p in patients.values())
        free = sum(p["lesion_ml"] == 0 for p in patients.values())
        volumes = [p["lesion_ml"] for p in patients.values() if p["lesion_ml"] > 0]
        mean = f"{np.mean(volumes):.1f} ml" if volumes else "-"
        hidden = " (CTP-only: the lesions are simulated, not written)" if split == "clinical" else ""
        lines.append(f"{split}: {len(patients)} patients ({free} without lesion), {lesion}/{brain} brain slices "
                     f"with lesion ({100.0 * lesion / max(brain, 1):.1f}%), mean lesion volume {mean}{hidden}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output root; splits are written below it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default="demo", help="demo (64x64), paper (192x224) or HxW (default: demo)")
    parser.add_argument("--n_train", type=int, default=16)
    parser.add_argument("--n_val", type=int, default=4)
    parser.add_argument("--n_test", type=int, default=4)
    parser.add_argument("--n_clinical", type=int, default=0, help="extra CTP-only patients in <out>/clinical")
    parser.add_argument("--clinical_without_mask", action="store_true",
                        help="clinical patients get ctp.nii.gz only (preprocessing derives the mask)")
    parser.add_argument("--timepoints", type=int, default=15)
    parser.add_argument("--slices", type=int, default=None, help=f"axial slices (default {default_n_slices()})")
    parser.add_argument("--fov_jitter", type=int, default=0, help="vary the in-plane grid by up to N voxels")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        size = parse_size(args.size)
    except ValueError as e:
        parser.error(str(e))
    for name in ("n_train", "n_val", "n_test", "n_clinical", "fov_jitter"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0")
    if args.slices is not None and args.slices < 1:
        parser.error("--slices must be >= 1")
    if args.timepoints < 2:
        parser.error("--timepoints must be >= 2")
    generate_cohort(args.out, args.n_train, args.n_val, args.n_test, size, args.slices, args.timepoints, args.seed,
                    n_clinical=args.n_clinical, clinical_mask=not args.clinical_without_mask,
                    fov_jitter=args.fov_jitter, workers=max(1, args.workers))
    voxel = inplane_voxel_mm(size)
    print(f"wrote {args.out} ({size[0]}x{size[1]} in-plane, {voxel:g} x {voxel:g} x 5 mm voxels)")
    print(summarize(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
