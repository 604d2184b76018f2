"""One causal filter recursion for batch and live serving, with its state carried over.

Every classical filter the pipeline serves (the Kalman filter, the robust Gaussian-sum
filter, the residual predictive head's priors, the combiner's innovations) is this one
compiled recursion over a feature's 2-state form (``state_space_form``). Its
state after row t (the collapsed mean and covariance, the observation count, the
log-likelihood) is an explicit array, so a panel that grows by a row continues from the
state held after its last row: O(new rows) instead of O(T), and, being the same
operations in the same order, bit-identical to a batch run over the grown panel
(``Carried``; tests/test_recursion.py). docs/design.md, "Live serving".

Per row: the prediction N(m, P); each of four components, (noise core | outlier) x
(process core | jump), is a Kalman update weighted by its evidence; the four are
collapsed to one Gaussian by moment matching. With no outliers and no jumps it is the
Kalman filter exactly (one component of weight 1).

The start: the prior N(0, P0) at the first observed row, P0 stationary, or 1e6 on a
non-stationary direction: the approximately diffuse start statsmodels fits with. The
Kalman filter here and statsmodels' agree to 1.3e-7 of the series' sd on every fit of the
built-in panel (statsmodels writes the integrated AR(1) in other states, and freezes a
converged gain).
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numba
import numpy as np

# per-column state after a row: m0, m1 (the mean of (s_t, s_{t-1})), p00, p01, p11 (its
# covariance), started (0/1), observed rows seen, log-likelihood after the burn-in
STATE_SIZE = 8


DIFFUSE = 1e6  # the approximately diffuse start's variance (statsmodels' own value)


def state_space_form(fit) -> tuple[np.ndarray, float, np.ndarray]:
    """(F (2, 2), q, P0 (2, 2)) of a classical.StateSpaceFit in standardised units, state
    (s_t, s_{t-1}), Z = [1, 0]:

        kalman_level  F = [[1, 0], [0, 0]]            q = sigma2.level
        kalman_ar1    F = [[φ, 0], [0, 0]]            q = sigma2
        kalman_ari1   F = [[1 + φ, -φ], [1, 0]]       q = sigma2
    """
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


def kalman_columns(fits: list) -> Columns:
    """The Kalman filters of ``fits``: Gaussian noise, no jumps, the start statsmodels
    fitted them with (stationary, or approximately diffuse at 1e6)."""
    forms = [state_space_form(f) for f in fits]
    n = len(fits)
    return Columns(
        F=np.array([f[0] for f in forms]).reshape(n, 2, 2),
        q=np.array([f[1] for f in forms], dtype=np.float64),
        P0=np.array([f[2] for f in forms]).reshape(n, 2, 2),
        w_out=np.zeros(n),
        r_core=np.array([float(f.params["noise_var"]) for f in fits], dtype=np.float64),
        r_out=np.zeros(n),
        w_jump=np.zeros(n),
        q_jump=np.zeros(n),
    )


def initial_state(n_columns: int) -> np.ndarray:
    """(B, STATE_SIZE) the state before any row: nothing observed yet."""
    return np.zeros((n_columns, STATE_SIZE))


@numba.njit(cache=True)
def _recursion(z, F, q, P0, w_out, r_core, r_out, w_jump, q_jump, burn_in, score_from, row0, state):  # noqa: E501  # pragma: no cover
    """z (T, B) standardised rows row0 .. row0+T-1, NaN = missing; per column F (B, 2, 2),
    core process variance q (B,), P0 (B, 2, 2), outlier weight w_out (B,), core / outlier
    noise variances (B,), jump weight w_jump (B,), jump process variance q_jump (B,);
    ``state`` (B, STATE_SIZE) is updated in place.
    -> (filtered s_t, the core component's gain ∂s_t/∂z_t (the Kalman gain where the law
    is Gaussian), the one-step prediction's mean and its variance without / with a jump),
    each (T, B), NaN where z is NaN (the prediction: before the first observation)."""
    T, B = z.shape
    out = np.full((T, B), np.nan)
    gain = np.full((T, B), np.nan)
    prior_m = np.full((T, B), np.nan)
    prior_v = np.full((T, B), np.nan)
    prior_vj = np.full((T, B), np.nan)
    lw = np.empty(4)
    mc0, mc1 = np.empty(4), np.empty(4)
    c00, c01, c11 = np.empty(4), np.empty(4), np.empty(4)
    for b in range(B):
        m0, m1 = state[b, 0], state[b, 1]
        p00, p01, p11 = state[b, 2], state[b, 3], state[b, 4]
        started = state[b, 5] > 0
        seen = int(state[b, 6])
        loglik = state[b, 7]
        f00, f01, f10, f11 = F[b, 0, 0], F[b, 0, 1], F[b, 1, 0], F[b, 1, 1]
        for t in range(T):
            y = z[t, b]
            if not started:
                if np.isnan(y):
                    continue
                started = True
                mp0, mp1 = 0.0, 0.0
                a00, a01, a11 = P0[b, 0, 0], P0[b, 0, 1], P0[b, 1, 1]
                dq_c, dq_j = 0.0, 0.0  # the start: no process step yet
            else:
                mp0 = f00 * m0 + f01 * m1
                mp1 = f10 * m0 + f11 * m1
                # F P F' (the process variance is added per component below)
                b00 = f00 * p00 + f01 * p01
                b01 = f00 * p01 + f01 * p11
                b10 = f10 * p00 + f11 * p01
                b11 = f10 * p01 + f11 * p11
                a00 = b00 * f00 + b01 * f01
                a01 = b00 * f10 + b01 * f11
                a11 = b10 * f10 + b11 * f11
                dq_c, dq_j = q[b], q_jump[b]
            prior_m[t, b] = mp0
            prior_v[t, b], prior_vj[t, b] = a00 + dq_c, a00 + dq_j
            if np.isnan(y):
                m0, m1, p00, p01, p11 = mp0, mp1, a00 + dq_c, a01, a11
                if w_jump[b] > 0:  # a missing row: the prediction's own mixture, collapsed
                    p00 = a00 + (1 - w_jump[b]) * dq_c + w_jump[b] * dq_j
                continue
            e = y - mp0
            top = -np.inf
            for i in range(4):
                wa = w_out[b] if i % 2 == 1 else 1.0 - w_out[b]
                wb = w_jump[b] if i // 2 == 1 else 1.0 - w_jump[b]
                if wa <= 0 or wb <= 0:
                    lw[i] = -np.inf
                    continue
                pp00 = a00 + (dq_j if i // 2 == 1 else dq_c)
                s = pp00 + (r_out[b] if i % 2 == 1 else r_core[b])
                lw[i] = np.log(wa * wb) - 0.5 * (np.log(2 * np.pi * s) + e * e / s)
                k0, k1 = pp00 / s, a01 / s
                if i == 0:
                    gain[t, b] = k0
                mc0[i], mc1[i] = mp0 + k0 * e, mp1 + k1 * e
                c00[i] = pp00 - k0 * pp00
                c01[i] = a01 - k0 * a01
                c11[i] = a11 - k1 * a01
                top = max(top, lw[i])
            total = 0.0
            for i in range(4):
                total += np.exp(lw[i] - top)
            total = top + np.log(total)
            m0, m1 = 0.0, 0.0
            for i in range(4):
                if lw[i] > -np.inf:
                    pi = np.exp(lw[i] - total)
                    m0 += pi * mc0[i]
                    m1 += pi * mc1[i]
            p00, p01, p11 = 0.0, 0.0, 0.0
            for i in range(4):
                if lw[i] > -np.inf:
                    pi = np.exp(lw[i] - total)
                    d0, d1 = mc0[i] - m0, mc1[i] - m1
                    p00 += pi * (c00[i] + d0 * d0)
                    p01 += pi * (c01[i] + d0 * d1)
                    p11 += pi * (c11[i] + d1 * d1)
            out[t, b] = m0
            seen += 1
            if seen > burn_in and row0 + t >= score_from:
                loglik += total
        state[b, 0], state[b, 1] = m0, m1
        state[b, 2], state[b, 3], state[b, 4] = p00, p01, p11
        state[b, 5], state[b, 6], state[b, 7] = 1.0 if started else 0.0, seen, loglik
    return out, gain, prior_m, prior_v, prior_vj


@dataclass(frozen=True)
class Columns:
    """Per-column parameters of the recursion (robust.py builds them from fits and laws)."""

    F: np.ndarray  # (B, 2, 2) transition
    q: np.ndarray  # (B,) core process variance
    P0: np.ndarray  # (B, 2, 2) the start's covariance
    w_out: np.ndarray  # (B,) outlier weight ε
    r_core: np.ndarray  # (B,) core noise variance σ_c²
    r_out: np.ndarray  # (B,) outlier noise variance σ_o²
    w_jump: np.ndarray  # (B,) jump weight δ
    q_jump: np.ndarray  # (B,) jump process variance

    def key(self) -> str:
        """A digest of every parameter: the carried states of two Columns never mix."""
        parts = [np.asarray(v, dtype=np.float64).ravel() for v in vars(self).values()]
        return hashlib.sha1(np.concatenate(parts).tobytes()).hexdigest()


@dataclass(frozen=True)
class Filtered:
    """The recursion's outputs on rows 0 .. n-1 (each (n, B)) and its state after them."""

    mean: np.ndarray  # E[s_t | z_<=t]
    gain: np.ndarray  # the core component's gain (the Kalman gain for a Gaussian law)
    prior_mean: np.ndarray  # E[s_t | z_<t]
    prior_var: np.ndarray  # its variance without a jump at row t
    prior_var_jump: np.ndarray  # with a jump at row t
    loglik: np.ndarray  # (B,) after ``burn_in`` observed rows, rows >= score_from
    state: np.ndarray  # (B, STATE_SIZE)


