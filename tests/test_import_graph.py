"""tools/import_graph.py: it finds import cycles (function-local ones too), and models/ has none."""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_checker():
    spec = importlib.util.spec_from_file_location(
        "import_graph", ROOT / "tools" / "import_graph.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_module_of_src_is_in_an_import_cycle():
    """Imports point downward across the whole package, function-local imports included."""
    assert load_checker().find_cycles(ROOT / "src") == []


def write_package(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_checker_finds_a_function_local_cycle(tmp_path, capsys):
    write_package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.a import f\n",
            # a and b import each other only inside functions: no ImportError, still a cycle
            "pkg/a.py": """
                from pkg import c

                def f():
                    from pkg import b
                    return b.g
            """,
            "pkg/b.py": """
                def g():
                    from . import a  # relative, resolved against pkg
                    return a.f
            """,
            # c imports a only for type checking: that never runs, so no cycle a <-> c
            "pkg/c.py": """
                from typing import TYPE_CHECKING

                if TYPE_CHECKING:
                    from pkg.a import f
            """,
            "pkg/sub/__init__.py": "",
            "pkg/sub/d.py": "from ..c import TYPE_CHECKING\n",
        },
    )
    checker = load_checker()
    graph = checker.build_graph(tmp_path, "pkg")
    assert set(graph["pkg.a"]) == {"pkg.b", "pkg.c"}  # `from pkg import b` -> the submodule
    assert set(graph["pkg.c"]) == set()
    assert set(graph["pkg.sub.d"]) == {"pkg.c"}
    assert checker.find_cycles(tmp_path, "pkg") == [["pkg.a", "pkg.b"]]
    assert checker.main(["--src", str(tmp_path), "--package", "pkg"]) == 1
    assert "pkg.a <-> pkg.b" in capsys.readouterr().out

    (tmp_path / "pkg/b.py").write_text("def g():\n    return None\n")
    assert checker.find_cycles(tmp_path, "pkg") == []
    assert checker.main(["--src", str(tmp_path), "--package", "pkg"]) == 0
