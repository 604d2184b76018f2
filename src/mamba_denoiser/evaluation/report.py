"""Tables of evaluate.py: quality against known clean values, lags, downstream; markdown.

Pure functions of arrays and frames (no models, no Hydra), so they are unit-testable.
"""

from __future__ import annotations

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
