"""Samplers against Gaussian toys where the Bayes-optimal ε̂ and the answers are known.

Toy: every cell independent, x0 ~ N(0, v) (v = a² + σ² for noisy data y = s + n with
s ~ N(0, a²), n ~ N(0, σ²)). Then x_t = √ᾱ x0 + √(1-ᾱ) ε ~ N(0, ᾱv + 1 - ᾱ) and

    E[ε | x_t] = √(1-ᾱ) / (ᾱv + 1 - ᾱ) · x_t          (the optimal ε-predictor).

Posterior mean: plugging it into E[s | x_t] = (x_t - (ᾱσ² + 1 - ᾱ)/√(1-ᾱ) ε̂)/√ᾱ gives
√ᾱ a² / (ᾱv + 1 - ᾱ) · x_t, the Bayes E[s | x_t]. Averaged over ε given y
(E[x_t | y] = √ᾱ y) it is k_t · y with k_t = ᾱ a² / (ᾱv + 1 - ᾱ), which tends to the
Wiener shrinkage a²/v of E[s | y] as t -> 0; across draws its std is
√ᾱ √(1-ᾱ) a² / (ᾱv + 1 - ᾱ).

SDEdit on v = 1 data: DDIM (η = 0) maps x_t to x_prev = cos(θ_t - θ_prev) x_t with
ᾱ = cos²θ, so from t_start the output is c · x_{t_start}, c = Π cos(Δθ) (c -> 1 as the
steps get finer); DDPM's ancestral step gives E[x_{t-1} | x_t] = √α_t x_t and
Var = α_t Var(x_t) + β̃_t, a recursion solved below.
"""

from __future__ import annotations

import math

import pytest
import torch

from mamba_denoiser.diffusion import (
    VPSDE,
    choose_t,
    diffusion_noise,
    guidance_is_causal,
    high_frequency_energy,
    posterior_mean_renoised,
    resolvable,
    sdedit,
    total_variation,
)
from mamba_denoiser.diffusion.sampling import _quantile, posterior_mean_n2s

SDE = VPSDE()


def gaussian_eps(v) -> callable:
    """The Bayes ε̂ for i.i.d. N(0, v) cells; v a scalar or (F,) per feature."""
    v = torch.as_tensor(v, dtype=torch.float32)

    def eps_fn(x, t, mask):
        a = SDE.alpha_bar(t).view(-1, 1, 1)
        return (1 - a).sqrt() * x / (a * v + 1 - a)

    return eps_fn


def causal_eps(x, t, mask):
    """Depends on rows <= l only (prefix mean), and on t and the mask."""
    a = SDE.alpha_bar(t).view(-1, 1, 1)
    n = torch.arange(1, x.shape[1] + 1, dtype=x.dtype).view(1, -1, 1)
    prefix_mean = x.cumsum(dim=1) / n
    return (1 - a).sqrt() * (0.7 * x + 0.3 * prefix_mean) + 0.01 * mask.float()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ab(t: int) -> float:
    return 1.0 if t < 0 else float(SDE.alpha_bar(t))


# ---------------------------------------------------------------- posterior mean


@pytest.mark.parametrize("t", [5, 50, 200])
def test_posterior_mean_is_the_bayes_shrinkage_in_expectation(t):
    a2 = torch.tensor([1.0, 0.5, 2.0])  # signal variance per feature
    sigma = torch.tensor([0.7, 1.0, 0.3])
    v = a2 + sigma**2
    g = gen(1)
    B, L, F = 64, 32, 3
    y = v.sqrt() * torch.randn(B, L, F, generator=g)
    mask = torch.ones(B, L, F, dtype=torch.bool)
    mean, std = posterior_mean_renoised(
        gaussian_eps(v), SDE, y, mask, sigma=sigma, t=t, n_draws=64, generator=g, return_std=True
    )
    a = ab(t)
    k = a * a2 / (a * v + 1 - a)
    slope = (mean * y).sum(dim=(0, 1)) / (y * y).sum(dim=(0, 1))  # per feature
    # slope error: std_draws / √(64 draws · 2048 cells) / std(y) < 2e-3
    torch.testing.assert_close(slope, k, atol=1e-2, rtol=0)
    expected_std = math.sqrt(a * (1 - a)) * a2 / (a * v + 1 - a)
    torch.testing.assert_close(std.mean(dim=(0, 1)), expected_std, rtol=0.03, atol=1e-3)
    if t == 5:  # near t = 0 it is E[s | y] itself
        torch.testing.assert_close(slope, a2 / v, atol=0.02, rtol=0)


