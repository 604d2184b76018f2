"""The SURE gate: it accepts a candidate where it helps and rejects it where it hurts."""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

from mamba_denoiser.inference.gate import choose_by_risk, mean_and_se, sure_gain_db, sure_terms


def _ar1(phi, n, rng):
    return lfilter([1.0], [1.0, -phi], rng.standard_normal(n)) * np.sqrt(1 - phi**2)


def test_gate_accepts_a_helpful_filter_and_rejects_a_harmful_one():
    rng = np.random.default_rng(0)
    n, alpha = 20_000, 0.3
    slow = _ar1(0.98, n, rng)  # a slow signal under heavy noise: an EMA helps
    fast = _ar1(-0.5, n, rng)  # a fast signal under light noise: an EMA hurts
    sigma = np.array([0.7, 0.1])
    clean = np.column_stack([slow, fast])
    y = clean + sigma * rng.standard_normal((n, 2))
    ema = lfilter([alpha], [1.0, alpha - 1.0], y, axis=0)
    div = np.full_like(y, alpha)  # an EMA's exact weight on the current row
    rows = slice(100, None)
    gain = sure_gain_db(y[rows], ema[rows], div[rows], sigma)
    true = 10 * np.log10(((y - clean)[rows] ** 2).mean(0) / ((ema - clean)[rows] ** 2).mean(0))
    np.testing.assert_allclose(gain, true, atol=0.15)
    assert gain[0] > 1.0 and gain[1] < -1.0
    # two candidates (the EMA, and an identity that gains nothing): the EMA for the slow
    # feature, raw for the fast one
    risk = np.vstack(
        [
            mean_and_se(sure_terms(y[rows], d[rows], div, sigma), n_boot=1)[0]
            for d, div in ((ema, div[rows]), (y, np.ones_like(y[rows])))
        ]
    )
    np.testing.assert_array_equal(choose_by_risk(risk, sigma, margin_db=0.1), [0, -1])


# ---- the gate nonlinear candidates cannot fool (gate.gate) -------------------------------
# 200 simulated blocks of 1,290 validation rows each (the built-in panel's), as columns.


def _kalman_ar1(y, phi, q, r):
    """Causal Kalman filter of AR(1) + white noise, vectorised over columns: (d, gain)."""
    m, p = np.zeros(y.shape[1]), np.full(y.shape[1], q / (1 - phi**2))
    d, gain = np.empty_like(y), np.empty_like(y)
    for t in range(len(y)):
        mp, pp = phi * m, phi**2 * p + q
        k = pp / (pp + r)
        m, p = mp + k * (y[t] - mp), (1 - k) * pp
        d[t], gain[t] = m, k
    return d, gain


def _gaussian_sum_ar1(y, phi, q, sd_core, eps, sd_out):
    """The posterior mean under a two-component noise law (moment-matched): nonlinear."""
    m, p = np.zeros(y.shape[1]), np.full(y.shape[1], q / (1 - phi**2))
    d = np.empty_like(y)
    for t in range(len(y)):
        mp, pp = phi * m, phi**2 * p + q
        e, parts = y[t] - mp, []
        for w, r in ((1 - eps, sd_core**2), (eps, sd_out**2)):
            s = pp + r
            k = pp / s
            parts.append((w * np.exp(-0.5 * e**2 / s) / np.sqrt(s), mp + k * e, (1 - k) * pp))
        wsum = parts[0][0] + parts[1][0] + 1e-300
        m = (parts[0][0] * parts[0][1] + parts[1][0] * parts[1][1]) / wsum
        p = sum(w * (v + (mu - m) ** 2) for w, mu, v in parts) / wsum
        d[t] = m
    return d


