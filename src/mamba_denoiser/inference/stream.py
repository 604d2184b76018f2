"""Live serving of one cluster: its held decisions applied to new rows only.

A ``Denoiser.update`` (api.py) adds a day to a history whose decisions are fitted and held.
The batch path would re-serve the grown panel (the filters continue from memoised states,
the networks run the windows of the new rows) but still spends O(T) numpy work per call.
Here each chosen candidate keeps its own live step (``Candidate.stream``: the filters'
recursion states, the combiner's sums, the residual head's priors; a network's window is
cut from the held rows), and a new row costs O(1) rows of work. Every value is the bits
the batch path gives over the grown panel (tests/inference/test_stream.py).
"""

from __future__ import annotations

import numpy as np

from mamba_denoiser.inference.cluster import replayed_choice, setup
from mamba_denoiser.inference.plan import BATCH_WINDOWS
from mamba_denoiser.rows import Rows


class ClusterStream:
    """One cluster's features: a history (T, F), then ``step(new (k, F)) -> (k, F)``, the
    denoised new rows (features left raw, and rows a candidate does not serve, are raw)."""

    def __init__(self, history: np.ndarray, choice: np.ndarray, steps: dict):
        self.held = Rows(history.shape[1])
        self.held.append(history)
        self.steps = steps  # candidate index -> its live step
        self.columns = {k: np.flatnonzero(choice == k) for k in steps}

    def step(self, new: np.ndarray) -> np.ndarray:
        new = np.asarray(new, dtype=np.float64)
        if not len(new):  # no rows: no step (a filter's state stays where it is)
            return new.copy()
        n0 = self.held.n
        self.held.append(new)
        held = self.held.view()
        out = new.copy()
        for k, step in self.steps.items():
            cols = self.columns[k]
            got = step(held, n0)[:, cols]
            ok = np.isfinite(got)
            out[:, cols] = np.where(ok, got, new[:, cols])  # as inference.cluster._assemble
        return out


def stream_cluster(
    model,
    history: np.ndarray,  # (T, F) native units, the rows the decisions were served on
    *,
    train: tuple[int, int],
    replay: dict,
    mode: str = "causal",
    sampler: str = "posterior_mean",
    sampler_kw: dict | None = None,
    candidates: list[str] | None = None,
    seed: int = 0,
    batch_windows: int = BATCH_WINDOWS,
) -> ClusterStream | None:
    """The live step of ``denoise_cluster(model, ..., replay=replay)`` with the same
    options, or None where a chosen candidate has none (SDEdit; offline mode)."""
    if mode != "causal":
        return None
    opts = dict(mode=mode, sampler=sampler, sampler_kw=sampler_kw, candidates=candidates)
    opts |= dict(seed=seed, batch_windows=batch_windows)
    _, _, _, cands = setup(model, history, train, replay, **opts)
    choice = replayed_choice([cd.name for cd in cands], replay)
    steps = {}
    for k in sorted(set(choice.tolist()) - {-1}):
        if not getattr(cands[k], "streaming", False):
            return None
        steps[k] = cands[k].stream(history)
    return ClusterStream(history, choice, steps)