def test_posterior_mean_shapes_nan_and_what_eps_fn_sees():
    B, L, F = 3, 10, 2
    y = torch.randn(B, L, F, generator=gen())
    mask = torch.rand(B, L, F, generator=gen(1)) > 0.3
    y[~mask] = float("nan")
    seen = []

    def eps_fn(x, t, m):
        seen.append((x.clone(), t.clone(), m.clone()))
        return torch.zeros_like(x)

    out = posterior_mean_renoised(eps_fn, SDE, y, mask, sigma=0.5, t=10, n_draws=4, generator=gen())
    assert out.shape == (B, L, F) and out.dtype == torch.float32
    assert torch.equal(torch.isnan(out), ~mask)
    x, t, m = seen[0]
    assert len(seen) == 1  # all draws in one call
    assert x.shape == (4 * B, L, F) and t.shape == (4 * B,) and t.dtype == torch.long
    assert torch.all(t == 10) and torch.equal(m, mask.repeat(4, 1, 1))
    assert torch.isfinite(x).all() and torch.all(x[~m] == 0)


def test_posterior_mean_chunks_and_seeds():
    y = torch.randn(5, 12, 3, generator=gen())
    mask = torch.ones_like(y, dtype=torch.bool)
    kw = dict(sigma=torch.tensor([0.2, 0.5, 1.0]), t=30, n_draws=6)
    eps = gaussian_eps(2.0)
    full = posterior_mean_renoised(eps, SDE, y, mask, generator=gen(3), **kw)
    chunked = posterior_mean_renoised(eps, SDE, y, mask, generator=gen(3), max_batch=4, **kw)
    torch.testing.assert_close(full, chunked, rtol=0, atol=0)
    assert not torch.equal(full, posterior_mean_renoised(eps, SDE, y, mask, generator=gen(4), **kw))


def test_posterior_mean_refuses_bad_sigma_and_t():
    y, mask = torch.zeros(1, 4, 2), torch.ones(1, 4, 2, dtype=torch.bool)
    eps = gaussian_eps(1.0)
    with pytest.raises(ValueError, match="sigma must be finite"):
        posterior_mean_renoised(eps, SDE, y, mask, sigma=torch.tensor([0.1, float("nan")]), t=5)
    with pytest.raises(ValueError, match="2 entries"):
        posterior_mean_renoised(eps, SDE, y, mask, sigma=torch.ones(3), t=5)
    with pytest.raises(ValueError, match="integer"):
        posterior_mean_renoised(eps, SDE, y, mask, sigma=0.1, t=1000)
    bad = y.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        posterior_mean_renoised(eps, SDE, bad, mask, sigma=0.1, t=5)


# ---------------------------------------------------------------- Noise2Score form


@pytest.mark.parametrize("t", [5, 50, 200])
def test_n2s_is_the_smoothed_score_shrinkage_on_iid_cells(t):
    """Bayes ε̂ for N(0, v) cells: -ε̂(√ᾱ y)/τ = -y/(v + τ²), the score of N(0, v + τ²), so
    ŝ = (1 - σ²/(v + τ²)) y exactly, per feature, on every cell (no draws)."""
    a2 = torch.tensor([1.0, 0.5, 2.0])
    sigma = torch.tensor([0.7, 1.0, 0.3])
    v = a2 + sigma**2
    y = v.sqrt() * torch.randn(16, 32, 3, generator=gen(1))
    mask = torch.ones_like(y, dtype=torch.bool)
    out = posterior_mean_n2s(gaussian_eps(v), SDE, y, mask, sigma=sigma, t=t)
    tau2 = (1 - ab(t)) / ab(t)
    torch.testing.assert_close(out, (1 - sigma**2 / (v + tau2)) * y, rtol=1e-4, atol=1e-5)
    # t_ref: the two shrinkages extrapolated linearly in τ² to τ = 0
    rich = posterior_mean_n2s(gaussian_eps(v), SDE, y, mask, sigma=sigma, t=t, t_ref=t + 100)
    r2 = (1 - ab(t + 100)) / ab(t + 100)
    k_t, k_r = 1 - sigma**2 / (v + tau2), 1 - sigma**2 / (v + r2)
    k = (r2 * k_t - tau2 * k_r) / (r2 - tau2)
    torch.testing.assert_close(rich, k * y, rtol=1e-4, atol=1e-4)
    if t == 5:  # small τ: both close to the Wiener shrinkage, the extrapolation closer
        assert torch.all((k - a2 / v).abs() < 0.2 * (k_t - a2 / v).abs())
    # constant="total_noise": Tweedie for σ² + τ², i.e. the Wiener shrinkage a²/(v + τ²)
    tot = posterior_mean_n2s(
        gaussian_eps(v), SDE, y, mask, sigma=sigma, t=t, constant="total_noise"
    )
    torch.testing.assert_close(tot, a2 / (v + tau2) * y, rtol=1e-4, atol=1e-5)


