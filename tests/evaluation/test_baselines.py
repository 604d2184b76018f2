"""Classical baselines: causal, train-only fitting, NaN handling, and known answers."""

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.signal import lfilter, savgol_filter
from statsmodels.tsa.filters.hp_filter import hpfilter

from mamba_denoiser.evaluation.baselines import (
    BASELINES,
    apply_baselines,
    fit_baseline,
    noise_variance,
)
from mamba_denoiser.evaluation.leakage import check_future_perturbation
from mamba_denoiser.evaluation.metrics import snr_gain_db

N, TRAIN = 900, (0, 600)


def _rw_noise(n=N, seed=0, noise=0.5):
    rng = np.random.default_rng(seed)
    x = np.cumsum(rng.standard_normal(n))
    return x, x + noise * rng.standard_normal(n)


def _ar1_noise(n=N, seed=0, phi=0.8, noise=0.7):
    rng = np.random.default_rng(seed)
    x = lfilter([1.0], [1.0, -phi], rng.standard_normal(n))
    return x, x + noise * rng.standard_normal(n)


def _with_gaps(y):
    y = 50.0 + 3.0 * y  # native units: offset and scale
    y[:80] = np.nan  # missing history
    y[300:303] = np.nan  # interior gap in train
    y[700] = np.nan  # interior gap in test
    return y


@pytest.fixture(scope="module")
def series():
    return _with_gaps(_rw_noise()[1])


@pytest.fixture(scope="module")
def fitted(series):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: fit_baseline(name, series, TRAIN) for name in BASELINES}


@pytest.mark.parametrize("name", list(BASELINES))
def test_causal_output_ignores_later_rows(name, series, fitted):
    # Perturbs all finite rows after t (in train and in test) and demands bit-identical
    # output on rows <= t; raises LeakageError otherwise.
    check_future_perturbation(fitted[name].causal, series, cuts=[50, 150, 450, 599, 650, 850])


@pytest.mark.parametrize("name", list(BASELINES))
def test_params_do_not_depend_on_test_rows(name, series, fitted):
    other = series.copy()
    rng = np.random.default_rng(1)
    other[TRAIN[1] :] = rng.standard_normal(N - TRAIN[1]) * 100.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refit = fit_baseline(name, other, TRAIN)
    assert refit.params == fitted[name].params
    assert (refit.center, refit.scale) == (fitted[name].center, fitted[name].scale)


@pytest.mark.parametrize("name", list(BASELINES))
def test_nan_stays_nan_and_observed_rows_are_filled(name, series, fitted):
    outs = [fitted[name].causal(series), fitted[name].two_sided(series)]
    if name == "ema":
        assert outs[1] is None
        outs = outs[:1]
    for out in outs:
        assert out.shape == series.shape
        np.testing.assert_array_equal(np.isnan(out), np.isnan(series))


def test_ema_is_pandas_ewm_with_the_tuned_weight(series, fitted):
    f = fitted["ema"]
    expected = pd.Series(series).ffill().ewm(alpha=f.params["alpha"], adjust=False).mean()
    expected[np.isnan(series)] = np.nan
    np.testing.assert_allclose(f.causal(series), expected.to_numpy(), rtol=1e-10)


def test_ema_weight_matches_the_optimal_local_level_gain():
    # Random walk (innovation var q = 1) + white noise (var r = 0.25): the optimal causal
    # linear filter is the steady-state Kalman filter = an EMA with weight
    # K = P / (P + r), P = (q + sqrt(q^2 + 4 q r)) / 2. SURE with the true noise variance
    # must land on the grid point nearest K (grid ratio ~0.86 between neighbours).
    q, r = 1.0, 0.25
    _, y = _rw_noise(n=6000, seed=3, noise=np.sqrt(r))
    f = fit_baseline("ema", y, (0, 6000), noise_var=r)
    p = (q + np.sqrt(q * q + 4 * q * r)) / 2
    k = p / (p + r)
    assert abs(np.log(f.params["alpha"] / k)) < 0.2, (f.params["alpha"], k)


def test_ema_does_not_smooth_without_noise_and_smooths_hard_around_a_constant():
    _, y = _rw_noise(n=2000, seed=4)
    assert fit_baseline("ema", y, (0, 2000), noise_var=0.0).params["alpha"] == 1.0
    flat = 5.0 + np.random.default_rng(5).standard_normal(2000)
    # All of it is noise: SURE's risk a / (2 - a) * s2 falls with a, down to sampling error.
    assert fit_baseline("ema", flat, (0, 2000), noise_var=1.0).params["alpha"] < 0.05


