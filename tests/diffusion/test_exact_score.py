"""Posterior means with the EXACT ε-predictor of a Gaussian window, against the analytic optimum.

Window model (one feature, L rows): s ~ N(0, C_s), observed y = s + σ n, n white. The
network is trained on y, so x_t = √ᾱ y + √(1-ᾱ) ε ~ N(0, Σ_t), Σ_t = ᾱ C_y + (1-ᾱ) I with
C_y = C_s + σ² I, and the Bayes ε-predictor is

    ε̂(x_t, t) = E[ε | x_t] = √(1-ᾱ) Σ_t⁻¹ x_t          (exact_eps_fn).

Every estimator is then linear in y (or in y and the re-noising draws), with the last row
of the window as the causal output (the window ends at the current row):

    optimum        E[s | y] = C_s C_y⁻¹ y (at the last row: the Kalman filter, checked)
    Noise2Score    y - σ²/τ · √(1-ᾱ) Σ_t⁻¹ √ᾱ y = (I - σ² (C_y + τ² I)⁻¹) y
    total noise    y - (σ² + τ²)/τ · ε̂(√ᾱ y) = C_s (C_y + τ² I)⁻¹ y (constant="total_noise")
    Richardson     the two N2S maps at τ_a, τ_b extrapolated linearly in τ² to τ = 0
    re-noised      C_s (C_y + τ² I)⁻¹ (y + τ ε̄), ε̄ the mean of n_draws draws

so each SNR gain has a closed form (``analytic_mse``), and the Monte-Carlo gains over
N_WINDOWS seeded windows are checked against it. SNR gain in dB at the last row:
10 log10(σ² / E[(ŝ_L - s_L)²]) (output SNR over input SNR).

In the eigenbasis of C_s (eigenvalue λ) the N2S gain is (λ + τ²)/(λ + σ² + τ²) against the
optimum λ/(λ + σ²): it under-shrinks the noise-dominated components (gain τ²/(σ² + τ²)
where λ = 0) and is exact only as τ -> 0; the total-noise constant over-shrinks,
λ/(λ + σ² + τ²), an error that vanishes on the noise-dominated components instead (the
ones that dominate smooth signals), so it is the closer of the two at a given τ; the
re-noised form is that map applied to y + τ ε̄ and adds τ²/n_draws of Monte-Carlo variance.

Run this file as a script to print the table of gains.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mamba_denoiser.diffusion import VPSDE, diffusion_noise, posterior_mean_renoised
from mamba_denoiser.diffusion.sampling import posterior_mean_n2s

SDE = VPSDE()
L = 31
N_WINDOWS = 20_000
N_DRAWS = 8  # re-noised form
# Monte-Carlo std of a gain in dB: (10/ln 10) · √(2/N) for Gaussian errors; 4 of those
GAIN_TOL_DB = 4 * 10 / math.log(10) * math.sqrt(2 / N_WINDOWS)


# ---------------------------------------------------------------- window models


def ar1_cov(phi: float) -> np.ndarray:
    """Stationary AR(1), unit variance: C[i, j] = φ^|i-j|. (L, L)"""
    i = np.arange(L)
    return phi ** np.abs(i[:, None] - i[None, :])


def random_walk_cov(q: float) -> np.ndarray:
    """Random walk with innovation variance q, started at a known 0 one row before the
    window (the window's increments from that row): C[i, j] = q · min(i, j). (L, L)"""
    i = np.arange(1, L + 1)
    return q * np.minimum(i[:, None], i[None, :])


def rw_sigma_for_gain(q: float, gain: float) -> float:
    """σ giving steady-state Kalman gain K for the local-level model: σ² = q(1-K)/K²."""
    return math.sqrt(q * (1 - gain) / gain**2)


MODELS = {  # name: (C_s, σ)
    "AR(1) phi=0.5, 0 dB": (ar1_cov(0.5), 1.0),
    "AR(1) phi=0.9, 0 dB": (ar1_cov(0.9), 1.0),
    # q = 1/L: s_L has unit variance; K = 0.3 and 0.5 bracket the usual range
    "random walk, K=0.3": (random_walk_cov(1 / L), rw_sigma_for_gain(1 / L, 0.3)),
    "random walk, K=0.5": (random_walk_cov(1 / L), rw_sigma_for_gain(1 / L, 0.5)),
}


# ---------------------------------------------------------------- the exact ε-predictor


def exact_eps_fn(C_s: np.ndarray, sigma: float, sde: VPSDE):
    """eps_fn(x (B, L, 1), t (B,), mask) -> E[ε | x_t] for y = s + σ n, s ~ N(0, C_s).

    Each sample uses its own t: with C_y = V diag(λ) Vᵀ, Σ_t⁻¹ = V diag(1/(ᾱλ + 1 - ᾱ)) Vᵀ.
    float64 inside (ᾱ near 1 at small t), float32 out like a network.
    """
    lam, V = np.linalg.eigh(C_s + sigma**2 * np.eye(C_s.shape[0]))
    lam, V = torch.from_numpy(lam), torch.from_numpy(V)  # (L,), (L, L) float64
    abar = sde.alphas_cumprod.double().cpu()  # the coefficients the sampler uses

    def eps_fn(x, t, mask):
        a = abar[t.cpu()].view(-1, 1)  # (B, 1)
        z = x[..., 0].double() @ V  # (B, L) in the eigenbasis
        eps = (1 - a).sqrt() / (a * lam + 1 - a) * z  # (B, L)
        return (eps @ V.T).unsqueeze(-1).to(x.dtype)  # (B, L, 1)

    return eps_fn


def t_nearest(tau_target: float) -> int:
    """The t whose τ_t = √((1-ᾱ_t)/ᾱ_t) is closest to tau_target."""
    return int((diffusion_noise(SDE) - tau_target).abs().argmin())


def tau_of(t: int) -> float:
    return float(diffusion_noise(SDE)[t])


# ---------------------------------------------------------------- analytic filters


def filters(C_s: np.ndarray, sigma: float) -> dict[str, tuple[np.ndarray, float]]:
    """name: (G, extra variance per unit ||G_L||²) with ŝ = G y (+ renoising noise)."""
    eye = np.eye(L)
    C_y = C_s + sigma**2 * eye
    out = {"optimum": (C_s @ np.linalg.inv(C_y), 0.0)}
    n2s = {}
    for frac in (1.0, 0.5, 0.25):
        tau = tau_of(t_nearest(frac * sigma))
        n2s[frac] = eye - sigma**2 * np.linalg.inv(C_y + tau**2 * eye)
        out[f"N2S tau=sigma*{frac:g}"] = (n2s[frac], 0.0)
    ta, tb = tau_of(t_nearest(0.5 * sigma)), tau_of(t_nearest(sigma))
    rich = (tb**2 * n2s[0.5] - ta**2 * n2s[1.0]) / (tb**2 - ta**2)
    out["N2S Richardson(sigma/2, sigma)"] = (rich, 0.0)
    for frac in (1.0, 0.5):
        tau = tau_of(t_nearest(frac * sigma))
        M = C_s @ np.linalg.inv(C_y + tau**2 * eye)
        out[f"total-noise tau=sigma*{frac:g}"] = (M, 0.0)
        out[f"re-noised tau=sigma*{frac:g}"] = (M, tau**2 / N_DRAWS)
    return out


def analytic_mse(G: np.ndarray, extra: float, C_s: np.ndarray, sigma: float) -> float:
    """E[(ŝ_L - s_L)²] for ŝ = G y + √extra · G ξ, ξ ~ N(0, I) independent of y."""
    h, r = (G - np.eye(L))[-1], G[-1]
    return float(h @ C_s @ h + (sigma**2 + extra) * r @ r)


def gain_db(mse: float, sigma: float) -> float:
    return 10 * math.log10(sigma**2 / mse)


# ---------------------------------------------------------------- Monte Carlo


def draw_windows(C_s: np.ndarray, sigma: float, *, n: int = N_WINDOWS, seed: int = 0):
    """(s, y): (n, L) float64 each; s ~ N(0, C_s), y = s + σ n."""
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(C_s + 1e-12 * np.eye(L))
    s = rng.standard_normal((n, L)) @ chol.T
    return s, s + sigma * rng.standard_normal((n, L))


def estimates(C_s: np.ndarray, sigma: float, y: np.ndarray) -> dict[str, np.ndarray]:
    """name: last-row estimate (n,) from the functions under test (float32) and the optimum."""
    eps_fn = exact_eps_fn(C_s, sigma, SDE)
    y_t = torch.from_numpy(y).float().unsqueeze(-1)  # (n, L, 1)
    mask = torch.ones_like(y_t, dtype=torch.bool)
    last = lambda out: out[:, -1, 0].double().numpy()  # noqa: E731
    G0 = C_s @ np.linalg.inv(C_s + sigma**2 * np.eye(L))
    out = {"optimum": y @ G0[-1]}
    for frac in (1.0, 0.5, 0.25):
        t = t_nearest(frac * sigma)
        s_hat = posterior_mean_n2s(eps_fn, SDE, y_t, mask, sigma=sigma, t=t)
        out[f"N2S tau=sigma*{frac:g}"] = last(s_hat)
    s_hat = posterior_mean_n2s(
        eps_fn, SDE, y_t, mask, sigma=sigma, t=t_nearest(0.5 * sigma), t_ref=t_nearest(sigma)
    )
    out["N2S Richardson(sigma/2, sigma)"] = last(s_hat)
    for frac in (1.0, 0.5):
        t = t_nearest(frac * sigma)
        s_hat = posterior_mean_n2s(eps_fn, SDE, y_t, mask, sigma=sigma, t=t, constant="total_noise")
        out[f"total-noise tau=sigma*{frac:g}"] = last(s_hat)
        g = torch.Generator().manual_seed(1)
        s_hat = posterior_mean_renoised(
            eps_fn, SDE, y_t, mask, sigma=sigma, t=t, n_draws=N_DRAWS, generator=g, max_batch=40_000
        )
        out[f"re-noised tau=sigma*{frac:g}"] = last(s_hat)
    return out


def gain_table() -> dict[str, dict[str, tuple[float, float]]]:
    """model: {estimator: (Monte-Carlo gain dB, analytic gain dB)}."""
    table = {}
    for name, (C_s, sigma) in MODELS.items():
        s, y = draw_windows(C_s, sigma)
        mc = estimates(C_s, sigma, y)
        an = filters(C_s, sigma)
        table[name] = {
            k: (
                gain_db(float(np.mean((mc[k] - s[:, -1]) ** 2)), sigma),
                gain_db(analytic_mse(*an[k], C_s, sigma), sigma),
            )
            for k in an
        }
    return table


# ---------------------------------------------------------------- tests


def kalman_last_row(C_s_kind: str, y: np.ndarray, *, phi: float, q: float, sigma: float):
    """Scalar Kalman filter over the window, vectorised over windows; E[s_L | y_1..L]."""
    if C_s_kind == "ar1":  # stationary start: s_1 ~ N(0, 1), s_k = φ s_{k-1} + √(1-φ²) w
        m, P, Q = np.zeros(len(y)), 1.0, 1 - phi**2
    else:  # random walk from a known 0: s_1 ~ N(0, q)
        m, P, Q, phi = np.zeros(len(y)), q, q, 1.0
    for k in range(L):  # over rows only
        if k > 0:
            m, P = phi * m, phi**2 * P + Q
        K = P / (P + sigma**2)
        m, P = m + K * (y[:, k] - m), (1 - K) * P
    return m, K


@pytest.mark.parametrize("kind,phi,q", [("ar1", 0.9, 0.0), ("rw", 1.0, 1 / L)])
def test_the_analytic_optimum_is_the_kalman_filter_at_the_window_end(kind, phi, q):
    C_s = ar1_cov(phi) if kind == "ar1" else random_walk_cov(q)
    sigma = 1.0 if kind == "ar1" else rw_sigma_for_gain(q, 0.3)
    _, y = draw_windows(C_s, sigma, n=50)
    G0 = C_s @ np.linalg.inv(C_s + sigma**2 * np.eye(L))
    m, K = kalman_last_row(kind, y, phi=phi, q=q, sigma=sigma)
    np.testing.assert_allclose(y @ G0[-1], m, atol=1e-10)
    if kind == "rw":  # 31 rows reach the steady-state gain the σ was chosen for
        assert abs(K - 0.3) < 1e-3


def test_exact_eps_fn_is_the_regression_of_eps_on_x_t_for_each_t():
    """Orthogonality E[(ε - ε̂(x_t)) x_tᵀ] = 0 defines E[ε | x_t] for a linear Gaussian; one
    call with mixed t per sample, checked per t."""
    C_s, sigma = MODELS["AR(1) phi=0.9, 0 dB"]
    eps_fn = exact_eps_fn(C_s, sigma, SDE)
    _, y = draw_windows(C_s, sigma, n=30_000, seed=3)
    g = torch.Generator().manual_seed(4)
    ts = torch.tensor([2, 120, 600])
    t = ts[torch.randint(0, 3, (len(y),), generator=g)]
    y0 = torch.from_numpy(y).float().unsqueeze(-1)
    x_t, eps = SDE.sample(y0, t, generator=g)
    eps_hat = eps_fn(x_t, t, torch.ones_like(x_t, dtype=torch.bool))
    resid = (eps - eps_hat)[..., 0].double()
    for tv in ts:
        sel = t == tv
        n = int(sel.sum())
        cross = resid[sel].T @ x_t[sel][..., 0].double() / n  # (L, L), 0 in expectation
        sd = (resid[sel].var(dim=0)[:, None] * x_t[sel][..., 0].double().var(dim=0)[None]).sqrt()
        assert (cross.abs() / (sd / math.sqrt(n))).max() < 5  # 961 entries, 5 sd
        # a wrong Σ_t (the other t's) is caught: its residual correlates with x_t
        other = eps_fn(x_t[sel], torch.full((n,), int(ts[ts != tv][0])), None)
        wrong = (eps[sel] - other)[..., 0].double().T @ x_t[sel][..., 0].double() / n
        assert (wrong.abs() / (sd / math.sqrt(n))).max() > 10


@pytest.mark.parametrize("name", list(MODELS))
def test_noise2score_output_is_the_analytic_filter(name):
    """The float32 code with the exact ε̂ reproduces (I - σ²(C_y + τ²I)⁻¹) y on every row,
    and its Richardson pair the extrapolated filter: the constants σ²/τ and √ᾱ are right."""
    C_s, sigma = MODELS[name]
    _, y = draw_windows(C_s, sigma, n=200, seed=5)
    an = filters(C_s, sigma)
    eps_fn = exact_eps_fn(C_s, sigma, SDE)
    y_t = torch.from_numpy(y).float().unsqueeze(-1)
    mask = torch.ones_like(y_t, dtype=torch.bool)
    y32 = y_t[..., 0].double().numpy()  # the float32 input the code sees
    for frac in (1.0, 0.25):
        out = posterior_mean_n2s(eps_fn, SDE, y_t, mask, sigma=sigma, t=t_nearest(frac * sigma))
        G = an[f"N2S tau=sigma*{frac:g}"][0]
        np.testing.assert_allclose(out[..., 0].double().numpy(), y32 @ G.T, atol=2e-4 * sigma)
    out = posterior_mean_n2s(
        eps_fn, SDE, y_t, mask, sigma=sigma, t=t_nearest(0.5 * sigma), t_ref=t_nearest(sigma)
    )
    G = an["N2S Richardson(sigma/2, sigma)"][0]
    np.testing.assert_allclose(out[..., 0].double().numpy(), y32 @ G.T, atol=5e-4 * sigma)
    t = t_nearest(0.5 * sigma)
    out = posterior_mean_n2s(eps_fn, SDE, y_t, mask, sigma=sigma, t=t, constant="total_noise")
    G = an["total-noise tau=sigma*0.5"][0]
    np.testing.assert_allclose(out[..., 0].double().numpy(), y32 @ G.T, atol=2e-4 * sigma)


@pytest.fixture(scope="module")
def table():
    return gain_table()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_monte_carlo_gains_match_the_closed_form(table, name):
    for est, (mc, an) in table[name].items():
        assert abs(mc - an) < GAIN_TOL_DB, (est, mc, an)


@pytest.mark.parametrize("name", list(MODELS))
def test_noise2score_reaches_the_optimum_at_a_small_enough_tau(table, name):
    """Measured on the same windows (paired): the best offered N2S τ is within 0.1 dB of the
    optimum, and so are the Richardson pair (σ/2, σ) and the total-noise constant at σ/2,
    which need no τ below σ/2."""
    row = {k: mc for k, (mc, _) in table[name].items()}
    opt = row["optimum"]
    best_n2s = max(row[f"N2S tau=sigma*{f:g}"] for f in (1.0, 0.5, 0.25))
    assert opt - best_n2s < 0.1
    assert opt - row["N2S Richardson(sigma/2, sigma)"] < 0.1
    assert opt - row["total-noise tau=sigma*0.5"] < 0.1
    # with the exact score the smoothing bias only grows with τ (closed form: no MC noise)
    an = {k: a for k, (_, a) in table[name].items()}
    assert an["N2S tau=sigma*0.25"] > an["N2S tau=sigma*0.5"] > an["N2S tau=sigma*1"]
    assert an["optimum"] >= max(v for k, v in an.items() if k != "optimum") - 1e-9
    # τ = σ is far from optimal: the component-wise gain τ²/(σ²+τ²) = 1/2 on pure noise
    assert opt - an["N2S tau=sigma*1"] > 0.3
    # at a given τ the total-noise constant is the less biased, and re-noising only adds
    # variance to it
    for f in (1.0, 0.5):
        assert an[f"total-noise tau=sigma*{f:g}"] > an[f"N2S tau=sigma*{f:g}"]
        assert an[f"total-noise tau=sigma*{f:g}"] > an[f"re-noised tau=sigma*{f:g}"]


if __name__ == "__main__":
    tab = gain_table()
    cols = list(next(iter(tab.values())))
    print("SNR gain at the last row, dB (Monte Carlo / closed form); L =", L, "N =", N_WINDOWS)
    for name, row in tab.items():
        sig = MODELS[name][1]
        print(f"\n{name} (sigma = {sig:.3f})")
        for c in cols:
            mc, an = row[c]
            print(f"  {c:34s} {mc:6.2f} / {an:6.2f}   gap to optimum {row['optimum'][1] - an:5.2f}")
