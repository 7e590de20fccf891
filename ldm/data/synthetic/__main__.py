"""``python -m ldm.data.synthetic`` (or ``python ldm/data/synthetic ...`` from anywhere): write a synthetic cohort (cohort.py)."""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a folder path: make the repository importable
    sys.path[0] = str(Path(__file__).resolve().parents[3])

from ldm.data.synthetic.cohort import main  # noqa: E402

sys.exit(main())
