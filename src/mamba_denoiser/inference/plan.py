"""Which windows serve which rows, and running a window function over a whole panel.

Rules (docs/design.md, "Denoising"):

causal, causal model -- overlapping chunks. Chunk k covers rows [s_k, s_k + L) with
    s_k = k·h, h = L // 2, so every row is served by a chunk in which it sits at window
    position >= L - h >= anchor_len. The row at position j of its chunk is computed from
    rows s_k .. s_k + j only: the network is causal, and the window's level (its anchor)
    comes from positions < anchor_len <= j (data/windows.py). The last chunk is the next
    regular one, truncated at row T-1 (its later rows are NaN padding, unobserved), so a
    row's chunk and position, hence its value, never depend on how many rows follow it:
    what a live run computes on day t is what a later backtest shows. The panel's first
    anchor_len rows have no causal anchor and pass through raw. Cost: about 2T/L windows.
causal, bidirectional model -- the window ending at row t, last position, for every
    t >= L-1 (T windows: the slow path); rows t < L-1 pass through raw.
offline (two-sided, uses FUTURE rows) -- windows with stride L // 4, every position,
    the values of all windows covering a row averaged. For analysis only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch

from mamba_denoiser.data.windows import gather_windows

MODES = ("causal", "offline")
# Windows per network call, batch and live alike. Every call gets exactly this many
# (run_windows pads), so a row's value does not depend on which other windows run: an
# update serves its new row's window in a call of this size and gives the batch bits.
# 8, not 32: an update's call (one window, padded) costs 0.41x that of a 32-window call,
# while a whole panel's windows cost 1.7x (the per-call overhead: 1 and 4 windows cost
# 0.25x / 0.37x per update but 7x / 2.4x per panel; benchmarks/streaming.py, 2 cores).
BATCH_WINDOWS = 8

# fn(w (B, L, F) window units, NaN unobserved; mask (B, L, F)) -> {"mean": ..., "div": ...}
WindowFn = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


@functools.lru_cache(maxsize=64)
def serving_plan(
    n_rows: int, window: int, anchor_len: int, mode: str, direction: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> (starts (N,), rows (M,), positions (M,), window index (M,)): the windows to run
    and, for each served row, which window and position serve it. Offline returns every
    (window, position) pair, so rows repeat (they are averaged). Rules: module docstring.
    Memoised (an update asks for the same panel's plan again): the arrays are read-only."""
    plan = _serving_plan(n_rows, window, anchor_len, mode, direction)
    for a in plan:
        a.flags.writeable = False
    return plan


