"""The package's one table renderer per medium, for every stage (cluster, train sweep,
denoise, evaluate): no stage imports another's package just to print a table.

- ``markdown_table``: THE GitHub markdown table (header, rule, one line per row of text
  cells); ``to_markdown`` formats a frame's numbers for it.
- ``console_tables``: THE console table (rich), every cell in full at the console's width,
  split, never cut.
- ``cell_text``: one number or value as a table cell.

numpy and pandas at import; rich inside ``console_tables``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

# ---- markdown tables -------------------------------------------------------------------


def markdown_table(columns: Sequence[Any], rows: Iterable[Sequence[Any]]) -> str:
    """The package's one GitHub markdown table (no tabulate dependency): a header, the
    rule, one line per row; cells are written as given (str), no trailing newline."""
    lines = ["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def to_markdown(frame: pd.DataFrame, digits: int = 2, index_name: str = "") -> str:
    """`frame` as a markdown table, its index the first column: floats with `digits`
    decimals, counts (a "features" row or column) as integers, missing as '-'."""
    head = [index_name or (frame.index.name or "")] + [str(c) for c in frame.columns]
    rows = []
    for idx, row in frame.iterrows():
        cells = [str(idx)]
        for col, v in row.items():
            if isinstance(v, (float, np.floating)):
                count = "features" in (idx, col) and np.isfinite(v)  # counts print as integers
                cells.append(
                    "-" if not np.isfinite(v) else f"{v:.0f}" if count else f"{v:.{digits}f}"
                )
            else:
                cells.append(str(v))
        rows.append(cells)
    return markdown_table(head, rows)


# ---- console tables ---------------------------------------------------------------------

LABEL_MIN = 16  # label columns may fold down to this many characters
_NUMERIC = re.compile(r"^[-+0-9.,/%e ]*$|^nan$")  # right-justified: numbers, "3/12", "-"


def _fit_widths(mins: list[int], stages: list[list[int]], room: int) -> list[int]:
    """Start every column at its minimum, then hand out the remaining room one character
    at a time to the columns still short of the first stage's target, then the next's."""
    widths = list(mins)
    left = room - sum(widths)
    for target in stages:
        while left > 0:
            short = [i for i, (w, n) in enumerate(zip(widths, target)) if w < n]
            if not short:
                break
            for i in short[:left]:
                widths[i] += 1
            left -= min(len(short), left)
    return widths


def console_tables(cells: pd.DataFrame, *, width: int, title: str = "", keys: int = 1) -> list:
    """Rich tables that show every cell of `cells` (text) in full within `width` columns.

    The first `keys` columns are labels: repeated in every table, they may wrap (and fold
    words longer than LABEL_MIN). Every other cell wraps only at spaces, so a number (one
    word) is never cut, wrapped or ellipsised; the value columns are split over as many
    tables as needed for their widest words to fit, in near-equal consecutive groups.
    """
    from rich.table import Table

    cols = [str(c) for c in cells.columns]
    text = [[str(v) for v in cells.iloc[:, j]] for j in range(len(cols))]

    def longest(strings, split):
        return max(
            [len(p) for s in strings for p in (s.split() if split else s.splitlines())] + [1]
        )

    naturals = [max(longest(t, False), len(c)) for c, t in zip(cols, text)]
    heads = [min(longest([c], True), n) for c, n in zip(cols, naturals)]
    mins = [
        min(naturals[j], LABEL_MIN, longest(text[j] + [cols[j]], True))
        if j < keys
        else longest(text[j], True)
        for j in range(len(cols))
    ]

    def need(group):  # rich's default box: 2 padding + 1 rule per column, +1 rule
        js = list(range(keys)) + group
        return sum(mins[j] for j in js) + 3 * len(js) + 1

    values = list(range(keys, len(cols)))
    groups: list[list[int]] = []
    for j in values:  # greedy, to count the tables needed
        if groups and need(groups[-1] + [j]) <= width:
            groups[-1].append(j)
        else:
            groups.append([j])
    n = len(groups)
    even = [list(a) for a in np.array_split(values, n)] if n > 1 else groups
    if all(need(g) <= width for g in even):
        groups = [[int(j) for j in g] for g in even]
    tables = []
    for k, group in enumerate(groups or [[]]):
        js = list(range(keys)) + group
        ws = _fit_widths(
            [mins[j] for j in js],
            [[heads[j] for j in js], [naturals[j] for j in js]],  # whole header words first
            width - 3 * len(js) - 1,
        )
        part = f" ({k + 1}/{len(groups)})" if len(groups) > 1 else ""
        t = Table(title=(title + part) if title else None)
        for j, w in zip(js, ws):
            right = j >= keys and all(_NUMERIC.match(v) for v in text[j])
            t.add_column(cols[j], width=w, overflow="fold", justify="right" if right else "left")
        for i in range(len(cells)):
            t.add_row(*[text[j][i] for j in js])
        tables.append(t)
    return tables


def cell_text(v, *, count: bool = False, digits: int = 3) -> str:
    """A table cell: integers (and counts) as integers, other numbers with `digits`
    decimals (a value that rounds to zero as 0, never -0), missing as '-'."""
    if v is None or v is pd.NA or v is pd.NaT:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "-"
        if count and float(v).is_integer():
            return str(int(v))
        r = round(float(v), digits)
        return f"{(r if r != 0 else 0.0):.{digits}f}"
    return str(v)