def _kalman_ari1(y, phi, q, r, squash=None):
    """Kalman filter of an integrated AR(1) + noise (state s_t, s_t-1); ``squash`` bends
    the innovation (a nonlinear filter)."""
    B = y.shape[1]
    F = np.array([[1 + phi, -phi], [1.0, 0.0]])
    m, P = np.zeros((B, 2)), np.tile(np.eye(2) * 100.0, (B, 1, 1))
    d, gain = np.empty_like(y), np.empty_like(y)
    for t in range(len(y)):
        mp, Pp = m @ F.T, F @ P @ F.T
        Pp[:, 0, 0] += q
        k = Pp[:, :, 0] / (Pp[:, 0, 0] + r)[:, None]
        e = y[t] - mp[:, 0]
        m = mp + k * (e if squash is None else squash(e))[:, None]
        P = Pp - k[:, :, None] * Pp[:, None, 0, :]
        d[t], gain[t] = m[:, 0], k[:, 0]
    return d, gain


def _kalman_level(y, q, r):
    m, p = y[0].copy(), np.full(y.shape[1], r)
    d, gain = np.empty_like(y), np.empty_like(y)
    for t in range(len(y)):
        k = (p + q) / (p + q + r)
        m, p = m + k * (y[t] - m), (1 - k) * (p + q)
        d[t], gain[t] = m, k
    return d, gain


def _ranked_right(risk, true) -> float:
    return float((np.argsort(risk, 0) == np.argsort(true, 0)).all(0).mean())


def test_the_gate_ranks_candidates_right_under_outliers_where_sure_cannot():
    """AR(1) plus 5 % outliers at 10x the core noise: the linear Kalman filter (SURE), a
    Gaussian-sum filter with the true noise law (nonlinear: paired risk) and an over-
    trusting Kalman filter (SURE), 3 to 4 dB apart. The gate ranks all three right in
    >= 90 % of the blocks and serves the Gaussian-sum filter; SURE with a probed
    divergence (what the gate did before) puts it below the linear filter in every block."""
    from mamba_denoiser.classical import StateSpaceFit, future_target
    from mamba_denoiser.inference.gate import gate, mean_and_se, probe_divergence, sure_terms

    rng = np.random.default_rng(1)
    n, B, phi, core, warm = 1290, 200, 0.95, 0.5, 400
    q = 1 - phi**2
    s = lfilter([1.0], [1.0, -phi], rng.standard_normal((n + warm, B)) * np.sqrt(q), axis=0)
    hit = rng.random(s.shape) < 0.05
    y = s + core * rng.standard_normal(s.shape) + hit * 10 * core * rng.standard_normal(s.shape)
    total = core * np.sqrt(1 + 0.05 * 100)  # the noise std SURE is given
    kal, kal_gain = _kalman_ar1(y, phi, q, total**2)
    gsum = _gaussian_sum_ar1(y, phi, q, core, 0.05, core * np.sqrt(101))
    trusting, trusting_gain = _kalman_ar1(y, phi, q, (0.3 * total) ** 2)
    fit = StateSpaceFit("kalman_ar1", {"ar.L1": phi}, 0.0, 1.0, total**2, 0.0, {})
    u = np.column_stack([future_target(fit, y[:, b]) for b in range(B)])
    v = slice(warm, None)
    true = np.vstack([((d - s)[v] ** 2).mean(0) for d in (kal, gsum, trusting)])
    assert np.diff(np.sort(10 * np.log10(total**2 / np.median(true, 1)))).min() > 1.5

    res = gate(
        y[v],
        np.full(B, total),
        [kal[v], gsum[v], trusting[v]],
        [kal_gain[v], None, trusting_gain[v]],
        [True, False, True],
        u[v],
        margin_db=0.1,
        usable=np.ones(B, bool),
    )
    assert _ranked_right(res.risk, true) >= 0.9
    assert (res.choice == 1).mean() >= 0.9
    assert (res.lower <= res.gain + 1e-12)[np.isfinite(res.gain)].all()

    probe = np.random.default_rng(5).choice([-1.0, 1.0], size=y.shape)
    bent = _gaussian_sum_ar1(y + 0.05 * total * probe, phi, q, core, 0.05, core * np.sqrt(101))
    div = probe_divergence(gsum, bent, probe, 0.05 * total)
    old = res.risk.copy()
    old[1] = mean_and_se(sure_terms(y[v], gsum[v], div[v], total), n_boot=1)[0]
    assert _ranked_right(old, true) <= 0.05


