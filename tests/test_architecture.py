"""The package's layout holds: imports run downward only, with no loop and no import put
inside a function to dodge one (docs/design.md §6).

Every ``import`` of the source tree is read with :mod:`ast` (function bodies included) and
resolved to the module it loads. Each top-level part of ``apb`` stands on one floor of
``FLOORS``; a module may import modules of its own part and of parts on lower floors. The
package root (``apb/__init__.py``) is the public face: it may import any part, and no part
imports it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

FLOORS: tuple[tuple[str, ...], ...] = (
    ("_version", "io", "console"),
    ("memory", "kernels", "models", "data", "hf"),
    ("nn",),
    ("pack",),
    ("summary",),
    ("methods",),
    ("train",),
    ("prune",),
    ("jobs",),
    ("bench",),
    ("compare",),
    ("cli",),
)
"""Bottom first. ``cli`` runs every job; ``jobs`` join training, pruning, packing and data;
``train`` builds models with ``methods``; ``pack`` turns ``nn`` layers into kernel calls."""


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module, dotted
    line: int
    in_function: bool


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_imports(src: Path, package: str = "apb") -> tuple[set[str], list[Import]]:
    """``(modules, imports)``: every module of ``package`` under ``src`` and every import
    from one of them to another, resolved to the module it loads."""
    files = {module_name(p, src): p for p in sorted((src / package).rglob("*.py"))}
    modules = set(files)
    found: list[Import] = []
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, in_function in _walk(tree, False):
            for target in _targets(node, name, is_package, modules):
                if target != name:
                    found.append(Import(name, target, node.lineno, in_function))
    return modules, found


def _walk(node: ast.AST, in_function: bool):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        yield from _walk(child, in_function or isinstance(
            child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))


def _targets(node, name: str, is_package: bool, modules: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [_deepest(a.name, modules) for a in node.names if _deepest(a.name, modules)]
    if node.level:
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        stem = ".".join(base + ([node.module] if node.module else []))
    else:
        stem = node.module or ""
    if stem not in modules:
        resolved = _deepest(stem, modules)
        return [resolved] if resolved else []
    # ``from package import name``: the submodule when ``name`` is one, else the package.
    return [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]


def _deepest(dotted: str, modules: set[str]) -> str | None:
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def part_of(module: str) -> str:
    """The top-level part a module belongs to (``apb.pack.xor.file`` → ``pack``); the
    package root is ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def floor_of(part: str, floors=FLOORS) -> int:
    for i, names in enumerate(floors):
        if part in names:
            return i
    raise KeyError(part)


def layout_violations(src: Path, floors=FLOORS, package: str = "apb") -> list[str]:
    """What breaks the layout, one line each (empty when it holds)."""
    modules, imports = read_imports(src, package)
    problems = []
    for part in sorted({part_of(m) for m in modules} - {""}):
        try:
            floor_of(part, floors)
        except KeyError:
            problems.append(f"{package}.{part} stands on no floor: add it to FLOORS")
    for imp in imports:
        where = f"{imp.source}:{imp.line}"
        if imp.in_function:
            problems.append(f"{where} imports {imp.target} inside a function")
        src_part, dst_part = part_of(imp.source), part_of(imp.target)
        if dst_part == "":
            problems.append(f"{where} imports the package root {imp.target}")
        elif src_part not in ("", dst_part):
            try:
                up = floor_of(dst_part, floors) >= floor_of(src_part, floors)
            except KeyError:
                continue  # reported above
            if up:
                problems.append(f"{where} imports {imp.target}, which is not on a lower floor")
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(modules, imports)]
    return list(dict.fromkeys(problems))


def cycles(modules: set[str], imports: list[Import]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        graph[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
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
                found.append(sorted(component))

    for m in sorted(modules):
        if m not in index:
            visit(m)
    return found


def test_apb_imports_run_downward_without_cycles():
    problems = layout_violations(SRC)
    assert not problems, "\n".join(problems)


def test_no_source_file_over_500_lines():
    long = {str(p.relative_to(SRC)): n for p in (SRC / "apb").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert not long, long


# -- the checker itself finds what it must ----------------------------------------------------
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


FLOORS_AB = (("low",), ("high",))


def test_checker_accepts_a_downward_tree(tmp_path):
    src = _tree(tmp_path, {"__init__.py": "from . import high\n",
                           "low/__init__.py": "", "low/a.py": "X = 1\n",
                           "high/__init__.py": "from ..low.a import X\nfrom . import b\n",
                           "high/b.py": "from ..low import a\n"})
    assert layout_violations(src, FLOORS_AB, "pkg") == []


@pytest.mark.parametrize("files, expected", [
    ({"low/a.py": "from ..high import b\n", "high/b.py": ""}, "not on a lower floor"),
    ({"low/a.py": "from . import c\n", "low/c.py": "from .a import f\n"}, "import cycle"),
    ({"low/a.py": "def f():\n    from . import c\n", "low/c.py": ""}, "inside a function"),
    ({"low/a.py": "from .. import VERSION\n"}, "package root"),
    ({"middle/a.py": ""}, "stands on no floor"),
    ({"low/__init__.py": "from .a import f\n", "low/a.py": "from . import f\n"},
     "import cycle"),
])
def test_checker_reports_each_kind_of_violation(tmp_path, files, expected):
    src = _tree(tmp_path, {"__init__.py": "", "low/__init__.py": "", "high/__init__.py": "",
                           **files})
    problems = layout_violations(src, FLOORS_AB, "pkg")
    assert any(expected in p for p in problems), problems
