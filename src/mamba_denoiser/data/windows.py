"""Sliding windows over one cluster's features, fetched a whole batch at a time.

Missing values stay NaN here and travel with an observation mask: nothing is filled with
zeros or future values (docs/design.md "Honesty rules"). The network sees unobserved cells
as 0 plus a mask bit, and the loss ignores those positions.

Scale-free windows (docs/design.md, "Windows"): one z-score per feature, fitted on the
train split, is not enough for random-walk and trending levels: validation windows sit
far outside the range seen in training. So each window is put on a common scale with a
level taken from inside the window and a train-split constant:

    w = (z - a) / c,        z = (y - mean_f) / std_f   (train-split z-score)

    a  (B, 1, F): the anchor, the mean of the feature's observed values in the window's
                  first `anchor_len` rows; if it has none there, its first observed value.
                  anchor_len = 0: a = 0, the train mean (stationary clusters, train.py).
    c  (F,):      the window scale, the RMS of (z - a) over observed cells of the train
                  split's windows (fit_window_scale), so training windows are ~unit scale.

The anchor uses rows 0..anchor_len-1 of the window (or the first observation), so the
value at window position j >= anchor_len depends on rows <= j only: with a causal
network the window's later positions are causal outputs. The inverse is exact:
z = w · c + a.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from mamba_denoiser.vocabulary import ANCHOR_LEN


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


def window_anchor(
    z: torch.Tensor, mask: torch.Tensor, anchor_len: int = ANCHOR_LEN
) -> torch.Tensor:
    """(B, L, F) values (NaN where unobserved) -> anchor a (B, 1, F); 0 where never observed.

    Mean of the observed values in the first `anchor_len` rows; a feature with none there
    takes its first observed value (a late-starting history), which also lies at or before
    every observed position, so the causal reading of the module docstring holds.
    ``anchor_len=0``: a constant anchor, 0 in z units (the train-split mean), for stationary
    features whose level is better known from the whole train split than from a window's
    first noisy rows (train.py ``stationary_anchor``).
    """
    if anchor_len == 0:
        return torch.zeros((z.shape[0], 1, z.shape[2]), dtype=z.dtype, device=z.device)
    zf = torch.where(mask, z, torch.zeros((), dtype=z.dtype))
    head_n = mask[:, :anchor_len].sum(1, keepdim=True)  # (B, 1, F)
    head_mean = zf[:, :anchor_len].sum(1, keepdim=True) / head_n.clamp(min=1)
    first = mask.float().argmax(1, keepdim=True)  # index of the first True (0 if none)
    first_val = torch.gather(zf, 1, first)  # (B, 1, F)
    return torch.where(head_n > 0, head_mean, first_val)


def normalise_windows(
    z: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor, anchor_len: int = ANCHOR_LEN
) -> tuple[torch.Tensor, torch.Tensor]:
    """z (B, L, F) -> (w = (z - a) / c, a); NaN stays NaN. Inverse: `denormalise_windows`."""
    a = window_anchor(z, mask, anchor_len)
    return (z - a) / scale, a


def denormalise_windows(w: torch.Tensor, anchor: torch.Tensor, scale: torch.Tensor):
    """Exact inverse of `normalise_windows`: z = w · c + a."""
    return w * scale + anchor


def gather_windows(values: torch.Tensor, starts: torch.Tensor, window: int) -> torch.Tensor:
    """(T, F) values, (N,) starts -> (N, L, F) windows with one advanced-indexing call."""
    return values[starts[:, None] + torch.arange(window, device=values.device)]


def fit_window_scale(
    values: np.ndarray, starts: np.ndarray, window: int, anchor_len: int = ANCHOR_LEN
) -> np.ndarray:
    """Per-feature RMS of (z - a) over observed cells of the given (train-split) windows.

    A train-split constant (nothing from validation/test rows); 1.0 for a feature that is
    flat or never observed in those windows.
    """
    v = torch.as_tensor(np.ascontiguousarray(values), dtype=torch.float64)
    z = gather_windows(v, torch.as_tensor(starts, dtype=torch.long), window)  # (N, L, F)
    mask = ~torch.isnan(z)
    dev = z - window_anchor(z, mask, anchor_len)
    sq = torch.where(mask, dev, torch.zeros((), dtype=dev.dtype)).square().sum((0, 1))
    n = mask.sum((0, 1))
    rms = (sq / n.clamp(min=1)).sqrt().numpy()
    return np.where((n.numpy() > 1) & (rms > 1e-12), rms, 1.0)


class WindowDataset(Dataset):
    """Scale-free windows (L, F) of a z-scored (T, F) array; items are dicts
    {x (normalised, NaN where unobserved), mask, anchor, start}.

    ``priors`` (the residual predictive head): a filter's one-step predictions in z units,
    {"mean": (T, F), "var", "var_jump": (T, F), "noise_var": (F, J), "eps": (F, J),
    "jump": (F, 2)}; items then also hold prior_mu (B, L, F) and prior_var (B, L, F, 2)
    in the window's units (the same anchor and scale as x), and the laws (B, F, ·).

    `__getitems__` gathers a whole batch with one advanced-indexing call, so the
    DataLoader does no per-window Python work (use `collate_batch` as collate_fn).
    """

    def __init__(
        self,
        values: np.ndarray,
        starts: np.ndarray,
        window: int,
        scale: np.ndarray | None = None,
        anchor_len: int = ANCHOR_LEN,
        priors: dict[str, np.ndarray] | None = None,
    ):
        self.values = torch.as_tensor(np.ascontiguousarray(values), dtype=torch.float32)  # (T, F)
        self.priors = None
        if priors is not None:
            self.priors = {
                k: torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float32)
                for k, v in priors.items()
            }
        self.starts = torch.as_tensor(starts, dtype=torch.long)  # (N,)
        n_f = self.values.shape[1]
        scale = np.ones(n_f) if scale is None else np.asarray(scale)
        self.scale = torch.as_tensor(scale, dtype=torch.float32)  # (F,)
        self.window, self.anchor_len = window, anchor_len

    def __len__(self) -> int:
        return len(self.starts)

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        s = self.starts[torch.as_tensor(indices, dtype=torch.long)]  # (B,)
        z = gather_windows(self.values, s, self.window)  # (B, L, F)
        mask = ~torch.isnan(z)
        x, anchor = normalise_windows(z, mask, self.scale, self.anchor_len)
        item = {"x": x, "mask": mask, "anchor": anchor, "start": s}
        if self.priors is not None:
            p, c = self.priors, self.scale
            item["prior_mu"] = (gather_windows(p["mean"], s, self.window) - anchor) / c
            var = torch.stack([p["var"], p["var_jump"]], -1)  # (T, F, 2)
            item["prior_var"] = gather_windows(var, s, self.window) / c.square()[:, None]
            item["noise_var"] = (p["noise_var"] / c.square()[:, None]).expand(len(s), -1, -1)
            item["eps"] = p["eps"].expand(len(s), -1, -1)
            item["jump"] = p["jump"].expand(len(s), -1, -1)
            if "target" in p:  # future targets, a location like x
                item["target"] = (gather_windows(p["target"], s, self.window) - anchor) / c
        return item

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([i]).items()}


def collate_batch(batch):
    """Identity for batches from `__getitems__`; stacks lists of single items otherwise."""
    if isinstance(batch, dict):
        return batch
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}
