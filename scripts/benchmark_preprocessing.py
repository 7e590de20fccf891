"""Seconds per paper-scale patient per core for preprocessing (and for the synthetic generator).

    python scripts/benchmark_preprocessing.py [--patients 4] [--workers 1 2] [--size 192 224]
        [--source_spacing 0.9 0.9 4] [--source_frames 30] [--ctp_rotation 5]

Generates ``--patients`` synthetic patients at the given size (1 x 1 x 5 mm at 192 x 224, 32
slices, 15 time points: CTP 192 x 224 x 32 x 15 int16) into a temporary folder, then times
``preprocess_cohort`` with each ``--workers`` count. Reported: wall seconds per patient and
wall x workers / patients (seconds per patient per core), with a per-stage split of one
single-process run (read + validate, mask/crop/normalise, write). Not a test: timings depend on
the machine and its load.

``--source_spacing``/``--source_frames`` write the patients as a scanner might give them (every map
at that voxel size, the CTP with that many frames at irregular times in a sidecar JSON), and
``--ctp_rotation`` puts the CTP on its own grid, rotated by that many degrees about z (the oblique
resampling path): preprocessing then resamples them to the paper's 1 x 1 x 5 mm and 15 frames.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.data.synthetic.anatomy import inplane_voxel_mm  # noqa: E402
from ldm.data.transforms.brain_mask import derive_brain_mask  # noqa: E402
from ldm.data.synthetic.mni_template import load_template  # noqa: E402
from ldm.data.ingest.harmonisation import harmonise  # noqa: E402
from ldm.data.preprocessing.pipeline import _build, preprocess_cohort, preprocess_patient  # noqa: E402
from ldm.data.transforms.resampling import PAPER_SPACING, Grid, resample, target_grid  # noqa: E402
from ldm.data.synthetic.cohort import generate_patient, write_patient  # noqa: E402
from ldm.data.ingest.validation import load_patient  # noqa: E402


def write_as_scanned(patient, folder: Path, spacing, frames: int | None, ctp_rotation: float) -> None:
    """``patient`` (1 x 1 x 5 mm, 15 frames) re-gridded to ``spacing`` with ``frames`` CTP frames."""
    import nibabel as nib

    grid = target_grid(Grid(patient.dwi.shape, patient.affine), spacing) if spacing else Grid(patient.dwi.shape,
                                                                                               patient.affine)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("dwi", "adc", "mask", "lesion"):
        data = getattr(patient, name)
        out = resample(data > 0 if name in ("mask", "lesion") else data, patient.affine, grid,
                       mask=name in ("mask", "lesion"))
        nib.save(nib.Nifti1Image(out.astype(np.uint8 if out.dtype == bool else np.float32), grid.affine),
                 str(folder / f"{name}.nii.gz"))
    ctp, times = patient.ctp, None
    if frames:  # the 15 frames (0..42 s) seen at ``frames`` irregular times: dense early, sparse late
        times = 42.0 * np.linspace(0, 1, frames) ** 1.5
        upsampled = np.empty((*ctp.shape[:3], frames), dtype=np.float32)
        source = np.linspace(0, 42.0, ctp.shape[3])
        for k, t in enumerate(times):
            i = min(int(np.searchsorted(source, t, side="right")) - 1, ctp.shape[3] - 2)
            f = (t - source[i]) / (source[i + 1] - source[i])
            upsampled[..., k] = ctp[..., i] * (1 - f) + ctp[..., i + 1] * f
        ctp = upsampled
    ctp_grid = grid
    if ctp_rotation:
        c, s = np.cos(np.radians(ctp_rotation)), np.sin(np.radians(ctp_rotation))
        affine = grid.affine.copy()
        affine[:3, :3] = affine[:3, :3] @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
        ctp_grid = Grid(grid.shape, affine)
    ctp = resample(ctp, patient.affine, ctp_grid)
    nib.save(nib.Nifti1Image(np.rint(ctp).astype(np.int16), ctp_grid.affine), str(folder / "ctp.nii.gz"))
    if times is not None:
        (folder / "ctp.json").write_text(json.dumps({"FrameTimesStart": times.tolist()}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--size", type=int, nargs=2, default=[192, 224])
    parser.add_argument("--keep", default=None, help="keep the generated raw cohort in this folder")
    parser.add_argument("--source_spacing", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"),
                        help="write the patients at this voxel size (mm); preprocessing resamples to 1 x 1 x 5")
    parser.add_argument("--source_frames", type=int, default=None, help="CTP frames as written (irregular times)")
    parser.add_argument("--ctp_rotation", type=float, default=0.0, help="CTP on its own grid, rotated (degrees)")
    args = parser.parse_args()
    size = tuple(args.size)
    scanned = bool(args.source_spacing or args.source_frames or args.ctp_rotation)

    with tempfile.TemporaryDirectory(prefix="bench_preprocessing_") as tmp:
        raw = Path(args.keep) if args.keep else Path(tmp) / "raw"
        load_template((inplane_voxel_mm(size), inplane_voxel_mm(size), 5.0))  # one-off per process, not per patient
        generate_s, write_s = [], []
        for i in range(args.patients):
            start = time.perf_counter()
            patient = generate_patient([0, i], size, patient_id=f"B{i:03d}")
            generate_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            if scanned:
                write_as_scanned(patient, raw / patient.patient_id, args.source_spacing, args.source_frames,
                                 args.ctp_rotation)
            else:
                write_patient(patient, raw / patient.patient_id)
            write_s.append(time.perf_counter() - start)
        print(f"patient: CTP {'x'.join(map(str, patient.ctp.shape))} int16, {patient.info['brain_slices']} "
              f"brain slices; generator {np.mean(generate_s):.2f} s + NIfTI writing {np.mean(write_s):.2f} s "
              f"per patient (one core)")

        # Per-stage split on one core (after one warm-up run: first calls pay for imports and page faults).
        folder = raw / "B000"
        print(f"written as: {nib_shape(folder, 'dwi')} DWI, {nib_shape(folder, 'ctp')} CTP"
              + (f" (CTP rotated {args.ctp_rotation:g} degrees)" if args.ctp_rotation else ""))
        preprocess_patient(folder, Path(tmp) / "warm_up", size, spacing=PAPER_SPACING)
        start = time.perf_counter()
        volumes = load_patient(folder)
        read = time.perf_counter() - start
        start = time.perf_counter()
        volumes, h = harmonise(volumes, PAPER_SPACING, 15)
        resampling = time.perf_counter() - start
        start = time.perf_counter()
        _, arrays, _ = _build(volumes, size, harmonisation=h)
        build = time.perf_counter() - start
        start = time.perf_counter()
        for name, array in arrays.items():
            np.save(Path(tmp) / f"stage_{name}.npy", array)
        write = time.perf_counter() - start
        start = time.perf_counter()
        derive_brain_mask(volumes.ctp)
        derive = time.perf_counter() - start
        print(f"stages (one patient, one core): read+validate {read:.2f} s, resampling (space and time) "
              f"{resampling:.2f} s, mask/crop/normalise {build:.2f} s, write {write:.2f} s; deriving a brain mask "
              f"from the CTP (no mask.nii.gz) adds {derive:.2f} s")

        for workers in args.workers:
            out = Path(tmp) / f"npy_{workers}"
            start = time.perf_counter()
            preprocess_cohort(raw, out, size=size, workers=workers, progress=False, spacing=PAPER_SPACING)
            wall = time.perf_counter() - start
            used = min(workers, args.patients)
            print(f"workers={workers}: {wall:.2f} s for {args.patients} patients -> {wall / args.patients:.2f} s "
                  f"per patient, {wall * used / args.patients:.2f} s per patient per core")
    return 0


def nib_shape(folder: Path, name: str) -> str:
    import nibabel as nib

    image = nib.load(str(folder / f"{name}.nii.gz"))
    zooms = " x ".join(f"{z:.3g}" for z in image.header.get_zooms()[:3])
    return f"{'x'.join(map(str, image.shape))} at {zooms} mm"


if __name__ == "__main__":
    sys.exit(main())
