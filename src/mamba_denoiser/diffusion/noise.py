"""Observation-noise std per feature, estimated from a noisy series (train split only).

Model: y_t = s_t + n_t, n white with variance σ², independent of the signal s. White
noise adds σ² to the lag-0 autocovariance of the levels and nothing to any other lag, and
makes one-step changes anti-persistent. Two moment estimators use that:

``"diff"`` (random-walk-like s, also a linear trend):
    Δy_t = Δs_t + n_t - n_{t-1}, so Cov(Δy_t, Δy_{t-1}) = Cov(Δs_t, Δs_{t-1}) - σ² and

        σ̂² = -Cov(Δy_t, Δy_{t-1})

    exact when Δs is uncorrelated (random walk, with or without drift). For a mean-reverting
    AR(1) s with coefficient φ and innovation variance q it is biased up by q (1-φ)/(1+φ)
    (the signal's own reversion is counted as noise); for a smooth s (Δs positively
    autocorrelated) it is biased down.

``"ar"`` (AR(1)-like s):
    γ_k = Cov(y_t, y_{t+k}) = γ^s_k + σ² [k = 0], and an AR(1) s has γ^s_k = γ^s_0 φ^k, so
    γ^s_0 = γ_1² / γ_2 and

        σ̂² = γ_0 - γ_1² / γ_2

    exact for AR(1) + noise, and (as φ -> 1) for a random walk too: on sample moments
    σ̂²_ar = σ̂²_diff - (γ_1 - γ_2)² / γ_2, and the correction vanishes when γ_1 ≈ γ_2.
    Computed as (γ_0 (2V_1 - V_2) - V_1²) / (γ_0 - V_2) with the semivariogram
    V_k = ½ E[(y_{t+k} - y_t)²] = γ_0 - γ_k, which stays accurate for random walks and
    with gaps (see _ar_variance). Levels are first detrended by least squares on time
    (``detrend=True``), because a trend inflates every γ_k and biases the ratio. It needs
    a clearly non-zero γ_2: the ratio's sampling error grows like 1 / (ρ_2 √n).

``"auto"`` (default): the AR estimator when the detrended levels have a lag-2
    autocorrelation ρ_2 = γ_2 / γ_0 >= max(rho2_min, rho2_z / √n) (persistent: AR(1),
    near-unit-root, random walk; for the last two both estimators agree), otherwise the
    difference estimator (pure noise, trend + noise, weak persistence, where the AR ratio
    is ill-conditioned). Defaults rho2_min = 0.1, rho2_z = 4.

Every estimate is clipped to [0, Var(y)]. Non-finite values are missing: autocovariances
use only pairs where both values are observed, differences are formed only between
adjacent observed rows (never across a gap), means are over observed values.

Limits, stated plainly:
- With little persistence (white-ish s) signal and noise are not identifiable from second
  moments at all; "auto" then falls back to "diff", which attributes the anti-persistence
  of changes to noise and so tends to over-estimate σ (a conservative, smoothing bias).
- These are moment estimators, not robust ones. Heavy-tailed noise with finite variance
  is estimated consistently (isolated spikes are anti-persistent, so they are correctly
  counted as noise) but with more sampling error, growing with the noise kurtosis; for
  infinite-variance noise σ has no meaning and the estimate does not settle.
- Pass the train rows only (honesty rule 1), in the units the denoiser sees them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NOISE_METHODS = ("auto", "diff", "ar")


@dataclass(frozen=True)
class NoiseEstimate:
    sigma: float  # the std estimate; NaN when not estimable
    method: str  # the estimator used: "diff", "ar", or "none"
    variance: float  # Var(y) over observed values (the upper clip)
    rho2: float  # lag-2 autocorrelation of the (detrended) levels: auto's criterion
    n_obs: int
    clipped: bool  # the raw estimate fell outside [0, Var(y)]
    reason: str = ""


def _autocov(x: np.ndarray, ok: np.ndarray, k: int) -> float:
    """NaN-aware autocovariance at lag k: centred on the observed mean, averaged over
    the pairs where both values are observed. NaN when there is no pair."""
    d = np.where(ok, x - x[ok].mean(), 0.0)
    pairs = ok if k == 0 else ok[k:] & ok[:-k]
    n = pairs.sum()
    if n == 0:
        return float("nan")
    prod = d * d if k == 0 else d[k:] * d[:-k]
    return float((prod * pairs).sum() / n)


def _detrended(y: np.ndarray, ok: np.ndarray) -> np.ndarray:
    t = np.arange(len(y), dtype=np.float64)
    t_obs = t[ok] - t[ok].mean()  # centred: a well-conditioned 2-column fit
    slope = (t_obs * (y[ok] - y[ok].mean())).sum() / max((t_obs**2).sum(), 1e-300)
    return y - slope * (t - t[ok].mean())


def _diff_variance(y: np.ndarray) -> float:
    d = y[1:] - y[:-1]  # NaN wherever either end is missing
    ok = np.isfinite(d)
    if (ok[1:] & ok[:-1]).sum() < 2:
        return float("nan")
    return -_autocov(d, ok, 1)


def _semivariogram(x: np.ndarray, ok: np.ndarray, k: int) -> float:
    """V_k = ½ mean (x_{t+k} - x_t)² over pairs where both are observed (= γ_0 - γ_k)."""
    pairs = ok[k:] & ok[:-k]
    if pairs.sum() == 0:
        return float("nan")
    d = np.where(pairs, x[k:] - x[:-k], 0.0)
    return float(0.5 * (d * d).sum() / pairs.sum())


def _ar_variance(y: np.ndarray, ok: np.ndarray) -> tuple[float, float]:
    """(σ̂², ρ_2) from levels y (already detrended if wanted).

    γ_0 - γ_1² / γ_2 written with the semivariogram, γ_k = γ_0 - V_k:

        σ̂² = (γ_0 (2 V_1 - V_2) - V_1²) / (γ_0 - V_2),   ρ_2 = (γ_0 - V_2) / γ_0.

    The same quantity, but V_k compares values k rows apart directly, so for a random
    walk it does not depend on the (large, noisy) level variance, and missing values
    (pairs at lags 1 and 2 taken over different rows) cannot leak level variance into it.
    """
    g0 = _autocov(y, ok, 0)
    v1, v2 = _semivariogram(y, ok, 1), _semivariogram(y, ok, 2)
    if not (g0 > 0 and np.isfinite(v1) and np.isfinite(v2)):
        return float("nan"), float("nan")
    g2 = g0 - v2
    rho2 = g2 / g0
    if g2 <= 0:
        return float("nan"), rho2
    return (g0 * (2 * v1 - v2) - v1**2) / g2, rho2


def estimate_noise(
    y,
    *,
    method: str = "auto",
    detrend: bool = True,
    min_obs: int = 30,
    rho2_min: float = 0.1,
    rho2_z: float = 4.0,
) -> NoiseEstimate:
    """σ of the white observation noise in a 1-D series y (T,); NaN/inf = missing.

    See the module docstring for the estimators and the ``auto`` rule. Returns a
    NoiseEstimate; ``sigma`` is NaN (method "none", with a reason) when fewer than
    ``min_obs`` values are observed or the chosen estimator is undefined (e.g. "ar" on a
    series without positive lag-2 autocovariance).
    """
    if method not in NOISE_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {NOISE_METHODS}")
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(
            f"y must be one series of shape (T,), got {y.shape}; "
            "use estimate_noise_std for a (T, F) panel"
        )
    ok = np.isfinite(y)
    y = np.where(ok, y, np.nan)
    n = int(ok.sum())
    variance = float(y[ok].var()) if n else float("nan")

    def none(reason: str, rho2: float = float("nan")) -> NoiseEstimate:
        return NoiseEstimate(float("nan"), "none", variance, rho2, n, False, reason)

    if n < max(min_obs, 3):
        return none(f"only {n} observed values; need at least {max(min_obs, 3)}")

    levels = _detrended(y, ok) if detrend else y
    var_ar, rho2 = _ar_variance(levels, ok)
    if method == "auto":
        threshold = max(rho2_min, rho2_z / np.sqrt(n))
        method = "ar" if np.isfinite(rho2) and rho2 >= threshold else "diff"
    raw = var_ar if method == "ar" else _diff_variance(y)
    if not np.isfinite(raw):
        why = "no positive lag-2 autocovariance" if method == "ar" else "too few adjacent pairs"
        return none(f"{method!r} estimator undefined: {why}", rho2)
    var = float(np.clip(raw, 0.0, variance))
    return NoiseEstimate(float(np.sqrt(var)), method, variance, rho2, n, var != raw)


def estimate_noise_std(Y, *, method: str = "auto", **kwargs) -> np.ndarray:
    """Per-feature σ for a panel Y (T, F) (or one series (T,)): float64 array (F,) (or a
    0-d array). NaN for features that cannot be estimated; kwargs go to estimate_noise."""
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1:
        return np.asarray(estimate_noise(Y, method=method, **kwargs).sigma)
    if Y.ndim != 2:
        raise ValueError(f"Y must have shape (T, F) or (T,), got {Y.shape}")
    return np.array(
        [estimate_noise(Y[:, f], method=method, **kwargs).sigma for f in range(Y.shape[1])]
    )


N_BATCHES = 5  # contiguous stretches of the train rows for the batch-means standard error


def noise_var_rse(y, *, n_batches: int = N_BATCHES) -> float:
    """Relative standard error of the noise variance σ² of y (T,), by batch means:
    ``estimate_noise`` on ``n_batches`` contiguous stretches of the rows from the first
    observed one; sd(σ̂_k²) / mean(σ̂_k²) / √k over the k ≥ 3 stretches that give an
    unclipped estimate, else NaN. It measures how well the rows pin σ² down (at the
    built-in default noise its RMS, 0.24, matches the RMS of the moment σ²'s actual log
    error, 0.24), which the gate's lower bound needs: a gain predicted with σ̂ moves with
    σ̂ (inference/gate.py ``GateResult.lower``)."""
    y = np.asarray(y, dtype=np.float64)
    obs = np.flatnonzero(np.isfinite(y))
    if not len(obs):
        return float("nan")
    v = []
    for part in np.array_split(y[obs[0] :], n_batches):
        e = estimate_noise(part)
        if np.isfinite(e.sigma) and not e.clipped and e.sigma > 0:
            v.append(e.sigma**2)
    if len(v) < 3:
        return float("nan")
    v = np.asarray(v)
    return float(v.std(ddof=1) / v.mean() / np.sqrt(len(v)))
