"""Shared fixtures: small panels and Hydra configs that run in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    """Tests use tiny tensors: one intra-op thread is as fast, and far faster on a shared,
    busy CPU (a parallel region waits for its slowest thread, which may be descheduled)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_small_panel(n_rows: int = 600, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(frame, clean): a small wide panel (two AR(1), two random walks, a dummy, a late
    starter, targets) and the clean values of its four noisy features (NaN where the frame
    is NaN), from the same draws."""
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((n_rows, 4))
    ar = np.zeros((n_rows, 2))
    for t in range(1, n_rows):  # tiny fixture; clarity over speed
        ar[t] = np.array([0.5, 0.8]) * ar[t - 1] + e[t, :2]
    rw = np.cumsum(e[:, 2:], axis=0)
    dummy = rng.integers(0, 2, n_rows).astype(float)
    noise = {
        "E1": 0.3 * rng.standard_normal(n_rows),
        "E2": 0.3 * rng.standard_normal(n_rows),
        "M1": 0.5 * rng.standard_normal(n_rows),
        "M2": 0.5 * rng.standard_normal(n_rows),
    }
    clean = pd.DataFrame(
        {
            "date_id": np.arange(n_rows),
            "E1": ar[:, 0],
            "E2": ar[:, 1],
            "M1": rw[:, 0],
            "M2": rw[:, 1],
        }
    )
    frame = pd.DataFrame(
        {
            "date_id": np.arange(n_rows),
            "D1": dummy,
            **{f: clean[f] + noise[f] for f in noise},
            "forward_returns": 0.01 * rng.standard_normal(n_rows),
            "risk_free_rate": np.full(n_rows, 1e-4),
            "market_forward_excess_returns": 0.01 * rng.standard_normal(n_rows),
        }
    )
    frame.loc[: n_rows // 5, "M2"] = np.nan  # leading missing history
    clean.loc[: n_rows // 5, "M2"] = np.nan
    return frame, clean


def make_small_frame(n_rows: int = 600, seed: int = 0) -> pd.DataFrame:
    """The noisy frame of make_small_panel."""
    return make_small_panel(n_rows, seed)[0]


@pytest.fixture
def small_frame() -> pd.DataFrame:
    return make_small_frame()


@pytest.fixture
def small_csv(tmp_path: Path, small_frame: pd.DataFrame) -> Path:
    path = tmp_path / "train.csv"
    small_frame.to_csv(path, index=False)
    return path
