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
in one pass). Output and weights depend on y_t: nonlinear. Its divergence is exact
(``measurement_update``), so where the fitted law is Gaussian the gate scores it by SURE
(Stein's lemma holds for any denoiser under Gaussian noise), and elsewhere by the paired
future-target risk (inference/gate.py).

The filter is the one serving recursion of recursion.py (every model in one 2-state
form, compiled with numba: a Python loop over 9,000 rows x 85 features would take
seconds, compiled it takes milliseconds, ``benchmarks/robust.py``); a panel that grows
continues from the state held after its last row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mamba_denoiser import recursion
from mamba_denoiser.classical import LRU, StateSpaceFit, memo_on_train, state_space_fits
from mamba_denoiser.recursion import state_space_form

# (ε, k) candidates; (0, 1) is the Gaussian law (the Kalman filter)
EPS = (0.01, 0.02, 0.05, 0.1)
RATIO = (3.0, 5.0, 10.0, 20.0)
GRID = ((0.0, 1.0),) + tuple((e, k) for e in EPS for k in RATIO)
# (δ, k_j) jumps in the signal: a row's process innovation k_j times the core's sd
JUMP_GRID = tuple((d, k) for d in EPS for k in RATIO)
BURN_IN = 20  # rows after the first observation left out of the likelihood (diffuse start)
_FITTED = LRU(64)  # fit_robust, memoised on the train rows (classical.memo_on_train)
# the serving runs with their states: the robust candidate and the residual head's priors
# read one run, and a grown panel continues from its last row (recursion.Carried)
_SERVED = recursion.Carried()


@dataclass(frozen=True)
class NoiseLaw:
    """Outliers in the noise (ε, k) and jumps in the signal (δ, k_j); (0, 1, 0, 1) is the
    Gaussian model, the Kalman filter. Each splits its Gaussian fit's variance."""

    eps: float  # outlier weight ε
    ratio: float  # k = σ_o / σ_c
    jump: float = 0.0  # jump weight δ: a row's process innovation is k_j times wider
    jump_ratio: float = 1.0  # k_j

    def variances(self, h: float) -> tuple[float, float]:
        """(σ_c², σ_o²) for a total measurement-noise variance h."""
        core = h / ((1 - self.eps) + self.eps * self.ratio**2)
        return core, core * self.ratio**2

    def process(self, q: float) -> tuple[float, float]:
        """(q_c, q_j) core and jump process variances for a total process variance q."""
        core = q / ((1 - self.jump) + self.jump * self.jump_ratio**2)
        return core, core * self.jump_ratio**2


def _columns(fits: list[StateSpaceFit], laws: list[NoiseLaw]) -> recursion.Columns:
    """The recursion's per-column parameters for (fit, law) pairs."""
    forms = [state_space_form(f) for f in fits]
    q = np.array([f[1] for f in forms])
    h = np.array([f.params["noise_var"] for f in fits])
    var = np.array([law.variances(hi) for law, hi in zip(laws, h)])
    proc = np.array([law.process(qi) for law, qi in zip(laws, q)])
    return recursion.Columns(
        F=np.array([f[0] for f in forms]),
        q=proc[:, 0],
        P0=np.array([f[2] for f in forms]),
        w_out=np.array([law.eps for law in laws], dtype=np.float64),
        r_core=var[:, 0],
        r_out=var[:, 1],
        w_jump=np.array([law.jump for law in laws], dtype=np.float64),
        q_jump=proc[:, 1],
    )


def _standardise(y: np.ndarray, fits: list[StateSpaceFit]) -> np.ndarray:
    center = np.array([f.center for f in fits])
    scale = np.array([f.scale for f in fits])
    return (np.asarray(y, dtype=np.float64) - center) / scale


HOLD_OUT = 0.3  # share of the train rows that chooses between the laws' families


def fit_noise_laws(y: np.ndarray, fits: list[StateSpaceFit], train: tuple[int, int]):
    """(T, F) raw values and each column's state-space fit -> each column's NoiseLaw.

    Four families: the Gaussian law, outliers in the noise (``GRID``), jumps in the signal
    (``JUMP_GRID``) and both; within a family, the grid point of highest likelihood on
    the train rows (AIC penalty of 2 per fitted number). Heavy-tailed innovations alone do
    not tell an outlier (the next row is back) from a jump (the level stays), and the
    likelihood of y is not the error of the signal estimate: measured on trends with
    jumps, outliers + jumps win the likelihood, in and out of sample, and lose 2.1 dB of
    signal MSE against jumps alone. So the family is chosen by what the filter is for, the
    error of its estimate, scored without clean values by the paired future-target risk
    (classical.future_target, as the gate does): mean (d_t − u_t)² over the last 30 % of
    the train rows, each family's point fitted on the first 70 %. The chosen family's
    point is then refitted on all train rows."""
    from mamba_denoiser.classical import future_target

    a, b = int(train[0]), int(train[1])
    cut = b - int(round(HOLD_OUT * (b - a)))
    fams = _family_fits(y, fits, (a, cut))  # (F,) lists of 4 laws
    n_fam = len(fams[0])
    z = np.ascontiguousarray(np.repeat(_standardise(y[a:b], fits), n_fam, axis=1))
    cols = _columns([f for f in fits for _ in range(n_fam)], [g for gs in fams for g in gs])
    d = recursion.run(z, cols, burn_in=BURN_IN).mean  # (n, F * 4) standardised estimates
    choice = []
    for f, fit in enumerate(fits):
        # the target of the train rows only (NaN where it needs rows >= train end): the
        # choice is memoised on the train rows' bytes and must read nothing else
        u = (future_target(fit, y[a:b, f]) - fit.center) / fit.scale  # standardised
        est = d[cut - a :, f * n_fam : (f + 1) * n_fam]  # (m, 4)
        ok = np.isfinite(u[cut - a :]) & np.isfinite(est).all(1)
        choice.append(_simplest_adequate((est[ok] - u[cut - a :][ok, None]) ** 2))
    final = _family_fits(y, fits, (a, b))
    return [final[f][c] for f, c in enumerate(choice)]


RISK_BLOCK = 50  # rows per block of the batch-means standard error


def _simplest_adequate(loss: np.ndarray) -> int:
    """(m, G) per-row losses of G families ordered simplest first -> the first family not
    worse than the lowest-risk one by more than 2 standard errors of their paired mean
    difference (batch means over RISK_BLOCK-row blocks): a family is only as complex as
    the data show it must be (the held-out risk alone is noisy: measured, outliers +
    jumps chosen on pure-outlier series)."""
    m = loss.shape[0]
    n_blocks = m // RISK_BLOCK
    if n_blocks < 4:
        return 0
    blocks = loss[: n_blocks * RISK_BLOCK].reshape(n_blocks, RISK_BLOCK, -1).mean(1)
    best = int(np.argmin(blocks.mean(0)))
    for g in range(loss.shape[1]):
        diff = blocks[:, g] - blocks[:, best]
        if diff.mean() <= 2 * diff.std(ddof=1) / np.sqrt(n_blocks):
            return g
    return best


def _family_fits(y, fits, rows) -> list[list[NoiseLaw]]:
    """Per column, the best law of each family on ``rows``: [Gaussian, outliers, jumps,
    both (the best outlier and jump points together)]."""
    gauss = NoiseLaw(0.0, 1.0)
    add = [NoiseLaw(*g) for g in GRID[1:]]
    jumps = [NoiseLaw(0.0, 1.0, d, k) for d, k in JUMP_GRID]
    score = _scores(y, fits, rows, [add + jumps] * len(fits))
    out = []
    for f in range(len(fits)):
        best_a = add[int(np.argmax(score[f, : len(add)]))]
        best_j = jumps[int(np.argmax(score[f, len(add) :]))]
        both = NoiseLaw(best_a.eps, best_a.ratio, best_j.jump, best_j.jump_ratio)
        out.append([gauss, best_a, best_j, both])
    return out


def _scores(y, fits, train, laws_per_fit: list[list[NoiseLaw]], score_from=0) -> np.ndarray:
    """(F, G) log-likelihood of rows ``train[0] + score_from`` .. ``train[1]`` minus 2 per
    fitted number, every column and law in one compiled pass (feature-major)."""
    z = _standardise(y[train[0] : train[1]], fits)  # (n, F)
    n_g = len(laws_per_fit[0])
    cols = _columns([f for f in fits for _ in range(n_g)], [g for gs in laws_per_fit for g in gs])
    zz = np.ascontiguousarray(np.repeat(z, n_g, axis=1))  # (n, F * G)
    loglik = recursion.run(zz, cols, burn_in=BURN_IN, score_from=score_from).loglik
    n_par = np.array([2 * (g.eps > 0) + 2 * (g.jump > 0) for gs in laws_per_fit for g in gs])
    score = np.where(np.isfinite(loglik), loglik - n_par, -np.inf)
    return score.reshape(len(fits), n_g)


def robust_filter(y: np.ndarray, fits: list[StateSpaceFit], laws: list[NoiseLaw]) -> np.ndarray:
    """(T, F) raw values -> (T, F) the causal Gaussian-sum filter's estimate of the signal,
    native units; NaN where y is NaN."""
    out = _served(y, fits, _columns(fits, laws)).mean
    return out * np.array([f.scale for f in fits]) + np.array([f.center for f in fits])


def _served(y: np.ndarray, fits: list[StateSpaceFit], cols: recursion.Columns):
    """The serving run (recursion.Filtered, standardised units) of (T, F) raw values, held
    with its state: the robust candidate and the residual head's priors share it, and a
    panel grown by some rows runs only those rows."""
    return _SERVED(_standardise(y, fits), cols, burn_in=BURN_IN)


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


def apply_robust_div(raw: np.ndarray, fits: list, laws: list) -> tuple[np.ndarray, np.ndarray]:
    """(T, F) -> (``apply_robust``'s output, its exact divergence ∂out_t/∂y_t), each (T, F)."""
    pri = filter_priors(raw, fits, laws)
    return pri.filtered, measurement_update(raw, pri)[1]


def gaussian_noise(laws: list) -> np.ndarray:
    """(F,) bool: the fitted noise law has no outlier component (jumps, in the signal, may
    remain). Where it is Gaussian, Stein's lemma holds for any denoiser and SURE scores
    nonlinear ones too (inference/gate.py)."""
    return np.array([law is not None and law.eps == 0 for law in laws], dtype=bool)


class RobustStream:
    """The robust filter of (fits, laws) carried over new rows: built on a history (T, F),
    each call's rows (k, F) -> ``Priors``-shaped arrays of those rows (filtered, mean, var,
    var_jump; native units, NaN where a column has no fit), the bits ``apply_robust`` and
    ``filter_priors`` give them over the grown panel (recursion.Stepper)."""

    def __init__(self, fits: list, laws: list, history: np.ndarray):
        self.ok = [j for j, f in enumerate(fits) if f is not None]
        self.fits = [fits[j] for j in self.ok]
        self.scale = np.array([f.scale for f in self.fits])
        self.center = np.array([f.center for f in self.fits])
        self.step = None
        if self.ok:
            cols = _columns(self.fits, [laws[j] for j in self.ok])
            z = _standardise(history[:, self.ok], self.fits)
            self.step = recursion.Stepper(z, cols, burn_in=BURN_IN)

    def __call__(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        out = {k: np.full(rows.shape, np.nan) for k in ("filtered", "mean", "var", "var_jump")}
        if self.step is not None:
            f = self.step(_standardise(rows[:, self.ok], self.fits))
            sc, c = self.scale, self.center
            out["mean"][:, self.ok], out["filtered"][:, self.ok] = (
                f.prior_mean * sc + c,
                f.mean * sc + c,
            )
            out["var"][:, self.ok] = f.prior_var * sc**2
            out["var_jump"][:, self.ok] = f.prior_var_jump * sc**2
        return out


@dataclass(frozen=True)
class Priors:
    """The robust filter's one-step predictions, native units (NaN where a column has no
    fit, and before its first observation): the start of the residual predictive head
    (diffusion/residual.py), which then uses the same laws, so that untrained it gives
    exactly the filter's output. The prediction is N(mean, var) without a jump and
    N(mean, var_jump) with one, weights (1 − δ, δ)."""

    mean: np.ndarray  # (T, F) E[s_t | y_<t] (the filter's collapsed state, predicted)
    var: np.ndarray  # (T, F) its variance without a jump at row t
    var_jump: np.ndarray  # (T, F) with a jump at row t
    jump: np.ndarray  # (F,) jump weight δ
    noise_var: np.ndarray  # (F, 2) core and outlier noise variances σ_c², σ_o²
    eps: np.ndarray  # (F,) outlier weight ε (0: Gaussian noise, the Kalman filter)
    filtered: np.ndarray  # (T, F) the filter's own output, E[s_t | y_<=t]

    @property
    def noise_weights(self) -> np.ndarray:
        """(F, 2) the noise components' weights (1 − ε, ε), as noise_var is ordered."""
        return np.stack([1 - self.eps, self.eps], axis=-1)

    @property
    def jump_weights(self) -> np.ndarray:
        """(F, 2) the prediction's weights without / with a jump (1 − δ, δ)."""
        return np.stack([1 - self.jump, self.jump], axis=-1)


def measurement_update(y: np.ndarray, pri: Priors) -> tuple[np.ndarray, np.ndarray]:
    """(T, F) observations and the filter's priors of them -> (ŝ, ∂ŝ_t/∂y_t), each (T, F):
    the Gaussian-sum measurement update in closed form. Per pair of prior component c (no
    jump, jump) and noise component j (core, outlier) a scalar Kalman step, weighted by its
    evidence,

        S = v_c + σ_j²,  g = v_c / S,  m = μ + g (y − μ),  w ∝ π_c ε_j N(y; μ, S),
        ŝ = Σ w m,  ∂ŝ/∂y = Σ w g + Σ w (d − d̄)(m − ŝ),  d = −(y − μ)/S,

    which is what the recursion's update gives for ŝ (its state's signal component has
    prior N(μ, v_c)), and its exact divergence, for SURE. NaN where y or the prior is.
    The same formulas as diffusion/residual.posterior with one prior group, in numpy:
    this module stays free of torch."""
    v = np.stack([pri.var, pri.var_jump], -1)[..., None]  # (T, F, 2, 1)
    pc = np.stack([1 - pri.jump, pri.jump], -1)[None, :, :, None]  # (1, F, 2, 1)
    pj = pri.noise_weights[None, :, None, :]  # (1, F, 1, 2)
    S = v + pri.noise_var[None, :, None, :]  # (T, F, 2, 2)
    r = (y - pri.mean)[..., None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_w = np.log(pc) + np.log(pj) - 0.5 * (np.log(S) + r**2 / S)
        log_w = log_w - np.max(log_w, axis=(-2, -1), keepdims=True)
        w = np.exp(log_w)
        w = w / w.sum((-2, -1), keepdims=True)
        g = v / S
        m = pri.mean[..., None, None] + g * r
        s_hat = (w * m).sum((-2, -1))
        d = -r / S
        d_bar = (w * d).sum((-2, -1), keepdims=True)
        div = (w * g).sum((-2, -1)) + (w * (d - d_bar) * (m - s_hat[..., None, None])).sum((-2, -1))
    return s_hat, div


def filter_priors(raw: np.ndarray, fits: list, laws: list) -> Priors:
    """(T, F) raw values and each column's (fit, law) from ``fit_robust`` -> ``Priors``."""
    T, n_f = raw.shape
    mean, var, var_j, filt = (np.full((T, n_f), np.nan) for _ in range(4))
    noise_var, eps, jump = np.full((n_f, 2), np.nan), np.full(n_f, np.nan), np.full(n_f, np.nan)
    ok = [j for j, f in enumerate(fits) if f is not None]
    if ok:
        fs, ls = [fits[j] for j in ok], [laws[j] for j in ok]
        cols = _columns(fs, ls)
        f = _served(raw[:, ok], fs, cols)
        out, m, v, vj = f.mean, f.prior_mean, f.prior_var, f.prior_var_jump
        scale = np.array([f.scale for f in fs])
        center = np.array([f.center for f in fs])
        mean[:, ok], filt[:, ok] = m * scale + center, out * scale + center
        var[:, ok], var_j[:, ok] = v * scale**2, vj * scale**2
        noise_var[ok, 0], noise_var[ok, 1] = cols.r_core * scale**2, cols.r_out * scale**2
        eps[ok], jump[ok] = cols.w_out, cols.w_jump
    return Priors(
        mean=mean, var=var, var_jump=var_j, jump=jump, noise_var=noise_var, eps=eps, filtered=filt
    )
