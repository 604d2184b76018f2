"""The longest functions in src/ (lines from `def` to the last line of the body).

python tools/function_lengths.py            # the 10 longest
python tools/function_lengths.py --max 100  # exit 1 if any is longer than 100 lines
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def function_lengths(src: Path = SRC) -> list[tuple[int, str]]:
    """(lines, "path:line name") for every function and method under ``src``, longest first."""
    out = []
    for path in sorted(src.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                n = node.end_lineno - first + 1
                out.append((n, f"{path.relative_to(src.parent)}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--max", type=int, default=None, help="fail above this many lines")
    args = ap.parse_args()
    lengths = function_lengths()
    for n, where in lengths[: args.top]:
        print(f"{n:5d}  {where}")
    if args.max is not None:
        over = [w for n, w in lengths if n > args.max]
        if over:
            print(f"{len(over)} function(s) over {args.max} lines")
            return 1
        print(f"no function over {args.max} lines")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
