"""evaluation/diagnostics.removed_part: what a denoiser removed, without clean values."""

import numpy as np

from mamba_denoiser.evaluation.diagnostics import removed_part


def _ar1(n, phi, rng):
    x = np.zeros(n)
    e = rng.standard_normal(n)
    for t in range(1, n):  # small test series
        x[t] = phi * x[t - 1] + e[t]
    return x


def test_removing_exactly_the_noise_looks_white_and_matches_the_noise_share():
    rng = np.random.default_rng(0)
    clean = _ar1(4000, 0.9, rng)
    noise = 0.8 * rng.standard_normal(4000)
    y = clean + noise
    d = removed_part(y, clean, slice(2000, None), sigma=0.8, train=slice(0, 2000))
    assert d["removed_ljung_box_p"] > 0.01 and d["lag_vs_raw"] == 0
    assert abs(d["removed_share"] - d["noise_share"]) < 0.05


def test_removing_signal_shows_structure_and_lag():
    rng = np.random.default_rng(1)
    y = _ar1(4000, 0.9, rng) + 0.3 * rng.standard_normal(4000)
    ema = np.zeros_like(y)
    for t in range(1, len(y)):  # a heavy EMA: removes signal and trails y
        ema[t] = 0.9 * ema[t - 1] + 0.1 * y[t]
    d = removed_part(y, ema, slice(2000, None))
    assert d["removed_ljung_box_p"] < 1e-6 and d["lag_vs_raw"] > 0
    assert d["noise_share"] is None  # no σ given


def test_an_unchanged_feature_removes_nothing():
    y = np.random.default_rng(2).standard_normal(500)
    y[:50] = np.nan
    d = removed_part(y, y.copy(), slice(100, None), sigma=0.5, train=slice(0, 100))
    assert d["removed_share"] == 0.0 and d["removed_ljung_box_p"] is None
    assert d["lag_vs_raw"] is None and d["noise_share"] is not None
