"""Metrics against hand-computed answers."""

import numpy as np
import pandas as pd
import pytest

from mamba_denoiser.evaluation.metrics import (
    adjusted_sharpe,
    cross_correlation,
    hit_rate,
    information_coefficient,
    lag,
    mse,
    r2,
    sharpe,
    snr_gain_db,
)


def test_mse_ignores_nan_and_works_per_column():
    est = np.array([1.0, 2.0, np.nan, 4.0])
    truth = np.array([0.0, 0.0, 5.0, np.nan])
    assert mse(est, truth) == pytest.approx((1 + 4) / 2)
    both = mse(np.column_stack([est, est]), np.column_stack([truth, truth + 1.0]))
    np.testing.assert_allclose(both, [2.5, (0 + 1) / 2])
    assert mse(est, truth, rows=slice(0, 1)) == pytest.approx(1.0)
    assert np.isnan(mse(np.array([np.nan]), np.array([1.0])))


def test_snr_gain_db_known_values():
    clean = np.sin(np.linspace(0, 10, 200))
    noisy = clean + 0.2 * np.cos(np.arange(200))
    half = clean + 0.1 * np.cos(np.arange(200))  # half the error amplitude
    assert snr_gain_db(noisy, half, clean) == pytest.approx(10 * np.log10(4))
    assert snr_gain_db(noisy, noisy, clean) == pytest.approx(0.0)
    assert snr_gain_db(half, noisy, clean) == pytest.approx(-10 * np.log10(4))
    # A NaN in any input drops the row from BOTH MSEs.
    noisy2 = noisy.copy()
    noisy2[0] = 1e6
    den2 = half.copy()
    den2[0] = np.nan
    assert snr_gain_db(noisy2, den2, clean) == pytest.approx(10 * np.log10(4))
    gains = snr_gain_db(
        np.column_stack([noisy, noisy]),
        np.column_stack([half, noisy]),
        np.column_stack([clean, clean]),
    )
    np.testing.assert_allclose(gains, [10 * np.log10(4), 0.0])


def test_lag_of_a_pure_delay_and_of_an_ema():
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.standard_normal(5000))
    delayed = np.r_[np.full(5, np.nan), x[:-5]]
    assert lag(delayed, x) == 5 and lag(delayed, x, on="changes") == 5
    assert cross_correlation(delayed, x, max_lag=10)[5] == pytest.approx(1.0)
    lags = []
    for a in (0.5, 0.2, 0.05):
        ema = pd.Series(x).ewm(alpha=a, adjust=False).mean().to_numpy()
        lags.append(lag(ema, x, max_lag=60))
        assert lag(ema, x, on="changes") == 0  # the EMA's weights peak on the newest row
    assert lags[0] < lags[1] < lags[2]  # smoother = later
    assert abs(lags[2] - np.log(2) / 0.05) <= 3  # ~ median delay of the weights
    with pytest.raises(ValueError, match="on="):
        lag(x, x, on="both")


def test_ic_per_period_mean_and_t_stat():
    rng = np.random.default_rng(1)
    y = rng.standard_normal(300)
    periods = np.repeat([0, 1, 2], 100)
    pred = np.where(periods == 2, -y, 2 * y + 1)  # IC per period: 1, 1, -1
    ic = information_coefficient(pred, y, periods=periods)
    np.testing.assert_allclose(ic.per_period, [1.0, 1.0, -1.0])
    assert ic.mean == pytest.approx(1 / 3)
    # sd(ddof=1) of (1, 1, -1) = sqrt(4/3); t = (1/3) / (sqrt(4/3) / sqrt(3)) = 0.5
    assert ic.t_stat == pytest.approx(0.5)
    assert ic.n_periods == 3
    one = information_coefficient(pred[:100], y[:100])
    assert one.mean == pytest.approx(1.0) and np.isnan(one.t_stat)


def test_rank_ic_sees_monotone_relations_and_skips_nan():
    x = np.linspace(-3, 3, 200)
    y = np.exp(3 * x)
    x_nan = x.copy()
    x_nan[::7] = np.nan
    assert information_coefficient(x_nan, y, method="spearman").mean == pytest.approx(1.0)
    assert information_coefficient(x_nan, y).mean < 0.8  # Pearson is hurt by the curve


def test_r2_hit_rate_and_sharpe_known_values():
    y = np.array([1.0, -1.0, 2.0, -2.0])
    assert r2(y, y) == pytest.approx(1.0)
    assert r2(np.full(4, y.mean()), y) == pytest.approx(0.0)
    assert r2(np.zeros(4), y, benchmark="zero") == pytest.approx(0.0)
    # y + 1 = (2, 0, 3, -1): SSE of 0 = 14, SS around the mean 1 = 10
    assert r2(np.zeros(4), y + 1.0) == pytest.approx(1 - 14 / 10)
    assert hit_rate(
        np.array([1.0, 1.0, -1.0, 0.0, 5.0]), np.array([2.0, -1.0, -3.0, 1.0, 0.0])
    ) == pytest.approx(2 / 4)  # the 0 target row is skipped; a 0 prediction misses
    r = np.array([0.01, 0.03] * 10)  # mean 0.02, sd (ddof=1) 0.01 * sqrt(20/19)
    assert sharpe(r) == pytest.approx(0.02 / (0.01 * np.sqrt(20 / 19)) * np.sqrt(252))


