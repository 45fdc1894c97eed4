"""The package's shape: imports point one way, no cycles, short functions (docs/architecture.md, "Layers").

Every module's imports are read with ``ast`` (top-level and inside functions alike), so an import hidden in a
function to dodge a cycle is still seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mammodetr"

# Lower rank = lower layer. A module may import from a lower rank, or from its own package. Packages of equal
# rank are peers and must not import each other.
LAYERS = {
    "mammodetr._version": -1,  # foundations every layer may use
    "mammodetr.atomic": -1,
    "mammodetr.outputs": -1,
    "mammodetr.data": 0,
    "mammodetr.models": 1,
    "mammodetr.config": 2,
    "mammodetr.checkpoint": 3,
    "mammodetr.inference": 4,
    "mammodetr.metrics": 5,
    "mammodetr.explain": 5,
    "mammodetr.sr": 5,
    "mammodetr.training": 6,
    "mammodetr.evaluation": 6,
    "mammodetr.serve": 7,
    "mammodetr.cv": 7,  # trains (training) and scores (evaluation): above both, a peer of serve
    "mammodetr.cli": 8,
    "mammodetr.__main__": 9,
}
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = ["mammodetr", *path.relative_to(SRC).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """In-package modules imported anywhere in the file (``from x import y`` counts y when it is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
    return {m for m in found if m in known and m != name}


def _package(module: str) -> str:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return "mammodetr"


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def test_every_package_has_a_layer(graph):
    unplaced = sorted(m for m in graph if _package(m) == "mammodetr" and m != "mammodetr")
    assert not unplaced, f"modules without a layer in LAYERS: {unplaced}"


def test_imports_point_down(graph):
    bad = []
    for module, targets in graph.items():
        if module == "mammodetr":  # the top level re-exports lazily, by name
            continue
        src = _package(module)
        for target in targets:
            dst = _package(target)
            if dst == "mammodetr" and target == "mammodetr":
                bad.append(f"{module} -> {target} (import the defining module, not the package root)")
            elif dst != src and LAYERS[dst] >= LAYERS[src]:
                bad.append(f"{module} -> {target} ({src} rank {LAYERS[src]} may not import {dst} rank {LAYERS[dst]})")
    assert not bad, "upward or sideways imports:\n" + "\n".join(sorted(bad))


def test_no_import_cycles(graph):
    # Tarjan's strongly connected components over the module graph; a package's __init__ importing its own
    # submodules is a normal edge too.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_function_over_80_lines():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC.parent)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


def test_import_of_the_data_package_stays_torch_free():
    import subprocess
    import sys

    code = ("import sys, mammodetr.data.prepare, mammodetr.data.converters, mammodetr.data.io; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
