"""A multivariate linear filter: each feature's Kalman filter, corrected with the current
and recent innovations of every feature of its group.

A per-feature filter sees one series; where features share a factor, the other features'
rows say something about this one's signal. Shared factors show first in the innovations:
e_j,t = y_j,t - ŷ_j,t|t-1 (the part of today's observation its own Kalman filter did not
predict; stationary for every model, so no spurious level regressions). Per feature i:

    d_i,t = K_i,t + Σ_j γ_ij ẽ_j,t + Σ_h Σ_j γ_ij^h E_h[ẽ_j]_t-1,

ẽ_j = e_j / sd(e_j) (train rows), 0 where y_j is missing: a missing observation carries
no innovation, exactly as a Kalman filter skips the update of a missing row (no value is
filled in; K_j itself predicts through the gap); E_h[ẽ_j]_t-1 its exponentially weighted
sum over rows < t with half-life h in ``HALF_LIVES`` (the group's recent history: a slow
factor is read better from it; chosen on validation rows of another seed, factors x5:
ou_slow +0.70, random_walk +0.36, trend +0.37, ou_fast -0.02 dB over current innovations
alone).

K_i the causal Kalman filter of i's lowest-AIC state-space fit (classical.py). The γ_i
are fitted on the TRAIN rows without clean values, by ridge regression of the future
target u_i,t - K_i,t on ẽ_t (classical.future_target: u_i,t - s_i,t is made of noise and
innovations after t, independent of ẽ_t, so the regression estimates E[s_i,t - K_i,t | ẽ_t]
without bias), with the ridge penalty chosen by scikit-learn's efficient leave-one-out
(RidgeCV). γ = 0 is the per-feature Kalman filter. Linear in y: its divergence is exact,
∂d_i,t/∂y_i,t = g_i,t + γ_ii / sd(e_i) (the sums hold rows < t only), so SURE scores it
exactly under any white noise that is independent across features (the gate,
inference/gate.py).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from mamba_denoiser import recursion
from mamba_denoiser.classical import (
    LRU,
    StateSpaceFit,
    future_target,
    kalman_filters,
    memo_on_train,
    state_space_fits,
)
from mamba_denoiser.rows import Rows

ALPHAS = tuple(np.logspace(-1, 5, 13))  # ridge penalties tried (features standardised)
# Half-lives (rows) of the exponentially weighted sums of PAST innovations that join the
# current ones: a slow factor is read better from the group's recent history
HALF_LIVES = (2.0, 10.0, 40.0)
GAIN_MAX = 0.99  # a gain this close to 1 (almost no noise): no usable innovation
_FITTED = LRU(64)  # classical.memo_on_train


@dataclass
class Combiner:
    fits: list  # (F,) StateSpaceFit or None (that feature stays raw)
    gamma: np.ndarray  # (F, F·(1+H)): row i, feature i's weights on the design (_design)
    scale: np.ndarray  # (F,) sd of each feature's innovation on the train rows


def _kalman(raw: np.ndarray, fits: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(filtered K, gain g, innovation e), each (T, F) (``_innovation``)."""
    K, g = kalman_filters(fits, raw)
    return K, g, _innovation(raw, K, g)


