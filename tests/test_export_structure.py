"""The exporter's modules import one way (issue 23): no import circle, and no module reaching for a
private name of another (what a module exports is what it means to share)."""

from __future__ import annotations

import ast
from pathlib import Path

EXPORT = Path(__file__).resolve().parent.parent / "export"


def _imports() -> dict[str, list[tuple[str, str]]]:
    """module -> [(imported module, imported name)] for every import inside musicgen_onnx.export, at any depth
    (an import inside a function closes a circle as surely as one at the top)."""
    modules = {p.stem for p in EXPORT.glob("*.py")}
    found: dict[str, list[tuple[str, str]]] = {}
    for path in EXPORT.glob("*.py"):
        edges = found.setdefault(path.stem, [])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or node.level != 1:
                continue
            for alias in node.names:
                if node.module is None and alias.name in modules:  # from . import x
                    edges.append((alias.name, ""))
                elif node.module in modules:  # from .x import name
                    edges.append((node.module, alias.name))
    return found


def test_export_modules_import_without_circles():
    graph = {m: {target for target, _ in edges if target != m} for m, edges in _imports().items()}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path[path.index(target):], target]))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_export_module_imports_a_private_name_of_another():
    private = [f"{m} imports {target}.{name}" for m, edges in _imports().items() for target, name in edges
               if name.startswith("_") and not name.startswith("__")]
    assert not private, private
