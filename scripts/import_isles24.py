"""Import ISLES'24 into this project's raw layout (see ldm/data/ingest/isles24.py for the names and choices).

    python scripts/import_isles24.py --isles_root /data/isles24 --output_dir data/raw_isles24 \\
        [--spacing 1 1 5] [--timepoints 15] [--split 0.7 0.1 0.2] [--seed 0] [--workers N]

Writes ``OUTPUT_DIR/{train,val,test}/<subject>/{ctp,dwi,adc,mask,lesion}.nii.gz`` (every map of a
subject on one grid at the spacing, the CTP skull-stripped with the number of frames asked for)
and ``OUTPUT_DIR/manifest.json``; then preprocess as any raw cohort (scripts/preprocessing.sh).
Every map is checked for what it claims, as preprocessing checks it (docs/data.md, "Plausibility
checks"): an identifiable unit or offset is corrected with one line, anything implausible skips the
subject by name. Incomplete or unusable subjects are listed by name and skipped (exit 0 while any
subject is imported, 1 if none is); ``--strict`` stops at the first unusable one (exit 2, no
manifest); mistakes on the command line exit 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.cli import user_error  # noqa: E402
from ldm.data.ingest.isles24 import SubjectError, import_isles24, split_subjects  # noqa: E402
from ldm.data.transforms.resampling import PAPER_SPACING, check_spacing  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--isles_root", required=True, type=Path, help="ISLES'24 root (holding derivatives/, or train/)")
    p.add_argument("--output_dir", required=True, type=Path)
    p.add_argument("--spacing", type=float, nargs=3, default=list(PAPER_SPACING), metavar=("X", "Y", "Z"),
                   help="voxel size in mm (default the paper's 1 1 5)")
    p.add_argument("--timepoints", type=int, default=15, help="CTP frames (default 15)")
    p.add_argument("--split", type=float, nargs=3, default=[0.7, 0.1, 0.2], metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=0, help="seed of the patient-level split")
    p.add_argument("--workers", type=int, default=1, help="subjects in parallel (processes)")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first subject whose files cannot be used (exit 2, no manifest) instead of "
                        "skipping it by name")
    opt = p.parse_args(argv)
    try:
        spacing = check_spacing(opt.spacing)
        split_subjects([], opt.split, opt.seed)  # checks the fractions
    except ValueError as e:
        p.error(str(e))
    if opt.timepoints < 2 or opt.workers < 1:
        p.error("--timepoints must be >= 2 and --workers >= 1")
    try:
        summary = import_isles24(opt.isles_root, opt.output_dir, spacing, opt.timepoints, opt.split, opt.seed,
                                 opt.workers, progress=not opt.no_progress, strict=opt.strict)
    except (FileNotFoundError, SubjectError) as e:
        return user_error(e, "import_isles24.py")
    print(summary)
    return 0 if summary.imported else 1


if __name__ == "__main__":
    sys.exit(main())