def test_n2s_shapes_nan_and_what_eps_fn_sees():
    B, L, F = 3, 10, 2
    y = torch.randn(B, L, F, generator=gen())
    mask = torch.rand(B, L, F, generator=gen(1)) > 0.3
    y[~mask] = float("nan")
    seen = []

    def eps_fn(x, t, m):
        seen.append((x.clone(), t.clone(), m.clone()))
        return torch.ones_like(x)

    out = posterior_mean_n2s(eps_fn, SDE, y, mask, sigma=torch.tensor([0.5, 0.0]), t=10)
    assert out.shape == (B, L, F) and out.dtype == torch.float32
    assert torch.equal(torch.isnan(out), ~mask)
    assert len(seen) == 1
    x, t, m = seen[0]
    assert torch.all(t == 10) and t.dtype == torch.long and torch.equal(m, mask)
    # no noise added: the input is √ᾱ_t y on observed cells, 0 elsewhere
    torch.testing.assert_close(x, math.sqrt(ab(10)) * y.nan_to_num() * mask, rtol=1e-6, atol=0)
    tau = math.sqrt((1 - ab(10)) / ab(10))
    torch.testing.assert_close(out[..., 0][mask[..., 0]], (y[..., 0] - 0.25 / tau)[mask[..., 0]])
    assert torch.equal(out[..., 1][mask[..., 1]], y[..., 1][mask[..., 1]])  # σ = 0 passes


def test_n2s_is_deterministic_and_chunks():
    y = torch.randn(5, 12, 3, generator=gen())
    mask = torch.ones_like(y, dtype=torch.bool)
    kw = dict(sigma=torch.tensor([0.2, 0.5, 1.0]), t=30)
    rng = torch.random.get_rng_state()
    a = posterior_mean_n2s(causal_eps, SDE, y, mask, **kw)
    assert torch.equal(rng, torch.random.get_rng_state())  # draws nothing
    b = posterior_mean_n2s(causal_eps, SDE, y, mask, max_batch=2, **kw)
    c = posterior_mean_n2s(causal_eps, SDE, y, mask, t_ref=60, max_batch=4, **kw)
    d = posterior_mean_n2s(causal_eps, SDE, y, mask, t_ref=60, **kw)
    assert torch.equal(a, b) and torch.equal(c, d)
    assert not torch.equal(a, c)


def test_n2s_refuses_bad_arguments():
    y, mask = torch.zeros(1, 4, 2), torch.ones(1, 4, 2, dtype=torch.bool)
    eps = gaussian_eps(1.0)
    with pytest.raises(ValueError, match="sigma must be finite"):
        posterior_mean_n2s(eps, SDE, y, mask, sigma=torch.tensor([0.1, float("nan")]), t=5)
    with pytest.raises(ValueError, match="integer"):
        posterior_mean_n2s(eps, SDE, y, mask, sigma=0.1, t=1000)
    with pytest.raises(ValueError, match="unknown constant"):
        posterior_mean_n2s(eps, SDE, y, mask, sigma=0.1, t=5, constant="sigma")
    with pytest.raises(ValueError, match="t_ref must differ"):
        posterior_mean_n2s(eps, SDE, y, mask, sigma=0.1, t=5, t_ref=5)
    with pytest.raises(ValueError, match="t_ref must be an integer"):
        posterior_mean_n2s(eps, SDE, y, mask, sigma=0.1, t=5, t_ref=-1)


# ---------------------------------------------------------------- SDEdit


def ddim_contraction(steps: int, t_start: int) -> float:
    ts = SDE.ddim_timesteps(steps, t_start).tolist()
    c = 1.0
    for t, tp in zip(ts, ts[1:] + [-1]):
        c *= math.sqrt(ab(t) * ab(tp)) + math.sqrt((1 - ab(t)) * (1 - ab(tp)))
    return c