def _innovation(y: np.ndarray, K: np.ndarray, g: np.ndarray) -> np.ndarray:
    """e = (y - K) / (1 - g) = y - ŷ_t|t-1 from the filtered K and gain g; NaN where y is
    missing, the feature has no fit, or the gain leaves no usable innovation."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(g < GAIN_MAX, (y - K) / (1 - g), np.nan)


def fit_combiner(raw: np.ndarray, train: tuple[int, int]) -> Combiner:
    """(T, F) raw values -> the fitted Combiner (train rows only; module docstring: the
    last two train rows serve only as future targets' inputs). Memoised on their bytes."""
    return memo_on_train(_FITTED, _fit_combiner, raw, train)


def _fit_combiner(raw: np.ndarray, train: tuple[int, int]) -> Combiner:
    from sklearn.linear_model import RidgeCV

    fits = state_space_fits(raw, train)
    K, _, e = _kalman(raw, fits)
    rows = slice(*train)
    seen = np.isfinite(e[rows])
    n = seen.sum(0)
    ez = np.where(seen, e[rows], 0.0)
    mean = ez.sum(0) / np.maximum(n, 1)
    var = (np.where(seen, ez - mean, 0.0) ** 2).sum(0) / np.maximum(n, 1)
    scale = np.where((n > 1) & (var > 0), np.sqrt(var), 1.0)  # no innovations: unused
    X = _design(e, scale)[rows]  # (n, F * (1 + len(HALF_LIVES)))
    F = raw.shape[1]
    gamma = np.zeros((F, X.shape[1]))
    for i, fit in enumerate(fits):
        if fit is None:
            continue
        u = future_target(fit, raw[: train[1], i])  # NaN where it needs rows >= train end
        target = (u - K[: train[1], i])[rows]
        ok = np.isfinite(target) & np.isfinite(e[rows, i])
        if ok.sum() < 10 * X.shape[1]:  # too few rows for the weights: Kalman alone
            continue
        model = RidgeCV(alphas=ALPHAS, fit_intercept=False).fit(X[ok], target[ok])
        gamma[i] = model.coef_
    return Combiner(fits, gamma, scale)


def apply_combiner(c: Combiner, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, F) raw -> (output, exact ∂out_t/∂y_t), both (T, F), causal; NaN where y is.

    Served through ``_SERVED``: a panel whose first n rows are bit for bit those of one
    served before continues from the state held after row n-1 (the Kalman filters', the
    exponentially weighted sums', the design rows of the open product block), so a new
    row costs O(1) rows of work beyond the Kalman filters' own carried recursion, and the
    same bits a run over the whole panel gives (tests/test_combiner.py). Read-only."""
    return _SERVED(c, raw)


def _extend(c: Combiner, raw: np.ndarray, held: _Stream | None) -> _Stream:
    """The stream of ``c`` over raw (T, F): ``held`` (its first ``held.n`` rows equal raw's)
    continued with the rows after it, or a new one from row 0."""
    s = _Stream(raw.shape[1], len(HALF_LIVES)) if held is None else held
    K, g = kalman_filters(c.fits, raw)  # carried: O(new rows) of recursion
    return _advance(c, s, raw[s.n :], K[s.n :], g[s.n :])


def _advance(c: Combiner, s: _Stream, y: np.ndarray, K: np.ndarray, g: np.ndarray) -> _Stream:
    """``s`` continued with new rows y (k, F), their Kalman outputs K and gains g. Every
    step is the batch computation of ``_design`` and ``rowwise_matmul`` cut at row s.n:
    elementwise work on the new rows, the sums continued from their held state
    (``lfilter``'s zi), and the product re-run on the blocks of ``ROW_BLOCK`` rows that
    hold a new row, in their batch shape."""
    n, F = s.n, y.shape[1]
    T = n + len(y)
    e = _innovation(y, K, g)
    s.design.append(_design_rows(e, c.scale, s.zi, s.last))
    b0 = n // ROW_BLOCK * ROW_BLOCK  # the first block holding a new row
    prod = rowwise_matmul(s.design.rows(b0, T), c.gamma.T)[n - b0 :]
    out = K + prod
    div = g + np.where(np.isfinite(e), np.diag(c.gamma[:, :F]) / c.scale, 0.0)
    out = np.where(np.isnan(y) | np.isnan(K), np.nan, out)
    s.raw.append(y)
    s.out.append(out)
    s.div.append(np.where(np.isnan(out), np.nan, div))
    s.n = T
    return s


class CombinerStream:
    """Live serving of ``c``: the stream over a history, then each call's new rows (k, F)
    -> their outputs (k, F), continued from the held state with no memo and no look at
    the history (its Kalman filters step on, classical.KalmanStream): the bits
    ``apply_combiner`` gives over the grown panel."""

    def __init__(self, c: Combiner, history: np.ndarray):
        from mamba_denoiser.classical import KalmanStream

        history = np.asarray(history, dtype=np.float64)
        self.c, self.kalman = c, KalmanStream(c.fits, history)
        self.s = _extend(c, history, None)

    def __call__(self, y: np.ndarray) -> np.ndarray:
        K, g = self.kalman(y)
        n = self.s.n
        _advance(self.c, self.s, np.asarray(y, dtype=np.float64), K, g)
        return self.s.out.rows(n, self.s.n)


ROW_BLOCK = 256


def rowwise_matmul(a: np.ndarray, b: np.ndarray, block: int = ROW_BLOCK) -> np.ndarray:
    """a @ b with every row's bits independent of how many rows ``a`` has: BLAS blocks a
    product by its shape, so row t of a (T, P) @ (P, F) product can change in the last bit
    when T changes (measured: 44 of 86 rows at T = 9000), which a live run that sees fewer
    rows than the backtest would show. Rows go through in blocks of ``block`` rows aligned
    at row 0, the last padded with zeros: every row is computed in the same shape at the
    same place."""
    T = a.shape[0]
    n = -(-T // block) * block
    pad = np.zeros((n, a.shape[1]), dtype=a.dtype)
    pad[:T] = a
    out = np.empty((n, b.shape[1]), dtype=np.result_type(a, b))
    for s in range(0, n, block):
        out[s : s + block] = pad[s : s + block] @ b
    return out[:T]


def _design(e: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(T, F) innovations -> (T, F * (1 + len(HALF_LIVES))): the standardised current ones
    (0 where missing), then per half-life their exponentially weighted sum over rows < t."""
    F = e.shape[1]
    zi = [np.zeros((1, F)) for _ in HALF_LIVES]
    return _design_rows(e, scale, zi, [np.zeros(F) for _ in HALF_LIVES])


def _design_rows(e: np.ndarray, scale: np.ndarray, zi: list, last: list) -> np.ndarray:
    """``_design``'s rows for innovations e (k, F) that follow the rows whose sums left
    ``lfilter``'s state ``zi`` and the sums through the last row ``last`` (per half-life;
    both updated in place): a batch over the whole panel and a live run row by row are
    the same operations."""
    from scipy.signal import lfilter

    cur = np.nan_to_num(e / scale)  # missing row: no innovation (module docstring)
    cols = [cur]
    for i, h in enumerate(HALF_LIVES):
        a = 0.5 ** (1.0 / h)
        past, zi[i] = lfilter([1.0 - a], [1.0, -a], cur, axis=0, zi=zi[i])  # through row t
        cols.append(np.vstack([last[i][None], past[:-1]]))  # through t - 1
        last[i] = past[-1]
    return np.hstack(cols)


def to_record(c: Combiner, fit_record) -> dict:
    return {
        "fits": [fit_record(f) for f in c.fits],
        "gamma": c.gamma.tolist(),
        "scale": c.scale.tolist(),
    }


def from_record(d: dict) -> Combiner:
    fits = [None if f is None else StateSpaceFit(**f, fits={}) for f in d["fits"]]
    return Combiner(fits, np.asarray(d["gamma"], float), np.asarray(d["scale"], float))


class _Stream:
    """One combiner served over a growing panel: its input rows, design rows and outputs
    so far, and the state of each exponentially weighted sum after the last row."""

    def __init__(self, F: int, H: int):
        self.n = 0
        self.raw, self.design = Rows(F), Rows(F * (1 + H))
        self.out, self.div = Rows(F), Rows(F)
        self.zi = [np.zeros((1, F)) for _ in range(H)]  # lfilter's state after the last row
        self.last = [np.zeros(F) for _ in range(H)]  # each sum through the last row

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in (self.raw, self.design, self.out, self.div))

    def same_prefix(self, raw: np.ndarray) -> bool:
        """raw's first n rows are bit for bit the rows served (NaN payloads included)."""
        if len(raw) < self.n:
            return False
        seen = self.raw.view(read_only=True)
        head = np.ascontiguousarray(raw[: self.n], dtype=np.float64)
        return bool(np.array_equal(seen.view(np.int64), head.view(np.int64)))


class _Served:
    """``apply_combiner``'s memo: per combiner (a digest of its fits and weights) the
    stream of the panel served last, bounded by memory (least recently used first)."""

    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes, self._entries = max_bytes, OrderedDict()
        recursion.register(self)

    def clear(self) -> None:
        self._entries.clear()

    def __call__(self, c: Combiner, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raw = np.asarray(raw, dtype=np.float64)
        key = (_key(c), raw.shape[1])
        held = self._entries.pop(key, None)
        if held is not None and not held.same_prefix(raw):
            held = None
        s = held if held is not None and held.n == len(raw) else _extend(c, raw, held)
        self._entries[key] = s
        while len(self._entries) > 1 and sum(v.nbytes for v in self._entries.values()) > (
            self.max_bytes
        ):
            self._entries.popitem(last=False)
        return s.out.view(read_only=True), s.div.view(read_only=True)


def _key(c: Combiner) -> str:
    """A digest of everything ``apply_combiner`` reads from ``c`` (fits, weights, scale)."""
    parts = [np.asarray(c.gamma, np.float64).ravel(), np.asarray(c.scale, np.float64).ravel()]
    for f in c.fits:
        if f is None:
            parts.append(np.array([np.nan]))
            continue
        vals = [f.center, f.scale, f.noise_var, *(float(v) for v in f.params.values())]
        parts.append(np.array(vals, np.float64))
        parts.append(np.frombuffer((f.model + ";".join(f.params)).encode(), np.uint8).astype(float))
    return hashlib.sha1(np.concatenate(parts).tobytes()).hexdigest()


_SERVED = _Served()
