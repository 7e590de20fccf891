"""Loading the command-line scripts of ``scripts/`` as modules, to call their ``main`` in-process."""
from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (registered in sys.modules: dataclasses look it up there)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def error_line(stderr: str, script: str) -> str:
    """The one error line (``<script>: error: ...``) of a failed run, asserted to be the last line
    written (progress bars also write to stderr)."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{script}: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    return errors[0]


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))
