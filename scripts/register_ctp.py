"""Register a CTP into its DWI's space (rigid, then affine, mutual information; the paper's ANTs step).

    python scripts/register_ctp.py --ctp CTP.nii.gz --dwi DWI.nii.gz --out OUT.nii.gz [--qc QC.png] [--motion]
        [--mask CT_SPACE_MASK.nii.gz --mask_out MASK_OUT.nii.gz] [--brain_mask CT_BRAIN.nii.gz] [--threads N]
    python scripts/register_ctp.py --cohort IN --output_dir OUT [--motion] [--workers N] [--threads N]

Pair mode writes OUT on the DWI's grid (its shape and affine, every frame; the CTP's time step and
a sidecar JSON with frame times travel along), ``<OUT stem>_to_dwi.tfm`` (the ITK transform: DWI
points to CT points, readable by ITK and ANTs tools), ``<OUT stem>_registration.json`` (mutual
information before and after, parameters, timings) and the QC overlay (``--qc``, default
``<OUT stem>_qc.png``). ``--motion`` first aligns each frame to the first (rigid). ``--mask`` is
a CT-space mask (brain or lesion) carried to the DWI grid; ``--brain_mask`` a CT-space brain mask
for skull-stripping the mean CTP (else one is derived from the CTP).

Cohort mode takes ``IN/<patient>/{ctp,dwi}.nii.gz`` (plus any of adc, lesion, mask: already in DWI
space, copied; and ``ctp_mask.nii.gz``, a CT-space brain mask, registered and written as
``mask.nii.gz`` when there is no DWI-space one) and writes ``OUT/<patient>/`` in the raw layout of
preprocessing, with ``registration/{ctp_to_dwi.tfm,registration.json,qc.png}``; each patient is
written whole or not at all. A bad patient is reported in one line naming it and the file and the
others go on (exit 1 at the end); mistakes on the command line exit 2. The code is
ldm/data/ingest/registration_files.py (pair) and cohort_registration.py (cohort).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.cli import user_error  # noqa: E402
from ldm.data.ingest.cohort_registration import register_cohort  # noqa: E402
from ldm.data.ingest.registration_files import InputError, register_files  # noqa: E402

PROG = "register_ctp.py"


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ctp", type=Path, help="4-D CTP (HU)")
    p.add_argument("--dwi", type=Path, help="the DWI whose space the CTP goes into")
    p.add_argument("--out", type=Path, help="registered CTP (NIfTI) on the DWI's grid")
    p.add_argument("--qc", type=Path, default=None, help="QC overlay PNG (default <OUT stem>_qc.png)")
    p.add_argument("--mask", type=Path, default=None, help="a CT-space mask to carry into DWI space")
    p.add_argument("--mask_out", type=Path, default=None, help="where it goes (default <OUT stem>_mask.nii.gz)")
    p.add_argument("--brain_mask", type=Path, default=None,
                   help="CT-space brain mask to skull-strip the mean CTP (default: derived from the CTP)")
    p.add_argument("--cohort", type=Path, default=None, help="batch mode: a folder of patient folders")
    p.add_argument("--output_dir", type=Path, default=None, help="batch mode: output root")
    p.add_argument("--motion", action="store_true", help="first align every frame to the first (rigid)")
    p.add_argument("--workers", type=int, default=1, help="batch mode: patients in parallel (processes)")
    p.add_argument("--threads", type=int, default=0,
                   help="SimpleITK threads per registration (default 0: all cores; 1 with several --workers)")
    p.add_argument("--no_progress", action="store_true")
    return p


def _mi(report: dict) -> str:
    return f"MI {report['mutual_information_before']:.3f} -> {report['mutual_information_after']:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = get_parser()
    opt = parser.parse_args(argv)
    pair = [opt.ctp, opt.dwi, opt.out]
    if opt.cohort is not None:
        if any(v is not None for v in pair) or opt.output_dir is None:
            parser.error("batch mode takes --cohort IN --output_dir OUT (and no --ctp/--dwi/--out)")
    elif any(v is None for v in pair):
        parser.error("give --ctp, --dwi and --out (or --cohort and --output_dir)")
    if opt.workers < 1 or opt.threads < 0:
        parser.error("--workers must be >= 1 and --threads >= 0")
    import SimpleITK as sitk

    threads = opt.threads or (1 if opt.workers > 1 else 0)
    if threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    if opt.cohort is None:
        try:
            report = register_files(opt.ctp, opt.dwi, opt.out, opt.qc, opt.mask, opt.mask_out, opt.brain_mask,
                                    opt.motion)
        except InputError as e:
            return user_error(e, PROG)
        print(f"{opt.out}: {_mi(report)} in {report['seconds']:.1f} s; transform {report['transform_file']}, "
              f"QC {report['qc']}")
        return 0
    if not opt.cohort.is_dir():
        return user_error(f"--cohort {str(opt.cohort)!r} is not a folder", PROG)
    try:
        done, failed = register_cohort(opt.cohort, opt.output_dir, opt.motion, opt.workers, not opt.no_progress)
    except FileNotFoundError as e:
        return user_error(e, PROG)
    for pid, report in sorted(done.items()):
        print(f"{pid}: {_mi(report)} ({report['seconds']:.1f} s)")
    print(f"registered {len(done)}/{len(done) + len(failed)} patients into {opt.output_dir}")
    if failed:
        print(f"failed ({len(failed)}):", file=sys.stderr)
        for message in failed.values():
            print(f"  {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