def test_under_gaussian_noise_sure_scores_a_nonlinear_filter_of_a_nonlinear_process():
    """x = 1 + e^h (h AR(1): vol_positive's form) under Gaussian noise: the Kalman filter of
    x's AR(1) fit (linear: SURE) and a filter whose process variance follows the level
    (nonlinear in y; its divergence is its gain, exactly), 1.5 dB better. The AR(1) future
    target is biased against it, since x's conditional mean is not linear in x; SURE,
    exact for any d under Gaussian noise, is not, and serves it in more blocks."""
    from mamba_denoiser.classical import StateSpaceFit, future_target
    from mamba_denoiser.inference.gate import gate

    rng = np.random.default_rng(3)
    n, B, warm, phi_h = 1290, 200, 400, 0.97
    h = lfilter(
        [1.0], [1.0, -phi_h], rng.standard_normal((n + warm, B)) * np.sqrt(1 - phi_h**2), axis=0
    )
    x = 1.0 + np.exp(h)
    m, v = x.mean(), x.var()
    phi = float(((x[1:] - m) * (x[:-1] - m)).mean() / v)  # x's AR(1) fit
    sigma = 0.5 * np.sqrt(v)
    y = x + sigma * rng.standard_normal(x.shape)
    q = v * (1 - phi**2)
    kal, kal_gain = _kalman_ar1(y - m, phi, q, sigma**2)
    kal += m
    lvl, p_var = np.full(B, m), np.full(B, v)
    bent, bent_gain = np.empty_like(y), np.empty_like(y)
    mean_sq = ((x - 1) ** 2).mean()
    for t in range(len(y)):  # x − 1 = e^h: the innovations scale with the level
        pred = m + phi * (lvl - m)
        pp = phi**2 * p_var + q * np.maximum(pred - 1, 0.05) ** 2 / mean_sq
        k = pp / (pp + sigma**2)  # depends on y_<t only: ∂out_t/∂y_t = k
        lvl, p_var = pred + k * (y[t] - pred), (1 - k) * pp
        bent[t], bent_gain[t] = lvl, k
    fit = StateSpaceFit("kalman_ar1", {"ar.L1": phi}, m, 1.0, sigma**2, 0.0, {})
    u = np.column_stack([future_target(fit, y[:, b]) for b in range(B)])
    r = slice(warm, None)
    true = np.vstack([((d - x)[r] ** 2).mean(0) for d in (kal, bent)])
    assert np.median(10 * np.log10(true[0] / true[1])) > 1.0

    def scored(gaussian):
        res = gate(
            y[r],
            np.full(B, sigma),
            [kal[r], bent[r]],
            [kal_gain[r], bent_gain[r]],
            [True, False],
            u[r],
            margin_db=0.1,
            usable=np.ones(B, bool),
            gaussian=gaussian,
        )
        err = (res.risk[1] - res.risk[0] - (true[1] - true[0])) / true[0]  # per block
        return err.mean(), err.std() / np.sqrt(B), (res.choice == 1).mean()

    bias_u, se_u, served_u = scored(None)
    bias_s, se_s, served_s = scored(np.ones(B, bool))
    assert bias_u > 5 * se_u  # the future target: biased against the nonlinear filter
    assert abs(bias_s) < 3 * se_s  # SURE: unbiased
    assert served_s >= 0.85 and served_s > served_u + 0.1


