"""A robust classical filter: each feature's state-space model under a noise law with outliers.

The Kalman filter (classical.py) assumes Gaussian observation noise, so one outlier at 10x
the noise moves its state for many rows. Here the noise is a two-component law

    n_t ~ (1 - ε) N(0, σ_c²) + ε N(0, k² σ_c²),      (1 - ε) σ_c² + ε k² σ_c² = H,

H the measurement-noise variance of the feature's lowest-AIC state-space fit on the train
rows (a Gaussian fit matches the noise's second moment; the law only splits it). The
filter is the Gaussian-sum filter of the same model: per row, the prediction N(m, P); each
noise component gives a Kalman update weighted by its evidence; the two are collapsed to
one Gaussian by moment matching. ε = 0 is the Kalman filter itself. ε and k: approximate
maximum likelihood on the train rows over ``GRID`` (every combination of every feature
in one pass). Output and weights depend on y_t: nonlinear, so no exact SURE: the gate
scores it with the paired future-target risk (inference/gate.py).

All three models in one 2-state form (state (s_t, s_{t-1}), Z = [1, 0], standardised
units z = (y - center) / scale):

    kalman_level  F = [[1, 0], [0, 0]]            q = sigma2.level
    kalman_ar1    F = [[φ, 0], [0, 0]]            q = sigma2
    kalman_ari1   F = [[1 + φ, -φ], [1, 0]]       q = sigma2

The recursion is compiled with numba (a Python loop over 9,000 rows x 85 features would
take seconds; compiled it takes milliseconds: ``benchmarks/robust.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from mamba_denoiser.classical import LRU, StateSpaceFit, memo_on_train, state_space_fits

# (ε, k) candidates; (0, 1) is the Gaussian law (the Kalman filter)
EPS = (0.01, 0.02, 0.05, 0.1)
RATIO = (3.0, 5.0, 10.0, 20.0)
GRID = ((0.0, 1.0),) + tuple((e, k) for e in EPS for k in RATIO)
BURN_IN = 20  # rows after the first observation left out of the likelihood (diffuse start)
_FITTED = LRU(64)  # fit_robust, memoised on the train rows (classical.memo_on_train)
DIFFUSE = 1e6  # initial state variance of the non-stationary models (statsmodels uses 1e6)


@dataclass(frozen=True)
class NoiseLaw:
    eps: float  # outlier weight ε
    ratio: float  # k = σ_o / σ_c

    def variances(self, h: float) -> tuple[float, float]:
        """(σ_c², σ_o²) for a total measurement-noise variance h."""
        core = h / ((1 - self.eps) + self.eps * self.ratio**2)
        return core, core * self.ratio**2


def state_space_form(fit: StateSpaceFit) -> tuple[np.ndarray, float, np.ndarray]:
    """(F (2, 2), q, P0 (2, 2)) of a fit in standardised units (module docstring)."""
    p = fit.params
    if fit.model == "kalman_level":
        F, q = np.array([[1.0, 0.0], [0.0, 0.0]]), float(p["sigma2.level"])
        p0 = np.diag([DIFFUSE, 0.0])
    elif fit.model == "kalman_ar1":
        phi, q = float(p["ar.L1"]), float(p["sigma2"])
        F = np.array([[phi, 0.0], [0.0, 0.0]])
        p0 = np.diag([q / (1 - phi**2) if abs(phi) < 1 else DIFFUSE, 0.0])
    elif fit.model == "kalman_ari1":
        phi, q = float(p["ar.L1"]), float(p["sigma2"])
        F = np.array([[1 + phi, -phi], [1.0, 0.0]])
        # as statsmodels: the level diffuse, the slope s_t - s_{t-1} at its stationary law
        v = q / (1 - phi**2) if abs(phi) < 1 else DIFFUSE
        p0 = np.array([[DIFFUSE + v, DIFFUSE], [DIFFUSE, DIFFUSE]])
    else:
        raise ValueError(f"unknown state-space model {fit.model!r}")
    return F, max(q, 0.0), p0


@numba.njit(cache=True)
def _gaussian_sum(z, F, q, P0, w_out, r_core, r_out, burn_in):  # pragma: no cover - compiled
    """z (T, B) standardised, NaN = missing; per column F (B, 2, 2), q (B,), P0 (B, 2, 2),
    outlier weight w_out (B,), core / outlier noise variances (B,) -> (filtered s_t (T, B),
    NaN where z is; log-likelihood (B,) after ``burn_in`` observed rows; the one-step
    prediction's mean and variance of s_t given z_<t, (T, B) each, NaN before the first
    observation: what the residual predictive head starts from)."""
    T, B = z.shape
    out = np.full((T, B), np.nan)
    prior_m = np.full((T, B), np.nan)
    prior_v = np.full((T, B), np.nan)
    loglik = np.zeros(B)
    for b in range(B):
        m0, m1 = 0.0, 0.0
        p00, p01, p11 = P0[b, 0, 0], P0[b, 0, 1], P0[b, 1, 1]
        f00, f01, f10, f11 = F[b, 0, 0], F[b, 0, 1], F[b, 1, 0], F[b, 1, 1]
        seen = 0
        started = False
        for t in range(T):
            y = z[t, b]
            if not started:
                if np.isnan(y):
                    continue
                started = True
                mp0, mp1 = 0.0, 0.0
                pp00, pp01, pp11 = p00, p01, p11
            else:
                mp0 = f00 * m0 + f01 * m1
                mp1 = f10 * m0 + f11 * m1
                # F P F' + diag(q, 0)
                a00 = f00 * p00 + f01 * p01
                a01 = f00 * p01 + f01 * p11
                a10 = f10 * p00 + f11 * p01
                a11 = f10 * p01 + f11 * p11
                pp00 = a00 * f00 + a01 * f01 + q[b]
                pp01 = a00 * f10 + a01 * f11
                pp11 = a10 * f10 + a11 * f11
            prior_m[t, b], prior_v[t, b] = mp0, pp00
            if np.isnan(y):
                m0, m1, p00, p01, p11 = mp0, mp1, pp00, pp01, pp11
                continue
            e = y - mp0
            s_c, s_o = pp00 + r_core[b], pp00 + r_out[b]
            # log evidence of each component, normalised with log-sum-exp
            l_c = np.log(1.0 - w_out[b]) - 0.5 * (np.log(2 * np.pi * s_c) + e * e / s_c)
            if w_out[b] > 0:
                l_o = np.log(w_out[b]) - 0.5 * (np.log(2 * np.pi * s_o) + e * e / s_o)
            else:
                l_o = -np.inf
            top = max(l_c, l_o)
            total = top + np.log(np.exp(l_c - top) + np.exp(l_o - top))
            pi_c, pi_o = np.exp(l_c - total), np.exp(l_o - total)
            # each component's Kalman update (gain k = Pp[:, 0] / S)
            kc0, kc1, ko0, ko1 = pp00 / s_c, pp01 / s_c, pp00 / s_o, pp01 / s_o
            mc0, mc1, mo0, mo1 = mp0 + kc0 * e, mp1 + kc1 * e, mp0 + ko0 * e, mp1 + ko1 * e
            m0 = pi_c * mc0 + pi_o * mo0
            m1 = pi_c * mc1 + pi_o * mo1
            d0c, d1c, d0o, d1o = mc0 - m0, mc1 - m1, mo0 - m0, mo1 - m1
            p00 = pi_c * (pp00 - kc0 * pp00 + d0c * d0c) + pi_o * (pp00 - ko0 * pp00 + d0o * d0o)
            p01 = pi_c * (pp01 - kc0 * pp01 + d0c * d1c) + pi_o * (pp01 - ko0 * pp01 + d0o * d1o)
            p11 = pi_c * (pp11 - kc1 * pp01 + d1c * d1c) + pi_o * (pp11 - ko1 * pp01 + d1o * d1o)
            out[t, b] = m0
            seen += 1
            if seen > burn_in:
                loglik[b] += total
    return out, loglik, prior_m, prior_v


def _columns(fits: list[StateSpaceFit], laws: list[NoiseLaw]):
    """Per-column arrays of the compiled filter for (fit, law) pairs."""
    forms = [state_space_form(f) for f in fits]
    F = np.array([f[0] for f in forms])
    q = np.array([f[1] for f in forms])
    P0 = np.array([f[2] for f in forms])
    h = np.array([f.params["noise_var"] for f in fits])
    var = np.array([law.variances(hi) for law, hi in zip(laws, h)])
    w = np.array([law.eps for law in laws])
    return F, q, P0, w, var[:, 0], var[:, 1]


def _standardise(y: np.ndarray, fits: list[StateSpaceFit]) -> np.ndarray:
    center = np.array([f.center for f in fits])
    scale = np.array([f.scale for f in fits])
    return (np.asarray(y, dtype=np.float64) - center) / scale


def fit_noise_laws(y: np.ndarray, fits: list[StateSpaceFit], train: tuple[int, int]):
    """(T, F) raw values and each column's state-space fit -> each column's NoiseLaw, the
    grid point of highest approximate likelihood on the train rows (every column and grid
    point in one compiled pass)."""
    z = _standardise(y[train[0] : train[1]], fits)  # (n, F)
    n_f, n_g = len(fits), len(GRID)
    laws = [NoiseLaw(*g) for g in GRID]
    cols = _columns([f for f in fits for _ in GRID], laws * n_f)
    zz = np.ascontiguousarray(np.repeat(z, n_g, axis=1))  # (n, F * G), feature-major
    _, loglik, _, _ = _gaussian_sum(zz, *cols, BURN_IN)
    best = np.nanargmax(np.where(np.isfinite(loglik), loglik, -np.inf).reshape(n_f, n_g), 1)
    return [laws[g] for g in best]


def robust_filter(y: np.ndarray, fits: list[StateSpaceFit], laws: list[NoiseLaw]) -> np.ndarray:
    """(T, F) raw values -> (T, F) the causal Gaussian-sum filter's estimate of the signal,
    native units; NaN where y is NaN."""
    z = np.ascontiguousarray(_standardise(y, fits))
    out, _, _, _ = _gaussian_sum(z, *_columns(fits, laws), BURN_IN)
    return out * np.array([f.scale for f in fits]) + np.array([f.center for f in fits])


def fit_robust(raw: np.ndarray, train: tuple[int, int]) -> tuple[list, list]:
    """(T, F) -> (each column's lowest-AIC state-space fit, its NoiseLaw), both None where
    no fit is possible (too short, constant: the column stays raw). Train rows only;
    memoised on their bytes."""
    fits, laws = memo_on_train(_FITTED, _fit_robust, raw, train)
    return list(fits), list(laws)


def _fit_robust(raw: np.ndarray, train: tuple[int, int]) -> tuple[list, list]:
    fits = state_space_fits(raw, train)
    ok = [j for j, f in enumerate(fits) if f is not None]
    laws: list = [None] * len(fits)
    if ok:
        for j, law in zip(ok, fit_noise_laws(raw[:, ok], [fits[j] for j in ok], train)):
            laws[j] = law
    return fits, laws


def apply_robust(raw: np.ndarray, fits: list, laws: list) -> np.ndarray:
    """(T, F) -> (T, F) ``robust_filter`` on the columns with a fit; NaN elsewhere."""
    out = np.full(raw.shape, np.nan)
    ok = [j for j, f in enumerate(fits) if f is not None]
    if ok:  # every column in one compiled pass
        out[:, ok] = robust_filter(raw[:, ok], [fits[j] for j in ok], [laws[j] for j in ok])
    return out


@dataclass(frozen=True)
class Priors:
    """The robust filter's one-step predictions, native units (NaN where a column has no
    fit, and before its first observation): the start of the residual predictive head
    (diffusion/predictive.py), which then uses the same noise law, so that untrained it
    gives exactly the filter's output."""

    mean: np.ndarray  # (T, F) E[s_t | y_<t] (collapsed to one Gaussian, as the filter does)
    var: np.ndarray  # (T, F) Var[s_t | y_<t]
    noise_var: np.ndarray  # (F, 2) core and outlier noise variances σ_c², σ_o²
    eps: np.ndarray  # (F,) outlier weight ε (0: Gaussian noise, the Kalman filter)
    filtered: np.ndarray  # (T, F) the filter's own output, E[s_t | y_<=t]


def filter_priors(raw: np.ndarray, fits: list, laws: list) -> Priors:
    """(T, F) raw values and each column's (fit, law) from ``fit_robust`` -> ``Priors``."""
    T, n_f = raw.shape
    mean, var, filt = (np.full((T, n_f), np.nan) for _ in range(3))
    noise_var, eps = np.full((n_f, 2), np.nan), np.full(n_f, np.nan)
    ok = [j for j, f in enumerate(fits) if f is not None]
    if ok:
        fs, ls = [fits[j] for j in ok], [laws[j] for j in ok]
        cols = _columns(fs, ls)
        z = np.ascontiguousarray(_standardise(raw[:, ok], fs))
        out, _, m, v = _gaussian_sum(z, *cols, BURN_IN)
        scale = np.array([f.scale for f in fs])
        center = np.array([f.center for f in fs])
        mean[:, ok], var[:, ok] = m * scale + center, v * scale**2
        filt[:, ok] = out * scale + center
        noise_var[ok, 0], noise_var[ok, 1] = cols[4] * scale**2, cols[5] * scale**2
        eps[ok] = cols[3]
    return Priors(mean=mean, var=var, noise_var=noise_var, eps=eps, filtered=filt)
