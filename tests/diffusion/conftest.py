"""Tiny tensors only: one intra-op thread is as fast, and far faster on a shared, busy CPU
(a parallel region waits for its slowest thread, which may be descheduled)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