def _competition_oracle(position, fwd, rf):
    """The public metric, restated with pandas (geometric mean excess, std ddof=1)."""
    df = pd.DataFrame({"p": position, "f": fwd, "r": rf})
    strat = df.r * (1 - df.p) + df.p * df.f
    n = len(df)
    s_mean = (1 + (strat - df.r)).prod() ** (1 / n) - 1
    m_mean = (1 + (df.f - df.r)).prod() ** (1 / n) - 1
    s_sharpe = s_mean / strat.std() * np.sqrt(252)
    s_vol, m_vol = strat.std() * np.sqrt(252) * 100, df.f.std() * np.sqrt(252) * 100
    vol_pen = 1 + max(0, s_vol / m_vol - 1.2)
    ret_pen = 1 + max(0, (m_mean - s_mean) * 100 * 252) ** 2 / 100
    return min(s_sharpe / (vol_pen * ret_pen), 1_000_000)


def test_adjusted_sharpe_matches_the_competition_formula():
    rng = np.random.default_rng(2)
    n = 1000
    fwd = 0.0004 + 0.01 * rng.standard_normal(n)
    rf = 1e-4 + 1e-5 * rng.random(n)
    for pos in (rng.uniform(0, 2, n), rng.uniform(0, 0.5, n), np.full(n, 1.9)):
        out = adjusted_sharpe(pos, fwd, rf)
        assert out.score == pytest.approx(_competition_oracle(pos, fwd, rf), rel=1e-10)


def test_adjusted_sharpe_penalties_on_constructed_cases():
    rng = np.random.default_rng(3)
    n = 2000
    fwd = 0.001 + 0.01 * rng.standard_normal(n)
    rf = np.zeros(n)
    market = adjusted_sharpe(np.ones(n), fwd, rf)
    assert market.vol_penalty == 1.0 and market.return_penalty == 1.0
    assert market.score == pytest.approx(market.sharpe)
    geo = np.prod(1 + fwd) ** (1 / n) - 1
    assert market.sharpe == pytest.approx(geo / fwd.std(ddof=1) * np.sqrt(252))
    double = adjusted_sharpe(np.full(n, 2.0), fwd, rf)  # vol ratio exactly 2
    assert double.vol_penalty == pytest.approx(1.0 + (2.0 - 1.2))
    assert double.return_penalty == 1.0  # earns more than the market
    half = adjusted_sharpe(np.full(n, 0.5), fwd, rf)  # under-earns the market
    gap = (geo - (np.prod(1 + 0.5 * fwd) ** (1 / n) - 1)) * 100 * 252
    assert half.return_penalty == pytest.approx(1 + gap**2 / 100)
    assert half.vol_penalty == 1.0
    flat = 0.01 + 1e-12 * rng.standard_normal(n)  # absurd Sharpe: capped
    assert adjusted_sharpe(np.ones(n), flat, rf).score == 1_000_000


def test_adjusted_sharpe_rejects_bad_positions_and_nan():
    fwd, rf = np.array([0.01, -0.01, 0.02]), np.zeros(3)
    with pytest.raises(ValueError, match="allowed"):
        adjusted_sharpe(np.array([1.0, 2.5, 1.0]), fwd, rf)
    with pytest.raises(ValueError, match="allowed"):
        adjusted_sharpe(np.array([1.0, -0.1, 1.0]), fwd, rf)
    with pytest.raises(ValueError, match="non-finite"):
        adjusted_sharpe(np.array([1.0, np.nan, 1.0]), fwd, rf)
    with pytest.raises(ValueError, match="zero volatility"):
        adjusted_sharpe(np.zeros(3), fwd, rf)


def test_gain_difference_matches_the_per_feature_gains_and_its_se_the_spread_over_draws():
    """The group mean of gain(a) − gain(b) equals the mean of snr_gain_db's per-column
    differences; the block-bootstrap SE of one draw is within 35 % of the spread of that
    mean over 300 independent draws (a filtered b: autocorrelated errors, which the
    blocks must carry)."""
    from scipy.signal import lfilter

    from mamba_denoiser.evaluation.metrics import gain_difference, snr_gain_db

    def draw(rng, n=1290, f=6):
        clean = lfilter([1.0], [1.0, -0.95], rng.standard_normal((n, f)), axis=0) * 0.3
        noisy = clean + rng.standard_normal((n, f))
        a = clean + 0.5 * rng.standard_normal((n, f))  # white errors
        b = clean + lfilter([0.2], [1.0, -0.8], rng.standard_normal((n, f)), axis=0)
        return noisy, a, b, clean

    groups = np.array(["x", "x", "x", "y", "y", "y"])
    noisy, a, b, clean = draw(np.random.default_rng(0))
    noisy[5:40, 1] = np.nan  # missing rows are skipped like snr_gain_db skips them
    tab = gain_difference(noisy, a, b, clean, groups)
    per = snr_gain_db(noisy, a, clean) - snr_gain_db(noisy, b, clean)
    np.testing.assert_allclose(tab.loc["x", "diff"], per[:3].mean(), rtol=1e-9)
    np.testing.assert_allclose(tab.loc["y", "diff"], per[3:].mean(), rtol=1e-9)
    rng = np.random.default_rng(1)
    means = [gain_difference(*draw(rng), groups).loc["x", "diff"] for _ in range(300)]
    spread = np.std(means)
    assert abs(tab.loc["x", "se"] / spread - 1) < 0.35, (tab.loc["x", "se"], spread)
