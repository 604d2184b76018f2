"""The candidate set a cluster's gate chooses from: what _build makes of the sampler options."""

from __future__ import annotations

import numpy as np

from mamba_denoiser.inference.cluster import _build


class _Model:
    """Just what _build reads from a ClusterModel before any candidate runs."""

    cluster = {"id": 0, "features": ["a", "b"]}

    def has_head(self, name: str) -> bool:
        return name == "diffusion"


def _sdedit(kw: dict, t_list: list[int]):
    raw = np.zeros((30, 2))
    return _build(
        _Model(),
        ["diffusion"],
        raw,
        raw,
        np.ones(2),
        np.ones(2, bool),
        "causal",
        "sdedit",
        kw,
        0,
        8,
        t_list,
    )


def test_sdedit_runs_each_t_of_the_grid():
    cands = _sdedit({"t_start": None}, [10, 40, 90])
    assert [c.name for c in cands] == ["sdedit@t=10", "sdedit@t=40", "sdedit@t=90"]
    assert [c.t for c in cands] == [10, 40, 90]


def test_an_explicit_t_start_is_one_candidate_named_by_it():
    """Every grid t with sampler.t_start set is the same SDEdit run: once, under its own t."""
    cands = _sdedit({"t_start": 250}, [10, 40, 90])
    assert [c.name for c in cands] == ["sdedit@t=250"] and cands[0].t == 250
