"""The 11 statistical characteristics used to group features (DESIGN.md §6 'Statistics').

Every statistic is computed on one feature's *observed* train-split values (the caller
drops the leading NaN block) and is **scale- and shift-free**: multiplying a series by
1000 or adding a constant leaves all 11 numbers unchanged (up to float rounding). Raw
statistics in native units (mean, min, max, std) would group features by their units, not
by their dynamics, so none are computed here.

Notation: ``x`` is the level series, ``d = diff(x)`` its one-step changes.

==================  ===========================================================================
column              definition (and what it separates)
==================  ===========================================================================
hurst               Hurst exponent of the *increments* ``d``, estimated by DFA-1 (detrended
                    fluctuation analysis; profile = cumsum(d - mean d) = demeaned-drift level)
                    over log-spaced box sizes 8..min(256, n/4). A random walk (white-noise
                    increments) gives 0.5, a mean-reverting level (anti-persistent
                    increments) < 0.5 (white-noise level ~0.05), a trending level
                    (persistent increments) > 0.5.
adf_pvalue          MacKinnon p-value of the augmented Dickey-Fuller test on ``x`` (constant,
                    fixed ``adf_maxlag`` lags, no autolag: fast and deterministic). Small:
                    the unit root is rejected (mean reversion).
acf1                lag-1 autocorrelation of ``x``.
skewness            skewness of ``d`` (changes, not levels: the moments of a non-stationary
                    level depend on the path, those of its changes do not), after
                    winsorising ``d`` at median +- ``winsor`` (6) robust sigmas, so that
                    one outlier cannot decide it (Gaussian data are left unchanged).
kurtosis            excess kurtosis of the same winsorised ``d`` (0 for Gaussian changes;
                    bounded, but still large for heavy tails, jumps and vol regimes).
vol_mean            mean of the rolling std of ``d`` (``rolling_window``), in units of the
                    robust scale of ``d`` (1.4826 MAD). ~1 for homoscedastic Gaussian
                    changes; > 1 with heavy tails or jumps (std grows, MAD does not).
vol_dispersion      coefficient of variation of the rolling std of ``d`` (std / mean).
                    ~0.16 for homoscedastic Gaussian changes at window 20; larger when
                    volatility clusters or switches regime.
variance_ratio      Lo-MacKinlay VR(q) = Var(x_t - x_{t-q}) / (q Var(d)), overlapping
                    q-differences, drift removed, q = ``vr_lag``. 1 for a random walk,
                    < 1 mean reverting (white-noise level: 1/q), > 1 trending.
acf1_diff           lag-1 autocorrelation of ``d``: > 0 momentum, ~0 random walk,
                    -0.5 for a white-noise level (observation noise pulls it down).
vol_clustering      mean autocorrelation of |d - mean d| over lags 2..``clustering_lags``+1.
                    Lag 1 is skipped on purpose: i.i.d. observation noise n_t enters both
                    d_t and d_{t+1}, which alone correlates |d| at lag 1.
log_half_life       log10 of the lag at which the autocorrelation of ``x`` first falls to
                    1/2 (linear interpolation between lags), capped at ``max_half_life``
                    (= the top DFA box size): the memory of the level. ~-0.3 for white
                    noise (the crossing interpolated between lags 0 and 1),
                    log10(ln 2 / -ln phi) for an AR(1), the cap for random walks. Robust to
                    observation noise, which only scales the autocorrelations by
                    1 / (1 + noise-to-signal variance).
==================  ===========================================================================

Cost: O(n log n) numpy per feature plus one fixed-lag ADF regression; 85 features x
~5000 values take ~0.5 s on one core (BLAS is pinned to one thread: see below).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import numpy as np
import pandas as pd
from statsmodels.tsa.stattools import adfuller
from threadpoolctl import threadpool_limits

STAT_COLUMNS: tuple[str, ...] = (
    "hurst",
    "adf_pvalue",
    "acf1",
    "skewness",
    "kurtosis",
    "vol_mean",
    "vol_dispersion",
    "variance_ratio",
    "acf1_diff",
    "vol_clustering",
    "log_half_life",
)

MIN_OBS = 50  # below this the DFA, ADF and rolling statistics are mostly noise

_MAD_TO_SIGMA = 1.482602218505602  # 1 / Phi^{-1}(3/4): MAD -> sigma for a Gaussian
# statsmodels >= 0.15 warns unless the tuple return is asked for explicitly; older
# versions do not know the argument.
_ADF_KW = (
    {"result_object": False} if "result_object" in inspect.signature(adfuller).parameters else {}
)


def compute_feature_stats(
    series: Mapping[str, np.ndarray],
    *,
    rolling_window: int = 20,
    vr_lag: int = 10,
    adf_maxlag: int = 12,
    dfa_min_scale: int = 8,
    dfa_max_scale: int = 256,
    clustering_lags: int = 9,
    max_half_life: int = 256,
    winsor: float | None = 6.0,
    min_obs: int = MIN_OBS,
) -> pd.DataFrame:
    """Statistics table: one row per feature (input order kept), columns ``STAT_COLUMNS``.

    Args:
        series: feature name -> 1-D array of its observed values in time order. NaN must
            already be dropped (the panel's leading NaN block), so every value is finite.
        rolling_window: window of the rolling std behind ``vol_mean`` / ``vol_dispersion``.
        vr_lag: horizon q of the variance ratio.
        adf_maxlag: number of lagged differences in the ADF regression (fixed, no autolag).
        dfa_min_scale, dfa_max_scale: DFA box sizes; the upper one is also capped at n/4
            so every box size has at least 4 boxes from each end.
        clustering_lags: how many lags (starting at 2) ``vol_clustering`` averages.
        max_half_life: cap of the half-life (lags) behind ``log_half_life``.
        min_obs: fewer observed values than this is an error.

    Raises:
        ValueError: a series is not 1-D, contains NaN/inf, is shorter than ``min_obs``
            (or than the DFA / ADF need), or has constant changes.
    """
    params = dict(
        rolling_window=rolling_window,
        vr_lag=vr_lag,
        adf_maxlag=adf_maxlag,
        dfa_min_scale=dfa_min_scale,
        dfa_max_scale=dfa_max_scale,
        clustering_lags=clustering_lags,
        max_half_life=max_half_life,
        winsor=winsor,
    )
    need = max(min_obs, 4 * (dfa_min_scale + 1) + 1, rolling_window + 2, adf_maxlag + 10)
    # The ADF regressions are small (n x ~14) SVDs: a multi-threaded BLAS gains nothing
    # on them, and on a busy machine its oversubscribed pool was measured 10x slower.
    with threadpool_limits(limits=1):
        rows = {
            name: _feature_stats(name, _validated(name, values, min_obs=need), **params)
            for name, values in series.items()
        }
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(STAT_COLUMNS))
    frame.index.name = "feature"
    return frame


def _validated(name: str, values: np.ndarray, *, min_obs: int) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"feature {name!r}: expected a 1-D array of values, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        bad = int((~np.isfinite(x)).sum())
        raise ValueError(
            f"feature {name!r}: {bad} NaN/inf values; pass only the observed values "
            "(drop the missing rows first)"
        )
    if x.size < min_obs:
        raise ValueError(
            f"feature {name!r}: only {x.size} observed values, need at least {min_obs} for "
            "stable statistics; exclude it (passthrough) or use a longer train split"
        )
    return x


def _feature_stats(name: str, x: np.ndarray, **kw) -> dict[str, float]:
    d = np.diff(x)
    d_std = d.std()
    if not d_std > 0 or np.ptp(d) <= 1e-12 * (np.abs(x).max() + 1e-300):
        raise ValueError(
            f"feature {name!r}: its changes are constant (a constant or linear series); "
            "nothing to cluster, treat it as passthrough"
        )
    # Work in units of the change std: every statistic below is scale-free anyway, this
    # just keeps the numerics identical whatever the native units are.
    x = (x - x.mean()) / d_std
    d = np.diff(x)
    dc = d - d.mean()

    robust_sigma = _MAD_TO_SIGMA * np.median(np.abs(d - np.median(d)))
    if not robust_sigma > 0:
        # More than half the changes are identical (e.g. a step series): fall back to std.
        robust_sigma = dc.std()

    roll_std = _rolling_std(d, kw["rolling_window"])
    # Moments of changes winsorised at +-winsor robust sigmas: one outlier must not decide a
    # feature's skewness/kurtosis (heavy-tailed sample moments are otherwise mostly noise).
    w = (
        dc
        if kw["winsor"] is None
        else np.clip(dc, -kw["winsor"] * robust_sigma, kw["winsor"] * robust_sigma)
    )
    w = w - w.mean()
    m2 = np.mean(w**2)
    return {
        "hurst": dfa_hurst(d, min_scale=kw["dfa_min_scale"], max_scale=kw["dfa_max_scale"]),
        "adf_pvalue": adf_pvalue(x, maxlag=kw["adf_maxlag"]),
        "acf1": _acf(x - x.mean(), 1),
        "skewness": float(np.mean(w**3) / m2**1.5),
        "kurtosis": float(np.mean(w**4) / m2**2 - 3.0),
        "vol_mean": float(roll_std.mean() / robust_sigma),
        "vol_dispersion": float(roll_std.std() / roll_std.mean()),
        "variance_ratio": variance_ratio(x, q=kw["vr_lag"]),
        "acf1_diff": _acf(dc, 1),
        "vol_clustering": _abs_clustering(dc, kw["clustering_lags"]),
        "log_half_life": _log_half_life(x - x.mean(), kw["max_half_life"]),
    }


def dfa_hurst(increments: np.ndarray, *, min_scale: int = 8, max_scale: int = 256) -> float:
    """Hurst exponent of ``increments`` by DFA-1 (linear detrending in each box).

    The profile is cumsum(increments - mean); boxes of size s tile it from the start and,
    separately, from the end (so no data is dropped); F(s) is the RMS residual of a line
    fitted per box; H is the least-squares slope of log F(s) on log s over ~12 log-spaced
    box sizes in [min_scale, min(max_scale, n/4)]. White-noise increments give 0.5.
    """
    y = np.cumsum(increments - increments.mean())
    n = y.size
    top = min(max_scale, n // 4)
    if top <= min_scale:
        raise ValueError(f"DFA needs at least {4 * (min_scale + 1) + 1} values, got {n + 1}")
    scales = np.unique(np.round(np.geomspace(min_scale, top, 12)).astype(int))
    log_f = np.empty(scales.size)
    for i, s in enumerate(scales):
        m = n // s
        boxes = np.concatenate([y[: m * s].reshape(m, s), y[n - m * s :].reshape(m, s)])
        t = np.arange(s) - (s - 1) / 2.0  # centred time: slope and mean decouple
        centred = boxes - boxes.mean(axis=1, keepdims=True)
        slope = centred @ t / (t @ t)
        resid = centred - slope[:, None] * t[None, :]
        log_f[i] = 0.5 * np.log(np.mean(resid**2))
    return float(np.polyfit(np.log(scales), log_f, 1)[0])


def adf_pvalue(x: np.ndarray, *, maxlag: int = 12) -> float:
    """ADF p-value (constant, exactly ``maxlag`` lagged differences, MacKinnon p-value)."""
    return float(adfuller(x, maxlag=maxlag, regression="c", autolag=None, **_ADF_KW)[1])


def variance_ratio(x: np.ndarray, *, q: int = 10) -> float:
    """Lo-MacKinlay variance ratio VR(q) with overlapping q-differences and drift removed."""
    d = np.diff(x)
    mu = d.mean()
    var1 = np.mean((d - mu) ** 2)
    dq = x[q:] - x[:-q] - q * mu
    return float(np.mean(dq**2) / (q * var1))


def _acf(z: np.ndarray, lag: int) -> float:
    """Sample autocorrelation of an already-demeaned series (standard biased estimator)."""
    return float(np.dot(z[:-lag], z[lag:]) / np.dot(z, z))


def _rolling_std(d: np.ndarray, window: int) -> np.ndarray:
    """Rolling sample std over complete windows, via cumulative sums (O(n))."""
    if d.size < window + 1:
        raise ValueError(f"need more than {window} changes for rolling_window={window}")
    c1 = np.concatenate([[0.0], np.cumsum(d)])
    c2 = np.concatenate([[0.0], np.cumsum(d * d)])
    s1 = c1[window:] - c1[:-window]
    s2 = c2[window:] - c2[:-window]
    var = (s2 - s1 * s1 / window) / (window - 1)
    return np.sqrt(np.maximum(var, 0.0))


def _abs_clustering(dc: np.ndarray, n_lags: int) -> float:
    a = np.abs(dc)
    a = a - a.mean()
    denom = np.dot(a, a)
    if denom <= 0:
        return 0.0
    return float(np.mean([np.dot(a[:-k], a[k:]) / denom for k in range(2, n_lags + 2)]))


def _log_half_life(z: np.ndarray, max_lag: int) -> float:
    """log10 of the first lag where the autocorrelation of demeaned ``z`` crosses 1/2."""
    n = z.size
    max_lag = min(max_lag, n - 1)
    nfft = 1 << int(np.ceil(np.log2(2 * n)))  # zero padding: linear, not circular, lags
    f = np.fft.rfft(z, nfft)
    acov = np.fft.irfft(f * np.conj(f), nfft)[: max_lag + 1]
    rho = acov / acov[0]
    below = np.flatnonzero(rho < 0.5)
    if below.size == 0:
        return float(np.log10(max_lag))
    k = int(below[0])
    lag = k - 1 + (rho[k - 1] - 0.5) / (rho[k - 1] - rho[k])
    return float(np.log10(lag))
