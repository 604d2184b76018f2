"""The candidate set a cluster's gate chooses from: what _build makes of the sampler options,
and the registry: a new candidate is one class plus one registry line."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from mamba_denoiser.diffusion import VPSDE
from mamba_denoiser.inference.candidates import Context
from mamba_denoiser.inference.cluster import _build, _plan


class _Model:
    """Just what _build reads from a ClusterModel before any candidate runs."""

    cluster = {"id": 0, "features": ["a", "b"]}

    def has_head(self, name: str) -> bool:
        return name == "diffusion"


def _sdedit(kw: dict, t_list: list[int]):
    raw = np.zeros((30, 2))
    ctx = Context(
        model=_Model(),
        raw=raw,
        train=(0, 20),
        sigma_w=np.ones(2),
        usable=np.ones(2, bool),
        mode="causal",
        sampler="sdedit",
        sampler_kw=kw,
        t_list=t_list,
        batch_windows=8,
    )
    return _build(["diffusion"], ctx, None)


def test_sdedit_runs_each_t_of_the_grid():
    cands = _sdedit({"t_start": None}, [10, 40, 90])
    assert [c.name for c in cands] == ["sdedit@t=10", "sdedit@t=40", "sdedit@t=90"]
    assert [c.t for c in cands] == [10, 40, 90]


def test_an_explicit_t_start_is_the_one_t_of_the_plan():
    """sampler.t_start replaces the grid chosen from σ: one SDEdit run, named and recorded
    (decisions t_list) by the t it really starts from."""
    model = _Model()
    model.unit = np.ones(2)
    model.module = SimpleNamespace(sde=VPSDE())
    rng = np.random.default_rng(0)
    raw = np.cumsum(rng.standard_normal((300, 2)), axis=0) + rng.standard_normal((300, 2))
    sigma = np.array([0.5, 2.0])
    grid = _plan(model, raw, (0, 200), sigma, None, 3, 0.5)
    assert len(grid.t_list) > 1 and 250 not in grid.t_list
    plan = _plan(model, raw, (0, 200), sigma, None, 3, 0.5, t_fixed=250)
    assert plan.t_list == [250]
    cands = _sdedit({"t_start": 250}, plan.t_list)
    assert [c.name for c in cands] == ["sdedit@t=250"] and cands[0].t == 250
