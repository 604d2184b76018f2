"""Classical denoisers of one 1-D series: the bar a learned denoiser has to clear.

Every baseline is fitted (tuned) on the TRAIN rows only and then applied to the whole
series, in a causal form (output at t uses rows <= t only) and, where one exists, a
two-sided form (offline analysis only).

Public API::

    fitted = fit_baseline(name, y, train=(start, stop))    # y: (T,) float, NaN allowed
    fitted.params                                            # tuned / MLE parameters
    fitted.causal(y)      -> (T,)                            # uses rows <= t only
    fitted.causal_gain(y) -> (T,)                            # exact d causal_t / d y_t
    fitted.two_sided(y)   -> (T,) or None                    # None: no two-sided form
    noise_variance(y, train) -> float                        # native units, train only
    apply_baselines(panel, train, n_jobs=1) -> {name: BaselineOutput}  # (T, F), by column
    BASELINES                                                # name -> spec, report order

=============  ============================================  ==============================
name           causal / two-sided form                       fitted on the train rows
=============  ============================================  ==============================
ema            EMA, pandas ``ewm(adjust=False)`` recursion   weight a in ``EMA_ALPHAS`` (a
               / none                                        = 1: no smoothing), by SURE
kalman_level   local level (random walk) plus noise: Kalman  both variances by MLE
               filter / smoother (statsmodels
               UnobservedComponents 'llevel')
kalman_ar1     AR(1) plus measurement noise: Kalman filter   phi and both variances by MLE
               / smoother (statsmodels SARIMAX(1,0,0),
               measurement_error=True)
kalman_ari1    integrated AR(1) (trend with momentum) plus   phi and both variances by MLE
               noise: SARIMAX(1,1,0), measurement_error
savgol         least-squares polynomial over a trailing      (window, order) for each form
               window, evaluated at its last point /         by SURE; the grids include
               scipy ``savgol_filter`` (centred)             no smoothing
hp             one-sided HP = Kalman filter of the           lambda for each form by SURE
               smooth-trend model / statsmodels              (lambda 0 = no smoothing)
               ``hpfilter`` (= that model's smoother)
=============  ============================================  ==============================

Tuning never sees clean values. The smoothing settings are chosen by Stein's unbiased
risk estimate (SURE, Mallows' Cp): for a linear filter whose weight on the current
observation is h0, and white observation noise of variance s2 independent of the signal,

    E[(out_t - clean_t)^2] = E[(out_t - y_t)^2] + (2 h0 - 1) s2

(because out_t - clean_t = (out_t - y_t) + noise_t and Cov(out_t, noise_t) = h0 s2).
It ranks settings by their error against the clean signal for ANY signal dynamics, causal
or two-sided alike, and scores "no smoothing" (h0 = 1) at exactly s2, so a grid that
contains it never has to smooth. The one input, the noise variance s2, comes from the
Kalman models (built, fitted and cached in ``mamba_denoiser.classical``, which the learned
denoiser shares): ``noise_variance`` fits the three ``kalman_*`` models by MLE on the train
rows and takes the measurement-noise variance of the one with the lowest AIC (each alone
misjudges some dynamics: a random walk + noise model sees almost no noise in a trend with
momentum, whose positively autocorrelated changes hide the noise's negative lag-1
autocorrelation). Why not the usual alternatives: the one-step-ahead forecast error of y
(what exponential smoothing fits) is minimised by the best *forecast*, which for fast mean
reversion or a white-noise level is close to the mean, so it over-smooths exactly the
series where smoothing hurts (about -5 to -12 dB on the synthetic panel); leave-one-out
CV cannot score "no smoothing" at all. Limits: s2 is only as good as the three models.
Where signal and noise are both white (a white-noise level such as daily returns), their
split is not identified: the estimate is arbitrary, and the SURE-tuned baselines may
smooth the series towards its mean (down to about -16 dB on the synthetic sv_returns
family). No linear smoother can help there; the raw series is the reference.

Missing values: the output is NaN wherever the input is NaN. Filters start at the first
observed row; interior gaps are forward-filled (a causal fill) for the convolution-type
filters and handled natively (a prediction step) by the Kalman filters. Each series is
standardised with its train mean/std before fitting (numerics); outputs are mapped back.

Causality: causal outputs come from recursions / FIR filters over past rows (``lfilter``,
the Kalman filter), never FFT convolution, so changing rows > t leaves rows <= t
bit-identical (tested), and parameters are fitted from ``y[start:stop]`` alone.

Wavelet shrinkage is left out: it needs PyWavelets (a new dependency), its causal form is
a trailing-window transform whose boundary effects sit exactly at the evaluated point,
and the Kalman smoother / HP / Savitzky-Golay already cover the offline comparison.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache, partial

import numpy as np
from scipy.signal import lfilter, savgol_coeffs, savgol_filter

from mamba_denoiser.classical import MIN_TRAIN_OBS as MIN_TRAIN_OBS  # re-exported
from mamba_denoiser.classical import (  # the Kalman models live there
    STATE_SPACE_MODELS,
    as_series,
    ffill,
    fit_model,
    kalman_filter_gain,
    kalman_signal,
    train_segment,
)
from mamba_denoiser.progress import bar

# EMA weight a = 2 / (span + 1) on a log grid from 1 (no smoothing) down to 1/400: small
# noise needs a close to 1 (a local level with noise/innovation variance 0.1 wants 0.73).
EMA_ALPHAS: tuple[float, ...] = tuple(float(v) for v in np.geomspace(1.0, 0.0025, 40))
SG_CAUSAL_WINDOWS: tuple[int, ...] = (2, 3, 4, 5, 7, 9, 11, 15, 21, 31, 45, 63, 91, 127)
SG_CAUSAL_ORDERS: tuple[int, ...] = (0, 1, 2)  # order 0 = trailing moving average
SG_WINDOWS: tuple[int, ...] = (3, 5, 7, 9, 11, 15, 21, 31, 45, 63, 91, 127)  # two-sided
SG_TWO_SIDED_ORDERS: tuple[int, ...] = (1, 2, 4)  # centred fits: order 2k+1 == order 2k
# Daily data: lambda ~ 1e2 keeps cycles longer than ~20 rows, ~ 2.5e6 longer than ~250.
HP_LAMBDAS: tuple[float, ...] = (0.0,) + tuple(float(v) for v in 10.0 ** np.arange(-2, 9.1, 0.5))
NOISE_MODELS = STATE_SPACE_MODELS  # noise_variance candidates (mamba_denoiser.classical)
HP_BURN = 10  # rows skipped by the causal HP criterion (exact-diffuse start of the filter)
HP_MARGIN = 500  # rows at each end skipped by the two-sided HP criterion (edge weights)
HP_IMPULSE_LEN = 4001  # length of the impulse used to read the HP smoother's centre weight


# --- the common wrapper -----------------------------------------------------------------


@dataclass(frozen=True)
class BaselineSpec:
    """How to fit and apply one baseline on a standardised segment.

    fit(z, observed, noise_var) -> params, where z starts at the first observed train row
    (gap-filled if ``fill_gaps``), ``observed`` marks real values and ``noise_var`` is
    the noise variance in standardised units (None for baselines that need none).
    causal(z, params) / two_sided(z, params) -> (n,) in standardised units.
    gain(z, params) -> (n,): the causal output's exact weight on the current observation,
    d causal_t / d z_t (every baseline is linear in z given its parameters), for SURE.
    """

    fit: Callable[[np.ndarray, np.ndarray, float | None], dict]
    causal: Callable[[np.ndarray, dict], np.ndarray]
    two_sided: Callable[[np.ndarray, dict], np.ndarray] | None
    fill_gaps: bool  # forward-fill interior NaN first (convolutions) or keep (Kalman)
    needs_noise_var: bool
    gain: Callable[[np.ndarray, dict], np.ndarray] | None = None


@dataclass(frozen=True)
class Fitted:
    """A baseline fitted on train rows; ``params`` is what tuning/MLE chose (JSON-able,
    in standardised units: divide native values by ``scale``)."""

    name: str
    params: dict
    center: float  # train mean, native units
    scale: float  # train std, native units
    spec: BaselineSpec = field(repr=False)

    def causal(self, y: np.ndarray) -> np.ndarray:
        """(T,) -> (T,): the output at t uses y[:t+1] only; NaN where y is NaN."""
        return _apply(self.spec.causal, y, self)

    def causal_gain(self, y: np.ndarray) -> np.ndarray:
        """(T,) exact weight of y_t in causal(y)_t (scale-free); NaN where y is NaN."""
        return _apply(self.spec.gain, y, self, affine=False)

    def two_sided(self, y: np.ndarray) -> np.ndarray | None:
        """(T,) -> (T,) two-sided (offline) output, or None if the baseline has none."""
        if self.spec.two_sided is None:
            return None
        return _apply(self.spec.two_sided, y, self)


def fit_baseline(
    name: str,
    y: np.ndarray,
    train: tuple[int, int],
    *,
    noise_var: float | None = None,
) -> Fitted:
    """Fit baseline ``name`` on rows ``train = (start, stop)`` of the 1-D series ``y``.

    Only ``y[start:stop]`` is read, so the parameters cannot depend on later rows.
    ``noise_var`` (native units) feeds the SURE tuning of ema/savgol/hp; when None it is
    estimated with ``noise_variance(y, train)``. Raises ValueError for an unknown name, a
    non-1-D ``y``, or train rows with fewer than MIN_TRAIN_OBS observed values or no
    variation.
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {list(BASELINES)}")
    spec = BASELINES[name]
    z, observed, center, scale = _train_segment(y, train, name, fill_gaps=spec.fill_gaps)
    nv = None
    if spec.needs_noise_var:
        if noise_var is None:
            noise_var = noise_variance(y, train)
        if not np.isfinite(noise_var) or noise_var < 0:
            raise ValueError(f"baseline {name!r}: noise_var={noise_var} must be >= 0")
        nv = float(noise_var) / scale**2
    with warnings.catch_warnings():
        # statsmodels' MLE warns on boundary variances / slow convergence; the estimate
        # is still the train-only one we want, and one warning per column floods logs.
        warnings.simplefilter("ignore")
        params = spec.fit(z, observed, nv)
    return Fitted(name=name, params=params, center=center, scale=scale, spec=spec)


