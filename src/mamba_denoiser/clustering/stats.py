"""The 11 statistics used to group features (docs/design.md "Statistics and grouping").

Every statistic is computed on one feature's *observed* train-split values (the caller
drops the leading NaN block) and is **scale- and shift-free**: multiplying a series by
1000 or adding a constant leaves all 11 numbers unchanged (up to float rounding). Raw
statistics in native units (mean, min, max, std) would group features by their units, not
by their dynamics, so none are computed here.

**Observation noise.** The data are noisy by assumption: ``x = s + n`` with white noise
``n`` of variance sigma^2. White noise makes the one-step changes of *any* series
anti-persistent (lag-1 autocorrelation of changes -> -1/2, one-step Hurst and variance
ratios -> 0), whatever the signal ``s`` does; one-step statistics therefore type noisy
random walks as mean-reverting. So the persistence statistics here are read off the
*variogram* D(q) = mean((y_{t+q} - y_t)^2) at multi-day horizons q = 5..60 rows, and
white noise is removed from it exactly: it adds the same 2 sigma^2 to D(q) at every
q >= 1, so the **noise-free variogram** G(q) = D(q) - D(1) = V_s(q) - V_s(1) depends on
the signal only (V_s is the signal's variogram; for a random walk with step variance v,
G(q) = (q - 1) v whatever sigma is). G is floored at ``noise_floor`` x D(1) (1 %) so that
series with no visible signal (a white-noise level: G ~ 0) give finite, stable values.

Notation: ``x`` the level, ``d = diff(x)``, ``y`` the level with its mean drift removed
(y_t = x_t - t mean(d), demeaned), h = ``vol_horizon`` (5), ``d_h = y_{t+h} - y_t`` the
overlapping h-row changes.

==================  ===========================================================================
column              definition, and why it is here
==================  ===========================================================================
hurst               Hurst exponent of the signal: 1/2 x the least-squares slope of log G(q)
                    on log(q - 1) over 8 log-spaced horizons q in [5, 60] (``horizon_min``,
                    ``horizon_max``). 0.5 random walk (exactly, at any noise level), < 0.5
                    the level reverts within 60 rows (~0 white-noise level, 0.2-0.35 an
                    AR(1) with phi 0.9-0.98), > 0.5 persistent moves (trends, ~0.75).
                    The main typing statistic.
adf_pvalue          MacKinnon p-value of the augmented Dickey-Fuller test on ``x`` (constant;
                    the number of lagged differences chosen by AIC up to
                    12 (n/100)^(1/4), as statsmodels ``adfuller(autolag="AIC")``, which it
                    reproduces exactly, ~30x faster). The lag selection absorbs the MA(1)
                    that noise puts into the changes, which a fixed short lag does not.
                    Small: unit root rejected (stationary level).
acf_kday            autocorrelation of successive non-overlapping k-row changes,
                    (D(2k) - 2 D(k)) / (2 D(k)) with k = ``acf_horizon`` (5): momentum
                    (> 0), none (0, random walk), reversal (-1/2 once the level forgets
                    within k rows: fast AR). It sees the short-horizon speed of reversion
                    that separates fast from slow AR families. White noise is a reversal
                    too and adds -sigma^2 / D(k): k-row rather than one-row changes keep
                    that k times smaller.
skewness            skewness of the h-row changes d_h, winsorised at median +- ``winsor`` (6)
                    robust sigmas so that one outlier cannot decide it. h-row changes, not
                    one-row ones: white noise dilutes the signal's shape h times less.
                    Changes, not levels: the moments of a non-stationary level depend on
                    its path.
kurtosis            excess kurtosis of the same winsorised d_h (0 for Gaussian changes; large
                    for heavy tails, jumps and volatility regimes).
vol_mean            mean of the rolling std of d_h (over ``rolling_window`` x h rows) in units
                    of the robust scale of d_h (1.4826 MAD): tails and jumps raise the
                    std but not the MAD.
vol_dispersion      coefficient of variation of that rolling std (std / mean): volatility
                    that clusters or switches regime.
variance_ratio      noise-free variance ratio of long to short horizons,
                    (G(60) / 59) / (G(5) / 4): 1 random walk, < 1 mean reverting (the level
                    has forgotten by 60 rows; ~0.07 when already by 5 rows), > 1 trending
                    (moves continue; 3-5 for the trend family). The classic one-step VR(q)
                    falls to ~1/q under noise; this one does not move.
noise_share         -Cov(d_t, d_{t-1}) / Var(d_t): the share of the one-step change variance
                    that behaves like white noise. 0 for a noise-free random walk, 1/2 for
                    pure noise (sigma^2 / (v + 2 sigma^2) for a random walk plus noise);
                    negative for momentum. It tells how much the denoiser has to remove.
vol_clustering      mean autocorrelation of |d_h - mean| over lags h+1 .. (``clustering_lags``
                    + 1) h. Lags <= h are skipped on purpose: overlapping changes share
                    rows, and i.i.d. noise n_t enters both d_h at t and at t - h, which alone
                    correlates |d_h| there.
log_half_life       log10 of the lag at which the autocorrelation of ``x`` first falls to
                    1/2 (linear interpolation between lags), capped at ``max_half_life``
                    (256, or n - 1): the memory of the level. ~-0.3 for white noise,
                    log10(ln 2 / -ln phi) for an AR(1), the cap for random walks and trends.
                    Noise only shortens it (autocorrelations scale by S / (S + N)).
==================  ===========================================================================

Short series: horizons are capped at n/4 (k at n/8) so every lag keeps 3/4 of the pairs.

Cost: three FFTs, a few O(n) passes and one QR (the ADF lag search) per feature; 85
features x ~5000 values take well under a second on one core (BLAS pinned to one
thread: see below).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from statsmodels.tsa.adfvalues import mackinnonp
from threadpoolctl import threadpool_limits

STAT_COLUMNS: tuple[str, ...] = (
    "hurst",
    "adf_pvalue",
    "acf_kday",
    "skewness",
    "kurtosis",
    "vol_mean",
    "vol_dispersion",
    "variance_ratio",
    "noise_share",
    "vol_clustering",
    "log_half_life",
)

MIN_OBS = 50  # below this the variogram, ADF and rolling statistics are mostly noise

_MAD_TO_SIGMA = 1.482602218505602  # 1 / Phi^{-1}(3/4): MAD -> sigma for a Gaussian
_HURST_POINTS = 8  # log-spaced horizons in the Hurst regression


def compute_feature_stats(
    series: Mapping[str, np.ndarray],
    *,
    rolling_window: int = 20,
    horizon_min: int = 5,
    horizon_max: int = 60,
    acf_horizon: int = 5,
    vol_horizon: int = 5,
    clustering_lags: int = 10,
    max_half_life: int = 256,
    noise_floor: float = 0.01,
    adf_maxlag: int | None = None,
    winsor: float | None = 6.0,
    min_obs: int = MIN_OBS,
) -> pd.DataFrame:
    """Statistics table: one row per feature (input order kept), columns ``STAT_COLUMNS``.

    Args:
        series: feature name -> 1-D array of its observed values in time order. NaN must
            already be dropped (the panel's leading NaN block), so every value is finite.
        rolling_window: window of the rolling std behind ``vol_mean`` / ``vol_dispersion``,
            in h-row changes (so ``rolling_window * vol_horizon`` rows).
        horizon_min, horizon_max: horizon range (rows) of ``hurst`` and ``variance_ratio``.
        acf_horizon: k of ``acf_kday``.
        vol_horizon: h of the changes behind the shape and volatility statistics.
        clustering_lags: how many multiples of h ``vol_clustering`` reaches past lag h.
        max_half_life: cap of the half-life (lags) behind ``log_half_life``.
        noise_floor: floor of the noise-free variogram, as a fraction of D(1).
        adf_maxlag: largest ADF lag searched; None: 12 (n/100)^(1/4) (statsmodels' rule).
        winsor: winsorising bound (robust sigmas) of the moments; None: no winsorising.
        min_obs: fewer observed values than this is an error.

    Raises:
        ValueError: a series is not 1-D, contains NaN/inf, is shorter than ``min_obs``,
            or has constant changes.
    """
    if not 2 <= horizon_min < horizon_max:
        raise ValueError(
            f"horizon_min={horizon_min}, horizon_max={horizon_max}: need 2 <= min < max"
        )
    params = dict(
        rolling_window=rolling_window,
        horizon_min=horizon_min,
        horizon_max=horizon_max,
        acf_horizon=acf_horizon,
        vol_horizon=vol_horizon,
        clustering_lags=clustering_lags,
        max_half_life=max_half_life,
        noise_floor=noise_floor,
        adf_maxlag=adf_maxlag,
        winsor=winsor,
    )
    need = max(min_obs, 4 * (horizon_min + 1), 2 * vol_horizon + 4)
    # The ADF regressions are small (n x ~35) QRs: a multi-threaded BLAS gains nothing
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
    n = x.size
    dc = d - d.mean()
    # Drift removed for the variogram and the h-row changes: a random walk with drift is
    # still a random walk, not a trend (the drift would add q^2 mu^2 to every D(q)). Not
    # for the autocorrelation of the level: on a stationary series the "drift"
    # (x_n - x_0) / n is an accident of the end points, and removing it would add a
    # spurious line of size x_n - x_0 to the level.
    y = x - d.mean() * np.arange(n)
    y = y - y.mean()

    top = max(n // 4, kw["horizon_min"] + 1)  # every lag keeps >= 3/4 of the pairs
    q_hi = min(kw["horizon_max"], top)
    k = max(1, min(kw["acf_horizon"], top // 2))
    half_cap = max(2, min(kw["max_half_life"], n - 1))
    vario = variogram(y, max(q_hi, 2 * k))
    floor = kw["noise_floor"] * vario[1]
    g = np.maximum(vario - vario[1], 0.0) + floor  # noise-free variogram, floored
    g[0] = np.nan  # G(0) is undefined (and never used)

    h = kw["vol_horizon"]
    dh = y[h:] - y[:-h]
    dh = dh - dh.mean()
    robust_sigma = _MAD_TO_SIGMA * np.median(np.abs(dh - np.median(dh)))
    if not robust_sigma > 1e-9 * dh.std():
        # More than half the changes are identical (e.g. a quarterly series held weekly):
        # the MAD is 0, or ~1e-15 after the mean removal above, so fall back to std.
        robust_sigma = dh.std()
    w = (
        dh
        if kw["winsor"] is None
        else np.clip(dh, -kw["winsor"] * robust_sigma, kw["winsor"] * robust_sigma)
    )
    w = w - w.mean()
    m2 = np.mean(w**2)
    window = max(2, min(kw["rolling_window"] * h, dh.size // 2))
    roll_std = _rolling_std(dh, window)
    return {
        "hurst": _hurst(g, kw["horizon_min"], q_hi),
        "adf_pvalue": adf_pvalue(x, maxlag=kw["adf_maxlag"]),
        "acf_kday": float((vario[2 * k] - 2.0 * vario[k]) / (2.0 * vario[k])),
        "skewness": float(np.mean(w**3) / m2**1.5),
        "kurtosis": float(np.mean(w**4) / m2**2 - 3.0),
        "vol_mean": float(roll_std.mean() / robust_sigma),
        "vol_dispersion": float(roll_std.std() / roll_std.mean()),
        "variance_ratio": float(
            (g[q_hi] / (q_hi - 1)) / (g[kw["horizon_min"]] / (kw["horizon_min"] - 1))
        ),
        "noise_share": float(-np.dot(dc[1:], dc[:-1]) / np.dot(dc, dc)),
        "vol_clustering": _abs_clustering(dh, h, kw["clustering_lags"]),
        "log_half_life": _log_half_life(_autocov(x - x.mean(), half_cap), half_cap),
    }


# --- building blocks (public ones are tested against references) ----------------------


def variogram(y: np.ndarray, max_lag: int, *, acov: np.ndarray | None = None) -> np.ndarray:
    """D(q) = mean over t of (y_{t+q} - y_t)^2 for q = 0..max_lag (overlapping pairs).

    O(n log n): sum (y_{t+q} - y_t)^2 = sum y[q:]^2 + sum y[:-q]^2 - 2 sum y_t y_{t+q}, the
    last term from ``acov`` (raw lag products of ``y``, e.g. ``_autocov(y, ...)``).
    """
    n = y.size
    if acov is None:
        acov = _autocov(y, max_lag)
    c2 = np.concatenate([[0.0], np.cumsum(y * y)])
    q = np.arange(max_lag + 1)
    return (c2[n] - c2[q] + c2[n - q] - 2.0 * acov[: max_lag + 1]) / (n - q)


def _autocov(z: np.ndarray, max_lag: int) -> np.ndarray:
    """Raw lag products sum_t z_t z_{t+q}, q = 0..max_lag, via one zero-padded FFT."""
    n = z.size
    nfft = 1 << int(np.ceil(np.log2(2 * n)))  # zero padding: linear, not circular, lags
    f = np.fft.rfft(z, nfft)
    return np.fft.irfft(f * np.conj(f), nfft)[: max_lag + 1]


def _hurst(g: np.ndarray, q_lo: int, q_hi: int) -> float:
    qs = np.unique(np.round(np.geomspace(q_lo, q_hi, _HURST_POINTS)).astype(int))
    return float(0.5 * np.polyfit(np.log(qs - 1.0), np.log(g[qs]), 1)[0])


def adf_pvalue(x: np.ndarray, *, maxlag: int | None = None, autolag: str | None = "AIC") -> float:
    """ADF p-value with a constant, as ``statsmodels adfuller(x, maxlag, "c", autolag)``.

    ``autolag="AIC"``: lags 0..maxlag are compared on the same sample by AIC (ties: the
    fewer lags), the chosen regression is refitted on all rows it can use, and its
    t-statistic gets MacKinnon's p-value, exactly as statsmodels does; but the nested
    regressions share one QR factorisation (statsmodels fits each separately), which
    makes it ~30x faster. ``autolag=None`` uses exactly ``maxlag`` lags.
    """
    x = np.asarray(x, dtype=np.float64)
    nobs = x.size
    if maxlag is None:
        maxlag = int(np.ceil(12.0 * (nobs / 100.0) ** 0.25))
        maxlag = min(nobs // 2 - 2, maxlag)  # statsmodels: nobs // 2 - ntrend - 1
    elif maxlag > nobs // 2 - 2:
        raise ValueError(f"adf maxlag={maxlag} must be below nobs/2 - 1 ({nobs} values)")
    d = np.diff(x)
    if autolag is None:
        lag = maxlag
    elif autolag == "AIC":
        # Same sample for every candidate: rows t = maxlag .. n-2 of d.
        m = d.size - maxlag
        cols = [np.ones(m), x[maxlag:-1]] + [
            d[maxlag - j : d.size - j] for j in range(1, maxlag + 1)
        ]
        q, _ = np.linalg.qr(np.column_stack(cols))
        target = d[maxlag:]
        rss = target @ target - np.cumsum((q.T @ target) ** 2)  # nested fits, 1..p columns
        n_params = np.arange(1, len(cols) + 1)
        aic = m * (np.log(2 * np.pi) + np.log(rss / m) + 1.0) + 2.0 * n_params
        lag = int(np.argmin(aic[1:]))  # at least constant + level; first minimum = fewer lags
    else:
        raise ValueError(f"autolag={autolag!r}: expected 'AIC' or None")
    m = d.size - lag
    design = np.column_stack(
        [x[lag:-1]] + [d[lag - j : d.size - j] for j in range(1, lag + 1)] + [np.ones(m)]
    )
    q, r = np.linalg.qr(design)
    target = d[lag:]
    beta = np.linalg.solve(r, q.T @ target)
    resid = target - design @ beta
    s2 = resid @ resid / (m - design.shape[1])
    # (X'X)^-1 = R^-1 R^-T: its [0, 0] entry is the squared norm of row 0 of R^-1, i.e.
    # of the solution z of R^T z = e_0.
    r_inv_row0 = np.linalg.solve(r.T, np.eye(r.shape[0])[:, 0])
    t_stat = beta[0] / np.sqrt(s2 * (r_inv_row0 @ r_inv_row0))
    return float(mackinnonp(t_stat, regression="c", N=1))


def _rolling_std(d: np.ndarray, window: int) -> np.ndarray:
    """Rolling sample std over complete windows, via cumulative sums (O(n))."""
    if d.size < window + 1:
        raise ValueError(f"need more than {window} changes for a rolling window of {window}")
    c1 = np.concatenate([[0.0], np.cumsum(d)])
    c2 = np.concatenate([[0.0], np.cumsum(d * d)])
    s1 = c1[window:] - c1[:-window]
    s2 = c2[window:] - c2[:-window]
    var = (s2 - s1 * s1 / window) / (window - 1)
    return np.sqrt(np.maximum(var, 0.0))


def _abs_clustering(dh: np.ndarray, h: int, n_lags: int) -> float:
    a = np.abs(dh)
    a = a - a.mean()
    top = min((n_lags + 1) * h, a.size // 4)
    if top <= h:
        return 0.0
    ac = _autocov(a, top)
    if ac[0] <= 0:
        return 0.0
    return float(np.mean(ac[h + 1 : top + 1] / ac[0]))


def _log_half_life(acov: np.ndarray, max_lag: int) -> float:
    """log10 of the first lag where the autocorrelation (from raw lag products of a
    demeaned series) crosses 1/2, interpolated linearly; log10(max_lag) if it never does."""
    rho = acov[: max_lag + 1] / acov[0]
    below = np.flatnonzero(rho < 0.5)
    if below.size == 0:
        return float(np.log10(max_lag))
    k = int(below[0])
    lag = k - 1 + (rho[k - 1] - 0.5) / (rho[k - 1] - rho[k])
    return float(np.log10(lag))
