"""``python -m ldm.data.preprocessing`` (or ``python ldm/data/preprocessing ...`` from anywhere): preprocess a NIfTI split (pipeline.py)."""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a folder path: make the repository importable
    sys.path[0] = str(Path(__file__).resolve().parents[3])

from ldm.data.preprocessing.pipeline import main  # noqa: E402

sys.exit(main())
