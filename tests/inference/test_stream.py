"""Live serving (inference/stream.py): each candidate's live step gives the bits of the
batch path over the grown panel, one row or many at a time, through chunk boundaries and
missing cells; and the closed-form window of a row is the serving plan's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mamba_denoiser import robust
from mamba_denoiser.data.scaler import Scaler
from mamba_denoiser.inference import denoise_cluster
from mamba_denoiser.inference.models import ClusterModel
from mamba_denoiser.inference.plan import serving_plan, window_of_row
from mamba_denoiser.inference.stream import stream_cluster
from mamba_denoiser.network import ClusterNetwork
from tests.diffusion.test_residual import _panel, net_cluster

WINDOW, ANCHOR = 60, 10


@pytest.mark.parametrize("window,anchor_len", [(60, 10), (61, 10), (16, 4), (60, 30)])
@pytest.mark.parametrize("direction", ["causal", "bidirectional"])
def test_the_window_of_a_row_is_the_serving_plans(window, anchor_len, direction):
    for T in (window, window + 1, 3 * window + 7, 500):
        starts, served, _, w_idx = serving_plan(T, window, anchor_len, "causal", direction)
        want = np.full(T, -1)
        want[served] = starts[w_idx]
        got = window_of_row(np.arange(T), window, anchor_len, direction)
        np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def setup():
    """Four features (outliers, a late start, a gap, jumps; test_residual._panel) and a
    network with both heads, the predictive one residual, weights moved off their start
    so that every part of the window computation matters."""
    raw, _ = _panel(T=1400)
    train = (0, 900)
    torch.manual_seed(0)
    net = ClusterNetwork(
        cluster=net_cluster(4) | {"strategy": "tv"},
        window_size=WINDOW,
        model={"d_model": 16, "n_layers": 2, "d_state": 4},
        heads="both",
        predictive={"n_components": 3, "residual": True},
        noise_sigma=[0.3] * 4,
        scaler={"anchor_len": ANCHOR},
    )
    with torch.no_grad():
        for prm in net.parameters():
            prm.add_(0.05 * torch.randn(prm.shape))
    sc = Scaler.zscore(raw, train, anchor_len=ANCHOR)
    sc = sc.with_window_scale(sc.to_z(raw), np.arange(0, train[1] - WINDOW, 5), WINDOW)
    model = ClusterModel(
        module=net.eval(),
        path=None,
        cluster=net_cluster(4),
        window=WINDOW,
        scaler=sc,
        direction="causal",
        heads="both",
    )
    laws = robust.fit_robust(raw, train)[1]
    assert any(law.eps > 0 for law in laws)  # the robust law is not Gaussian
    return raw, train, model


@pytest.mark.parametrize("family", ["diffusion", "predictive", "kalman", "robust", "combiner"])
def test_live_steps_give_the_batch_paths_bits(setup, family):
    raw, train, model = setup
    hist = 1000
    raw = raw.copy()
    raw[hist + 4, 1] = np.nan  # a missing cell in a new row
    first = denoise_cluster(model, raw[:hist], train=train, candidates=[family])  # no gate
    decisions = first.info["decisions"]
    assert sum(c is not None and c.split("@")[0] == family for c in decisions["choice"]) >= 3
    live = stream_cluster(model, raw[:hist], train=train, replay=decisions, candidates=[family])
    pieces, at = [], hist
    for k in (1, 0, 1, 3, 1, 17, 1, 40, 1):  # none, one or many, across chunk boundaries
        pieces.append(live.step(raw[at : at + k]))
        at += k
    batch = denoise_cluster(model, raw[:at], train=train, replay=decisions, candidates=[family])
    streamed = np.vstack(pieces)
    changed = np.isfinite(streamed) & (streamed != raw[hist:at])
    assert changed.mean() > 0.5  # the candidate served the new rows
    np.testing.assert_array_equal(streamed, batch.mean[hist:at])


def test_sdedit_has_no_live_step(setup):
    """Its noise draws follow the batch's order of windows: the batch path serves it."""
    raw, train, model = setup
    kw = dict(sampler="sdedit", sampler_kw={"n_samples": 2, "steps": 2})
    first = denoise_cluster(model, raw[:1000], train=train, **kw)
    assert any(c is not None for c in first.info["decisions"]["choice"])
    live = stream_cluster(model, raw[:1000], train=train, replay=first.info["decisions"], **kw)
    assert live is None
