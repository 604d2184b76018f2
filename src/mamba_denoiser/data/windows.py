"""Sliding windows over one cluster's features, fetched a whole batch at a time.

Missing values stay NaN here and travel with an observation mask: nothing is filled with
zeros or future values (DESIGN.md §5.3). The model decides what an unobserved input
looks like (pure noise) and the loss ignores those positions.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


def window_starts(
    observed: np.ndarray,  # (T, F) bool
    *,
    window: int,
    stride: int = 1,
    start: int = 0,
    stop: int | None = None,
    min_observed_frac: float = 0.5,
) -> np.ndarray:
    """Start rows of the windows that lie inside [start, stop) and are not mostly unobserved.

    Rule: a window is kept when at least `min_observed_frac` of its cells (time x feature)
    are observed and its last row has at least one observed value. Vectorised with a
    cumulative sum over rows, so it costs O(T·F) whatever the window.
    """
    stop = observed.shape[0] if stop is None else stop
    if stop - start < window:
        return np.zeros(0, dtype=np.int64)
    n_f = observed.shape[1]
    per_row = observed[start:stop].sum(axis=1)  # (T',)
    csum = np.concatenate([[0], np.cumsum(per_row)])
    s = np.arange(0, stop - start - window + 1, stride)
    frac = (csum[s + window] - csum[s]) / (window * n_f)
    keep = (frac >= min_observed_frac) & (per_row[s + window - 1] > 0)
    return (s[keep] + start).astype(np.int64)


class WindowDataset(Dataset):
    """Windows (L, F) of a scaled (T, F) array; items are dicts {x, mask, start}.

    `__getitems__` gathers a whole batch with one advanced-indexing call, so the
    DataLoader does no per-window Python work (use `collate_batch` as collate_fn).
    """

    def __init__(self, values: np.ndarray, starts: np.ndarray, window: int):
        self.values = torch.as_tensor(np.ascontiguousarray(values), dtype=torch.float32)  # (T, F)
        self.starts = torch.as_tensor(starts, dtype=torch.long)  # (N,)
        self.offsets = torch.arange(window)
        self.window = window

    def __len__(self) -> int:
        return len(self.starts)

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        s = self.starts[torch.as_tensor(indices, dtype=torch.long)]  # (B,)
        x = self.values[s[:, None] + self.offsets]  # (B, L, F)
        return {"x": x, "mask": ~torch.isnan(x), "start": s}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}


def collate_batch(batch):
    """Identity for batches from `__getitems__`; stacks lists of single items otherwise."""
    if isinstance(batch, dict):
        return batch
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}
