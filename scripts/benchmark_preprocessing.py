"""Seconds per paper-scale patient per core for preprocessing (and for the synthetic generator).

    python scripts/benchmark_preprocessing.py [--patients 4] [--workers 1 2] [--size 192 224]

Generates ``--patients`` synthetic patients at the given size (1 x 1 x 5 mm at 192 x 224, 32
slices, 15 time points: CTP 192 x 224 x 32 x 15 int16) into a temporary folder, then times
``preprocess_cohort`` with each ``--workers`` count. Reported: wall seconds per patient and
wall x workers / patients (seconds per patient per core), with a per-stage split of one
single-process run (read + validate, mask/crop/normalise, write). Not a test: timings depend on
the machine and its load.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.data.anatomy import inplane_voxel_mm  # noqa: E402
from ldm.data.brain_mask import derive_brain_mask  # noqa: E402
from ldm.data.mni_template import load_template  # noqa: E402
from ldm.data.preprocessing import _build, preprocess_cohort, preprocess_patient  # noqa: E402
from ldm.data.synthetic import generate_patient, write_patient  # noqa: E402
from ldm.data.validation import load_patient  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--size", type=int, nargs=2, default=[192, 224])
    parser.add_argument("--keep", default=None, help="keep the generated raw cohort in this folder")
    args = parser.parse_args()
    size = tuple(args.size)

    with tempfile.TemporaryDirectory(prefix="bench_preprocessing_") as tmp:
        raw = Path(args.keep) if args.keep else Path(tmp) / "raw"
        load_template((inplane_voxel_mm(size), inplane_voxel_mm(size), 5.0))  # one-off per process, not per patient
        generate_s, write_s = [], []
        for i in range(args.patients):
            start = time.perf_counter()
            patient = generate_patient([0, i], size, patient_id=f"B{i:03d}")
            generate_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            write_patient(patient, raw / patient.patient_id)
            write_s.append(time.perf_counter() - start)
        print(f"patient: CTP {'x'.join(map(str, patient.ctp.shape))} int16, {patient.info['brain_slices']} "
              f"brain slices; generator {np.mean(generate_s):.2f} s + NIfTI writing {np.mean(write_s):.2f} s "
              f"per patient (one core)")

        # Per-stage split on one core (after one warm-up run: first calls pay for imports and page faults).
        folder = raw / "B000"
        preprocess_patient(folder, Path(tmp) / "warm_up", size)
        start = time.perf_counter()
        volumes = load_patient(folder)
        read = time.perf_counter() - start
        start = time.perf_counter()
        _, arrays, _ = _build(volumes, size)
        build = time.perf_counter() - start
        start = time.perf_counter()
        for name, array in arrays.items():
            np.save(Path(tmp) / f"stage_{name}.npy", array)
        write = time.perf_counter() - start
        start = time.perf_counter()
        derive_brain_mask(volumes.ctp)
        derive = time.perf_counter() - start
        print(f"stages (one patient, one core): read+validate {read:.2f} s, mask/crop/normalise {build:.2f} s, "
              f"write {write:.2f} s; deriving a brain mask from the CTP (no mask.nii.gz) adds {derive:.2f} s")

        for workers in args.workers:
            out = Path(tmp) / f"npy_{workers}"
            start = time.perf_counter()
            preprocess_cohort(raw, out, size=size, workers=workers, progress=False)
            wall = time.perf_counter() - start
            used = min(workers, args.patients)
            print(f"workers={workers}: {wall:.2f} s for {args.patients} patients -> {wall / args.patients:.2f} s "
                  f"per patient, {wall * used / args.patients:.2f} s per patient per core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
