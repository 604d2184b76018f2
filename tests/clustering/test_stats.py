"""The 11 statistics on processes whose answers are known from theory, with and without
white observation noise."""

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.signal import lfilter
from statsmodels.tsa.stattools import adfuller

from mamba_denoiser.clustering.stats import (
    STAT_COLUMNS,
    adf_pvalue,
    compute_feature_stats,
    variogram,
)

N = 6000


def ar1(phi: float, n: int = N, seed: int = 0) -> np.ndarray:
    e = np.random.default_rng(seed).standard_normal(n)
    e[0] /= np.sqrt(1 - phi * phi)
    return lfilter([1.0], [1.0, -phi], e)


def noise(n: int = N, seed: int = 99, sd: float = 1.0) -> np.ndarray:
    return sd * np.random.default_rng(seed).standard_normal(n)


@pytest.fixture(scope="module")
def known() -> pd.DataFrame:
    rng = np.random.default_rng(42)
    e = rng.standard_normal(N)
    h = 0.7 * np.sqrt(1 - 0.98**2) * ar1(0.98, seed=7)
    jumps = (rng.random(N) < 0.01) * rng.normal(0, 10, N)
    rw = np.cumsum(rng.standard_normal(N))
    trend = np.cumsum(ar1(0.9, seed=2))  # integrated AR(1): persistent increments
    series = {
        "white_noise": e,
        "random_walk": rw,
        "ar07": ar1(0.7, seed=1),
        "trend": trend,
        "stoch_vol": np.exp(h) * rng.standard_normal(N),
        "jump_walk": np.cumsum(rng.standard_normal(N) + jumps),
        # Observation noise twice the daily move: one-step statistics call this
        # mean-reverting (lag-1 autocorrelation of changes -0.44, one-step VR(10) 0.15).
        "noisy_walk": rw + noise(sd=2.0),
        "noisy_trend": trend + noise(sd=2.0 * np.std(np.diff(trend))),
    }
    return compute_feature_stats(series)


def test_table_shape_order_and_columns(known):
    assert list(known.columns) == list(STAT_COLUMNS) and len(STAT_COLUMNS) == 11
    assert list(known.index)[:3] == ["white_noise", "random_walk", "ar07"]
    assert len(known) == 8 and known.index.name == "feature"
    assert np.isfinite(known.to_numpy()).all()


def test_white_noise(known):
    s = known.loc["white_noise"]
    assert s["adf_pvalue"] < 0.01
    assert abs(s["hurst"]) < 0.1  # the variogram is flat beyond lag 1
    assert s["variance_ratio"] == pytest.approx(4 / 59, abs=0.02)  # flat: (G/59) / (G/4)
    assert s["acf_kday"] == pytest.approx(-0.5, abs=0.05)
    assert s["noise_share"] == pytest.approx(0.5, abs=0.03)  # all of it is "noise"
    assert s["log_half_life"] < 0  # autocorrelation below 1/2 already at lag 1
    assert abs(s["skewness"]) < 0.15 and abs(s["kurtosis"]) < 0.25
    assert abs(s["vol_clustering"]) < 0.03


def test_random_walk(known):
    s = known.loc["random_walk"]
    assert s["adf_pvalue"] > 0.1
    assert s["hurst"] == pytest.approx(0.5, abs=0.05)
    assert s["variance_ratio"] == pytest.approx(1.0, abs=0.15)
    assert s["acf_kday"] == pytest.approx(0.0, abs=0.05)
    assert s["noise_share"] == pytest.approx(0.0, abs=0.03)
    assert s["log_half_life"] == pytest.approx(np.log10(256))  # the cap: no finite memory
    assert abs(s["vol_clustering"]) < 0.03
    assert abs(s["kurtosis"]) < 0.3


def test_noise_leaves_the_dynamics_of_a_random_walk_alone(known):
    """The reason for the noise-free variogram: noise 2x the daily move must not turn a
    random walk mean-reverting (the one-step statistics did: Hurst ~0.2)."""
    clean, noisy = known.loc["random_walk"], known.loc["noisy_walk"]
    assert noisy["hurst"] == pytest.approx(0.5, abs=0.06)
    assert noisy["hurst"] == pytest.approx(clean["hurst"], abs=0.04)
    assert noisy["variance_ratio"] == pytest.approx(1.0, abs=0.2)
    assert noisy["adf_pvalue"] > 0.05
    assert noisy["log_half_life"] == pytest.approx(np.log10(256))
    # ... while the noise share sees the noise: sigma^2 / (v + 2 sigma^2) = 4 / 9.
    assert noisy["noise_share"] == pytest.approx(4 / 9, abs=0.03)


def test_noise_leaves_a_trend_trending(known):
    clean, noisy = known.loc["trend"], known.loc["noisy_trend"]
    for s in (clean, noisy):
        assert s["hurst"] > 0.7
        assert s["variance_ratio"] > 3.0
        assert s["acf_kday"] > 0.3
        assert s["adf_pvalue"] > 0.05
    assert noisy["hurst"] == pytest.approx(clean["hurst"], abs=0.03)
    assert clean["noise_share"] == pytest.approx(-0.9, abs=0.03)  # -rho_v(1): momentum
    assert noisy["noise_share"] > clean["noise_share"] + 0.5


