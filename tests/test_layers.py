"""The library's import layering: no import circle inside ``dte_lib``, and each module imports only from its own
layer or lower ones, as docs/ARCHITECTURE.md ("Layers") lists them.

Imports are read from the source with ``ast`` — module-level and function-level alike. A function-level import is
still a dependency (the function cannot run without the other module); it only defers the load. The circle this
test was written for was one: ``data.main`` importing ``datacheck``, which imports ``data`` and five modules that
import ``data``, put 13 modules in one circle. Lazy imports stay welcome (``dte`` starts fast) where they point down.
Run it: ``pytest tests/test_layers.py``.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

from dte_lib import config

LIB = config.REPO_ROOT / "dte_lib"
ARCHITECTURE = config.REPO_ROOT / "docs" / "ARCHITECTURE.md"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(LIB.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(LIB.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The ``dte_lib`` modules ``path`` imports, anywhere in the file (``from . import x`` resolves to module x)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                out.add(f"{target}.{a.name}" if f"{target}.{a.name}" in known else target)
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def documented_layers() -> dict[str, int]:
    """Short module name (``data``, ``server`` for the whole package, ``dte_lib`` for the package itself) -> layer."""
    text = ARCHITECTURE.read_text(encoding="utf-8").split("## Layers", 1)[1].split("\n## ", 1)[0]
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"(\d+)\. \*\*", line)
        if m:
            for name in re.findall(r"`([\w.]+)`", line.split(":", 1)[1]):
                assert name not in out, f"{name} is listed in two layers"
                out[name] = int(m.group(1))
    return out


def short(name: str) -> str:
    return "dte_lib" if name == "dte_lib" else name.split(".")[1]


def test_no_import_circle_inside_dte_lib():
    g = graph()
    assert len(g) > 30 and "dte_lib.data" in g and "dte_lib.server.app" in g
    assert circles(g) == [], "import circles (module-level and function-level imports both count)"


def test_the_circle_finder_finds_a_circle_made_by_a_function_level_import(tmp_path):
    g = graph()
    src = tmp_path / "data.py"
    src.write_text("import json\n\n\ndef main():\n    from . import datacheck\n    return datacheck.main()\n")
    assert imports("dte_lib.data", src, set(g)) == {"dte_lib.datacheck"}  # seen inside a function
    g["dte_lib.data"] = imports("dte_lib.data", src, set(g))  # what data.main did before
    assert any({"dte_lib.data", "dte_lib.datacheck", "dte_lib.quality"} <= set(c) for c in circles(g))


def test_data_imports_nothing_from_the_library():
    assert graph()["dte_lib.data"] == set()


def test_every_module_is_in_one_documented_layer_and_imports_only_downward():
    layers = documented_layers()
    g = graph()
    missing = sorted({short(m) for m in g} - set(layers))
    assert not missing, f"add these modules to a layer in docs/ARCHITECTURE.md ('Layers'): {missing}"
    stale = sorted(set(layers) - {short(m) for m in g})
    assert not stale, f"docs/ARCHITECTURE.md lists modules that no longer exist: {stale}"
    upward = [(a, b) for a, targets in g.items() for b in targets if layers[short(b)] > layers[short(a)]]
    assert not upward, f"imports from a higher layer (move the code down, or the module up): {upward}"
    assert layers["data"] == min(layers.values())