def test_savgol_matches_scipy_and_a_trailing_polyfit():
    rng = np.random.default_rng(6)
    trend = np.cumsum(lfilter([1.0], [1.0, -0.9], rng.standard_normal(700)))  # smooth
    y = trend + rng.standard_normal(700)
    f = fit_baseline("savgol", y, (0, 500), noise_var=1.0)
    p = f.params
    assert p["window"] > 1 and p["causal_window"] > 1 and p["causal_order"] >= 1
    z = (y - f.center) / f.scale
    two = savgol_filter(z, p["window"], p["order"], mode="interp") * f.scale + f.center
    np.testing.assert_allclose(f.two_sided(y), two, rtol=1e-10, atol=1e-10)
    causal = f.causal(y)
    w, order = p["causal_window"], p["causal_order"]
    for t in (w - 1, 300, 699):  # least-squares polynomial through y[t-w+1..t], at t
        coef = np.polyfit(np.arange(w), y[t - w + 1 : t + 1], order)
        assert causal[t] == pytest.approx(np.polyval(coef, w - 1), rel=1e-8, abs=1e-8)


def test_hp_two_sided_is_hpfilter_and_causal_is_hp_of_the_past_at_its_end():
    _, y = _rw_noise(n=600, seed=7, noise=1.0)
    f = fit_baseline("hp", y, (0, 400), noise_var=1.0)
    lam, causal_lam = f.params["lambda"], f.params["causal_lambda"]
    assert lam > 0 and causal_lam > 0
    trend = hpfilter(y, lamb=lam)[1]
    np.testing.assert_allclose(f.two_sided(y), trend, rtol=1e-8, atol=1e-8)
    causal = f.causal(y)
    for t in (50, 399, 599):  # one-sided HP at t = last point of HP on rows 0..t
        last = hpfilter(y[: t + 1], lamb=causal_lam)[1][-1]
        assert causal[t] == pytest.approx(last, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("name", ["kalman_level", "kalman_ar1", "kalman_ari1"])
def test_kalman_smoother_agrees_with_the_filter_at_the_last_row(name, series, fitted):
    f = fitted[name]
    causal, two = f.causal(series), f.two_sided(series)
    assert two[-1] == pytest.approx(causal[-1], rel=1e-9)
    assert not np.allclose(two[100:-1], causal[100:-1])


def test_kalman_mle_recovers_the_generating_parameters():
    rng = np.random.default_rng(8)
    n = 5000
    x = np.cumsum(rng.standard_normal(n))  # level variance 1
    y = x + 0.8 * rng.standard_normal(n)  # noise variance 0.64
    f = fit_baseline("kalman_level", y, (0, n))
    assert f.params["sigma2.level"] * f.scale**2 == pytest.approx(1.0, rel=0.2)
    assert f.params["sigma2.irregular"] * f.scale**2 == pytest.approx(0.64, rel=0.2)
    _, y = _ar1_noise(n=n, seed=9, phi=0.8, noise=0.7)
    assert fit_baseline("kalman_ar1", y, (0, n)).params["ar.L1"] == pytest.approx(0.8, abs=0.05)
    v = lfilter([1.0], [1.0, -0.9], rng.standard_normal(n))  # changes with momentum
    y = np.cumsum(v) + 1.0 * rng.standard_normal(n)
    assert fit_baseline("kalman_ari1", y, (0, n)).params["ar.L1"] == pytest.approx(0.9, abs=0.05)


@pytest.mark.parametrize("kind", ["ou", "rw", "trend"])
def test_noise_variance_is_recovered_for_each_dynamics(kind):
    rng = np.random.default_rng(10)
    n, noise_sd = 4000, 0.5
    e = rng.standard_normal(n)
    clean = {
        "ou": lfilter([1.0], [1.0, -0.7], e),
        "rw": np.cumsum(e),
        "trend": np.cumsum(lfilter([1.0], [1.0, -0.9], e)),
    }[kind]
    y = 100.0 + 20.0 * (clean + noise_sd * rng.standard_normal(n))
    assert noise_variance(y, (0, n)) == pytest.approx((20.0 * noise_sd) ** 2, rel=0.3)


def test_baselines_denoise_an_ar1_plus_noise_series():
    clean, y = _ar1_noise(n=3000, seed=11)
    train, test = (0, 2000), slice(2000, 3000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gains = {}
        for name in BASELINES:
            f = fit_baseline(name, y, train)
            gains[name] = snr_gain_db(y[test], f.causal(y)[test], clean[test])
            if name == "kalman_ar1":
                two = snr_gain_db(y[test], f.two_sided(y)[test], clean[test])
    assert gains["kalman_ar1"] > 1.0  # the right model: a clear gain
    assert two > gains["kalman_ar1"]  # and the smoother, seeing both sides, does better
    for name in ("ema", "savgol", "hp"):  # SURE-tuned: never much worse than no smoothing
        assert gains[name] > -0.1, (name, gains[name])


def test_apply_baselines_shapes_and_fallback():
    _, a = _rw_noise(n=400, seed=12)
    short = np.full(400, np.nan)
    short[370:] = 1.0 + np.arange(30)  # starts after the train rows: cannot be fitted
    panel = np.column_stack([a, short])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = apply_baselines(panel, (0, 300), names=["ema", "kalman_level"])
    assert set(out) == {"ema", "kalman_level"}
    assert out["ema"].two_sided is None and out["kalman_level"].two_sided.shape == (400, 2)
    assert out["ema"].causal.shape == (400, 2)
    assert "alpha" in out["ema"].params[0] and "fallback" in out["ema"].params[1]
    np.testing.assert_array_equal(out["ema"].causal[:, 1], short)  # raw, unsmoothed
    alone = fit_baseline("kalman_level", a, (0, 300))
    np.testing.assert_array_equal(out["kalman_level"].causal[:, 0], alone.causal(a))
    parallel = apply_baselines(panel, (0, 300), names=["ema", "kalman_level"], n_jobs=2)
    for name in out:
        np.testing.assert_array_equal(parallel[name].causal, out[name].causal)
        assert parallel[name].params == out[name].params


def test_bad_inputs_raise_clear_errors(series):
    with pytest.raises(ValueError, match="unknown baseline"):
        fit_baseline("wavelet", series, TRAIN)
    with pytest.raises(ValueError, match="1-D"):
        fit_baseline("ema", np.ones((10, 2)), (0, 5))
    with pytest.raises(ValueError, match="train="):
        fit_baseline("ema", series, (0, N + 1))
    with pytest.raises(ValueError, match="observed train rows"):
        fit_baseline("ema", series, (0, 100))  # 20 observed rows
    with pytest.raises(ValueError, match="constant"):
        fit_baseline("ema", np.ones(200), (0, 200), noise_var=0.0)
    with pytest.raises(ValueError, match="unknown baseline"):
        apply_baselines(np.ones((10, 1)), (0, 5), names=["nope"])


@pytest.mark.parametrize("name", ["kalman_level", "kalman_ar1", "kalman_ari1"])
def test_kalman_baselines_are_the_shared_classical_filter(name, series, fitted):
    # The learned denoiser's Kalman candidate and these baselines must be one filter.
    from mamba_denoiser.classical import StateSpaceFit, kalman_filter

    f = fitted[name]
    as_fit = StateSpaceFit(name, f.params, f.center, f.scale, 0.0, f.params["aic"], {})
    out, gain = kalman_filter(as_fit, series)
    np.testing.assert_array_equal(f.causal(series), out)
    assert np.all((gain > 0) | np.isnan(series))


def test_noise_variance_is_the_shared_state_space_choice(series, fitted):
    from mamba_denoiser.classical import fit_state_space

    best = fit_state_space(series, TRAIN)
    assert best.params == fitted[best.model].params
    assert noise_variance(series, TRAIN) == best.noise_var


def test_apply_baselines_uses_the_given_noise_variance_per_column():
    _, a = _rw_noise(n=500, seed=13)
    _, b = _ar1_noise(n=500, seed=14)
    panel, train = np.column_stack([a, b]), (0, 350)
    names = ["ema", "hp", "kalman_ar1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = apply_baselines(panel, train, names=names, noise_var=[1.0, np.nan])
        default = apply_baselines(panel, train, names=names)
        for name in names:  # column 0: SURE with the given 1.0; column 1 (NaN): as before
            given = fit_baseline(name, a, train, noise_var=1.0)
            np.testing.assert_array_equal(out[name].causal[:, 0], given.causal(a))
            assert out[name].params[0] == given.params
            np.testing.assert_array_equal(out[name].causal[:, 1], default[name].causal[:, 1])
        # The given value matters: it is not the column's own estimate.
        assert out["ema"].params[0] != default["ema"].params[0]
        assert out["kalman_ar1"].params[0] == default["kalman_ar1"].params[0]  # MLE anyway
    with pytest.raises(ValueError, match="one value per column"):
        apply_baselines(panel, train, names=["ema"], noise_var=[1.0])
    with pytest.raises(ValueError, match=">= 0"):
        apply_baselines(panel, train, names=["ema"], noise_var=[1.0, -1.0])


@pytest.mark.parametrize("name", list(BASELINES))
def test_causal_gain_is_the_exact_weight_on_the_current_row(name, series, fitted):
    # The anchor's SURE is exact only if causal_gain is d out_t / d y_t: check it by a
    # finite difference (the filters are linear given their parameters), in warm-up rows,
    # right after a gap and in the steady state.
    f = fitted[name]
    gain = f.causal_gain(series)
    assert np.isnan(gain[~np.isfinite(series)]).all()
    base = f.causal(series)
    for t in (80, 82, 95, 303, 450, 701, 899):
        y = series.copy()
        y[t] += 1e-3
        fd = (f.causal(y)[t] - base[t]) / 1e-3
        assert fd == pytest.approx(gain[t], abs=1e-6), (name, t)
    assert np.nanmin(gain) >= 0 and np.nanmax(gain) <= 1 + 1e-9