def run(
    z: np.ndarray,
    cols: Columns,
    *,
    burn_in: int,
    score_from: int = 0,
    state: np.ndarray | None = None,
    row0: int = 0,
) -> Filtered:
    """The recursion over z (T, B) from ``state`` (None: the start), z's first row being
    row ``row0`` of the series (for ``score_from``). The caller's state is not changed."""
    st = initial_state(z.shape[1]) if state is None else np.array(state, dtype=np.float64)
    z = np.ascontiguousarray(z, dtype=np.float64)
    c = cols
    out, gain, m, v, vj = _recursion(
        z,
        c.F,
        c.q,
        c.P0,
        c.w_out,
        c.r_core,
        c.r_out,
        c.w_jump,
        c.q_jump,
        burn_in,
        score_from,
        row0,
        st,
    )
    return Filtered(out, gain, m, v, vj, st[:, 7].copy(), st)


class Stepper:
    """The recursion carried over new rows from the state after the rows seen: live
    serving's own copy (no memo, no look at the history), the same operations in the same
    order as one ``run`` over the grown series, so the same bits."""

    def __init__(self, z: np.ndarray, cols: Columns, *, burn_in: int):
        f = run(z, cols, burn_in=burn_in)
        self.cols, self.burn_in, self.state, self.n = cols, burn_in, f.state, z.shape[0]

    def __call__(self, z: np.ndarray) -> Filtered:
        """z (k, B) the next standardised rows -> their outputs; the state moves on."""
        f = run(z, self.cols, burn_in=self.burn_in, state=self.state, row0=self.n)
        self.state, self.n = f.state, self.n + z.shape[0]
        return f