@pytest.mark.parametrize("steps", [4, 20, 201])
def test_ddim_sdedit_output_variance_on_unit_gaussian(steps):
    t_start = 200
    y = torch.randn(256, 32, 4, generator=gen(5))
    mask = torch.ones_like(y, dtype=torch.bool)
    out = sdedit(
        gaussian_eps(1.0),
        SDE,
        y,
        mask,
        t_start=t_start,
        steps=steps,
        method="ddim",
        n_samples=1,
        generator=gen(6),
    ).mean  # one sample: the mean is the sample
    c = ddim_contraction(steps, t_start)
    # out = c (√ᾱ y + √(1-ᾱ) ε): variance c², regression on y c √ᾱ; 32768 cells
    torch.testing.assert_close(out.var(), torch.tensor(c**2), rtol=0.03, atol=0)
    slope = (out * y).sum() / (y * y).sum()
    torch.testing.assert_close(slope, torch.tensor(c * math.sqrt(ab(t_start))), rtol=0.02, atol=0)
    if steps == 201:  # every step: close to the exact flow, which keeps N(0, 1)
        assert c**2 > 0.995


def test_ddpm_sdedit_matches_the_ancestral_recursion():
    t_start = 150
    y = torch.randn(256, 32, 4, generator=gen(7))
    mask = torch.ones_like(y, dtype=torch.bool)
    out = sdedit(
        gaussian_eps(1.0), SDE, y, mask, t_start=t_start, n_samples=1, generator=gen(8)
    ).mean
    var = 1.0
    for t in range(t_start, -1, -1):
        var = float(SDE.alphas[t]) * var + float(SDE.posterior_variance[t])
    torch.testing.assert_close(out.var(), torch.tensor(var), rtol=0.03, atol=0)
    slope = (out * y).sum() / (y * y).sum()  # Π √α_t · √ᾱ_{t_start} = ᾱ_{t_start}
    torch.testing.assert_close(slope, torch.tensor(ab(t_start)), rtol=0.02, atol=0)


def test_sdedit_bands_are_the_sample_quantiles():
    t_start, steps = 200, 10
    y = torch.randn(4, 16, 2, generator=gen(9))
    mask = torch.ones_like(y, dtype=torch.bool)
    res = sdedit(
        gaussian_eps(1.0),
        SDE,
        y,
        mask,
        t_start=t_start,
        steps=steps,
        method="ddim",
        n_samples=400,
        generator=gen(10),
    )
    c = ddim_contraction(steps, t_start)
    # given y the samples are N(c √ᾱ y, c² (1-ᾱ)): band = mean ± 1.645 sd
    sd = c * math.sqrt(1 - ab(t_start))
    torch.testing.assert_close(res.mean, c * math.sqrt(ab(t_start)) * y, atol=4 * sd / 20, rtol=0)
    half = (res.upper - res.lower) / 2
    torch.testing.assert_close(half.mean(), torch.tensor(1.645 * sd), rtol=0.04, atol=0)
    assert torch.all(res.lower <= res.mean) and torch.all(res.mean <= res.upper)


def test_quantile_helper_matches_torch():
    x = torch.randn(37, 5, 3, generator=gen())
    for q in (0.0, 0.05, 0.5, 0.95, 1.0):
        torch.testing.assert_close(_quantile(x, q), torch.quantile(x, q, dim=0))


@pytest.mark.parametrize("method,kw", [("ddpm", {}), ("ddim", {"steps": 5, "eta": 0.5})])
def test_sdedit_nan_positions_eps_inputs_and_determinism(method, kw):
    B, L, F = 3, 12, 2
    y = torch.randn(B, L, F, generator=gen())
    mask = torch.rand(B, L, F, generator=gen(1)) > 0.25
    y[~mask] = float("nan")
    calls = []

    def eps_fn(x, t, m):
        assert torch.isfinite(x).all() and torch.all(x[~m] == 0)
        calls.append(int(t[0]))
        return gaussian_eps(1.0)(x, t, m)

    run = lambda seed: sdedit(  # noqa: E731
        eps_fn, SDE, y, mask, t_start=20, method=method, n_samples=5, generator=gen(seed), **kw
    )
    res = run(0)
    for out in res:
        assert out.shape == (B, L, F)
        assert torch.equal(torch.isnan(out), ~mask)
    expected = list(range(20, -1, -1)) if method == "ddpm" else SDE.ddim_timesteps(5, 20).tolist()
    assert calls == expected
    again = run(0)
    for a, b in zip(res, again):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())
    assert not torch.equal(res.mean.nan_to_num(), run(1).mean.nan_to_num())