def test_the_gate_ranks_candidates_right_on_a_trend():
    """An integrated AR(1) trend under Gaussian noise: its Kalman filter (SURE), a local-
    level filter that lags (SURE) and the trend filter with a squashed innovation
    (nonlinear: paired, with the integrated-AR(1) future target)."""
    from mamba_denoiser.classical import StateSpaceFit, future_target
    from mamba_denoiser.inference.gate import gate

    rng = np.random.default_rng(2)
    n, B, phi, q, warm = 1290, 200, 0.9, 0.01, 400
    slope = lfilter([1.0], [1.0, -phi], np.sqrt(q) * rng.standard_normal((n + warm, B)), axis=0)
    s = np.cumsum(slope, axis=0)
    y = s + rng.standard_normal(s.shape)
    kal, kal_gain = _kalman_ari1(y, phi, q, 1.0)
    level, level_gain = _kalman_level(y, 0.05, 1.0)
    squashed, _ = _kalman_ari1(y, phi, q, 1.0, squash=lambda e: 1.1 * np.tanh(e / 1.1))
    fit = StateSpaceFit("kalman_ari1", {"ar.L1": phi}, 0.0, 1.0, 1.0, 0.0, {})
    u = np.column_stack([future_target(fit, y[:, b]) for b in range(B)])
    v = slice(warm, None)
    true = np.vstack([((d - s)[v] ** 2).mean(0) for d in (kal, level, squashed)])
    assert np.diff(np.sort(10 * np.log10(1 / np.median(true, 1)))).min() > 1.5

    res = gate(
        y[v],
        np.ones(B),
        [kal[v], level[v], squashed[v]],
        [kal_gain[v], level_gain[v], None],
        [True, True, False],
        u[v],
        margin_db=0.1,
        usable=np.ones(B, bool),
    )
    assert _ranked_right(res.risk, true) >= 0.9
    assert (res.choice == 0).mean() >= 0.9  # the nonlinear one never wrongly replaces it


def test_a_negative_risk_estimate_is_never_reported_as_a_gain():
    """σ given 3x too large: SURE of a heavy smoother goes negative. It still ranks first
    (a noisy estimate of a small risk), but no gain is shown for it: not '30 dB'."""
    from mamba_denoiser.inference.gate import gate

    rng = np.random.default_rng(0)
    n = 2000
    s = np.cumsum(0.01 * rng.standard_normal((n, 1)), axis=0)
    y = s + 0.2 * rng.standard_normal((n, 1))
    smooth, gain = _kalman_level(y, 1e-4, 0.04)
    res = gate(
        y,
        np.array([0.6]),
        [smooth],
        [gain],
        [True],
        np.full_like(y, np.nan),
        margin_db=0.1,
        usable=np.array([True]),
    )
    assert res.risk[0, 0] < 0 and res.choice[0] == 0
    assert np.isnan(res.gain[0, 0]) and np.isnan(res.lower[0, 0])
    assert np.isnan(sure_gain_db(y, smooth, gain, 0.6)[0])


def test_the_future_target_is_unbiased_and_independent_of_the_past():
    """u_t - s_t has mean ~0 and no correlation with y_t (what a causal d_t is made of),
    for each fitted model's target."""
    from mamba_denoiser.classical import StateSpaceFit, future_target

    rng = np.random.default_rng(3)
    n = 200_000
    eta = rng.standard_normal(n)
    cases = {
        "kalman_level": (np.cumsum(0.1 * eta), {}),
        "kalman_ar1": (2.0 + lfilter([1.0], [1.0, -0.8], eta), {"ar.L1": 0.8}),
        "kalman_ari1": (np.cumsum(lfilter([1.0], [1.0, -0.7], 0.1 * eta)), {"ar.L1": 0.7}),
    }
    for model, (s, params) in cases.items():
        y = s + 0.5 * rng.standard_normal(n)
        center = 2.0 if model == "kalman_ar1" else 0.0
        u = future_target(StateSpaceFit(model, params, center, 1.0, 0.25, 0.0, {}), y)
        err, ok = u - s, np.isfinite(u)
        se = err[ok].std() / np.sqrt(ok.sum())
        assert abs(err[ok].mean()) < 4 * se, model
        assert abs(np.corrcoef(err[ok], y[ok])[0, 1]) < 0.01, model