def _serving_plan(n_rows: int, window: int, anchor_len: int, mode: str, direction: str):
    if n_rows < window:
        raise ValueError(f"{n_rows} rows is fewer than one window of {window}")
    if mode == "offline":
        stride = max(window // 4, 1)
        starts = np.arange(0, n_rows - window + 1, stride)
        if starts[-1] != n_rows - window:
            starts = np.append(starts, n_rows - window)
        w_idx = np.repeat(np.arange(len(starts)), window)
        pos = np.tile(np.arange(window), len(starts))
        return starts, starts[w_idx] + pos, pos, w_idx
    if mode != "causal":
        raise ValueError(f"mode={mode!r}: choose one of {MODES}")
    if direction == "bidirectional":
        starts = np.arange(0, n_rows - window + 1)
        pos = np.full(len(starts), window - 1)
        return starts, starts + window - 1, pos, np.arange(len(starts))
    h = window // 2
    if window - h < anchor_len:
        raise ValueError(f"anchor_len {anchor_len} must be <= window - window // 2")
    # chunks at k·h until one reaches the last row; the last may run past it (the rows
    # after T-1 are NaN padding): where a row is served never depends on how many follow
    n_chunks = 1 + -(-(n_rows - window) // h)  # 1 + ceil((T - L) / h)
    starts = np.arange(n_chunks) * h
    first = np.full(n_chunks, window - h)
    first[0] = anchor_len
    # chunk k serves its positions first[k] .. min(L, T - s_k) - 1 (vectorised: an update
    # asks for the plan of a panel one row longer each time)
    count = np.maximum(np.minimum(window, n_rows - starts) - first, 0)
    w_idx = np.repeat(np.arange(n_chunks), count)
    offset = np.repeat(np.cumsum(count) - count, count)  # the chunk's first entry
    pos = np.arange(len(w_idx)) - offset + first[w_idx]
    return starts, starts[w_idx] + pos, pos, w_idx


def window_of_row(rows: np.ndarray, window: int, anchor_len: int, direction: str) -> np.ndarray:
    """(k,) row indices -> the start of the causal plan's window that serves each, or -1
    (the row passes through raw): ``serving_plan``'s rule in closed form, which does not
    depend on the panel's length, so a live update finds its new row's window without
    planning the whole panel."""
    rows = np.asarray(rows, dtype=np.int64)
    if direction == "bidirectional":  # the window ending at the row
        return np.where(rows >= window - 1, rows - window + 1, -1)
    h = window // 2  # chunk k >= 1 serves rows k·h + L - h .. k·h + L - 1
    start = np.where(rows < window, 0, ((rows - window) // h + 1) * h)
    return np.where(rows >= anchor_len, start, -1)


def run_windows(
    model,
    raw: np.ndarray,  # (T, F) native units, NaN where unobserved
    fn: WindowFn,
    *,
    mode: str,
    batch_windows: int = BATCH_WINDOWS,
    progress=None,
    rows: np.ndarray | None = None,
    aux: dict[str, tuple[str, np.ndarray]] | None = None,
) -> dict[str, np.ndarray]:
    """Every window of the serving plan through ``fn``; outputs back on the panel's rows.

    "mean" (and any key starting with "mean") is a value in window units, mapped back to
    native units exactly (w·c + a, then the z-score inverse); any other key (e.g. "div",
    the derivative of the output at a row w.r.t. the observation at that row) is unitless
    and assembled as it is. Rows the plan does not serve, and unobserved cells, are NaN.
    ``rows`` (T,) bool: only the windows that serve these rows are run, and the other rows
    are NaN; a wanted row's value is the one the whole run gives (a window's output depends
    on its own input only), which lets a leakage check re-run a few windows per cut.
    ``aux``: name -> (kind, (T, F) native array) of per-row inputs that ``fn`` also needs,
    passed as ``fn(w, mask, aux)`` in the window's units: kind "loc" (a value of the
    feature: the same z-score, anchor and scale as y) or "var" (a variance: divided by
    the squared unit). The residual head's filter predictions travel this way.
    """
    T, F = raw.shape
    starts, served, pos, w_idx = serving_plan(
        T, model.window, model.anchor_len, mode, model.direction
    )
    if rows is not None:
        starts, served, pos, w_idx = _restrict(starts, served, pos, w_idx, rows)
    sc = model.scaler
    # only the rows the windows read are converted (elementwise: the same bits as a
    # conversion of the whole panel), so serving a few rows costs a few windows
    lo, hi = int(starts.min()), int(starts.max()) + model.window
    starts = starts - lo
    z = torch.as_tensor(sc.to_z(raw[lo:hi]))  # (hi - lo, F) float32, before padding
    pad = hi - max(T, lo)  # a causal plan's last chunk may run past T-1
    aux_z = {
        k: (kind, torch.as_tensor(sc.to_z(a[lo:hi]) if kind == "loc" else a[lo:hi] / sc.std**2))
        for k, (kind, a) in (aux or {}).items()
    }
    if pad > 0:  # unobserved padding: a causal network never reads it for rows <= T-1
        z = torch.cat([z, torch.full((pad, F), float("nan"), dtype=z.dtype)])
        nan = torch.full((pad, F), float("nan"))
        aux_z = {k: (kind, torch.cat([a, nan.to(a.dtype)])) for k, (kind, a) in aux_z.items()}
    n_win = len(starts)
    wins: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for b0 in range(0, n_win, batch_windows):
            n = min(batch_windows, n_win - b0)
            # always a full batch (the last padded with copies of its first window): with
            # one batch shape, a window's output is bit-identical whichever windows share
            # its batch (measured; not so across batch sizes: float32 GEMM blocking), so
            # a longer panel or a run over a few rows gives every row the same value
            s = torch.as_tensor(np.pad(starts[b0 : b0 + n], (0, batch_windows - n), "edge"))
            zw = gather_windows(z, s, model.window)  # (B, L, F)
            mask = ~torch.isnan(zw)
            w, anchor = sc.to_windows(zw, mask)
            if aux is None:
                res = fn(w, mask)
            else:
                c = torch.as_tensor(sc.window_scale, dtype=anchor.dtype)
                res = fn(w, mask, _aux_windows(aux_z, s, model.window, anchor, c))
            for key, v in res.items():
                if key not in wins:
                    wins[key] = np.full((n_win, model.window, F), np.nan, np.float32)
                v = sc.from_windows(v, anchor) if key.startswith("mean") else v
                wins[key][b0 : b0 + n] = v[:n].float().numpy()
            if progress is not None:
                progress(min(b0 + batch_windows, n_win), n_win)
    out = {}
    for key, v in wins.items():
        vals = v[w_idx, pos]  # (M, F)
        if mode == "offline":
            acc, cnt = np.zeros((T, F)), np.zeros((T, F))
            good = ~np.isnan(vals)
            np.add.at(acc, served, np.where(good, vals, 0.0))
            np.add.at(cnt, served, good)
            full = np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)
            if key.startswith("mean"):
                full = sc.to_native(full)
        else:  # each row once: only the rows served are mapped back (elementwise)
            full = np.full((T, F), np.nan)
            full[served] = sc.to_native(vals.astype(np.float64)) if key.startswith("mean") else vals
        if rows is not None:  # an offline row outside ``rows`` may lack some windows
            full[~rows] = np.nan
        out[key] = np.where(np.isnan(raw), np.nan, full)
    return out


def _aux_windows(aux_z, starts, window, anchor, c) -> dict[str, torch.Tensor]:
    """``run_windows``'s aux inputs of one batch of windows, in window units (float32)."""
    out = {}
    for k, (kind, a) in aux_z.items():
        aw = gather_windows(a, starts, window).to(anchor.dtype)  # (B, L, F)
        out[k] = (aw - anchor) / c if kind == "loc" else aw / c.square()
    return out


def _restrict(starts, served, pos, w_idx, rows: np.ndarray):
    """The plan cut down to the windows that serve a row where ``rows`` is True (at least
    one window, so every output key exists)."""
    keep = np.unique(w_idx[rows[served]])
    if len(keep) == 0:
        keep = np.array([0])
    sel = np.isin(w_idx, keep)
    renum = np.full(len(starts), -1)
    renum[keep] = np.arange(len(keep))
    return starts[keep], served[sel], pos[sel], renum[w_idx[sel]]