def noise_variance(
    y: np.ndarray,
    train: tuple[int, int],
    *,
    fitted: Sequence[Fitted] = (),
) -> float:
    """Observation-noise variance (native units) from the train rows only.

    Fits the three Kalman models (``NOISE_MODELS``) by MLE on the train rows, or reuses
    them from ``fitted``, and returns the measurement-noise variance of the one with the
    lowest AIC.
    """
    by_name = {f.name: f for f in fitted}
    best = None
    for name in NOISE_MODELS:
        f = by_name.get(name) or fit_baseline(name, y, train)
        if best is None or f.params["aic"] < best.params["aic"]:
            best = f
    return float(best.params["noise_var"]) * best.scale**2


@dataclass
class BaselineOutput:
    """One baseline applied to every column of a panel.

    causal: (T, F); two_sided: (T, F) or None; causal_gain: (T, F), the causal output's
    exact weight on the current observation (1 for a fallback column); params: per
    column, the fitted params or ``{"fallback": reason}`` where the column could not be
    fitted (its output is then the raw column, i.e. no smoothing).
    """

    causal: np.ndarray
    two_sided: np.ndarray | None
    params: list[dict]
    causal_gain: np.ndarray | None = None  # (T, F) exact d causal_t / d y_t, for SURE


def apply_baselines(
    panel: np.ndarray,
    train: tuple[int, int],
    *,
    names: Sequence[str] | None = None,
    two_sided: bool = True,
    noise_var: np.ndarray | Sequence[float] | None = None,
    n_jobs: int = 1,
) -> dict[str, BaselineOutput]:
    """Fit every baseline on the train rows of each column and apply it to that column.

    panel: (T, F) float array, NaN allowed. Returns {name: BaselineOutput} with (T, F)
    outputs. A column too short, constant or failing to fit on train falls back to the
    raw column (its params say why), so outputs always have the panel's shape. The
    Kalman fits are done once per column and reused for the noise variance of the
    SURE-tuned baselines. noise_var: (F,) native-unit noise variances for the SURE tuning
    (e.g. ``classical.noise_sigma(...).sigma ** 2``, so every method shares one σ); a
    non-finite entry, or None for all, means ``noise_variance`` of that column, as before
    (the Kalman baselines are MLE fits either way). n_jobs > 1 spreads columns over that
    many processes (results are identical; worth it from ~20 columns on an otherwise idle
    machine).
    """
    panel = np.asarray(panel, dtype=np.float64)
    if panel.ndim != 2:
        raise ValueError(f"panel must be (T, F), got shape {panel.shape}")
    names = list(BASELINES) if names is None else list(names)
    for name in names:
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; choose from {list(BASELINES)}")
    n_cols = panel.shape[1]
    if noise_var is None:
        given = np.full(n_cols, np.nan)
    else:
        given = np.asarray(noise_var, dtype=np.float64).reshape(-1)  # (F,)
        if given.shape != (n_cols,):
            raise ValueError(
                f"noise_var must have one value per column ({n_cols}), "
                f"got shape {np.shape(noise_var)}"
            )
        if np.any(given < 0):
            raise ValueError("noise_var must be >= 0 (NaN: estimate it from the column)")
    columns = [panel[:, j] for j in range(n_cols)]
    nvs = [float(v) for v in given]
    work = partial(_apply_column, train=train, names=names, two_sided=two_sided)
    results = []
    with bar("Baselines", len(columns)) as b:
        if n_jobs > 1 and len(columns) > 1:
            with ProcessPoolExecutor(max_workers=n_jobs) as pool:
                # one column per task: a worker that is slowed (a busy core, a costly
                # column) takes fewer, instead of one of n_jobs fixed shares; map keeps
                # the order, so the results are the same
                for r in pool.map(work, columns, nvs, chunksize=1):
                    results.append(r)
                    b.advance()
        else:
            for col, nv in zip(columns, nvs):
                results.append(work(col, nv))
                b.advance()
    outs = {}
    for i, name in enumerate(names):
        per_col = [r[i] for r in results]
        has_two = two_sided and BASELINES[name].two_sided is not None
        outs[name] = BaselineOutput(
            causal=np.column_stack([c for c, _, _, _ in per_col]).reshape(panel.shape),
            two_sided=(
                np.column_stack([t for _, t, _, _ in per_col]).reshape(panel.shape)
                if has_two
                else None
            ),
            params=[p for _, _, p, _ in per_col],
            causal_gain=np.column_stack([g for _, _, _, g in per_col]).reshape(panel.shape),
        )
    return outs


