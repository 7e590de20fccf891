"""A second process that holds an output folder's lock: ``python -m tests.helpers.lock_holder FOLDER PURPOSE``
prints ``locked`` once it holds it, and releases it when its stdin closes (or dies holding it)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def hold(folder: Path, purpose: str = "sampling") -> subprocess.Popen:
    """Start a holder of ``folder``'s lock; returns once it holds it."""
    child = subprocess.Popen([sys.executable, "-m", "tests.helpers.lock_holder", str(folder), purpose], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


if __name__ == "__main__":
    from ldm.folder_lock import folder_lock

    with folder_lock(sys.argv[1], sys.argv[2]):
        print("locked", flush=True)
        sys.stdin.read()
