"""The residual predictive head: starts exactly at the robust filter, its noise-law
posterior has the known closed form, and its weight multiplier trains from exactly 0."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mamba_denoiser import robust
from mamba_denoiser.data.scaler import Scaler
from mamba_denoiser.diffusion import residual
from mamba_denoiser.inference.candidates import PredictiveCandidate
from mamba_denoiser.inference.models import ClusterModel
from mamba_denoiser.network import ClusterNetwork


def _panel(T=3000, seed=0):
    """Four features: AR(1) with 5 % outliers at 10x, a random walk, an integrated AR(1)
    trend, and an AR(1) whose level jumps (3 % of rows, 10x its innovation sd); a late
    start and a gap, as real features have."""
    rng = np.random.default_rng(seed)
    s = np.zeros((T, 4))
    for t in range(1, T):
        s[t, 0] = 0.9 * s[t - 1, 0] + rng.normal()
        s[t, 1] = s[t - 1, 1] + 0.5 * rng.normal()
        jump = 10.0 * rng.normal() if rng.random() < 0.03 else 0.0
        s[t, 3] = 0.98 * s[t - 1, 3] + 0.3 * rng.normal() + jump
    s[:, 2] = np.cumsum(np.cumsum(0.05 * rng.normal(size=T)))
    y = s + rng.normal(size=(T, 4)) * [1.0, 0.7, 0.3, 1.0]
    out = rng.random(T) < 0.05
    y[out, 0] += rng.normal(0, 10, out.sum())
    y[:120, 1] = np.nan
    y[400:410, 2] = np.nan
    return y, s


def _model(raw, train, *, dtype=torch.float64, n_components=3):
    F = raw.shape[1]
    window = 60
    net = ClusterNetwork(
        cluster={"id": 0, "type": "mean_reverting", "features": [f"f{j}" for j in range(F)]},
        window_size=window,
        model={"d_model": 16, "n_layers": 1, "d_state": 4, "backend": "reference"},
        heads="predictive",
        predictive={"n_components": n_components, "residual": True},
        noise_sigma=[0.3] * F,
        scaler={"anchor_len": 10},
    ).to(dtype)
    sc = Scaler.zscore(raw, train, anchor_len=10)
    z = sc.to_z(raw)
    sc = sc.with_window_scale(z, np.arange(0, train[1] - window, 5), window)
    return ClusterModel(
        module=net.eval(),
        path=None,
        cluster=net_cluster(F),
        window=window,
        scaler=sc,
        direction="causal",
        heads="predictive",
    )


def net_cluster(F):
    return {"id": 0, "type": "mean_reverting", "features": [f"f{j}" for j in range(F)]}


def test_untrained_head_is_the_robust_filter_on_every_served_row():
    raw, _ = _panel()
    train = (0, 2000)
    fits, laws = robust.fit_robust(raw, train)
    assert laws[0].eps > 0 and laws[0].jump == 0  # outliers in the noise
    assert laws[3].jump > 0 and laws[3].eps == 0  # jumps in the signal, not outliers
    model = _model(raw, train)
    cand = PredictiveCandidate(model, np.full(4, 0.3), filters=(fits, laws))
    out = cand.run(raw)
    want = robust.apply_robust(raw, fits, laws)
    served = np.isfinite(out.mean)
    # every observed row after the first anchor_len rows is served, except each feature's
    # first observation (no earlier one in its window: predictive.forecast_mask)
    n_obs = np.isfinite(raw[model.anchor_len :]).sum()
    assert n_obs - raw.shape[1] <= served[model.anchor_len :].sum() <= n_obs
    err = np.abs(out.mean - want)[served] / np.nanstd(raw, axis=0)[np.where(served)[1]]
    assert err.max() < 1e-5  # float32 windows: to 1e-5·σ


def test_noise_law_posterior_matches_numerical_integration():
    """One prior component N(μ, v), noise (1-ε) N(0, σc²) + ε N(0, σo²): ŝ = E[s | y] and
    ∂ŝ/∂y against a quadrature of the posterior, and the evidence against its density."""
    mu, v, sc2, so2, eps = 0.3, 0.8, 0.25, 9.0, 0.1
    grid = np.linspace(-30, 30, 400_001)
    prior = np.exp(-0.5 * (grid - mu) ** 2 / v)

    def exact(y):
        lik = (1 - eps) * np.exp(-0.5 * (y - grid) ** 2 / sc2) / np.sqrt(2 * np.pi * sc2)
        lik += eps * np.exp(-0.5 * (y - grid) ** 2 / so2) / np.sqrt(2 * np.pi * so2)
        w = prior * lik
        return (w * grid).sum() / w.sum(), np.log(
            w.sum() * (grid[1] - grid[0]) / np.sqrt(2 * np.pi * v)
        )

    t = lambda *x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    for y in (0.1, 2.0, 6.0):
        s_hat, div, logp = residual.posterior(
            t(y), t([mu]), t([v]), t([0.0]), t(0.0), t(sc2, so2), t(1 - eps, eps)
        )
        want, want_logp = exact(y)
        assert float(s_hat) == pytest.approx(want, abs=1e-6)
        assert float(logp) == pytest.approx(want_logp, abs=1e-6)
        h = 1e-4
        num = (exact(y + h)[0] - exact(y - h)[0]) / (2 * h)
        assert float(div) == pytest.approx(num, abs=1e-5)


def test_extra_components_start_at_weight_zero_and_get_a_gradient():
    """ρ = 0 exactly (the evidence is the filter's, even at a 20-sd innovation), yet the
    multiplier λ has a finite nonzero gradient when a wide component explains y better."""
    lam = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    raw = torch.zeros(1, 1, 1, 3, 3, dtype=torch.float64)
    raw[..., 1, 1], raw[..., 1, 2] = np.log(10.0), np.log(100.0)
    pm, pv = torch.zeros(1, 1, 1, dtype=torch.float64), torch.ones(1, 1, 1, 2, dtype=torch.float64)
    fw = torch.tensor([[1.0, 0.0]], dtype=torch.float64)  # no jump in the filter
    mu, var, lw, rho = residual.assemble(raw, torch.zeros(1, 1, 1), lam, pm, pv, fw)
    nv, ep = torch.tensor([[0.5, 0.5]], dtype=torch.float64), torch.tensor([[1.0, 0.0]])
    y = torch.full((1, 1, 1), 20.0 * np.sqrt(1.5), dtype=torch.float64)
    _, _, logp = residual.posterior(y, mu, var, lw, rho, nv, ep.double(), n_filter=2)
    want = -0.5 * (np.log(2 * np.pi * 1.5) + float(y) ** 2 / 1.5)
    assert float(logp.detach()) == pytest.approx(want, rel=1e-12)
    (-logp.sum()).backward()
    assert torch.isfinite(lam.grad).all() and float(lam.grad) < 0  # raising λ helps


def test_residual_head_trains_in_one_pass_with_the_diffusion_head():
    """heads=both with the residual head: joint loss = diffusion + weight · NLL on batches
    that carry the filter's priors; one backward reaches the corrections, the innovation
    projection, the zero-diagonal layer and λ, all finite."""
    from mamba_denoiser.data.windows import WindowDataset
    from mamba_denoiser.training import DenoiserModule

    raw, _ = _panel(T=700)
    train = (0, 500)
    p = robust.filter_priors(raw, *robust.fit_robust(raw, train))
    sc = Scaler.zscore(raw, train, anchor_len=10)
    priors = {
        "mean": (p.mean - sc.mean) / sc.std,
        "var": p.var / sc.std**2,
        "var_jump": p.var_jump / sc.std**2,
        "noise_var": p.noise_var / sc.std[:, None] ** 2,
        "eps": p.noise_weights,
        "jump": p.jump_weights,
    }
    ds = WindowDataset(sc.to_z(raw), np.arange(100, 400, 50), 60, anchor_len=10, priors=priors)
    batch = ds.__getitems__(list(range(6)))
    assert batch["prior_mu"].shape == batch["x"].shape and batch["noise_var"].shape == (6, 4, 2)
    torch.manual_seed(0)
    module = DenoiserModule(
        cluster=net_cluster(4) | {"strategy": "tv"},
        window_size=60,
        scaler={"anchor_len": 10},
        model={"d_model": 16, "n_layers": 1, "d_state": 4, "dropout": 0.0},
        heads="both",
        predictive={"weight": 0.5, "residual": True},
        noise_sigma=[0.3] * 4,
    )
    with torch.no_grad():
        for prm in module.parameters():
            prm.add_(0.05 * torch.randn(prm.shape))
    from mamba_denoiser.training import _priors

    loss, terms = module.objective(batch["x"], batch["mask"], _priors(batch))
    assert torch.isfinite(loss) and torch.isfinite(terms["predictive_nll"])
    loss.backward()
    params = dict(module.named_parameters())
    for name in (
        "model.pred_head.weight",
        "model.innov_proj.weight",
        "model.cross",
        "model.extra_weight",
        "model.head.weight",
    ):
        g = params[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    assert (params["model.cross"].grad.diagonal() == 0).all()  # never feature i's own y_l


@pytest.mark.parametrize("rho", [0.0, 0.05])
def test_far_innovation_under_tiny_noise_stays_a_convex_combination(rho):
    """A 60-sd jump with noise variance 1e-6 of the prediction's (the extras' evidence
    e^1800 times the filter's): ŝ stays between the prediction and y, the evidence is
    finite, and at ρ = 0 it is the filter's own (it once blew up to 3.6e9 in float32)."""
    pm = torch.zeros(1, 1, 1, dtype=torch.float64)
    pv = torch.full((1, 1, 1, 2), 0.025, dtype=torch.float64)
    fw = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    raw = torch.zeros(1, 1, 1, 3, 3, dtype=torch.float64)
    raw[..., 1, 1], raw[..., 1, 2] = np.log(10.0), np.log(100.0)
    raw[..., 0, 1] = 3.0  # an extra component's mean far from the prediction
    lam = torch.full((1,), rho, dtype=torch.float64, requires_grad=True)
    mu, var, lw, r = residual.assemble(raw, torch.zeros(1, 1, 1), lam, pm, pv, fw)
    nv = torch.tensor([[2.5e-8, 2.5e-8]], dtype=torch.float64)
    ep = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    y = torch.full((1, 1, 1), 60 * np.sqrt(0.025), dtype=torch.float64)
    s_hat, div, logp = residual.posterior(y, mu, var, lw, r, nv, ep, n_filter=2)
    assert torch.isfinite(logp).all() and 0.0 <= float(s_hat) <= float(y) + 1e-9
    if rho == 0.0:
        g = 0.025 / (0.025 + 2.5e-8)
        assert float(s_hat) == pytest.approx(g * float(y), rel=1e-12)
    (-logp.sum()).backward()
    assert torch.isfinite(lam.grad).all()