def _outlier_group(rng, eps, k, n_out, B=12, n=1290, phi=0.95, core=0.5, warm=400):
    """B AR(1) features of one cluster; the first ``n_out`` carry outliers (a share eps
    at k times the core noise), the rest Gaussian noise. -> (y, σ, Kalman, its gain, the
    Gaussian-sum filter of the outlier law, future target, true MSEs (2, B)), rows after
    the warm-up."""
    from mamba_denoiser.classical import StateSpaceFit, future_target

    q = 1 - phi**2
    s = lfilter([1.0], [1.0, -phi], rng.standard_normal((n + warm, B)) * np.sqrt(q), axis=0)
    hit = (rng.random(s.shape) < eps) & (np.arange(B) < n_out)
    extra = np.sqrt(k**2 - 1) * core * rng.standard_normal(s.shape)
    y = s + core * rng.standard_normal(s.shape) + hit * extra
    sigma = np.where(np.arange(B) < n_out, core * np.sqrt(1 + eps * (k**2 - 1)), core)
    kal, kal_gain = _kalman_ar1(y, phi, q, sigma**2)
    gsum = _gaussian_sum_ar1(y, phi, q, core, eps, core * k)
    u = np.column_stack(
        [
            future_target(
                StateSpaceFit("kalman_ar1", {"ar.L1": phi}, 0.0, 1.0, v, 0.0, {}), y[:, b]
            )
            for b, v in enumerate(sigma**2)
        ]
    )
    v = slice(warm, None)
    true = np.vstack([((d - s)[v] ** 2).mean(0) for d in (kal, gsum)])
    return y[v], sigma, kal[v], kal_gain[v], gsum[v], u[v], true


def _choice(y, sigma, kal, kal_gain, gsum, u, groups):
    from mamba_denoiser.inference.gate import gate

    B = y.shape[1]
    return gate(
        y, sigma, [kal, gsum], [kal_gain, None], [True, False], u,
        margin_db=0.1, usable=np.ones(B, bool), groups=groups,
    ).choice  # fmt: skip


def test_pooling_over_the_cluster_finds_a_small_shared_gain_one_feature_cannot_show():
    """Twelve features, 2 % outliers at 4x: the Gaussian-sum filter truly gains 0.1-0.7 dB
    on every one, too little for one feature's 2-SE rule over 1,290 rows. Pooled over the
    cluster (empirical Bayes) the gate serves it on all twelve; per feature on under 3/4."""
    y, sigma, kal, kal_gain, gsum, u, true = _outlier_group(np.random.default_rng(3), 0.02, 4.0, 12)
    assert (true[1] < true[0]).all()
    alone = _choice(y, sigma, kal, kal_gain, gsum, u, None)
    pooled = _choice(y, sigma, kal, kal_gain, gsum, u, np.zeros(12, int))
    assert (alone == 1).mean() < 0.75
    np.testing.assert_array_equal(pooled, 1)


def test_pooling_keeps_features_apart_where_the_cluster_disagrees():
    """Half the cluster has 5 % outliers at 10x (the Gaussian-sum filter gains 3-4 dB),
    half Gaussian noise (it gains nothing): the between-feature spread τ² is large, so the
    pooled gate still serves it on the first half only, like the per-feature gate."""
    y, sigma, kal, kal_gain, gsum, u, _ = _outlier_group(np.random.default_rng(3), 0.05, 10.0, 6)
    want = np.r_[np.ones(6, int), np.zeros(6, int)]
    np.testing.assert_array_equal(_choice(y, sigma, kal, kal_gain, gsum, u, None), want)
    np.testing.assert_array_equal(
        _choice(y, sigma, kal, kal_gain, gsum, u, np.zeros(12, int)), want
    )


