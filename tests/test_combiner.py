"""The multivariate linear filter (combiner.py): per-feature Kalman filters corrected with
the group's current innovations, weights fitted on train rows against future targets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import lfilter

from mamba_denoiser.combiner import apply_combiner, fit_combiner


def _panel(common: float, n=3000, f=6, phi=0.9, noise=0.8, seed=0):
    """f AR(1) features sharing one AR(1) factor with a share ``common`` of their variance."""
    rng = np.random.default_rng(seed)
    unit = np.sqrt(1 - phi**2)
    factor = lfilter([1.0], [1.0, -phi], unit * rng.standard_normal(n))
    own = lfilter([1.0], [1.0, -phi], unit * rng.standard_normal((n, f)), axis=0)
    sign = rng.choice([-1.0, 1.0], f)
    s = np.sqrt(common) * sign * factor[:, None] + np.sqrt(1 - common) * own
    y = s + noise * rng.standard_normal((n, f))
    y[:400, 0] = np.nan  # a late starter
    return s, y


def _snr(y, s, d, rows):
    return np.nanmean(
        10 * np.log10(np.nanmean((y - s)[rows] ** 2, 0) / np.nanmean((d - s)[rows] ** 2, 0))
    )


@pytest.fixture(scope="module")
def factor_panel():
    s, y = _panel(0.8)
    return s, y, fit_combiner(y, (0, 2000))


def test_the_combiner_uses_a_shared_factor(factor_panel):
    """80 % common variance: the group's innovations add > 1 dB over each feature's own
    Kalman filter (gamma = 0), on rows after the train split."""
    from mamba_denoiser.combiner import Combiner

    s, y, c = factor_panel
    alone = Combiner(c.fits, np.zeros_like(c.gamma), c.scale)
    rows = slice(2000, None)
    gain = _snr(y, s, apply_combiner(c, y)[0], rows) - _snr(y, s, apply_combiner(alone, y)[0], rows)
    assert gain > 1.0
    assert np.isnan(apply_combiner(c, y)[0][:400, 0]).all()  # NaN stays NaN


def test_independent_features_get_almost_no_weight():
    s, y = _panel(0.0, seed=1)
    c = fit_combiner(y, (0, 2000))
    f = y.shape[1]
    off = c.gamma.copy()
    off[:, :f] -= np.diag(np.diag(c.gamma[:, :f]))  # all but each feature's own innovation
    assert np.abs(off).max() < 0.05 * np.abs(c.scale).min()  # next to the innovations' sd
    rows = slice(2000, None)
    from mamba_denoiser.combiner import Combiner

    alone = Combiner(c.fits, np.zeros_like(c.gamma), c.scale)
    assert (
        abs(
            _snr(y, s, apply_combiner(c, y)[0], rows)
            - _snr(y, s, apply_combiner(alone, y)[0], rows)
        )
        < 0.1
    )


def test_the_divergence_is_exact_and_the_filter_causal(factor_panel):
    _, y, c = factor_panel
    out, div = apply_combiner(c, y)
    t, i, h = 2500, 3, 1e-4
    bumped = y.copy()
    bumped[t, i] += h
    moved = apply_combiner(c, bumped)[0]
    assert (moved[t, i] - out[t, i]) / h == pytest.approx(div[t, i], rel=1e-4)
    np.testing.assert_array_equal(moved[:t], out[:t])  # rows before t untouched
    assert ((moved[t] - out[t]) != 0).sum() > 1  # the bump reaches the other features


def test_rows_do_not_depend_on_how_many_follow():
    """Row t of the combiner's product is bit-identical whatever the number of rows (a
    live run sees fewer rows than the backtest)."""
    from mamba_denoiser.combiner import rowwise_matmul

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3000, 52)), rng.standard_normal((52, 13))
    full = rowwise_matmul(a, b)
    for cut in (1, 255, 256, 257, 1000, 2999):
        assert np.array_equal(rowwise_matmul(a[:cut], b), full[:cut])
    np.testing.assert_allclose(full, a @ b, rtol=1e-12, atol=1e-12)


def test_a_grown_panel_continues_the_held_sums_bit_for_bit():
    """apply_combiner carries its state (the Kalman filters', the exponentially weighted
    sums', the open block of the product): a panel grown by 1, 2, 255 and 700 rows (across
    the product's 256-row blocks) gives the bits of a fresh run over the grown panel, which
    are those of the batch computation written out (_design, rowwise_matmul); a revised
    earlier row starts again."""
    from mamba_denoiser.classical import clear_cache
    from mamba_denoiser.combiner import _design, _kalman, rowwise_matmul

    _, y = _panel(0.5, n=2400)
    c = fit_combiner(y[:1200], (0, 1000))

    def batch(raw):  # the computation a whole run makes, written out
        K, g, e = _kalman(raw, c.fits)
        out = K + rowwise_matmul(_design(e, c.scale), c.gamma.T)
        div = g + np.where(np.isfinite(e), np.diag(c.gamma[:, : raw.shape[1]]) / c.scale, 0.0)
        out = np.where(np.isnan(raw) | np.isnan(K), np.nan, out)
        return out, np.where(np.isnan(out), np.nan, div)

    clear_cache()
    n = 1190
    for step in (0, 1, 1, 2, 255, 700):
        n += step
        got = apply_combiner(c, y[:n])
        clear_cache()
        fresh = apply_combiner(c, y[:n])
        for a, b, w in zip(got, fresh, batch(y[:n])):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, w)
        assert not got[0].flags.writeable
        apply_combiner(c, y[: n - 7])  # a shorter panel between: the longer one runs again
    revised = y[:n].copy()
    revised[500, 1] += 1.0
    np.testing.assert_array_equal(apply_combiner(c, revised)[0], batch(revised)[0])
