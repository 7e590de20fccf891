"""Seconds for one CTP-to-DWI registration of a paper-size pair on one core (scripts/register_ctp.py).

    python scripts/benchmark_registration.py [--frames 20] [--threads 1] [--motion]

Builds a synthetic pair (ldm/data/synthetic/pair.py, a real-size brain): an unstripped CTP of
512 x 512 x 32 voxels at 0.45 x 0.45 x 5 mm (a clinical 230 mm field of view) with ``--frames``
frames, misregistered by about 8 degrees and 6 mm, and a DWI of 192 x 224 x 32 at 1 x 1 x 5 mm (the
paper's grid); writes them as NIfTI and times ``register_ctp.py``'s pair mode on them
(ldm/data/ingest/registration_files.py: reading, skull-stripping, rigid + affine registration,
applying it to every frame, writing), with the stages of the registration itself, and the error
against the known transform. Not a test: timings depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.data.ingest.registration import transform_to_ras  # noqa: E402
from ldm.data.ingest.registration_files import register_files  # noqa: E402
from ldm.data.synthetic.pair import make_registration_pair  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="SimpleITK threads (default 1: one core)")
    parser.add_argument("--motion", action="store_true", help="also correct motion between frames")
    args = parser.parse_args()
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    start = time.perf_counter()
    pair = make_registration_pair(seed=1, ct_shape=(512, 512, 32), ct_voxel_mm=(0.45, 0.45, 5.0),
                                  mri_shape=(192, 224, 32), mri_voxel_mm=(1.0, 1.0, 5.0), scale=1.0,
                                  n_frames=args.frames, lesion_ml=30.0)
    print(f"pair built in {time.perf_counter() - start:.1f} s (not timed below): CTP "
          f"{'x'.join(map(str, pair.ctp.shape))} at 0.45 x 0.45 x 5 mm, DWI {'x'.join(map(str, pair.dwi.shape))} "
          f"at 1 x 1 x 5 mm")
    with tempfile.TemporaryDirectory(prefix="bench_registration_") as tmp:
        tmp = Path(tmp)
        ctp = nib.Nifti1Image(pair.ctp, pair.ctp_affine)
        ctp.header.set_xyzt_units("mm", "sec")
        nib.save(ctp, str(tmp / "ctp.nii.gz"))
        nib.save(nib.Nifti1Image(pair.dwi, pair.mri_affine), str(tmp / "dwi.nii.gz"))
        start = time.perf_counter()
        report = register_files(tmp / "ctp.nii.gz", tmp / "dwi.nii.gz", tmp / "out" / "ctp.nii.gz",
                                motion=args.motion)
        total = time.perf_counter() - start
        index = np.argwhere(pair.mri_brain)
        points = np.c_[index, np.ones(len(index))] @ pair.mri_affine.T
        estimated = transform_to_ras(sitk.ReadTransform(report["transform_file"]))
        error = np.linalg.norm((points @ estimated.T - points @ np.linalg.inv(pair.true_transform).T)[:, :3], axis=1)
    print(f"register_ctp.py (read, register, apply to {args.frames} frames, write) on {args.threads} thread(s): "
          f"{total:.1f} s; registration stages: {json.dumps(report['stages_s'])}")
    print(f"mutual information {report['mutual_information_before']:.3f} -> {report['mutual_information_after']:.3f};"
          f" mean displacement error over the brain {error.mean():.2f} mm (max {error.max():.2f} mm)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