def test_sdedit_chunked_calls_give_the_same_result():
    y = torch.randn(3, 8, 2, generator=gen())
    mask = torch.ones_like(y, dtype=torch.bool)
    kw = dict(t_start=10, n_samples=4, guidance="balanced")
    a = sdedit(causal_eps, SDE, y, mask, generator=gen(2), **kw)
    b = sdedit(causal_eps, SDE, y, mask, generator=gen(2), max_batch=5, **kw)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_sdedit_refuses_bad_arguments():
    y, mask = torch.zeros(1, 4, 1), torch.ones(1, 4, 1, dtype=torch.bool)
    eps = gaussian_eps(1.0)
    with pytest.raises(ValueError, match="method='ddim'"):
        sdedit(eps, SDE, y, mask, t_start=10, steps=5)
    with pytest.raises(ValueError, match="unknown method"):
        sdedit(eps, SDE, y, mask, t_start=10, method="euler")
    with pytest.raises(ValueError, match="unknown guidance"):
        sdedit(eps, SDE, y, mask, t_start=10, guidance="l1")
    with pytest.raises(ValueError, match="quantiles"):
        sdedit(eps, SDE, y, mask, t_start=10, quantiles=(0.9, 0.1))


# ---------------------------------------------------------------- causality


def _later_rows_changed(y, mask, l0):
    y2, mask2 = y.clone(), mask.clone()
    y2[:, l0 + 1 :] = torch.randn(y2[:, l0 + 1 :].shape, generator=gen(99)) * 5
    mask2[:, l0 + 1 :] = ~mask2[:, l0 + 1 :]
    return y2, mask2


CAUSAL_RUNS = {
    "posterior_mean": lambda eps, y, m, g: posterior_mean_renoised(
        eps,
        SDE,
        y,
        m,
        sigma=torch.tensor([0.3, 0.6]),
        t=40,
        n_draws=4,
        generator=g,
        return_std=True,
    ),
    "posterior_mean_n2s": lambda eps, y, m, g: (
        posterior_mean_n2s(eps, SDE, y, m, sigma=torch.tensor([0.3, 0.6]), t=40),
        posterior_mean_n2s(eps, SDE, y, m, sigma=torch.tensor([0.3, 0.6]), t=20, t_ref=80),
    ),
    "sdedit_ddpm": lambda eps, y, m, g: sdedit(
        eps, SDE, y, m, t_start=30, n_samples=3, generator=g
    ),
    "sdedit_ddim_eta": lambda eps, y, m, g: sdedit(
        eps, SDE, y, m, t_start=60, steps=6, method="ddim", eta=1.0, n_samples=3, generator=g
    ),
}


@pytest.mark.parametrize("name", list(CAUSAL_RUNS))
def test_causal_eps_fn_gives_causal_outputs(name):
    """Rows <= l0 are bit-identical when rows > l0 of y and of the mask change."""
    l0 = 9
    y = torch.randn(4, 20, 2, generator=gen())
    mask = torch.rand(4, 20, 2, generator=gen(1)) > 0.2
    y2, mask2 = _later_rows_changed(y, mask, l0)
    run = CAUSAL_RUNS[name]
    out, out2 = run(causal_eps, y, mask, gen(5)), run(causal_eps, y2, mask2, gen(5))
    for a, b in zip(out, out2):
        assert torch.equal(a[:, : l0 + 1].nan_to_num(), b[:, : l0 + 1].nan_to_num())
        assert not torch.equal(a[:, l0 + 1 :].nan_to_num(), b[:, l0 + 1 :].nan_to_num())

    def window_mean_eps(x, t, m):  # looks ahead: the check above must catch it
        return causal_eps(x, t, m) + 0.1 * x.mean(dim=1, keepdim=True)

    a, b = run(window_mean_eps, y, mask, gen(5))[0], run(window_mean_eps, y2, mask2, gen(5))[0]
    assert not torch.equal(a[:, : l0 + 1].nan_to_num(), b[:, : l0 + 1].nan_to_num())


# ---------------------------------------------------------------- guidance


