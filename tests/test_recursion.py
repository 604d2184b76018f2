"""recursion.py: one filter recursion for batch and live serving. A run continued from a
held state is bit for bit the run over the whole series; a grown series continues, a
revised one starts again; the Kalman filter is statsmodels' filter."""

from __future__ import annotations

import numpy as np
import pytest

from mamba_denoiser import recursion
from mamba_denoiser.classical import (
    StateSpaceFit,
    _filter_results,
    clear_cache,
    kalman_filter,
    kalman_filters,
)
from mamba_denoiser.robust import NoiseLaw, _columns, robust_filter


def _fits() -> list[StateSpaceFit]:
    h = 0.3
    return [
        StateSpaceFit(
            "kalman_ar1",
            {"ar.L1": 0.95, "sigma2": 0.1, "var.measurement_error": h, "noise_var": h},
            0.2,
            1.5,
            h,
            0.0,
            {},
        ),
        StateSpaceFit(
            "kalman_level",
            {"sigma2.level": 0.05, "sigma2.irregular": h, "noise_var": h},
            -1.0,
            2.0,
            h,
            0.0,
            {},
        ),
        StateSpaceFit(
            "kalman_ari1",
            {"ar.L1": 0.6, "sigma2": 0.02, "var.measurement_error": h, "noise_var": h},
            0.0,
            1.0,
            h,
            0.0,
            {},
        ),
    ]


def _panel(T: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = np.cumsum(rng.standard_normal((T, 3)) * 0.2, axis=0) + rng.standard_normal((T, 3))
    y[:37, 1] = np.nan  # a leading block of missing history
    y[rng.random((T, 3)) < 0.05] = np.nan  # and gaps
    y[rng.random((T, 3)) < 0.02] *= 8  # outliers
    return y


LAWS = [NoiseLaw(0.05, 10.0), NoiseLaw(0.0, 1.0, 0.02, 5.0), NoiseLaw(0.02, 5.0, 0.05, 3.0)]


@pytest.mark.parametrize("split", [1, 36, 37, 200, 399])
def test_a_run_continued_from_its_state_is_the_whole_run_bit_for_bit(split):
    fits = _fits()
    z = (_panel() - np.array([f.center for f in fits])) / np.array([f.scale for f in fits])
    cols = _columns(fits, LAWS)
    whole = recursion.run(z, cols, burn_in=5, score_from=50)
    head = recursion.run(z[:split], cols, burn_in=5, score_from=50)
    tail = recursion.run(z[split:], cols, burn_in=5, score_from=50, state=head.state, row0=split)
    for name in ("mean", "gain", "prior_mean", "prior_var", "prior_var_jump"):
        joined = np.concatenate([getattr(head, name), getattr(tail, name)])
        np.testing.assert_array_equal(joined, getattr(whole, name), err_msg=name)
    np.testing.assert_array_equal(tail.loglik, whole.loglik)
    np.testing.assert_array_equal(tail.state, whole.state)


def test_a_grown_series_continues_and_a_revised_one_starts_again():
    """Carried: the serving memo. Growing by 1, 17 and 100 rows gives what a fresh run
    over the grown series gives (the history's arrays are not rebuilt); a revised row, or
    a NaN where there was a value, starts from the beginning."""
    fits = _fits()
    y = _panel(T=600)
    cols = _columns(fits, LAWS)
    z = (y - np.array([f.center for f in fits])) / np.array([f.scale for f in fits])
    carried = recursion.Carried()
    n = 482
    for step in (0, 1, 17, 100):
        n += step
        got = carried(z[:n], cols, burn_in=5)
        fresh = recursion.run(z[:n], cols, burn_in=5)
        np.testing.assert_array_equal(got.mean, fresh.mean)
        np.testing.assert_array_equal(got.prior_var_jump, fresh.prior_var_jump)
        assert not got.mean.flags.writeable
    for change in (5.0, np.nan):
        revised = z[:n].copy()
        revised[300, 0] = change
        got = carried(revised, cols, burn_in=5)
        np.testing.assert_array_equal(got.mean, recursion.run(revised, cols, burn_in=5).mean)


def test_the_kalman_filter_is_statsmodels_filter_and_the_gaussian_law_is_it_exactly():
    clear_cache()
    y = _panel(T=500, seed=3)
    y[y > 4] = 0.0  # no outliers: the models' own noise
    for j, fit in enumerate(_fits()):
        signal, gain = kalman_filter(fit, y[:, j])
        ok = np.isfinite(y[:, j])
        first = int(np.argmax(ok))
        z = (y[first:, j] - fit.center) / fit.scale
        res, design = _filter_results(fit.model, z, fit.params, smooth=False)
        ref = (design @ res.filtered_state) * fit.scale + fit.center
        got = signal[first:][ok[first:]]
        np.testing.assert_allclose(
            got, ref[ok[first:]], rtol=0, atol=1e-7 * fit.scale
        )  # measured ≤ 1.3e-7 on the built-in panel
        rob = robust_filter(y[:, [j]], [fit], [NoiseLaw(0.0, 1.0)])[:, 0]
        np.testing.assert_array_equal(rob, signal)  # ε = δ = 0 is the Kalman filter
        assert np.isnan(gain[~ok]).all() and ((gain[ok] > 0) & (gain[ok] <= 1)).all()
    # all columns in one pass: the same bits as one column at a time
    both, _ = kalman_filters(_fits(), y)
    for j, fit in enumerate(_fits()):
        np.testing.assert_array_equal(both[:, j], kalman_filter(fit, y[:, j])[0])