_ALL: weakref.WeakSet = weakref.WeakSet()  # every memo of serving runs, for clear_all


def register(memo) -> None:
    """Add a memo of held serving runs (anything with ``clear()``) to those ``clear_all``
    forgets: the combiner's streams (combiner.py) live beside the filters' here."""
    _ALL.add(memo)


def clear_all() -> None:
    """Forget every held serving run (classical.clear_cache calls it)."""
    for memo in list(_ALL):
        memo.clear()


class Carried:
    """Serving runs of the recursion, memoised with their state: a call on a series that
    extends one seen before (bit for bit the same first n rows) runs only the new rows
    from the state held after row n-1, and the outputs grow in place (amortised buffers,
    read-only views returned). Any other series runs from the start. Live ``update``
    calls and batch runs thus share one recursion and give the same bits."""

    def __init__(self, max_bytes: int = 256 * 2**20):
        # bounded by memory, not count: an entry is (T, B) x 6 arrays, and leakage checks
        # that re-fit the decisions at each cut make new entries
        self.max_bytes, self._entries = max_bytes, OrderedDict()
        _ALL.add(self)

    def clear(self) -> None:
        self._entries.clear()

    def nbytes(self) -> int:
        return sum(b.nbytes() for b in self._entries.values())

    def __call__(self, z: np.ndarray, cols: Columns, *, burn_in: int) -> Filtered:
        key = (cols.key(), z.shape[1], burn_in)
        T = z.shape[0]
        held = self._entries.get(key)
        if held is not None:
            self._entries.move_to_end(key)
        if held is not None and held.n <= T and held.same_prefix(z):
            if held.n < T:
                new = run(z[held.n :], cols, burn_in=burn_in, state=held.state, row0=held.n)
                held.extend(z[held.n :], new)
        else:
            held = _Buffers(z, run(z, cols, burn_in=burn_in))
            self._entries[key] = held
        while len(self._entries) > 1 and self.nbytes() > self.max_bytes:
            self._entries.popitem(last=False)  # least recently used first
        return held.view()


