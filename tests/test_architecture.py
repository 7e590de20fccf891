"""The layering of docs/architecture.md, read from the code: every import (module-level or inside a
function) of ``ldm`` and ``taming`` points down or sideways within its layer, and no two modules
import each other through any chain. A new import against the layering fails here with its file."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# bottom to top; a module may import its own layer and the layers below it (docs/architecture.md)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("ldm.util", "ldm.io", "ldm.config", "ldm.precision", "ldm.folder_lock", "ldm.cli", "ldm.optim",
              "ldm.compilation")),
    ("modules", ("ldm.modules", "taming.modules")),
    ("data", ("ldm.data",)),
    ("evaluation", ("ldm.evaluation",)),  # scores volumes on disk: knows no model, so any can be scored
    ("samplers", ("ldm.samplers",)),
    ("models", ("ldm.models", "taming.models")),
    ("callbacks", ("ldm.callbacks",)),
    ("inference", ("ldm.inference",)),
    ("benchmark", ("ldm.benchmark",)),
    ("experiments", ("ldm.experiments",)),
]
# inside ldm.data, bottom to top; synthetic sits beside ingest and reads only what lies below it
DATA_LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("transforms", ("ldm.data.transforms",)),
    ("record", ("ldm.data.record",)),
    ("ingest / synthetic", ("ldm.data.ingest", "ldm.data.synthetic")),
    ("preprocessing", ("ldm.data.preprocessing",)),
    ("training", ("ldm.data.training",)),
    ("aliases", ("ldm.data.ctpdwi", "ldm.data.datamodule")),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in ("ldm", "taming") for p in sorted((ROOT / package).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports, resolved to the longest known module name."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: never imported at run time
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _rank(name: str, layers: list[tuple[str, tuple[str, ...]]]) -> tuple[int, str] | None:
    for i, (layer, prefixes) in enumerate(layers):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i, layer
    return None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_every_module_has_a_layer(graph):
    homeless = [m for m in graph if m not in ("ldm", "taming") and _rank(m, LAYERS) is None]
    assert not homeless, f"modules outside every layer of docs/architecture.md: {homeless}"


@pytest.mark.parametrize("layers", [LAYERS, DATA_LAYERS], ids=["packages", "ldm.data"])
def test_no_import_points_up(graph, layers):
    upward = []
    for name, targets in graph.items():
        own = _rank(name, layers)
        if own is None:
            continue
        for target in sorted(targets):
            theirs = _rank(target, layers)
            if theirs is not None and theirs[0] > own[0]:
                upward.append(f"{name} ({own[1]}) imports {target} ({theirs[1]})")
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_no_import_cycle(graph):
    """Tarjan's strongly connected components over the module graph: each must be one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    # a package's __init__ re-exporting its own modules is not a cycle of the architecture
    cycles = [c for c in cycles if not all(m.startswith(c[0] + ".") or m == c[0] for m in c)]
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The graph reader itself: a relative import, a function-local one, and one for annotations only."""
    known = {"ldm.data.record", "ldm.models.autoencoder", "ldm.data.transforms.normalization", "ldm.inference"}
    probe = tmp_path / "record.py"
    probe.write_text("from typing import TYPE_CHECKING\n"
                     "from .transforms import normalization\n"
                     "if TYPE_CHECKING:\n    from ldm.inference import run_sampling\n"
                     "def f():\n    from ldm.models.autoencoder import VQModelInterface\n")
    found = _imports("ldm.data.record", probe, known)
    assert found == {"ldm.data.transforms.normalization", "ldm.models.autoencoder"}
    assert _rank("ldm.models.autoencoder", LAYERS)[0] > _rank("ldm.data.record", LAYERS)[0]
