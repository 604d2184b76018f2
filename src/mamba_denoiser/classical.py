"""Classical state-space fits of one series, their causal Kalman filter, and one σ policy.

One place for what both the learned denoiser (inference/) and the classical baselines
(evaluation/baselines.py) need from statsmodels, so neither imports the other and every
method uses the same noise σ per feature. Imports numpy / scipy / statsmodels only (no
torch, no evaluation/); ``noise_sigma`` imports the moment estimator lazily (see there).

Public API::

    STATE_SPACE_MODELS                          # the three models below, in AIC tie order
    fit = fit_state_space(y, train=(start, stop))   # lowest-AIC MLE fit, train rows only
    signal, gain = kalman_filter(fit, y)        # (T,), (T,): causal, NaN where y is NaN
    is_white, p = ljung_box_white(y[start:stop])   # robust portmanteau test, 10 lags
    is_white, p = whiteness(y[start:stop])          # ... and at 1 and 2 lags: the σ rule's
    choice = noise_sigma(y, train)              # NoiseChoice: σ (native units) + its source

============  ==================================================  =====================
model         signal dynamics (+ white measurement noise of var H)  statsmodels
============  ==================================================  =====================
kalman_level  random walk (local level)                             UnobservedComponents
                                                                    level='llevel'
kalman_ar1    AR(1), zero mean (the train mean is removed)          SARIMAX(1,0,0),
                                                                    measurement_error
kalman_ari1   integrated AR(1): changes with momentum (a trend)     SARIMAX(1,1,0),
                                                                    measurement_error
============  ==================================================  =====================

Each is fitted by maximum likelihood on the train rows only, after standardising them by
their own mean / std (numerics); ``params`` stay in those standardised units, the
``noise_var`` / ``center`` / ``scale`` of a fit are native. The fit of each model is
cached in memory by a SHA-1 of the exact standardised segment it was fitted on (and on
disk by joblib.Memory, ``set_fit_cache``), and ``fit_state_space`` by a SHA-1 of the raw
train segment: a pipeline re-run on a panel with identical train rows costs nothing,
while any change to the fitted rows (or a caller that passes other rows as "train") gives
a fresh fit. ``prefit_state_space`` makes a panel's fits in joblib.Parallel workers.

Why three models and AIC: each alone misjudges some dynamics. A random walk + noise model
sees almost no noise in a trend with momentum, whose positively autocorrelated changes
hide the noise's negative lag-1 autocorrelation; an AR(1) + noise model needs phi < 1.

σ policy (``noise_sigma``): the moment estimator of ``diffusion.noise.estimate_noise`` is
cheap and model-free but collapses (clips to 0) on trends and scatters on jump series;
the state-space σ is a likelihood fit of explicit dynamics. The moment σ is kept when it
is not clipped and within a factor ``tolerance`` of the state-space σ (two independent
routes agree), otherwise the state-space σ is used. Where signal and noise are both white
(``ljung_box_white``, a volatility-robust Ljung-Box test) their split is not identified
by any second-moment method: the σ is then arbitrary, and ``NoiseChoice.white`` says so.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mamba_denoiser.recursion import Carried, Stepper, clear_all, kalman_columns

MIN_TRAIN_OBS = 50  # below this a tuned/MLE parameter is mostly noise: refuse to fit
STATE_SPACE_MODELS = ("kalman_level", "kalman_ar1", "kalman_ari1")
# fitted numbers of each model (its AIC's penalty), for the BIC the σ choice uses
N_PARAMS = {"kalman_level": 2, "kalman_ar1": 3, "kalman_ari1": 3}
CACHE_SIZE = 4096  # fits kept (per cache): ~100 features x 3 models x a dozen panels


# --- series helpers (shared with evaluation/baselines.py) -------------------------------


def as_series(y: np.ndarray) -> np.ndarray:
    """float64 (T,) copy with every non-finite value as NaN (missing)."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"expected a 1-D series, got shape {y.shape}")
    return np.where(np.isfinite(y), y, np.nan)


def ffill(z: np.ndarray) -> np.ndarray:
    """Forward-fill NaN (causal: each value comes from an earlier row). z[0] is observed."""
    idx = np.where(np.isfinite(z), np.arange(len(z)), 0)
    return z[np.maximum.accumulate(idx)]