def _apply_column(col: np.ndarray, nv: float = float("nan"), *, train, names, two_sided):
    """[(causal (T,), two-sided (T,) or None, params, causal gain (T,))] for each name,
    for one column.

    nv: the noise variance for the SURE tuning (native units); NaN: noise_variance(col).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if np.isfinite(nv):  # given: fit only the Kalman baselines asked for
                fits = {k: fit_baseline(k, col, train) for k in NOISE_MODELS if k in names}
            else:
                fits = {k: fit_baseline(k, col, train) for k in NOISE_MODELS}
                nv = noise_variance(col, train, fitted=list(fits.values()))
            out = []
            for name in names:
                fitted = fits.get(name) or fit_baseline(name, col, train, noise_var=nv)
                both = fitted.two_sided(col) if two_sided else None
                out.append((fitted.causal(col), both, fitted.params, fitted.causal_gain(col)))
            return out
    except (ValueError, np.linalg.LinAlgError) as err:  # too short / constant / failed fit
        reason = {"fallback": f"raw column: {err}"}
        gain = np.where(np.isfinite(col), 1.0, np.nan)  # raw: weight 1 on itself
        return [
            (col.copy(), col.copy() if two_sided and BASELINES[n].two_sided else None, reason, gain)
            for n in names
        ]


def _train_segment(y, train, name, *, fill_gaps):
    """Standardised train rows from the first observed one; (z, observed, center, scale)."""
    return train_segment(y, train, label=f"baseline {name!r}", fill_gaps=fill_gaps)


def _apply(
    fn: Callable[[np.ndarray, dict], np.ndarray],
    y: np.ndarray,
    fitted: Fitted,
    *,
    affine: bool = True,
):
    """fn on the standardised series from its first observation; mapped back to native
    units (``affine``) or returned as is (a gain, which is scale-free)."""
    y = as_series(y)
    out = np.full(len(y), np.nan)
    observed = np.isfinite(y)
    if not observed.any():
        return out
    first = int(np.argmax(observed))  # fixed by the rows up to the first observation
    z = (y[first:] - fitted.center) / fitted.scale
    if fitted.spec.fill_gaps:
        z = ffill(z)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fn(z, fitted.params)
        out[first:] = res * fitted.scale + fitted.center if affine else res
    out[~observed] = np.nan
    return out


def _sure(out, z, observed, h0, noise_var, rows=slice(None)) -> float:
    """SURE of a linear filter: mean (z - out)^2 + (2 h0 - 1) s2 over observed `rows`.

    h0: the weight of z_t in out_t, a scalar or per-row array (same length as z).
    """
    keep = observed[rows]
    if not keep.any():
        return np.inf
    h0 = np.broadcast_to(np.asarray(h0, dtype=np.float64), z.shape)[rows][keep]
    resid = (z - out)[rows][keep]
    return float(np.mean(resid**2 + (2.0 * h0 - 1.0) * noise_var))


# --- EMA --------------------------------------------------------------------------------


def _ema(z: np.ndarray, alpha: float) -> np.ndarray:
    """out_t = (1-a) out_{t-1} + a z_t with out_0 = z_0 (pandas ewm(adjust=False))."""
    a = float(alpha)
    out, _ = lfilter([a], [1.0, a - 1.0], z, zi=[(1.0 - a) * z[0]])
    return out


def _ema_gain(z: np.ndarray, params: dict) -> np.ndarray:
    g = np.full(len(z), float(params["alpha"]))
    g[:1] = 1.0  # out_0 = z_0
    return g


def _fit_ema(z, observed, noise_var):
    # The weight on z_t is a at every t >= 1 (row 0 is the start value), so skip row 0.
    risks = [_sure(_ema(z, a), z, observed, a, noise_var, slice(1, None)) for a in EMA_ALPHAS]
    alpha = EMA_ALPHAS[int(np.argmin(risks))]
    return {"alpha": alpha, "span": 2.0 / alpha - 1.0}


# --- Kalman: local level, AR(1) and integrated AR(1) + noise (mamba_denoiser.classical) --


def _fit_kalman(model: str):
    def fit(z, observed, noise_var):  # MLE on the train segment: no noise_var needed
        return fit_model(model, z, observed)

    return fit


def _kalman_gain(model: str):
    def gain(z, params):
        return kalman_filter_gain(model, z, params)[1]

    return gain


def _kalman_run(model: str, smooth: bool):
    def run(z, params):
        return kalman_signal(model, z, params, smooth=smooth)

    return run


# --- Savitzky-Golay ---------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _endpoint_coeffs(window: int, order: int) -> np.ndarray:
    """Weights (oldest..newest) of a degree-`order` LS fit evaluated at the window's end."""
    if window == 1:
        return np.ones(1)
    return savgol_coeffs(window, min(order, window - 1), pos=window - 1, use="dot")


