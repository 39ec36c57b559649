"""The import graph of the five packages points one way.

Layers, bottom first (README, "Architecture"):

0. ``fusion_node`` (wire format, vocabulary, config, rig file, pure core, runtimes, node loop);
1. ``sensors``; 2. ``calibration``; 3. ``models``; 4. ``bench``;
top. the command line and the launcher (``fusion_node.cli``, ``fusion_node.demo``,
``fusion_node.supervisor``), which may import everything and which nothing below imports.

A module may import its own package and packages below it, at module level or inside a
function; and a project module is never imported inside a function (that would be an import
dodging a cycle), except by the top layer, or when the imported module needs torch (the training
stack, which the node's install leaves out: importing it lazily keeps the node light).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RANK = {"fusion_node": 0, "sensors": 1, "calibration": 2, "models": 3, "bench": 4}
TOP = {"fusion_node.cli", "fusion_node.demo", "fusion_node.supervisor", "fusion_node.__main__"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported project module, inside a function?, line) for every import in ``path``."""
    name = _module_name(path)
    package_parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, in_function, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package_parts[: len(package_parts) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                found.append((target, in_function, child.lineno))
            visit(child, nested)

    visit(tree, False)
    return [(t, f, line) for t, f, line in found if t.split(".")[0] in RANK]


def _needs_torch(module: str) -> bool:
    """Whether ``module`` (a project module or package) imports torch at module level."""
    path = ROOT / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    if not path.exists():
        return False
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
        if any(n.split(".")[0] == "torch" for n in names):
            return True
    return False


def _project_modules() -> list[Path]:
    return sorted(p for pkg in RANK for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts)


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in _project_modules():
        if _module_name(path) in TOP:
            continue
        src = _module_name(path).split(".")[0]
        for target, _, _ in _imports(path):
            if target.split(".")[0] != src:
                edges.setdefault(src, set()).add(target.split(".")[0])
    return edges


def test_parser_sees_function_level_and_relative_imports(tmp_path):
    # The checker itself must see what it is asked to forbid: a relative import inside a function.
    pkg = ROOT / "sensors" / "_layering_probe.py"
    pkg.write_text("def f():\n    from ..bench import cli\n    import models.train\n")
    try:
        got = _imports(pkg)
    finally:
        pkg.unlink()
    assert ("bench", True, 2) in got and ("models.train", True, 3) in got


def test_package_graph_has_no_cycle():
    edges = _graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted(p for p in RANK if p in reach(p))
    assert not cycles, f"packages in an import cycle: {cycles}; edges: {edges}"


@pytest.mark.parametrize("path", _project_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    name = _module_name(path)
    if name in TOP:
        return
    own = RANK[name.split(".")[0]]
    wrong = []
    for target, in_function, line in _imports(path):
        if target in TOP:
            wrong.append(f"line {line}: imports the top layer ({target})")
        elif RANK[target.split(".")[0]] > own:
            wrong.append(f"line {line}: imports {target}, a layer above {name.split('.')[0]}")
        elif in_function and not _needs_torch(target):
            wrong.append(f"line {line}: imports {target} inside a function (import it at module level)")
    assert not wrong, f"{path.relative_to(ROOT)}: " + "; ".join(wrong)
