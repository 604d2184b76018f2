"""The 11 statistics on processes whose answers are known from theory."""

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
    dfa_hurst,
    variance_ratio,
)

N = 6000


def ar1(phi: float, n: int = N, seed: int = 0) -> np.ndarray:
    e = np.random.default_rng(seed).standard_normal(n)
    e[0] /= np.sqrt(1 - phi * phi)
    return lfilter([1.0], [1.0, -phi], e)


@pytest.fixture(scope="module")
def known() -> pd.DataFrame:
    rng = np.random.default_rng(42)
    e = rng.standard_normal(N)
    h = 0.7 * np.sqrt(1 - 0.98**2) * ar1(0.98, seed=7)
    jumps = (rng.random(N) < 0.01) * rng.normal(0, 10, N)
    series = {
        "white_noise": e,
        "random_walk": np.cumsum(rng.standard_normal(N)),
        "ar07": ar1(0.7, seed=1),
        "trend": np.cumsum(ar1(0.9, seed=2)),  # integrated AR(1): persistent increments
        "stoch_vol": np.exp(h) * rng.standard_normal(N),
        "jump_walk": np.cumsum(rng.standard_normal(N) + jumps),
    }
    return compute_feature_stats(series)


def test_table_shape_order_and_columns(known):
    assert list(known.columns) == list(STAT_COLUMNS) and len(STAT_COLUMNS) == 11
    assert list(known.index) == [
        "white_noise",
        "random_walk",
        "ar07",
        "trend",
        "stoch_vol",
        "jump_walk",
    ]
    assert np.isfinite(known.to_numpy()).all()


def test_white_noise(known):
    s = known.loc["white_noise"]
    assert s["adf_pvalue"] < 0.01
    assert abs(s["acf1"]) < 0.05
    assert s["hurst"] < 0.2  # increments of a white-noise level are anti-persistent
    assert s["variance_ratio"] == pytest.approx(1 / 10, abs=0.02)  # VR(q) = 1/q
    assert s["acf1_diff"] == pytest.approx(-0.5, abs=0.05)
    assert s["log_half_life"] < 0  # autocorrelation below 1/2 already at lag 1
    assert abs(s["skewness"]) < 0.15 and abs(s["kurtosis"]) < 0.25
    assert s["vol_mean"] == pytest.approx(1.0, abs=0.05)


def test_random_walk(known):
    s = known.loc["random_walk"]
    assert s["adf_pvalue"] > 0.1
    assert s["hurst"] == pytest.approx(0.5, abs=0.08)
    assert s["acf1"] > 0.95
    assert s["variance_ratio"] == pytest.approx(1.0, abs=0.15)
    assert abs(s["acf1_diff"]) < 0.05
    assert s["log_half_life"] == pytest.approx(np.log10(256))  # the cap: no finite memory
    # Homoscedastic Gaussian changes: rolling std (w=20) has CV ~ 1/sqrt(2*19) = 0.16.
    assert s["vol_dispersion"] == pytest.approx(0.16, abs=0.03)
    assert abs(s["vol_clustering"]) < 0.03


def test_ar1_known_phi(known):
    phi = 0.7
    s = known.loc["ar07"]
    assert s["acf1"] == pytest.approx(phi, abs=0.05)
    assert s["adf_pvalue"] < 0.01
    assert s["hurst"] < 0.35
    assert s["variance_ratio"] == pytest.approx((1 - phi**10) / (10 * (1 - phi)), abs=0.05)
    assert s["acf1_diff"] == pytest.approx(-(1 - phi) / 2, abs=0.05)
    assert s["log_half_life"] == pytest.approx(np.log10(np.log(0.5) / np.log(phi)), abs=0.05)


def test_trending(known):
    s = known.loc["trend"]
    assert s["adf_pvalue"] > 0.05
    assert s["hurst"] > 0.7
    assert s["variance_ratio"] > 3.0
    assert s["acf1_diff"] == pytest.approx(0.9, abs=0.05)


def test_tails_and_volatility(known):
    sv, jw, rw = known.loc["stoch_vol"], known.loc["jump_walk"], known.loc["random_walk"]
    assert sv["vol_clustering"] > 0.1 and sv["vol_dispersion"] > 2 * rw["vol_dispersion"]
    assert sv["kurtosis"] > 2.0 and sv["vol_mean"] > 1.1
    assert jw["kurtosis"] > 2.0 and jw["vol_mean"] > 1.05
    assert jw["adf_pvalue"] > 0.05  # jumps do not make a random walk mean-reverting


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dfa_hurst_of_white_noise_increments(seed):
    e = np.random.default_rng(seed).standard_normal(8000)
    assert dfa_hurst(e) == pytest.approx(0.5, abs=0.06)


def test_adf_matches_statsmodels_fixed_lag():
    x = np.cumsum(np.random.default_rng(3).standard_normal(2000))
    with warnings.catch_warnings():  # statsmodels 0.15 FutureWarning about the return type
        warnings.simplefilter("ignore", FutureWarning)
        ref = adfuller(x, maxlag=12, regression="c", autolag=None)[1]
    assert adf_pvalue(x, maxlag=12) == pytest.approx(ref, rel=1e-12)


def test_variance_ratio_random_walk():
    x = np.cumsum(np.random.default_rng(4).standard_normal(20000))
    assert variance_ratio(x, q=10) == pytest.approx(1.0, abs=0.08)


def test_scale_and_shift_invariance():
    rng = np.random.default_rng(5)
    base = {
        "rw": np.cumsum(rng.standard_normal(3000)),
        "ar": ar1(0.9, 3000, seed=6),
        "t": rng.standard_t(4, 3000),
    }
    a = compute_feature_stats(base)
    b = compute_feature_stats({k: 1000.0 * v + 7.0 for k, v in base.items()})
    c = compute_feature_stats({k: 1e-3 * v for k, v in base.items()})
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


def test_short_but_sufficient_series():
    st = compute_feature_stats({"x": ar1(0.5, 60)})
    assert np.isfinite(st.to_numpy()).all()