def train_segment(
    y: np.ndarray, train: tuple[int, int], *, label: str, fill_gaps: bool = False
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Standardised train rows from their first observed one: (z, observed, center, scale).

    Reads ``y[start:stop]`` only. ``label`` names the caller in the error messages.
    Raises ValueError for bad ``train`` bounds, fewer than MIN_TRAIN_OBS observed rows, or
    constant rows.
    """
    y = as_series(y)
    start, stop = int(train[0]), int(train[1])
    if not 0 <= start < stop <= len(y):
        raise ValueError(f"train={train} must satisfy 0 <= start < stop <= {len(y)}")
    part = y[start:stop]
    observed = np.isfinite(part)
    n_obs = int(observed.sum())
    if n_obs < MIN_TRAIN_OBS:
        raise ValueError(
            f"{label}: {n_obs} observed train rows in {tuple(train)}, need >= {MIN_TRAIN_OBS}"
        )
    center = float(part[observed].mean())
    scale = float(part[observed].std())
    if not np.isfinite(scale) or scale <= 0.0:
        raise ValueError(f"{label}: the train rows are constant (std={scale})")
    first = int(np.argmax(observed))
    z = (part[first:] - center) / scale
    if fill_gaps:
        z = ffill(z)
    return z, observed[first:], center, scale


class LRU:
    """A small least-recently-used dict (bounded memory for long-lived processes)."""

    def __init__(self, maxsize: int):
        self.maxsize, self.data = maxsize, OrderedDict()

    def get(self, key):
        if key in self.data:
            self.data.move_to_end(key)
            return self.data[key]
        return None

    def put(self, key, value) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.maxsize:
            self.data.popitem(last=False)

    def clear(self) -> None:
        self.data.clear()


_MODEL_FITS = LRU(CACHE_SIZE)  # (model, sha1 of z) -> params (standardised units)
_STATE_SPACE_FITS = LRU(CACHE_SIZE)  # sha1 of the raw train segment -> StateSpaceFit
# the Kalman filters' serving runs with their states (recursion.Carried): the Kalman and
# combiner candidates filter the same series in one run, and a grown series continues
_CARRIED = Carried()


def clear_cache() -> None:
    """Forget every cached fit and held filter run (tests, or to bound memory by hand)."""
    _MODEL_FITS.clear()
    _STATE_SPACE_FITS.clear()
    clear_all()  # the serving runs of every filter (recursion.Carried)


def digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a, dtype=np.float64).tobytes()).hexdigest()


# --- the three models -------------------------------------------------------------------


def _level_model(z):
    from statsmodels.tsa.statespace.structural import UnobservedComponents

    return UnobservedComponents(z, level="llevel")


def _ar1_model(z, concentrate_scale=False):
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    # z has zero train mean, so no trend term (a mean is poorly identified at phi ~ 1).
    return SARIMAX(
        z, order=(1, 0, 0), trend="n", measurement_error=True, concentrate_scale=concentrate_scale
    )


def _ari1_model(z, concentrate_scale=False):
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    # Integrated AR(1): changes with momentum (x_t - x_{t-1} = phi (x_{t-1} - x_{t-2}) + u).
    # The level stays in the state (no simple differencing), so NaN rows are handled.
    return SARIMAX(
        z, order=(1, 1, 0), trend="n", measurement_error=True, concentrate_scale=concentrate_scale
    )


def _fit_level(z):
    model = _level_model(z)
    res = model.fit(disp=False, cov_type="none")
    params = {k: float(v) for k, v in zip(model.param_names, res.params)}
    return {
        **params,
        "noise_var": params["sigma2.irregular"],
        "aic": float(-2.0 * res.llf + 2 * len(params)),
    }


# Extra starting values of phi for the AR(1) / integrated AR(1) fits. From statsmodels' own
# start, noisy trends can converge to a bad local optimum: on the built-in panel at noise
# x5 (gaussian), E1 and E2 reach phi ~ -0.34 with a measurement noise of 0.0 and 0.21 x the
# truth; started at phi = 0.9 they reach phi ~ 0.93, a log-likelihood higher by 209-248
# and 1.03-1.05 x the true noise (tests/test_classical.py).
PHI_STARTS = (0.9, 0.0, -0.3)


def _fit_sarimax(make_model):
    def fit(z):
        # Concentrating the scale out leaves a 2-parameter search: ~3x faster, and it
        # avoids the bad local optimum the 3-parameter search finds on trending series.
        model = make_model(z, concentrate_scale=True)
        res = _multi_start(model)
        phi, snr = (float(v) for v in res.params)
        sigma2 = float(res.scale)
        return {
            "ar.L1": phi,
            "var.measurement_error": snr * sigma2,
            "sigma2": sigma2,
            "noise_var": snr * sigma2,
            "aic": float(-2.0 * res.llf + 2 * 3),
        }

    return fit


def _multi_start(model):
    """The highest-likelihood fit from statsmodels' start and from phi in PHI_STARTS. The
    starts after the first extra one run only where those two disagree (a cost of ~1 extra
    fit per series where the likelihood surface has one optimum)."""
    base = np.asarray(model.start_params, dtype=float)
    results = [model.fit(disp=False, cov_type="none")]
    for i, phi0 in enumerate(PHI_STARTS):
        if i == 1 and abs(results[1].llf - results[0].llf) < 1e-2:
            break  # the first extra start found the same optimum
        start = base.copy()
        start[0] = phi0
        results.append(model.fit(start_params=start, disp=False, cov_type="none"))
    finite = [r for r in results if np.isfinite(r.llf)]
    return max(finite, key=lambda r: r.llf) if finite else results[0]


_BUILDERS: dict[str, Callable] = {
    "kalman_level": _level_model,
    "kalman_ar1": _ar1_model,
    "kalman_ari1": _ari1_model,
}
_FITTERS: dict[str, Callable[[np.ndarray], dict]] = {
    "kalman_level": _fit_level,
    "kalman_ar1": _fit_sarimax(_ar1_model),
    "kalman_ari1": _fit_sarimax(_ari1_model),
}


def _check_model(model: str) -> None:
    if model not in STATE_SPACE_MODELS:
        raise ValueError(f"unknown state-space model {model!r}; choose from {STATE_SPACE_MODELS}")


# --- the on-disk fit cache (joblib.Memory) and the worker pool (joblib.Parallel) ------------

FIT_CACHE_ENV = "MAMBA_DENOISER_FIT_CACHE"  # a folder (for this process and its children)
FIT_CODE_VERSION = 2  # bump when a fitter changes: old cache entries are then never read


def set_fit_cache(folder: str | Path | None) -> None:
    """Keep MLE fits on disk under ``folder`` (None: memory only), shared by every stage
    (an environment variable; ``prefit_state_space`` hands the folder to its workers).

    A pure memo, ``joblib.Memory``: joblib keys an entry on the function's code and its
    arguments, i.e. the model, the exact data the likelihood sees and ``fit_versions()``
    (this module's FIT_CODE_VERSION, the package and the statsmodels / scipy / numpy
    versions, passed as an argument so that an upgrade never reads an older fit), and
    stores the result as a pickle, so a hit returns exactly what the fit would. Entries
    are pickles: use a folder only this user writes. denoise.py and evaluate.py fit the
    same train rows: the second one reads.
    """
    if folder is None:
        os.environ.pop(FIT_CACHE_ENV, None)
    else:
        os.environ[FIT_CACHE_ENV] = str(folder)


def fit_versions() -> tuple[str, ...]:
    """What a stored fit depends on besides the model and the data (part of its key)."""
    import scipy
    import statsmodels

    from mamba_denoiser.version import __version__

    return (
        f"fit-code {FIT_CODE_VERSION}",
        f"mamba-denoiser {__version__}",
        f"statsmodels {statsmodels.__version__}",
        f"scipy {scipy.__version__}",
        f"numpy {np.__version__}",
    )


def _mle_fit(model: str, z: np.ndarray, versions: tuple[str, ...]) -> dict:
    """One model's MLE params on z (the function joblib.Memory stores). ``versions`` only
    keys the stored result (``fit_versions``)."""
    del versions
    # statsmodels' first import puts "always" filters for its warnings in front: import it
    # before the block below, or a fresh worker process shows its first fit's warnings
    import statsmodels.tools.sm_exceptions  # noqa: F401

    with warnings.catch_warnings():
        # statsmodels' MLE warns on boundary variances / slow convergence; the
        # estimate is still the train-only one we want, and warnings flood logs.
        warnings.simplefilter("ignore")
        return _FITTERS[model](z)


_STORES: dict[str, Callable] = {}  # cache folder -> _mle_fit through joblib.Memory


def _stored_mle_fit() -> Callable:
    """``_mle_fit``, through joblib.Memory on the cache folder when one is set."""
    folder = os.environ.get(FIT_CACHE_ENV)
    if not folder:
        return _mle_fit
    if folder not in _STORES:
        from joblib import Memory

        try:
            _STORES[folder] = Memory(folder, verbose=0).cache(_mle_fit)
        except OSError:  # a folder that cannot be made only costs the speed-up
            _STORES[folder] = _mle_fit
    return _STORES[folder]


def fit_model(model: str, z: np.ndarray, observed: np.ndarray) -> dict:
    """MLE params (standardised units, with ``noise_var`` and ``aic``) of one model on z.

    z: the standardised segment (NaN allowed where not ``observed``). Cached by the bytes
    of z with the unobserved rows as NaN, i.e. exactly the data the likelihood sees (in
    memory, and on disk when ``set_fit_cache`` names a folder); a fresh dict is returned
    each call, so callers may keep or change it.
    """
    _check_model(model)
    z = np.where(observed, z, np.nan)  # (n,) the Kalman filter handles NaN natively
    key = (model, digest(z))
    params = _MODEL_FITS.get(key)
    if params is None:
        try:
            with warnings.catch_warnings():
                # joblib times its metadata write against the wall clock: a busy disk or
                # CPU makes it warn about "large input arguments" (z's repr is short)
                warnings.filterwarnings("ignore", message="Persisting input arguments took")
                params = _stored_mle_fit()(model, z, fit_versions())
        except OSError:  # a read-only or full disk only costs the speed-up
            params = _mle_fit(model, z, ())
    _MODEL_FITS.put(key, params)
    return dict(params)


def _prefit_column(y: np.ndarray, train: tuple[int, int], folder: str) -> None:
    """A worker's task: one column's fits into the cache ``folder`` (the parent's; a
    worker of any joblib backend gets it here, not from its environment), with one
    BLAS/OpenMP thread, so n_jobs workers share the cores instead of each spinning up a
    thread per core (2 workers: 11 s -> 5.7 s for 16 features on 2 cores, against 9 s
    with the libraries' default threads)."""
    from threadpoolctl import threadpool_limits

    set_fit_cache(folder)
    with threadpool_limits(1):
        try:
            fit_state_space(y, train)
        except (ValueError, np.linalg.LinAlgError):
            pass  # the serial caller meets (and reports) the same error


def _cached_on_disk(y: np.ndarray, train: tuple[int, int]) -> bool:
    """Whether every model's fit of this column's train rows is in the disk cache (a
    column that cannot be fitted counts as done: its error is the serial caller's)."""
    try:
        z, observed, _, _ = train_segment(y, train, label="prefit")
    except ValueError:
        return True
    stored, versions = _stored_mle_fit(), fit_versions()
    if stored is _mle_fit:  # no usable cache folder: nothing to fill
        return True
    z = np.where(observed, z, np.nan)
    return all(stored.check_call_in_cache(m, z, versions) for m in STATE_SPACE_MODELS)


def prefit_state_space(panel: np.ndarray, train: tuple[int, int], *, n_jobs: int = 1) -> None:
    """Fit every column's state-space models (``fit_state_space``) in ``n_jobs`` workers of
    ``joblib.Parallel`` (its default backend, loky processes, or the one a caller chooses
    with ``joblib.parallel_config``, e.g. dask or ray), filling the on-disk cache, so the
    serial code after it only reads. Without a cache folder (``set_fit_cache``) the
    workers' fits would be lost: then, and for n_jobs 0 or 1, nothing is done here and
    the caller fits as it goes. n_jobs as joblib's (-1: one worker per core). Same
    results either way: the cache is a pure memo."""
    from joblib import Parallel, delayed

    panel = np.asarray(panel, dtype=np.float64)
    folder = os.environ.get(FIT_CACHE_ENV)
    if n_jobs in (0, 1) or panel.ndim != 2 or panel.shape[1] < 2 or not folder:
        return
    train = (int(train[0]), int(train[1]))
    todo = [j for j in range(panel.shape[1]) if not _cached_on_disk(panel[:, j], train)]
    if not todo:  # later stages: usually none left
        return
    from mamba_denoiser.progress import bar

    jobs = (delayed(_prefit_column)(panel[:, j], train, folder) for j in todo)
    with bar("State-space fits", len(todo)) as b:  # results as they come: the bar moves
        for _ in Parallel(n_jobs=n_jobs, return_as="generator_unordered")(jobs):
            b.advance()


def _filter_results(model: str, z: np.ndarray, params: dict, *, smooth: bool):
    """(statsmodels results, design (k_states,)) of the fixed-parameter filter/smoother."""
    mod = _BUILDERS[model](z)  # fixed parameters: no scale concentration, no refit
    theta = np.array([params[k] for k in mod.param_names])
    kw = {"cov_type": "none"}  # parameter covariances: unused and costly
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = mod.smooth(theta, **kw) if smooth else mod.filter(theta, **kw)
    return res, np.asarray(mod.ssm["design"][0], dtype=np.float64)


def kalman_filter_gain(model: str, z: np.ndarray, params: dict) -> tuple[np.ndarray, np.ndarray]:
    """(filtered signal (n,), gain (n,)) of one model with fixed ``params`` on a
    standardised series z: gain_t = d signal_t / d z_t = Z P_{t|t-1} Z' / F_t exactly (the
    filter is linear in z given the parameters). NaN rows of z are prediction steps: the
    signal there is the prediction, the gain NaN. The one serving recursion
    (recursion.py), as ``kalman_filter``: the baselines and the candidate are one filter."""
    _check_model(model)
    fit = StateSpaceFit(model, params, 0.0, 1.0, float(params["noise_var"]), 0.0, {})
    f = _CARRIED(np.asarray(z, dtype=np.float64)[:, None], kalman_columns([fit]), burn_in=0)
    signal = np.where(np.isnan(f.mean[:, 0]), f.prior_mean[:, 0], f.mean[:, 0])
    return signal, f.gain[:, 0]


def kalman_signal(model: str, z: np.ndarray, params: dict, *, smooth: bool = False) -> np.ndarray:
    """Signal estimate (n,) of one model with fixed ``params`` on a standardised series z.

    smooth=False: the Kalman filter (causal, uses z[:t+1]; ``kalman_filter_gain``);
    True: statsmodels' smoother (two-sided). NaN in z are missing values (a prediction
    step).
    """
    _check_model(model)
    if not smooth:
        return kalman_filter_gain(model, z, params)[0]
    res, design = _filter_results(model, z, params, smooth=True)
    return design @ res.smoothed_state  # signal = design @ state (the measurement error excluded)


# --- fit and filter ---------------------------------------------------------------------


@dataclass(frozen=True)
class StateSpaceFit:
    """The lowest-AIC state-space model of one series, fitted on its train rows.

    params: that model's MLE params in standardised units (native = value * scale**2 for
        variances), with ``noise_var`` and ``aic``.
    center, scale: train mean / std (native units) used to standardise.
    noise_var: measurement-noise variance, native units.
    fits: every model tried -> {"aic", "noise_var" (native)}; NaN and an "error" entry for
        a model whose fit failed.
    """

    model: str
    params: dict
    center: float
    scale: float
    noise_var: float  # native units
    aic: float
    fits: dict


def fit_state_space(y: np.ndarray, train: tuple[int, int]) -> StateSpaceFit:
    """Fit the three STATE_SPACE_MODELS by MLE on ``y[train[0]:train[1]]``; lowest AIC wins.

    y: (T,) float, NaN = missing. Only the train rows are read. Ties go to the earlier
    model of STATE_SPACE_MODELS. A model whose fit fails (a linear-algebra error, a
    non-finite likelihood) is skipped. Raises ValueError when the train rows have fewer
    than MIN_TRAIN_OBS observed values, are constant, or no model could be fitted.
    Cached: the same train-segment bytes return the same StateSpaceFit object.
    """
    y = as_series(y)
    start, stop = int(train[0]), int(train[1])
    if not 0 <= start < stop <= len(y):
        raise ValueError(f"train={train} must satisfy 0 <= start < stop <= {len(y)}")
    key = digest(y[start:stop])
    cached = _STATE_SPACE_FITS.get(key)
    if cached is not None:
        return cached
    z, observed, center, scale = train_segment(y, train, label="state-space fit")
    fits, best, best_params = {}, None, None
    for model in STATE_SPACE_MODELS:
        try:
            params = fit_model(model, z, observed)
        except (ValueError, np.linalg.LinAlgError) as err:
            fits[model] = {"aic": float("nan"), "noise_var": float("nan"), "error": str(err)}
            continue
        aic = params["aic"]
        fits[model] = {"aic": aic, "noise_var": params["noise_var"] * scale**2}
        if np.isfinite(aic) and (best is None or aic < best_params["aic"]):
            best, best_params = model, params
    if best is None:
        raise ValueError(f"state-space fit: no model could be fitted on train={train}: {fits}")
    fit = StateSpaceFit(
        model=best,
        params=best_params,
        center=center,
        scale=scale,
        noise_var=float(best_params["noise_var"]) * scale**2,
        aic=float(best_params["aic"]),
        fits=fits,
    )
    _STATE_SPACE_FITS.put(key, fit)
    return fit


PHI_MIN = 0.05  # |φ| below this: an AR(1) target (y_{t+1} - m)/φ is too noisy to use


def future_target(fit: StateSpaceFit, y: np.ndarray) -> np.ndarray:
    """(T,) u_t = a_1 y_{t+1} + a_2 y_{t+2} (+ const) with E[u_t | s_≤t] = s_t under the
    fitted model, so u_t - s_t is made of innovations and observation noise AFTER row t:
    the paired gate's target (inference/gate.py). NaN where the rows it needs are missing
    (the last rows), or for an AR(1) fit with |φ| < PHI_MIN.

    kalman_level   s_{t+1} = s_t + η                          u_t = y_{t+1}
    kalman_ar1     s_{t+1} - m = φ (s_t - m) + η              u_t = m + (y_{t+1} - m)/φ
    kalman_ari1    Δs_{t+1} = φ Δs_t + η                       u_t = ((1+φ)/φ) y_{t+1} - y_{t+2}/φ
    """
    y = as_series(y)
    u = np.full(len(y), np.nan)
    phi = float(fit.params.get("ar.L1", 1.0))
    if fit.model == "kalman_level":
        u[:-1] = y[1:]
    elif fit.model == "kalman_ar1" and abs(phi) >= PHI_MIN:
        u[:-1] = fit.center + (y[1:] - fit.center) / phi
    elif fit.model == "kalman_ari1" and abs(phi) >= PHI_MIN:
        u[:-2] = (1 + phi) / phi * y[1:-1] - y[2:] / phi
    elif fit.model == "kalman_ari1":  # φ ~ 0: a random walk
        u[:-1] = y[1:]
    return u


def state_space_fits(raw: np.ndarray, train: tuple[int, int]) -> list[StateSpaceFit | None]:
    """Each column's ``fit_state_space`` (cached), None where no fit is possible (too short,
    constant): callers leave that column raw."""
    fits: list[StateSpaceFit | None] = []
    for j in range(raw.shape[1]):
        try:
            fits.append(fit_state_space(raw[:, j], train))
        except (ValueError, np.linalg.LinAlgError):
            fits.append(None)
    return fits


def future_targets(raw: np.ndarray, train: tuple[int, int]) -> np.ndarray:
    """(T, F) ``future_target`` of each column from its lowest-AIC fit on the train rows;
    NaN where no model could be fitted."""
    u = np.full(raw.shape, np.nan)
    for j, fit in enumerate(state_space_fits(raw, train)):
        if fit is not None:
            u[:, j] = future_target(fit, raw[:, j])
    return u


def memo_on_train(cache: LRU, fn: Callable, raw: np.ndarray, train: tuple[int, int]):
    """``fn(raw, train)`` for a fit that reads the train rows only, memoised on their exact
    bytes: leakage checks re-fit every decision on panels that differ only after them."""
    a, b = int(train[0]), int(train[1])
    key = (fn.__qualname__, a, b, raw.shape[1], digest(raw[a:b]))
    hit = cache.get(key)
    if hit is None:
        hit = fn(raw, (a, b))
        cache.put(key, hit)
    return hit


def kalman_filter(fit: StateSpaceFit, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Causal Kalman filter of ``fit``'s model on the whole series y (T,).

    Returns (signal, gain), both (T,) float64 and NaN where y is NaN:
    signal: the filtered signal estimate E[s_t | y_{<=t}] in native units.
    gain: the exact weight d signal_t / d y_t of the current observation,
        Z P_{t|t-1} Z' / F_t (= 1 - H / F_t); the same in native and standardised units.
    The filter starts at the first observed row (rows before it are NaN) with the exact
    diffuse start statsmodels fitted the model with, and missing rows inside are
    prediction steps, so signal[:t+1] and gain[:t+1] depend on y[:t+1] only. It is the
    one serving recursion (recursion.py): a series that extends one filtered before
    continues from the state held after its last row, bit-identical to a run over the
    whole series (read-only arrays are returned).
    """
    signal, gain = kalman_filters([fit], as_series(y)[:, None])
    signal.setflags(write=False)
    return signal[:, 0], gain[:, 0]


def kalman_filters(fits: list, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``kalman_filter`` of every column of raw (T, F) with a fit, in one pass of the
    recursion: (signal, gain), each (T, F), NaN where y is or the column has no fit."""
    signal, gain = np.full(raw.shape, np.nan), np.full(raw.shape, np.nan)
    ok = [j for j, f in enumerate(fits) if f is not None]
    if ok:
        fs = [fits[j] for j in ok]
        center = np.array([f.center for f in fs])
        scale = np.array([f.scale for f in fs])
        z = (np.asarray(raw[:, ok], dtype=np.float64) - center) / scale  # (T, B)
        f = _CARRIED(z, kalman_columns(fs), burn_in=0)
        signal[:, ok], gain[:, ok] = f.mean * scale + center, f.gain
    return signal, gain


class KalmanStream:
    """``kalman_filters`` of ``fits`` carried over new rows: built on a history (T, F),
    each call's rows (k, F) -> their (signal, gain), each (k, F), the bits
    ``kalman_filters`` gives them over the grown panel (one recursion, the same
    standardisation; recursion.Stepper)."""

    def __init__(self, fits: list, history: np.ndarray):
        self.ok = [j for j, f in enumerate(fits) if f is not None]
        fs = [fits[j] for j in self.ok]
        self.center = np.array([f.center for f in fs])
        self.scale = np.array([f.scale for f in fs])
        self.step = None
        if self.ok:
            self.step = Stepper(self._z(history), kalman_columns(fs), burn_in=0)

    def _z(self, raw: np.ndarray) -> np.ndarray:
        return (np.asarray(raw[:, self.ok], dtype=np.float64) - self.center) / self.scale

    def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        signal, gain = np.full(rows.shape, np.nan), np.full(rows.shape, np.nan)
        if self.step is not None:
            f = self.step(self._z(rows))
            signal[:, self.ok], gain[:, self.ok] = f.mean * self.scale + self.center, f.gain
        return signal, gain


# --- whiteness and the σ policy ---------------------------------------------------------


def _longest_observed_run(y: np.ndarray) -> np.ndarray:
    """The longest stretch of consecutive finite values of y (first one on ties)."""
    ok = np.concatenate([[False], np.isfinite(y), [False]])
    edges = np.flatnonzero(np.diff(ok.astype(np.int8)))  # starts, stops alternate
    if len(edges) == 0:
        return y[:0]
    starts, stops = edges[::2], edges[1::2]
    i = int(np.argmax(stops - starts))
    return y[starts[i] : stops[i]]


def _robust_portmanteau_p(x: np.ndarray, lags: int) -> float:
    """p-value of the heteroskedasticity-robust Box-Pierce test (Lobato 2001) at ``lags``.

    Q = sum_k rho_k^2 / v_k with v_k = sum_t d_t^2 d_{t-k}^2 / (sum_t d_t^2)^2 (d = x - mean),
    chi^2(lags) under any uncorrelated series with finite fourth moments, also when its
    variance clusters; for i.i.d. x, v_k ~ 1/n and Q is the plain Box-Pierce statistic.
    """
    from scipy.stats import chi2

    d = x - x.mean()  # (n,)
    d2 = d * d
    g0 = d2.sum()
    q = 0.0
    for k in range(1, lags + 1):  # a handful of lags: each term is vectorised over rows
        rho = (d[k:] * d[:-k]).sum() / g0
        v = (d2[k:] * d2[:-k]).sum() / g0**2
        q += rho * rho / v if v > 0 else 0.0
    return float(chi2.sf(q, lags))


def ljung_box_white(
    y_train: np.ndarray, *, lags: int = 10, alpha: float = 0.01, robust: bool = True
) -> tuple[bool, float]:
    """(is_white, p-value) of a portmanteau test of no autocorrelation up to ``lags``.

    y_train: the train rows (T,), NaN = missing. The test runs on the longest contiguous
    stretch of observed values: dropping NaN and closing the gaps would pair values that
    are further apart than their lag. is_white = p > alpha. A stretch shorter than
    max(MIN_TRAIN_OBS, 2 * lags) or constant cannot be tested: (False, NaN).

    robust=False: statsmodels' ``acorr_ljungbox``. It assumes i.i.d. values, so on a white
    series whose variance clusters (daily returns; the synthetic sv_returns family) it
    rejects far too often: 11 of the 13 sv_returns features of the default synthetic panel
    at alpha 0.01. robust=True (default): the heteroskedasticity-robust version of the
    same statistic (``_robust_portmanteau_p``), which calls all 13 white and still rejects
    every other planted family (benchmarks/noise_sigma.py).
    White y (a white signal plus white noise) means noise cannot be told from signal by
    any second-moment method.
    """
    x = _longest_observed_run(as_series(y_train))
    if len(x) < max(MIN_TRAIN_OBS, 2 * lags) or not np.ptp(x) > 0:
        return False, float("nan")
    if robust:
        p = _robust_portmanteau_p(x, int(lags))
    else:
        from statsmodels.stats.diagnostic import acorr_ljungbox

        p = float(np.asarray(acorr_ljungbox(x, lags=[int(lags)])["lb_pvalue"])[-1])
    return bool(p > alpha), p


SHORT_LAGS = (1, 2)  # the extra short-lag tests of ``whiteness``


def whiteness(y_train: np.ndarray, *, alpha: float = 0.01) -> tuple[bool, float]:
    """(is_white, p) of y's train rows: white only if the robust portmanteau test up to 10
    lags (``ljung_box_white``) AND the same test up to 1 and 2 lags (each at alpha / 2)
    all fail to reject. A weak AR(1) under heavy noise (ou_fast at noise x5-x10) spreads
    its autocorrelation thinly over 10 lags but shows at lag 1; white series whose
    variance clusters (sv_returns) stay white. Chosen on the train rows of seed-1 panels:
    ou_fast features called white 2 -> 1 (x5 mixed), 1 -> 0 (x5 outliers), 8 -> 6
    (x10 gaussian); sv_returns 13 of 13 white in every case. p: the smallest of the
    three, Bonferroni-adjusted."""
    white, p = ljung_box_white(y_train, alpha=alpha)
    if not np.isfinite(p):
        return white, p
    short = [ljung_box_white(y_train, lags=k)[1] for k in SHORT_LAGS]
    p_adj = min([p] + [min(1.0, len(SHORT_LAGS) * q) for q in short if np.isfinite(q)])
    return bool(p_adj > alpha), float(p_adj)


@dataclass(frozen=True)
class NoiseChoice:
    """The observation-noise σ of one feature and where it came from.

    sigma: native units, NaN if unknown. source: "moment", "state_space:<model>" or
    "none: <reason>". moment_sigma / state_space_sigma: both candidates (NaN if
    unavailable); state_space_model: the lowest-BIC model, whose σ that is ("" if none).
    white /
    ljung_box_p: ``ljung_box_white`` of the train rows (white: σ is not identified).
    """

    sigma: float
    source: str
    moment_sigma: float
    state_space_sigma: float
    state_space_model: str
    white: bool
    ljung_box_p: float


def _lowest_bic(fit: StateSpaceFit, n_obs: int) -> str:
    """The model of ``fit.fits`` with the lowest BIC = AIC + k (log n - 2)."""
    bic = {
        m: v["aic"] + N_PARAMS[m] * (np.log(n_obs) - 2)
        for m, v in fit.fits.items()
        if np.isfinite(v["aic"])
    }
    return min(bic, key=bic.get)


def noise_sigma(y: np.ndarray, train: tuple[int, int], *, tolerance: float = 2.0) -> NoiseChoice:
    """One noise σ for feature y (T,) from its train rows ``(start, stop)`` only.

    The moment σ (``estimate_noise``, method "auto") is used when it is not clipped and
    within a factor ``tolerance`` of the state-space σ and the state-space model is not
    the integrated AR(1) (a trend); otherwise the state-space σ; when no state-space fit
    is possible (e.g. fewer than MIN_TRAIN_OBS observed rows) an unclipped moment σ
    alone; else NaN.

    The state-space σ is that of the lowest-BIC model among ``fit_state_space``'s fits
    (the filters keep the lowest-AIC one). The AIC over-selects the integrated AR(1) on
    random walks: on random walk + Gaussian noise (2,000 rows) it picks it in 10 of 40
    seeds, with φ ≈ 0.3 and σ 1.15-1.25x the truth, where the moment σ is exact; on the
    seed-1 panels it won on 11 random-walk-like features by 0.2-7.1 (on trends by
    457-9,600), with σ up to 4.8x the truth (a jump_regime feature then lost 5.8 dB at
    the default noise). The BIC's penalty, log(n) per number, leaves those to the level
    model and keeps every trend.
    """
    if not tolerance >= 1.0:
        raise ValueError(f"tolerance={tolerance} must be >= 1")
    # Lazy: importing mamba_denoiser.diffusion runs its __init__, which imports torch;
    # this module must stay importable without it (evaluation, CPU-only tools).
    from mamba_denoiser.diffusion.noise import estimate_noise

    y = as_series(y)
    start, stop = int(train[0]), int(train[1])
    if not 0 <= start < stop <= len(y):
        raise ValueError(f"train={train} must satisfy 0 <= start < stop <= {len(y)}")
    part = y[start:stop]
    moment = estimate_noise(part)
    moment_ok = bool(np.isfinite(moment.sigma) and not moment.clipped)
    try:
        fit = fit_state_space(y, train)
        ss_model = _lowest_bic(fit, int(np.isfinite(part).sum()))
        ss_sigma, ss_why = float(np.sqrt(fit.fits[ss_model]["noise_var"])), ""
    except (ValueError, np.linalg.LinAlgError) as err:
        ss_sigma, ss_model, ss_why = float("nan"), "", str(err)
    white, p = whiteness(part)

    def choice(sigma: float, source: str) -> NoiseChoice:
        return NoiseChoice(float(sigma), source, float(moment.sigma), ss_sigma, ss_model, white, p)

    if np.isfinite(ss_sigma):
        agree = moment_ok and ss_sigma / tolerance <= moment.sigma <= ss_sigma * tolerance
        # On trends (the integrated model wins) the moment σ runs low (0.53-0.87 x the
        # truth on the built-in trends at noise x5) while the multi-start fit finds it.
        if agree and ss_model != "kalman_ari1":
            return choice(moment.sigma, "moment")
        return choice(ss_sigma, f"state_space:{ss_model}")
    if moment_ok:
        return choice(moment.sigma, "moment")
    why_moment = moment.reason or ("clipped" if moment.clipped else "not finite")
    return choice(float("nan"), f"none: moment {why_moment}; state space {ss_why}")