def _savgol_causal(z: np.ndarray, params: dict) -> np.ndarray:
    """Trailing-window polynomial fit at its last point; shorter windows during warm-up."""
    window, order = int(params["causal_window"]), int(params["causal_order"])
    c = _endpoint_coeffs(window, order)
    out = lfilter(c[::-1], [1.0], z)  # FIR: out_t = sum_k c[w-1-k] z_{t-k}, past rows only
    for t in range(min(window - 1, len(z))):  # warm-up: expanding fit on rows 0..t
        out[t] = _endpoint_coeffs(t + 1, order) @ z[: t + 1]
    return out


def _savgol_gain(z: np.ndarray, params: dict) -> np.ndarray:
    window, order = int(params["causal_window"]), int(params["causal_order"])
    g = np.full(len(z), float(_endpoint_coeffs(window, order)[-1]))
    for t in range(min(window - 1, len(z))):  # the warm-up's expanding fits
        g[t] = _endpoint_coeffs(t + 1, order)[-1]
    return g


def _savgol_two_sided(z: np.ndarray, params: dict) -> np.ndarray:
    window, order = int(params["window"]), int(params["order"])
    window = min(window, len(z) if len(z) % 2 else len(z) - 1)
    if window <= order:  # includes window 1: no smoothing
        return z.copy()
    return savgol_filter(z, window, order, mode="interp")


