"""The robust classical filter (robust.py): the Gaussian-sum filter of a feature's state-
space model under a noise law with outliers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mamba_denoiser.classical import StateSpaceFit, fit_state_space, kalman_filter
from mamba_denoiser.robust import NoiseLaw, fit_noise_laws, fit_robust, robust_filter


def _ar1_with_outliers(n=9000, f=3, phi=0.95, core=0.5, share=0.05, seed=0):
    rng = np.random.default_rng(seed)
    s = np.zeros((n, f))
    for t in range(1, n):  # a small test signal; clarity over speed
        s[t] = phi * s[t - 1] + np.sqrt(1 - phi**2) * rng.standard_normal(f)
    hit = rng.random((n, f)) < share
    noise = core * rng.standard_normal((n, f)) + hit * 10 * core * rng.choice([-1, 1], (n, f))
    return s, s + noise


def test_one_update_matches_the_closed_form_posterior_mean():
    """The first row: prior N(0, P0) (stationary AR(1)), y observed; the posterior mean under
    the two-component noise law is sum_c pi_c P0 / (P0 + r_c) y, pi_c ∝ w_c N(y; 0, P0 + r_c)."""
    phi, q, h = 0.9, 0.19, 0.5
    fit = StateSpaceFit(
        "kalman_ar1", {"ar.L1": phi, "sigma2": q, "noise_var": h}, 0.0, 1.0, h, 0.0, {}
    )
    law = NoiseLaw(0.05, 10.0)
    r_c, r_o = law.variances(h)
    assert np.isclose(0.95 * r_c + 0.05 * r_o, h)
    p0 = q / (1 - phi**2)
    for y0 in (0.3, 2.0, 6.0):  # from the core to far in the outlier component
        out = robust_filter(np.array([[y0]]), [fit], [law])[0, 0]
        lik = np.array(
            [
                w * np.exp(-0.5 * y0**2 / (p0 + r)) / np.sqrt(p0 + r)
                for w, r in ((0.95, r_c), (0.05, r_o))
            ]
        )
        pi = lik / lik.sum()
        expected = (pi * p0 / (p0 + np.array([r_c, r_o]))).sum() * y0
        assert out == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("model", ["kalman_level", "kalman_ar1", "kalman_ari1"])
def test_the_gaussian_law_is_the_kalman_filter(model):
    """ε = 0: the robust filter equals the Kalman filter of the same fit (statsmodels) once
    the start-up has faded."""
    rng = np.random.default_rng(1)
    n = 3000
    if model == "kalman_level":
        s = np.cumsum(0.1 * rng.standard_normal(n))
    elif model == "kalman_ar1":
        s = np.zeros(n)
        for t in range(1, n):
            s[t] = 0.9 * s[t - 1] + rng.standard_normal()
    else:
        s = np.cumsum(np.cumsum(0.01 * rng.standard_normal(n)))
    y = s + 0.5 * rng.standard_normal(n)
    fit = fit_state_space(y, (0, 2000))
    if fit.model != model:
        pytest.skip(f"lowest AIC is {fit.model}")
    kal, _ = kalman_filter(fit, y)
    rob = robust_filter(y[:, None], [fit], [NoiseLaw(0.0, 1.0)])[:, 0]
    # to 1 % of the noise sd: float rounding differs (statsmodels' covariance update
    # form) in near-singular fits (the trend here: φ = 0.9994, q ~ 1e-9)
    np.testing.assert_allclose(rob[200:], kal[200:], atol=1e-2 * np.sqrt(fit.noise_var))


def test_the_noise_law_is_found_and_the_filter_beats_kalman_under_outliers():
    s, y = _ar1_with_outliers()
    _, gauss = _ar1_with_outliers(share=0.0, seed=1)
    train, test = (0, 6300), slice(7700, None)
    fits, laws = fit_robust(y, train)
    assert all(law == NoiseLaw(0.05, 10.0) for law in laws)  # the planted law
    out = robust_filter(y, fits, laws)
    for j, fit in enumerate(fits):
        kal, _ = kalman_filter(fit, y[:, j])
        mse = [np.mean((d - s[test, j]) ** 2) for d in (kal[test], out[test, j])]
        assert 10 * np.log10(mse[0] / mse[1]) > 2.0
    g_fits = [fit_state_space(gauss[:, j], train) for j in range(gauss.shape[1])]
    assert fit_noise_laws(gauss, g_fits, train) == [NoiseLaw(0.0, 1.0)] * 3  # Gaussian: Kalman


@pytest.mark.parametrize("law", [NoiseLaw(0.05, 10.0), NoiseLaw(0.0, 1.0, 0.05, 10.0)])
def test_the_divergence_is_exact_and_the_update_is_the_filters(law):
    """``measurement_update`` from the priors gives the filter's own output (outliers in
    the noise; jumps in the signal), and its divergence is the derivative of that output
    in y_t at fixed priors (a central difference): what SURE needs where the law is
    Gaussian."""
    from mamba_denoiser.robust import apply_robust_div, filter_priors, measurement_update

    _, y = _ar1_with_outliers(n=2000, f=2)
    fits, _ = fit_robust(y, (0, 1400))
    laws = [law, law]
    pri = filter_priors(y, fits, laws)
    s_hat, div = measurement_update(y, pri)
    np.testing.assert_allclose(s_hat, robust_filter(y, fits, laws), rtol=0, atol=1e-12)
    h = 1e-5
    up, down = measurement_update(y + h, pri)[0], measurement_update(y - h, pri)[0]
    np.testing.assert_allclose(div, (up - down) / (2 * h), rtol=0, atol=1e-6)
    assert div.std() > 0.05  # nonlinear: the weight on y_t moves with the innovation
    out, d2 = apply_robust_div(y, fits, laws)
    np.testing.assert_array_equal(out, pri.filtered)
    np.testing.assert_array_equal(d2, div)


def test_robust_filter_is_causal_bit_for_bit():
    _, y = _ar1_with_outliers(n=2000, f=2)
    fits, laws = fit_robust(y, (0, 1400))
    base = robust_filter(y, fits, laws)
    bent = y.copy()
    bent[1200:] = 50.0
    np.testing.assert_array_equal(robust_filter(bent, fits, laws)[:1200], base[:1200])


def test_the_robust_candidate_replays_from_its_json_record():
    from mamba_denoiser.inference.candidates import Context, RobustCandidate

    _, y = _ar1_with_outliers(n=2000, f=2)
    y[:300, 1] = np.nan  # a late starter
    ctx = Context(None, y, (0, 1400), np.ones(2), np.ones(2, bool), "causal", "", {}, [])
    (cand,) = RobustCandidate.build(ctx)
    held = json.loads(json.dumps(cand.decisions()))
    (again,) = RobustCandidate.from_decisions(ctx, held)
    np.testing.assert_array_equal(again.run(y).mean, cand.run(y).mean)
    assert np.isnan(cand.run(y).mean[:300, 1]).all()


def test_the_law_reads_only_the_train_rows():
    """The family choice scores future targets; those of the last train rows must not
    reach past the train end (the fit is memoised on the train rows' bytes)."""
    s, y = _ar1_with_outliers()
    train = (0, 6000)  # 1,800 held-out rows: whole 50-row blocks, the last row scored
    fits = [fit_state_space(y[:, j], train) for j in range(y.shape[1])]
    base = fit_noise_laws(y, fits, train)
    bent = y.copy()
    bent[train[1] : train[1] + 2] = 1e8  # what a target at the last train rows would read
    assert fit_noise_laws(bent, fits, train) == base
