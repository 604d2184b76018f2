"""Observation-noise estimation on synthetic series with a known noise std σ.

Tolerances: at T = 4000 the sampling std of σ̂ is about 0.03σ for the random walk and
AR(0.9) cases and 0.045σ for AR(0.7) (checked over 100 seeds); the tolerances below are
about 4 of those. For noiseless signals σ̂² has a sampling std of about 0.016 (unit
innovations), hence the bound on σ̂² rather than on σ̂ (√ inflates values near 0).
"""

from __future__ import annotations

import numpy as np
import pytest

from mamba_denoiser.diffusion import NOISE_METHODS, estimate_noise, estimate_noise_std

T = 4000


def ar1(phi: float, n: int, rng: np.random.Generator) -> np.ndarray:
    e = rng.standard_normal(n)
    s = np.empty(n)
    s[0] = e[0] / np.sqrt(1 - phi**2)  # start in the stationary distribution
    for t in range(1, n):  # small, clarity over speed
        s[t] = phi * s[t - 1] + e[t]
    return s


def signal(kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "random_walk":
        return np.cumsum(rng.standard_normal(T))
    if kind == "ar0.9":
        return ar1(0.9, T, rng)
    if kind == "ar0.7":
        return ar1(0.7, T, rng)
    if kind == "trend":  # linear drift plus a slow swing
        t = np.arange(T)
        return 0.02 * t + np.sin(t / 300)
    if kind == "none":
        return np.zeros(T)
    raise ValueError(kind)


CASES = [  # (signal, σ, relative tolerance)
    ("random_walk", 1.0, 0.12),
    ("ar0.9", 1.0, 0.12),
    ("ar0.7", 1.0, 0.18),
    ("trend", 0.5, 0.10),
    ("none", 0.5, 0.08),
]


@pytest.mark.parametrize("kind,sigma,tol", CASES)
def test_auto_recovers_known_sigma(kind, sigma, tol):
    rng = np.random.default_rng(1)
    y = signal(kind, rng) + sigma * rng.standard_normal(T)
    est = estimate_noise(y)
    assert est.method in ("ar", "diff")
    assert abs(est.sigma - sigma) <= tol * sigma, est


@pytest.mark.parametrize("kind,sigma,tol", CASES)
def test_missing_values_are_tolerated(kind, sigma, tol):
    """A long leading block and 10% scattered gaps: the estimate stays within tolerance."""
    rng = np.random.default_rng(2)
    y = signal(kind, rng) + sigma * rng.standard_normal(T)
    y[:500] = np.nan
    y[rng.random(T) < 0.1] = np.nan
    est = estimate_noise(y)
    assert est.n_obs == np.isfinite(y).sum()
    assert abs(est.sigma - sigma) <= (tol + 0.03) * sigma, est


def test_auto_choice_follows_the_documented_rule():
    rng = np.random.default_rng(3)
    noise = rng.standard_normal(T)
    assert estimate_noise(noise).method == "diff"  # no persistence
    assert estimate_noise(0.05 * np.arange(T) + noise).method == "diff"  # detrended: noise
    assert estimate_noise(ar1(0.9, T, rng) + noise).method == "ar"
    assert estimate_noise(np.cumsum(rng.standard_normal(T)) + noise).method == "ar"
    weak = ar1(0.2, T, rng) + noise  # ρ_2 ≈ 0.02 < 0.1: the AR ratio is ill-conditioned
    assert estimate_noise(weak).method == "diff"


def test_difference_estimator_bias_on_ar_is_as_documented():
    """σ̂²_diff = σ² + q (1-φ)/(1+φ) for AR(1) with innovation variance q: the reason auto
    prefers the AR estimator for persistent stationary series."""
    rng = np.random.default_rng(4)
    phi = 0.5
    y = ar1(phi, 20_000, rng) + rng.standard_normal(20_000)
    diff = estimate_noise(y, method="diff")
    ar = estimate_noise(y, method="ar")
    expected = 1.0 + (1 - phi) / (1 + phi)
    assert abs(diff.sigma**2 - expected) < 0.1
    assert abs(ar.sigma**2 - 1.0) < 0.15
    assert abs(diff.sigma**2 - 1.0) > 0.2  # the bias is real, not within noise


@pytest.mark.parametrize("kind", ["random_walk", "ar0.9"])
def test_noiseless_signal_gives_near_zero(kind):
    est = estimate_noise(signal(kind, np.random.default_rng(5)))
    assert est.sigma**2 < 0.065  # ~4 sampling stds of σ̂² with unit innovations


def test_diff_on_noiseless_ar_overestimates_and_auto_does_not():
    s = ar1(0.9, T, np.random.default_rng(6))
    assert estimate_noise(s, method="diff").sigma ** 2 > 0.03  # q (1-φ)/(1+φ) = 0.053
    assert estimate_noise(s).sigma ** 2 < 0.03


def test_heavy_tailed_noise_is_still_estimated():
    """Student-t(5) noise with std σ: moment estimators stay consistent (finite variance)."""
    rng = np.random.default_rng(7)
    noise = rng.standard_t(5, T) / np.sqrt(5 / 3)
    est = estimate_noise(np.cumsum(rng.standard_normal(T)) + noise)
    assert abs(est.sigma - 1.0) < 0.15


def test_estimates_are_clipped_to_zero_and_the_variance():
    t = np.arange(T)
    smooth = np.sin(2 * np.pi * t / 200)  # Δs positively autocorrelated: raw estimate < 0
    est = estimate_noise(smooth, method="diff")
    assert est.sigma == 0.0 and est.clipped
    clipped_up = 0
    for seed in range(20):  # short pure noise: raw estimates scatter around Var(y)
        y = np.random.default_rng(seed).standard_normal(50)
        for method in NOISE_METHODS:
            e = estimate_noise(y, method=method)
            assert np.isnan(e.sigma) or e.sigma**2 <= np.var(y) * (1 + 1e-12)
            clipped_up += e.clipped and e.sigma > 0
    assert clipped_up > 0  # the upper clip was exercised


def test_too_few_observations_give_nan_with_a_reason():
    y = np.full(100, np.nan)
    y[:10] = np.arange(10.0)
    est = estimate_noise(y)
    assert np.isnan(est.sigma) and est.method == "none" and "10 observed" in est.reason
    ar = estimate_noise(np.random.default_rng(0).standard_normal(T), method="ar")
    assert np.isnan(ar.sigma) or ar.sigma >= 0  # pure noise: γ_2 may be <= 0 -> undefined


def test_panel_version_matches_per_column():
    rng = np.random.default_rng(9)
    Y = np.stack(
        [
            np.cumsum(rng.standard_normal(T)) + rng.standard_normal(T),
            ar1(0.9, T, rng) + 0.5 * rng.standard_normal(T),
            np.full(T, np.nan),
        ],
        axis=1,
    )
    sig = estimate_noise_std(Y)
    assert sig.shape == (3,)
    for f in range(2):
        assert sig[f] == estimate_noise(Y[:, f]).sigma
    assert np.isnan(sig[2])
    assert estimate_noise_std(Y[:, 0]).shape == ()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown method"):
        estimate_noise(np.zeros(100), method="kalman")
    with pytest.raises(ValueError, match="estimate_noise_std"):
        estimate_noise(np.zeros((100, 2)))