_FIELDS = ("z", "mean", "gain", "prior_mean", "prior_var", "prior_var_jump")


class _Buffers:
    """A Filtered and its input z with room to grow: rows are appended without copying
    the history."""

    def __init__(self, z: np.ndarray, f: Filtered):
        self.n = z.shape[0]
        cap = max(self.n + self.n // 4, 16)
        self.arrays = {}
        for name in _FIELDS:
            v = z if name == "z" else getattr(f, name)
            a = np.empty((cap,) + v.shape[1:])
            a[: self.n] = v
            self.arrays[name] = a
        self.loglik, self.state = f.loglik, f.state

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def same_prefix(self, z: np.ndarray) -> bool:
        """z's first n rows are bit for bit those seen (NaN payloads and signed zeros
        included: the bytes, not the values, are compared)."""
        seen = self.arrays["z"][: self.n]
        head = np.ascontiguousarray(z[: self.n], dtype=np.float64)
        return bool(np.array_equal(seen.view(np.int64), head.view(np.int64)))

    def extend(self, z_new: np.ndarray, f: Filtered) -> None:
        k = z_new.shape[0]
        for name in _FIELDS:
            a = self.arrays[name]
            if self.n + k > a.shape[0]:  # grow: old views keep the old buffer alive
                bigger = np.empty((max(2 * a.shape[0], self.n + k),) + a.shape[1:])
                bigger[: self.n] = a[: self.n]
                self.arrays[name] = a = bigger
            a[self.n : self.n + k] = z_new if name == "z" else getattr(f, name)
        self.n += k
        self.loglik, self.state = f.loglik, f.state

    def view(self) -> Filtered:
        views = {}
        for name in _FIELDS[1:]:
            v = self.arrays[name][: self.n]
            v.flags.writeable = False
            views[name] = v
        return Filtered(**views, loglik=self.loglik, state=self.state)