def _fit_savgol(z, observed, noise_var):
    # Score every candidate on the same rows: past the longest warm-up / edge.
    burn, half = max(SG_CAUSAL_WINDOWS) - 1, max(SG_WINDOWS) // 2
    best_causal, best = {"causal_window": 1, "causal_order": 0}, noise_var  # no smoothing
    for w in SG_CAUSAL_WINDOWS:
        for p in SG_CAUSAL_ORDERS:
            if p >= w - 1:  # an exact fit through w points: no smoothing (already scored)
                continue
            params = {"causal_window": w, "causal_order": p}
            h0 = float(_endpoint_coeffs(w, p)[-1])
            risk = _sure(_savgol_causal(z, params), z, observed, h0, noise_var, slice(burn, None))
            if risk < best:
                best_causal, best = params, risk
    best_two, best = {"window": 1, "order": 0}, noise_var
    for w in SG_WINDOWS:
        for p in SG_TWO_SIDED_ORDERS:
            if p >= w - 1:  # an exact fit: no smoothing (already scored)
                continue
            params = {"window": w, "order": p}
            h0 = float(savgol_coeffs(w, p)[w // 2])
            rows = slice(half, len(z) - half)
            risk = _sure(_savgol_two_sided(z, params), z, observed, h0, noise_var, rows)
            if risk < best:
                best_two, best = params, risk
    return {**best_causal, **best_two}


# --- Hodrick-Prescott -------------------------------------------------------------------


def _smooth_trend_model(z: np.ndarray):
    from statsmodels.tsa.statespace.structural import UnobservedComponents

    # Exact diffuse start: lambda up to 1e9 would swamp an approximate diffuse prior.
    return UnobservedComponents(z, level="smooth trend", use_exact_diffuse=True)


def _hp_filter_results(model, lam: float):
    # (sigma2.irregular, sigma2.trend) = (lambda, 1): the filtered mean depends on the
    # ratio only.
    return model.filter(np.array([lam, 1.0]), cov_type="none").filter_results


def _hp_causal(z: np.ndarray, params: dict) -> np.ndarray:
    """One-sided HP: filtered level of the smooth-trend model, noise/slope ratio lambda."""
    lam = float(params["causal_lambda"])
    if lam == 0.0:
        return z.copy()
    return _hp_filter_results(_smooth_trend_model(z), lam).filtered_state[0]


def _hp_gain(z: np.ndarray, params: dict) -> np.ndarray:
    lam = float(params["causal_lambda"])
    if lam == 0.0:
        return np.ones(len(z))
    res = _hp_filter_results(_smooth_trend_model(z), lam)
    # Filtered-level weight on z_t: P_{t|t-1}[0,0] / F_t (Z = [1, 0]), row by row. In the
    # exact-diffuse start (the first rows fix level and slope) the level interpolates z_t.
    g = res.predicted_state_cov[0, 0, :-1] / res.forecasts_error_cov[0, 0]
    g[: int(res.nobs_diffuse)] = 1.0
    return g


def _hp_two_sided(z: np.ndarray, params: dict) -> np.ndarray:
    from statsmodels.tsa.filters.hp_filter import hpfilter

    lam = float(params["lambda"])
    if lam == 0.0 or len(z) < 3:
        return z.copy()
    return np.asarray(hpfilter(z, lamb=lam)[1])


@lru_cache(maxsize=256)
def _hp_centre_weight(lam: float, n: int) -> float:
    """Weight of y_t in the two-sided HP trend at t, read off an impulse at the centre."""
    from statsmodels.tsa.filters.hp_filter import hpfilter

    impulse = np.zeros(n)
    impulse[n // 2] = 1.0
    return float(np.asarray(hpfilter(impulse, lamb=lam)[1])[n // 2])


def _fit_hp(z, observed, noise_var):
    causal_risks, two_risks = [], []
    n0 = min(HP_IMPULSE_LEN, len(z) - (1 - len(z) % 2))
    margin = min(HP_MARGIN, len(z) // 4)
    model = _smooth_trend_model(z)
    for lam in HP_LAMBDAS:
        if lam == 0.0:  # no smoothing: SURE = s2 exactly
            causal_risks.append(noise_var)
            two_risks.append(noise_var)
            continue
        res = _hp_filter_results(model, lam)
        # Filtered-level weight on z_t: P_{t|t-1}[0,0] / F_t (Z = [1, 0]), row by row.
        h0 = res.predicted_state_cov[0, 0, :-1] / res.forecasts_error_cov[0, 0]
        burn = slice(HP_BURN, None)
        causal_risks.append(_sure(res.filtered_state[0], z, observed, h0, noise_var, burn))
        smooth = _hp_two_sided(z, {"lambda": lam})
        rows = slice(margin, len(z) - margin)
        h0_two = _hp_centre_weight(lam, n0)
        two_risks.append(_sure(smooth, z, observed, h0_two, noise_var, rows))
    return {
        "causal_lambda": HP_LAMBDAS[int(np.argmin(causal_risks))],
        "lambda": HP_LAMBDAS[int(np.argmin(two_risks))],
    }


# --- registry ---------------------------------------------------------------------------


def _tuned_filter(fit, causal, two_sided, gain) -> BaselineSpec:
    """A linear filter whose one knob is tuned by SURE on the train rows: it needs the
    noise variance, and a gap-free series (its recursion or convolution cannot skip NaN)."""
    return BaselineSpec(fit, causal, two_sided, fill_gaps=True, needs_noise_var=True, gain=gain)


def _state_space(kind: str) -> BaselineSpec:
    """A statsmodels state-space model fitted by MLE: it estimates its own noise variance
    and runs through gaps (the Kalman recursion skips unobserved rows)."""
    return BaselineSpec(
        fit=_fit_kalman(kind),
        causal=_kalman_run(kind, smooth=False),
        two_sided=_kalman_run(kind, smooth=True),
        fill_gaps=False,
        needs_noise_var=False,
        gain=_kalman_gain(kind),
    )


BASELINES: dict[str, BaselineSpec] = {
    "ema": _tuned_filter(_fit_ema, lambda z, p: _ema(z, p["alpha"]), None, _ema_gain),
    **{kind: _state_space(kind) for kind in ("kalman_level", "kalman_ar1", "kalman_ari1")},
    "savgol": _tuned_filter(_fit_savgol, _savgol_causal, _savgol_two_sided, _savgol_gain),
    "hp": _tuned_filter(_fit_hp, _hp_causal, _hp_two_sided, _hp_gain),
}