def test_ar1_known_phi(known):
    phi, k = 0.7, 5
    s = known.loc["ar07"]
    assert s["adf_pvalue"] < 0.01
    assert s["hurst"] < 0.1
    # acf of k-row changes of an AR(1): -(1 - phi^k) / 2; noise share (1 - phi) / 2.
    assert s["acf_kday"] == pytest.approx(-(1 - phi**k) / 2, abs=0.04)
    assert s["noise_share"] == pytest.approx((1 - phi) / 2, abs=0.03)
    # G(q) = 2 gamma0 (phi - phi^q), floored at 1 % of D(1) = 2 gamma0 (1 - phi).
    floor = 0.01 * (1 - phi)
    vr = ((phi + floor) / 59) / ((phi - phi**5 + floor) / 4)
    assert s["variance_ratio"] == pytest.approx(vr, rel=0.15)
    assert s["log_half_life"] == pytest.approx(np.log10(np.log(0.5) / np.log(phi)), abs=0.05)


@pytest.mark.parametrize("phi, lo, hi", [(0.9, 0.12, 0.3), (0.97, 0.25, 0.42)])
def test_slow_ar1_hurst_is_below_a_walk_at_any_noise(phi, lo, hi):
    x = ar1(phi, seed=3)
    for sd in (0.0, 1.0, 3.0):  # noise up to 3x the level's std
        s = compute_feature_stats({"x": x + noise(sd=sd * x.std())}).iloc[0]
        assert lo < s["hurst"] < hi, (sd, s["hurst"])
        assert s["adf_pvalue"] < 0.01


def test_tails_and_volatility(known):
    sv, jw, rw = known.loc["stoch_vol"], known.loc["jump_walk"], known.loc["random_walk"]
    assert sv["vol_clustering"] > 0.1 and sv["vol_dispersion"] > 2 * rw["vol_dispersion"]
    assert sv["kurtosis"] > 2.0 and sv["vol_mean"] > 1.1
    assert jw["kurtosis"] > 1.0 and jw["vol_mean"] > rw["vol_mean"]
    assert jw["adf_pvalue"] > 0.05  # jumps do not make a random walk mean-reverting
    assert jw["hurst"] == pytest.approx(0.5, abs=0.08)


def test_variogram_matches_brute_force():
    y = np.random.default_rng(8).standard_normal(500).cumsum()
    d = variogram(y, 40)
    brute = [0.0] + [np.mean((y[q:] - y[:-q]) ** 2) for q in range(1, 41)]
    np.testing.assert_allclose(d, brute, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "make",
    [
        lambda rng: np.cumsum(rng.standard_normal(6000)),
        lambda rng: np.cumsum(rng.standard_normal(3000)) + 3 * rng.standard_normal(3000),
        lambda rng: rng.standard_normal(400),
        lambda rng: 1e3 * np.cumsum(lfilter([1.0], [1.0, -0.6], rng.standard_normal(2000))) + 5,
        lambda rng: rng.standard_normal(60),
    ],
)
def test_adf_matches_statsmodels(make):
    x = make(np.random.default_rng(3))
    with warnings.catch_warnings():  # statsmodels 0.15 FutureWarning about the return type
        warnings.simplefilter("ignore", FutureWarning)
        auto = adfuller(x, regression="c", autolag="AIC")[1]
        fixed = adfuller(x, maxlag=6, regression="c", autolag=None)[1]
    assert adf_pvalue(x) == pytest.approx(auto, rel=1e-9, abs=1e-300)
    assert adf_pvalue(x, maxlag=6, autolag=None) == pytest.approx(fixed, rel=1e-9, abs=1e-300)


def test_scale_and_shift_invariance():
    rng = np.random.default_rng(5)
    base = {
        "rw": np.cumsum(rng.standard_normal(3000)) + rng.standard_normal(3000),
        "ar": ar1(0.9, 3000, seed=6),
        "t": rng.standard_t(4, 3000),
        "trend": np.cumsum(ar1(0.95, 3000, seed=7) + 0.2),
    }
    a = compute_feature_stats(base)
    b = compute_feature_stats({k: 1000.0 * v + 7.0 for k, v in base.items()})
    c = compute_feature_stats({k: 1e-3 * v - 1e4 for k, v in base.items()})
    np.testing.assert_allclose(b.to_numpy(), a.to_numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(c.to_numpy(), a.to_numpy(), rtol=1e-6, atol=1e-9)


def test_deterministic():
    s = {"x": ar1(0.5, 1000), "y": np.cumsum(ar1(0.3, 1000, seed=9))}
    pd.testing.assert_frame_equal(compute_feature_stats(s), compute_feature_stats(s))


@pytest.mark.parametrize(
    "values, match",
    [
        (np.r_[np.nan, np.arange(100.0) ** 1.5], "NaN"),
        (np.random.default_rng(0).standard_normal(30), "at least"),
        (np.zeros((100, 2)), "1-D"),
        (np.full(200, 3.0), "constant"),
        (np.arange(200.0), "constant"),
    ],
)
def test_bad_input_is_a_clear_error(values, match):
    with pytest.raises(ValueError, match=match):
        compute_feature_stats({"bad": values})


@pytest.mark.parametrize("n", [50, 60, 130])
def test_short_but_sufficient_series(n):
    st = compute_feature_stats({"x": ar1(0.5, n), "w": np.cumsum(ar1(0.1, n, seed=4))})
    assert np.isfinite(st.to_numpy()).all()


def test_a_series_held_between_releases_keeps_finite_volatility_statistics():
    """A quarterly series held weekly: most 5-row changes are exactly 0, so their MAD is 0
    (about 1e-15 after the mean removal). The volatility scale must fall back to the std,
    not divide by ~1e-15 (vol_mean was ~1e14 and the winsorised moments degenerate)."""
    rng = np.random.default_rng(3)
    quarters = np.cumsum(rng.standard_normal(200)) + 0.3 * np.arange(200)  # with drift
    held = np.repeat(quarters, 13)  # (2600,)
    stats = compute_feature_stats({"held": held})
    assert 0.1 < stats.loc["held", "vol_mean"] < 10
    assert abs(stats.loc["held", "kurtosis"]) < 50