@pytest.mark.parametrize("method,kw", [("ddpm", {}), ("ddim", {"steps": 10})])
def test_guidance_smooths_the_output(method, kw):
    """On white data (the toy ε̂ has no notion of time) TV guidance lowers the output's
    total variation and Fourier guidance its high-frequency energy, same random draws."""
    y = torch.randn(8, 64, 3, generator=gen(11))
    mask = torch.ones_like(y, dtype=torch.bool)
    mask[0, :10] = False

    def run(guidance):
        return sdedit(
            gaussian_eps(1.0),
            SDE,
            y,
            mask,
            t_start=100,
            method=method,
            n_samples=4,
            guidance=guidance,
            guidance_scale=0.01,
            generator=gen(12),
            **kw,
        ).mean

    plain, tv, fourier, balanced = run(None), run("tv"), run("fourier"), run("balanced")
    tv0, hf0 = total_variation(plain, mask), high_frequency_energy(plain, 0.25, mask)
    assert total_variation(tv, mask) < 0.95 * tv0
    assert high_frequency_energy(fourier, 0.25, mask) < 0.9 * hf0
    assert total_variation(balanced, mask) < 0.95 * tv0
    assert high_frequency_energy(balanced, 0.25, mask) < 0.9 * hf0
    assert torch.equal(torch.isnan(tv), ~mask)


def test_guidance_is_not_causal_and_says_so():
    assert guidance_is_causal(None) and guidance_is_causal("none")
    assert not any(guidance_is_causal(g) for g in ("tv", "fourier", "balanced"))
    with pytest.raises(ValueError):
        guidance_is_causal("smooth")
    l0 = 9
    y = torch.randn(2, 20, 1, generator=gen())
    mask = torch.ones_like(y, dtype=torch.bool)
    y2, _ = _later_rows_changed(y, mask, l0)
    kw = dict(t_start=20, n_samples=2, guidance="tv", guidance_scale=0.05)
    a = sdedit(causal_eps, SDE, y, mask, generator=gen(3), **kw).mean
    b = sdedit(causal_eps, SDE, y2, mask, generator=gen(3), **kw).mean
    assert not torch.equal(a[:, : l0 + 1], b[:, : l0 + 1])


# ---------------------------------------------------------------- rules for t


def test_choose_t_is_the_smallest_t_reaching_c_sigma():
    tau = diffusion_noise(SDE)
    assert torch.all(tau[1:] > tau[:-1])
    for sigma in (0.05, 0.3, 1.0):
        t = choose_t(SDE, torch.tensor([sigma]), c=0.5, t_min=0)
        assert tau[t] >= 0.5 * sigma and (t == 0 or tau[t - 1] < 0.5 * sigma)
    # one t for several features: σ_ref is the geometric mean
    t = choose_t(SDE, torch.tensor([0.1, 0.4, float("nan")]), c=1.0)
    assert t == choose_t(SDE, torch.tensor([0.2]), c=1.0)
    per = choose_t(SDE, torch.tensor([0.1, 0.4, 0.0]), c=1.0, reduce=None)
    assert per.shape == (3,) and per[0] < per[1] and per[2] == 1  # t_min where σ unusable
    assert choose_t(SDE, 1e-6) == 1 and choose_t(SDE, 1e6, t_max=500) == 500
    with pytest.raises(ValueError, match="no feature"):
        choose_t(SDE, torch.tensor([float("nan"), 0.0]))


def test_resolvable_passes_through_what_the_model_cannot_resolve():
    tau_min = float(diffusion_noise(SDE)[1])
    sigma = torch.tensor([0.3, tau_min / 10, float("nan"), 0.0, 1.0])
    ok, why = resolvable(SDE, sigma)
    assert ok.tolist() == [True, False, False, False, True]
    assert why[0] == "ok" and "below what t=1 resolves" in why[1]
    assert "not estimated" in why[2] and "no observation noise" in why[3]
    # a shared t far from a feature's σ: its ε̂ errors are amplified by σ/τ
    t = choose_t(SDE, torch.tensor([0.02]), c=1.0)
    ok, why = resolvable(SDE, torch.tensor([0.02, 1.0]), t=t)
    assert ok.tolist() == [True, False] and "use a larger t" in why[1]
    # the rule's boundary: eps_error (σ/τ + τ/σ) <= max_error_ratio
    tau = float(diffusion_noise(SDE)[100])
    ok, _ = resolvable(SDE, torch.tensor([tau / 4.7, tau / 4.9]), t=100)
    assert ok.tolist() == [True, False]  # σ/τ + τ/σ = 4.91 and 5.10 against 5
