"""Shared fixtures: small panels and Hydra configs that run in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.helpers import make_small_frame, make_small_panel  # noqa: F401  (tests import them here too)


@pytest.fixture(autouse=True)
def _single_thread():
    """Tests use tiny tensors: one intra-op thread is as fast, and far faster on a shared,
    busy CPU (a parallel region waits for its slowest thread, which may be descheduled)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def small_frame() -> pd.DataFrame:
    return make_small_frame()


@pytest.fixture
def small_csv(tmp_path: Path, small_frame: pd.DataFrame) -> Path:
    path = tmp_path / "train.csv"
    small_frame.to_csv(path, index=False)
    return path
