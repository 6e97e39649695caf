"""The package's import graph, read from the source (no import runs): no module imports another that
imports it back, directly or around a circle, and none reaches for another module's private names.

Every import counts, a lazy one inside a function too: a circle that only works because one side
imports late is still two modules that each need the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "musicgen_onnx"
# The parts of the package held to these rules. export/ joins once its circles are gone (issue 23).
SCOPE = ("runtime", "serve", "export", "cli.py", "__init__.py")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module in SCOPE."""
    found = {}
    for part in SCOPE:
        path = ROOT / part
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            rel = file.relative_to(ROOT).with_suffix("")
            names = list(rel.parts)
            if names[-1] == "__init__":
                names = names[:-1]
            found[".".join([PACKAGE, *names])] = file
    return found


def _is_package(name: str) -> bool:
    return (ROOT.joinpath(*name.split(".")[1:]) / "__init__.py").is_file() if name != PACKAGE else True


def _is_module(name: str) -> bool:
    rel = ROOT.joinpath(*name.split(".")[1:])
    return _is_package(name) or rel.with_suffix(".py").is_file()


def _imports(name: str, file: Path) -> tuple[set[str], list[str]]:
    """The package modules ``name`` imports, and its uses of other modules' private names."""
    tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
    package = name if _is_package(name) else name.rsplit(".", 1)[0]
    edges, private = set(), []
    module_aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    edges.add(alias.name)
                    module_aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not (source == PACKAGE or source.startswith(PACKAGE + ".")):
                continue
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if _is_module(target):
                    edges.add(target)
                    module_aliases[alias.asname or alias.name] = target
                else:
                    edges.add(source)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append(f"{name} imports {alias.name} from {source}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in module_aliases and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            private.append(f"{name} uses {module_aliases[node.value.id]}.{node.attr}")
    edges.discard(name)
    return edges, private


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = _modules()
    graph, private = {}, []
    for name, file in modules.items():
        edges, bad = _imports(name, file)
        graph[name] = {e for e in edges if e in modules}
        private += bad
    return graph, private


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    graph, _ = _graph()
    assert len(graph) > 30, "the scan found too few modules: the paths are wrong"
    assert _circles(graph) == []


def test_no_private_name_crosses_modules():
    _, private = _graph()
    assert private == []


@pytest.mark.parametrize("source, circles, private", [
    ("from . import b\n", [["musicgen_onnx.runtime.a", "musicgen_onnx.runtime.b"]], []),
    ("def f():\n    from .b import _hidden\n", [["musicgen_onnx.runtime.a", "musicgen_onnx.runtime.b"]],
     ["musicgen_onnx.runtime.a imports _hidden from musicgen_onnx.runtime.b"]),
    ("from . import b as other\nx = other._hidden\n", [["musicgen_onnx.runtime.a", "musicgen_onnx.runtime.b"]],
     ["musicgen_onnx.runtime.a uses musicgen_onnx.runtime.b._hidden"]),
])
def test_the_checks_see_what_they_should(source, circles, private, tmp_path, monkeypatch):
    """The scan itself on a made-up pair: b imports a, and a imports b back in each way the rules forbid."""
    package = tmp_path / "runtime"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(source)
    (package / "b.py").write_text("from .a import thing\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "SCOPE", ("runtime",))
    graph, found_private = _graph()
    assert _circles(graph) == circles
    assert found_private == private
