"""The gate on validation rows: per feature the candidate with the lowest estimated risk
(MSE against the clean signal), or raw.

Linear candidates: SURE. For a denoiser d(y) of y = s + n, n white with variance σ²,
independent of s, Stein's unbiased risk estimate of its error is

    SURE = mean((d - y)²) + 2σ² · mean(∂d_t/∂y_t) - σ²,

and leaving the data alone has risk σ². For a d linear in y, SURE is unbiased under ANY
white noise law. The divergence ∂d_t/∂y_t is exact where a candidate has it in closed
form, and otherwise estimated with a Hutchinson probe b = ±1: ∂d_t/∂y_t ≈ b_t (d_t(y +
δb) - d_t(y)) / δ (the cross terms average out over rows).

Nonlinear candidates: SURE is not valid for them beyond Gaussian noise (Stein's lemma
drops the covariance between the local noise and the divergence; measured: 5 % outliers
at 10x, a Gaussian-sum filter gaining +10.4 dB scored +0.7, and learned heads gaining
+0.7 scored +7.6). So a nonlinear d is scored against the best linear candidate d_lin (or
raw) by a paired risk difference that holds for any white noise: with a future target
u_t whose error u_t - s_t is made of noise and innovations AFTER row t (independent of
d_t and d_lin,t, which use rows <= t),

    E[(d - u)² - (d_lin - u)²] = MSE(d) - MSE(d_lin),

and risk(d) = SURE(d_lin) + that difference. u_t comes from the feature's train-fitted
state-space model (classical.future_target): y_{t+1} for a random walk, m + (y_{t+1} -
m)/φ for AR(1), ((1+φ)/φ) y_{t+1} - y_{t+2}/φ for an integrated AR(1). The difference is
noisy, so a nonlinear candidate replaces the linear one only where it is lower by more
than 2 block-bootstrap standard errors and by more than the margin.

Where the feature's noise is Gaussian (``gaussian``: its train-fitted noise law has no
outlier component), Stein's lemma holds for any d, so a nonlinear candidate with an exact
divergence (the predictive head, the robust filter) is scored by SURE after all: the
paired difference is then SURE(d) − SURE(d_lin), row by row. The future target is
unbiased only where the dynamics are linear: u_t − s_t carries s_{t+1}'s innovation
against the fitted AR, whose conditional mean given the past is not 0 on a nonlinear
process (x = 1 + e^h, vol_positive: a bias of up to +0.11 of the reference risk against
the head), where SURE under Gaussian noise is exact for any dynamics, and its terms vary
less. A candidate without an exact divergence (diffusion: probed only for linear ones)
keeps the future target. A risk estimate that
is not positive is noise: it is never shown as a gain (``gain_db`` gives NaN), and it
does not by itself disqualify a candidate (it ranks first).

Pooling over a group (``groups``, the cluster): one feature's paired difference is
noisy (a standard error of 10-30 % of the reference risk over 1,290 rows), but the
features of a cluster are grouped for behaving alike, so how much a nonlinear candidate
saves, relative to the reference risk, is largely shared. Each feature's relative
difference is shrunk toward the group's mean by empirical Bayes (normal-normal, the
between-feature variance τ² by the method of moments, Efron & Morris): by the factor
se²/(se² + τ²), so a group whose features truly differ (τ² large) keeps its per-feature
estimates and a group that agrees borrows strength. The switch rule (2 standard errors,
the margin) then applies to the shrunk difference and its posterior standard error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def probe_divergence(d: np.ndarray, d_probe: np.ndarray, probe: np.ndarray, delta) -> np.ndarray:
    """(N, F) per-row Hutchinson estimates of ∂d_t/∂y_t from a run on y + δ·probe."""
    return probe * (d_probe - d) / delta


# Block bootstrap of a mean over validation rows: blocks long enough to carry the rows'
# autocorrelation (the noise is white, the filters' errors are not), resamples enough for
# a standard error to ~5 %; a fixed seed, so decisions never depend on the run's seed.
BLOCK = 50
N_BOOT = 200
MIN_ROWS = 100  # fewer paired rows than this: no paired score (the candidate is not chosen)
MIN_POOL = 3  # fewer features with a paired score in a group than this: no pooling


def sure_terms(y: np.ndarray, d: np.ndarray, div: np.ndarray, sigma) -> np.ndarray:
    """(N, F) per-row SURE terms (d - y)² + 2σ² ∂d/∂y - σ²; their mean is SURE. NaN where
    any input is missing or σ is not finite and positive."""
    s2 = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (y.shape[1],)) ** 2
    terms = (d - y) ** 2 + 2 * s2 * div - s2
    return np.where(np.isfinite(terms) & (s2 > 0), terms, np.nan)


def mean_and_se(terms: np.ndarray, *, block: int = BLOCK, n_boot: int = N_BOOT):
    """(N, F) per-row terms -> ((F,) mean over finite rows, (F,) its block-bootstrap
    standard error, (F,) number of finite rows). NaN where a column has no finite row."""
    ok = np.isfinite(terms)
    vals = np.where(ok, terms, 0.0)
    n = ok.sum(0)
    mean = np.where(n > 0, vals.sum(0) / np.maximum(n, 1), np.nan)
    nb = max(len(terms) // block, 1)
    cut = nb * block if len(terms) >= block else len(terms)
    b_sum = vals[:cut].reshape(nb, -1, terms.shape[1]).sum(1)  # (nb, F)
    b_cnt = ok[:cut].reshape(nb, -1, terms.shape[1]).sum(1)
    idx = np.random.default_rng(0).integers(0, nb, size=(n_boot, nb))
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = b_sum[idx].sum(1) / b_cnt[idx].sum(1)  # (n_boot, F)
    se = np.nanstd(boot, axis=0) if nb > 1 else np.full(terms.shape[1], np.inf)
    return mean, np.where(n > 0, se, np.nan), n


def gain_db(risk: np.ndarray, sigma) -> np.ndarray:
    """10·log10(σ² / risk): the gain over leaving y alone. NaN where the risk estimate is
    not positive: an impossible risk is noise in the estimate, never a gain to report."""
    s2 = np.asarray(sigma, dtype=np.float64) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        g = 10 * np.log10(s2 / risk)
    return np.where((risk > 0) & np.isfinite(risk) & (s2 > 0), g, np.nan)


def sure_gain_db(y: np.ndarray, d: np.ndarray, div: np.ndarray, sigma) -> np.ndarray:
    """(F,) SURE gain over raw, in dB, from rows (N, F) of y, d(y) and ∂d_t/∂y_t; NaN where
    a column has no complete row, σ is not finite and positive, or SURE is not positive."""
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (y.shape[1],))
    risk, _, _ = mean_and_se(sure_terms(y, d, div, sigma), n_boot=1)
    return gain_db(risk, sigma)


def choose_by_risk(risk: np.ndarray, sigma, margin_db: float) -> np.ndarray:
    """(K, F) risk estimates of K candidates -> (F,) the index of the lowest, or -1 (stay
    raw, risk σ²) where none is below σ²·10^(-margin/10). A non-positive estimate ranks
    first (it is noise around a small risk) but is never reported as a gain."""
    s2 = np.asarray(sigma, dtype=np.float64) ** 2
    scored = np.where(np.isnan(risk), np.inf, risk)
    if not len(scored):
        return np.full(risk.shape[1], -1)
    best = scored.min(axis=0)
    return np.where(best < s2 * 10 ** (-margin_db / 10), scored.argmin(axis=0), -1)


def shrink_to_group(rel: np.ndarray, se: np.ndarray, ok: np.ndarray):
    """(F,) per-feature estimates and standard errors -> (F,) empirical-Bayes posterior
    means and standard deviations (normal-normal, τ² by the method of moments) over the
    ``ok`` entries; the others are returned as they are. With fewer than MIN_POOL entries
    nothing is pooled (τ² is not estimable)."""
    rel, se = np.asarray(rel, np.float64).copy(), np.asarray(se, np.float64).copy()
    m = np.asarray(ok, bool) & np.isfinite(rel) & np.isfinite(se) & (se > 0)
    if m.sum() < MIN_POOL:
        return rel, se
    r, s2 = rel[m], se[m] ** 2
    tau2 = max(float(np.var(r, ddof=1) - s2.mean()), 0.0)
    w = 1.0 / (s2 + tau2)
    mu, var_mu = float((w * r).sum() / w.sum()), float(1.0 / w.sum())
    b = s2 / (s2 + tau2)  # the weight on the group mean: 1 where τ² = 0
    rel[m] = r - b * (r - mu)
    se[m] = np.sqrt((1 - b) * s2 + b**2 * var_mu)
    return rel, se


def _pooled_drop(drop, drop_se, scale, ok, groups):
    """The paired drops shrunk per group in units of the reference risk (``scale``)."""
    if groups is None:
        return drop, drop_se
    with np.errstate(divide="ignore", invalid="ignore"):
        rel, rel_se = drop / scale, drop_se / scale
    ok = ok & (scale > 0)
    out, out_se = drop.copy(), drop_se.copy()
    for g in np.unique(groups):
        in_g = groups == g
        r, s = shrink_to_group(np.where(in_g, rel, np.nan), rel_se, ok & in_g)
        sel = in_g & ok
        out[sel], out_se[sel] = r[sel] * scale[sel], s[sel] * scale[sel]
    return out, out_se


@dataclass
class GateResult:
    choice: np.ndarray  # (F,) candidate index, or -1 (raw)
    risk: np.ndarray  # (K, F) estimated MSE against the clean signal, native units²
    se: np.ndarray  # (K, F) its block-bootstrap standard error
    paired: np.ndarray  # (K, F) bool: scored by the future-target difference, else SURE
    sigma: np.ndarray  # (F,)
    slope: np.ndarray | None = None  # (K, F) ∂risk/∂σ² at fixed outputs (SURE's 2·div − 1)
    var_rse: np.ndarray | None = None  # (F,) relative standard error of σ²
    new_var: np.ndarray | None = None  # (F,) Var of a new block's log risk ratio (spread.py)

    @property
    def gain(self) -> np.ndarray:
        """(K, F) dB over raw; NaN where not estimable (never a floored value)."""
        return gain_db(self.risk, self.sigma)

    @property
    def lower(self) -> np.ndarray:
        """(K, F) dB: a lower prediction bound for the gain on a new block of as many rows
        (the test rows), two standard deviations below the estimate. Three independent
        parts, added in quadrature:
        - the estimate's sampling error: the risk one SE higher;
        - the new block's own: the gain realised on a block of rows moves from block to
          block, by the larger of two estimates, neither complete. The model's
          (``new_var``, the variance of the log risk ratio, inference/spread.py) carries
          the persistence of a filter's error, which SURE's terms miss where the filter
          stays close to y (at low noise: there the estimate's SE alone covered 70-85 %
          of simulated features). The estimate's own relative variance carries heavy
          tails the noise law was not told of and misfit (at ×5 mixed noise on seed 1
          the model's alone covered 91.5 %, the larger 95.8 %). Without a model: the
          estimate's (the risk √2 SEs higher);
        - σ: the gain recomputed with σ² one relative SE (``var_rse``: batch means, and
          the disagreement of the two σ estimates, inference/cluster.py) lower. The
          prediction uses the estimated σ while the realised gain is against the true
          noise, and σ is the least certain number in it: at the built-in default noise
          the prediction error's correlation with log(σ̂²/σ²) is 0.48, and without this
          part only 66 % of the features reached their bound."""
        g = self.gain
        with np.errstate(divide="ignore", invalid="ignore"):
            est = (self.se / self.risk) ** 2  # the estimate's relative variance
        new = est  # the new block's, where the model gives none
        if self.new_var is not None:
            nv = np.broadcast_to(np.asarray(self.new_var, np.float64), g.shape[-1:])
            new = np.where(np.isfinite(nv), np.fmax(nv, est), est)
        d_samp = g - gain_db(self.risk * (1 + np.sqrt(est + new)), self.sigma)
        d_sig = np.zeros_like(g)
        if self.slope is not None and self.var_rse is not None:
            s2 = np.asarray(self.sigma, np.float64) ** 2
            rse = np.where(np.isfinite(self.var_rse), self.var_rse, 0.0)
            s2_lo = s2 * (1 - np.minimum(rse, 0.9))
            risk_lo = self.risk + np.nan_to_num(self.slope) * (s2_lo - s2)
            d_sig = np.where(rse > 0, g - gain_db(risk_lo, np.sqrt(s2_lo)), 0.0)
        return g - 2 * np.sqrt(d_samp**2 + d_sig**2)


def gate(
    y: np.ndarray,  # (N, F) validation rows
    sigma: np.ndarray,  # (F,)
    outputs: list[np.ndarray],  # K x (N, F)
    divs: list[np.ndarray | None],  # K x (N, F) ∂d/∂y, needed for the linear ones
    linear: list[bool],
    target: np.ndarray,  # (N, F) future target u_t, NaN where not available
    *,
    margin_db: float,
    usable: np.ndarray,  # (F,) bool
    groups: np.ndarray | None = None,  # (F,) labels: pool the paired scores within each
    var_rse: np.ndarray | None = None,  # (F,) relative SE of σ², for the lower bounds only
    spread: np.ndarray | None = None,  # (F,) row spread of a realised gain (spread.py), bounds
    gaussian: np.ndarray | None = None,  # (F,) bool: noise law Gaussian, SURE for all
) -> GateResult:
    """Per feature: the best linear candidate by SURE above the margin (else raw), replaced
    by the best nonlinear candidate where its paired risk (SURE where ``gaussian`` and the
    candidate has a divergence, else the future target), pooled over the feature's group
    when ``groups`` is given, is lower by more than 2 SE and the margin (module
    docstring)."""
    K, F = len(outputs), y.shape[1]
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (F,))
    s2 = sigma**2
    risk, se = np.full((K, F), np.nan), np.full((K, F), np.nan)
    slope = np.full((K, F), np.nan)  # ∂risk/∂σ²: SURE's is mean(2·div − 1), raw's 1
    terms: dict[int, np.ndarray] = {}
    lin = [k for k in range(K) if linear[k]]
    for k in lin:
        terms[k] = sure_terms(y, outputs[k], divs[k], sigma)
        risk[k], se[k], _ = mean_and_se(terms[k])
        with np.errstate(invalid="ignore"):
            slope[k] = np.nanmean(np.where(np.isfinite(terms[k]), 2 * divs[k] - 1, np.nan), 0)
    pick = choose_by_risk(risk[lin], sigma, margin_db) if lin else np.full(F, -1)
    ref = np.where(pick >= 0, np.array(lin + [-1])[pick], -1)  # (F,) candidate or -1
    cols = np.arange(F)
    d_ref, t_ref, r_ref = y.copy(), np.broadcast_to(s2, y.shape).copy(), s2.copy()
    slope_ref = np.ones(F)
    for j in cols[ref >= 0]:
        d_ref[:, j], t_ref[:, j] = outputs[ref[j]][:, j], terms[ref[j]][:, j]
        r_ref[j], slope_ref[j] = risk[ref[j], j], slope[ref[j], j]
    choice, best_drop = ref.copy(), np.zeros(F)
    stein = np.zeros(F, bool) if gaussian is None else np.asarray(gaussian, bool)
    paired = np.repeat(~np.asarray(linear, bool)[:, None], F, axis=1)  # (K, F)
    for k in (k for k in range(K) if not linear[k]):
        delta = (outputs[k] - target) ** 2 - (d_ref - target) ** 2  # (N, F)
        slope_k = slope_ref.copy()  # the future-target part does not use σ
        by_sure = stein & (divs[k] is not None)
        paired[k] = ~by_sure
        if by_sure.any():  # Gaussian noise: Stein's lemma holds for any d, SURE is exact
            t_k = sure_terms(y, outputs[k], divs[k], sigma)
            delta = np.where(by_sure, t_k - t_ref, delta)
            with np.errstate(invalid="ignore"):
                s_k = np.nanmean(np.where(np.isfinite(t_k), 2 * divs[k] - 1, np.nan), 0)
            slope_k = np.where(by_sure, s_k, slope_k)
        drop, drop_se, n = mean_and_se(delta)
        ok_n = (n >= MIN_ROWS) & np.asarray(usable, bool)
        drop, drop_se = _pooled_drop(drop, drop_se, r_ref, ok_n, groups)
        risk[k], slope[k] = r_ref + drop, slope_k
        se[k] = mean_and_se(t_ref + delta)[1]
        with np.errstate(divide="ignore", invalid="ignore"):
            beats_margin = (risk[k] <= 0) | (10 * np.log10(r_ref / risk[k]) > margin_db)
        ok = ok_n & (drop < -2 * drop_se) & beats_margin & (drop < best_drop)
        choice, best_drop = np.where(ok, k, choice), np.where(ok, drop, best_drop)
    usable = np.asarray(usable, bool)
    risk[:, ~usable], se[:, ~usable] = np.nan, np.nan
    choice = np.where(usable, choice, -1)
    rse = None if var_rse is None else np.broadcast_to(np.asarray(var_rse, np.float64), (F,))
    new_var = None
    if spread is not None:  # a new block of as many rows as the validation rows observed
        n_obs = np.isfinite(y).sum(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            new_var = np.where(n_obs > 0, np.asarray(spread, np.float64) / n_obs, np.nan)
    return GateResult(choice, risk, se, paired, sigma, slope, rse, new_var)
