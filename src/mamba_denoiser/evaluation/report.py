"""Tables of evaluate.py: quality against known clean values, lags, downstream; markdown.

Pure functions of arrays and frames (no models, no Hydra), so they are unit-testable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from mamba_denoiser.evaluation.metrics import lag, snr_gain_db


def quality_table(
    raw: np.ndarray,  # (T, F) observed
    clean: np.ndarray,  # (T, F) known clean values
    outputs: Mapping[str, np.ndarray],  # method -> (T, F)
    names: Sequence[str],
    rows: slice,
) -> pd.DataFrame:
    """SNR gain (dB) per feature (rows) and method (columns) over `rows`; raw = 0 dB."""
    data = {m: snr_gain_db(raw, out, clean, rows=rows) for m, out in outputs.items()}
    return pd.DataFrame(data, index=list(names))


def lag_table(
    clean: np.ndarray, outputs: Mapping[str, np.ndarray], names: Sequence[str], rows: slice
) -> pd.DataFrame:
    """Lag (rows) of each output behind the clean series: cross-correlation peak of levels."""
    data = {}
    for m, out in outputs.items():
        lags = []
        for j in range(len(names)):
            try:
                lags.append(lag(out[rows, j], clean[rows, j], max_lag=20, on="levels"))
            except ValueError:
                lags.append(np.nan)
        data[m] = lags
    return pd.DataFrame(data, index=list(names))


def grouped(table: pd.DataFrame, groups: Mapping[str, str]) -> pd.DataFrame:
    """Mean over the features of each group (e.g. cluster type), plus a feature count."""
    key = pd.Series({f: groups.get(f, "?") for f in table.index})
    out = table.groupby(key).mean()
    out.insert(0, "features", key.value_counts().reindex(out.index).astype(int))
    return out


def best_column(table: pd.DataFrame, candidates: Sequence[str]) -> pd.Series:
    """Per row, the name of the best (largest) of `candidates`."""
    cols = [c for c in candidates if c in table.columns]
    return table[cols].idxmax(axis=1)


def to_markdown(frame: pd.DataFrame, digits: int = 2, index_name: str = "") -> str:
    """A GitHub markdown table (no tabulate dependency)."""
    head = [index_name or (frame.index.name or "")] + [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
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
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