def test_shrink_to_group_is_the_normal_normal_posterior():
    """Equal standard errors s and a spread that gives τ² = 1: the posterior mean is
    μ + τ²/(τ² + s²)·(r − μ) and entries outside ``ok`` come back unchanged; below
    MIN_POOL entries nothing is pooled."""
    from mamba_denoiser.inference.gate import shrink_to_group

    r = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 9.0])
    s = np.full(6, np.sqrt(1.5))  # var(r[:5], ddof=1) = 2.5 -> τ² = 2.5 - 1.5 = 1
    ok = np.r_[np.ones(5, bool), False]
    post, post_se = shrink_to_group(r, s, ok)
    np.testing.assert_allclose(post[:5], r[:5] / 2.5, atol=1e-12)  # μ = 0, 1/(1 + 1.5)
    assert post[5] == 9.0 and post_se[5] == s[5]
    assert (post_se[:5] < s[:5]).all()
    few = shrink_to_group(r[:2], s[:2], np.ones(2, bool))
    np.testing.assert_array_equal(few[0], r[:2])


def test_the_lower_bound_carries_the_uncertainty_of_sigma():
    """300 AR(1) + noise features, the noise variance known only to a relative SE of 0.2
    (as the built-in panel's moment σ² is, noise_var_rse), the Kalman filter built with
    that σ̂. On a new block of as many rows, scored against the true noise, at least 90 %
    of the features reach the lower bound that carries var_rse; without it, the bound
    holds for fewer than 80 %, because a gain predicted with σ̂ moves with σ̂."""
    from mamba_denoiser.inference.gate import gate

    rng = np.random.default_rng(4)
    n, B, phi, warm = 1290, 300, 0.95, 400
    q = 1 - phi**2
    s = lfilter([1.0], [1.0, -phi], rng.standard_normal((warm + 2 * n, B)) * np.sqrt(q), axis=0)
    y = s + 0.8 * rng.standard_normal(s.shape)
    sigma = 0.8 * np.sqrt(np.clip(1 + 0.2 * rng.standard_normal(B), 0.3, None))  # σ̂
    d, div = _kalman_ar1(y, phi, q, sigma**2)
    val, test = slice(warm, warm + n), slice(warm + n, None)
    realised = 10 * np.log10(((y - s)[test] ** 2).mean(0) / ((d - s)[test] ** 2).mean(0))
    held = {}
    for rse in (None, np.full(B, 0.2)):
        res = gate(
            y[val], sigma, [d[val]], [div[val]], [True], np.full((n, B), np.nan),
            margin_db=0.0, usable=np.ones(B, bool), var_rse=rse,
        )  # fmt: skip
        held[rse is not None] = (realised >= res.lower[0]).mean()
    assert held[True] >= 0.9 and held[False] < 0.8, held


def test_the_gate_scores_a_nonlinear_candidate_by_an_exact_divergence_only():
    """With bands, every candidate's divergence is computed (probed where not exact); the
    gate may use a probe for a linear candidate, never for a nonlinear one (SURE for it
    needs Gaussian noise and its exact divergence)."""
    from types import SimpleNamespace as NS

    from mamba_denoiser.inference.cluster import _scoring_divs

    cands = [NS(linear=True), NS(linear=True), NS(linear=False), NS(linear=False)]
    outs = {
        0: NS(div=np.ones((4, 2))),
        1: NS(div=None),
        2: NS(div=np.ones((4, 2))),
        3: NS(div=None),
    }
    divs = {k: np.full((4, 2), float(k)) for k in range(4)}  # all present (bands)
    got = _scoring_divs(cands, outs, divs, slice(1, 3))
    assert [d is None for d in got] == [False, False, False, True]
    np.testing.assert_array_equal(got[1], np.full((2, 2), 1.0))  # a linear one's probe
    assert _scoring_divs(cands, outs, {0: divs[0]}, slice(None))[1:] == [None, None, None]
