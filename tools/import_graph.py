"""Import cycles between the modules of src/: prints them, exits 1 if there is any.

    python tools/import_graph.py [--src SRC] [--package mamba_denoiser]

Every ``import`` / ``from ... import`` statement counts, wherever it is in the file: at the
top, inside a function or a class, under ``try``. Only those under ``if TYPE_CHECKING:``
are left out (they never run). A function-local import does not fail at import time the
way a top-level cycle does, but it still ties the two modules together, which is what
this checker is about.

How an import becomes an edge, importer -> imported module (modules outside the package
are ignored):

- ``import a.b.c``: to ``a.b.c`` (the longest prefix of it that is a module of src/);
- ``from a.b import name``: to the submodule ``a.b.name`` if that is a module, else to
  ``a.b``; relative imports (``from . import x``, ``from ..scan import y``) are resolved
  against the importing module's package first;
- a package ``a.b`` is the module ``a/b/__init__.py``. Importing ``a.b.c`` also runs the
  ``__init__.py`` of ``a`` and ``a.b``, but that is no edge here: a package's
  ``__init__`` re-exporting its submodules is no cycle with them.

Dynamic imports (``importlib.import_module(f"...")``, ``__import__``) are not seen.

The strongly connected components of more than one module are the cycles (Tarjan's
algorithm, plain Python). ``find_cycles`` returns them, for tests; each is printed with
the import lines that close it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

Graph = dict[str, dict[str, list[int]]]  # importer -> imported -> line numbers


def module_files(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under src/package."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _import_nodes(tree: ast.AST):
    """Every Import / ImportFrom node in the tree, except under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the else branch does run
            continue
        stack.extend(ast.iter_child_nodes(node))


def _known_prefix(name: str, modules: dict[str, Path]) -> str | None:
    """The longest dotted prefix of name that is a module of src/, or None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _resolve_base(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
    """The absolute module name ``from <base> import ...`` refers to (None if it escapes)."""
    if node.level == 0:
        return node.module
    package = module if is_package else module.rpartition(".")[0]
    parts = package.split(".") if package else []
    if node.level - 1 > len(parts):
        return None
    parts = parts[: len(parts) - (node.level - 1)]
    if node.module:
        parts.append(node.module)
    return ".".join(parts) if parts else None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> dict[str, list[int]]:
    """Modules of src/ that ``module`` imports -> the line numbers of those imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: dict[str, list[int]] = {}

    def add(target: str | None, line: int) -> None:
        if target is not None and target != module:
            found.setdefault(target, []).append(line)

    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(_known_prefix(alias.name, modules), node.lineno)
            continue
        base = _resolve_base(node, module, is_package)
        if base is None:
            continue
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            add(
                sub if alias.name != "*" and sub in modules else _known_prefix(base, modules),
                node.lineno,
            )
    return found


def build_graph(src: Path, package: str = "mamba_denoiser") -> Graph:
    """The import graph of src/package: importer -> {imported: [line, ...]}."""
    modules = module_files(src, package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return sorted(components)


def find_cycles(src: Path, package: str = "mamba_denoiser") -> list[list[str]]:
    """The import cycles of src/package: components of more than one module, sorted."""
    return [c for c in strongly_connected(build_graph(src, package)) if len(c) > 1]


def describe(cycle: list[str], graph: Graph) -> list[str]:
    """The imports inside one cycle, one 'importer -> imported (lines)' line each."""
    members = set(cycle)
    lines = []
    for importer in cycle:
        for imported, at in sorted(graph[importer].items()):
            if imported in members:
                where = ", ".join(str(n) for n in sorted(set(at)))
                lines.append(f"    {importer} -> {imported}  (line {where})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    parser.add_argument("--package", default="mamba_denoiser")
    args = parser.parse_args(argv)
    graph = build_graph(args.src, args.package)
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    if not cycles:
        print(f"no import cycles among the {len(graph)} modules of {args.package}")
        return 0
    print(f"{len(cycles)} import cycle(s) among the {len(graph)} modules of {args.package}:")
    for i, cycle in enumerate(cycles, 1):
        print(f"{i}. {' <-> '.join(cycle)}")
        print("\n".join(describe(cycle, graph)))
    return 1


if __name__ == "__main__":
    sys.exit(main())
