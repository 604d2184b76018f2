"""Seeded synthetic panel in the Kaggle schema, with known clean signals and processes.

The default data of the project (docs/design.md "Purpose"): it lets every stage be run,
tested and scored against ground truth without downloading anything.

Schema (``SyntheticPanel.frame``): ``date_id`` (0..n-1), the 94 features D1..D9, E1..E20,
I1..I9, M1..M18, P1..P13, S1..S12, V1..V13 in that order, then the 3 targets.

Planted processes (clean signal, before scale/offset; ``e`` i.i.d. N(0, 1)):

=================  ============================================  ===============  ============
process            clean dynamics                                expected type    features
=================  ============================================  ===============  ============
ou_fast            AR(1), phi in [0.3, 0.6] (half-life < 1.4)    mean_reverting   M8-M13, S1-S6
ou_slow            AR(1), phi in [0.90, 0.97] (half-life 7-23)   mean_reverting   E8-E13, I6-I9,
                                                                                  P11-P13
trend              integrated AR(1): x = cumsum(v + drift),      trending         E1-E7, P1-P5
                   v AR(1) with phi in [0.90, 0.96] (momentum)
random_walk        cumsum(e)                                     random_walk      E14-E20, I1-I5
jump_regime        cumsum(sigma_t e + J_t): sigma_t switches     random_walk      M14-M18,
                   between 1 and 3 (Markov, mean stay 150-400                     P6-P10
                   rows); compound-Poisson jumps J_t (rate
                   0.4-1 %, size N(0, 8^2))
sv_returns         exp(h_t) e_t, h AR(1) phi in [0.97, 0.99],    mean_reverting   M1-M7, S7-S9,
                   std(h) in [0.6, 0.8] (stochastic-volatility                    V11-V13
                   returns: white-noise level, clustered vol)
vol_positive       1 + exp(h_t), h AR(1) phi in [0.95, 0.98]     mean_reverting   V1-V10,
                   with right-skewed shocks (3 % exponential                      S10-S12
                   bursts), std(h) in [0.4, 0.6] (VIX-like:
                   positive, spikes up, decays slowly)
dummy              Markov chain on {0, 1} (D1-D6) or             (not clustered)  D1-D9
                   {-1, 0, 1} (D7-D9), mean stay 5-200 rows
=================  ============================================  ===============  ============

That is 85 continuous features in 7 process families (the natural K = 7) plus 9 dummies.
Families deliberately cut across the letter families, as real panels mix dynamics.

Observation noise (continuous features only): ``frame = clean + noise``. ``noise_std`` is
the standard deviation of the distribution the noise was drawn from, in the feature's
native units (the sample std of the drawn noise agrees within sampling error). It is
a ratio ``r`` of a reference scale: the stationary std of the clean level for the
stationary families, the std of the clean one-step changes for trend / random_walk /
jump_regime (whose level has no finite std). Ratios are drawn per feature from a
family-specific range (``_NOISE_RATIO``: 0.05-0.5, lower for the slow families, whose
one-step changes are small next to their level and would otherwise be pure noise). About
a third of the features get Student-t noise (4, 5 or 6 degrees of freedom) rescaled to the
same std (t scale = noise_std * sqrt((df - 2) / df)); the rest Gaussian. vol_positive
keeps Gaussian noise (at most 0.15 of its std, its floor is 1) so the observed series
stays positive.

Noise level knob (``make_synthetic_panel(..., noise_scale=, noise_dist=)``, config
``data.noise_scale`` / ``data.noise_dist``): ``noise_scale`` multiplies every feature's
ratio ``r`` (1.0 = the panel above; 3 puts random walks and trends under noise of
0.45-1.5 times their daily move, 10 under 1.5-5 times). ``noise_dist`` chooses the noise
distribution: ``"mixed"`` (the default described above), ``"gaussian"`` or ``"student_t"``
(every continuous feature, vol_positive included, df drawn from 4, 5, 6). The clean
signals, ratios, units, offsets and start rows do not depend on either knob (the
non-default distributions draw their noise from a separate stream), so panels that differ
only in noise have the same clean panel; the default knobs reproduce the default panel
bit for bit. vol_positive stays positive only at modest noise (the default does).

Two non-Gaussian scenarios, where a learned filter can beat a Kalman filter (docs/design.md
"Built-in data"), are values of the same knob:

- ``"outliers"``: observation outliers. Gaussian noise, and 5 % of cells carry an extra
  +-10 times the Gaussian core's sd (the sum rescaled so ``noise_std`` is still the
  distribution's std: the core sd is noise_std / sqrt(6)). Clean signals as for "gaussian".
- ``"factors"``: shared factors. Gaussian noise as for "gaussian", and the ou_fast,
  ou_slow, random_walk and trend families each get one latent factor of the family's
  dynamics; each feature takes a share c ~ U(0.6, 0.9) of its variance from it (of its
  level for ou_*, of its moves for random_walk and trend), with a random sign. A
  per-feature filter cannot use the other features' rows; a filter of the whole group
  can. Drawn from a fourth stream (per family, and per feature for c and the sign).
- ``"jumps"``: jumps in the signal. Gaussian noise as for "gaussian", and the clean
  ou_fast, ou_slow, random_walk and trend signals get extra innovations at 2 % of rows,
  of 5-10 noise sds with a random sign (an OU jump then decays at the feature's phi, a
  random-walk or trend jump persists). Drawn from a third stream; other families and every
  other draw are as for "gaussian". The clean panel differs from the other settings here.

Every feature is then put in its own units: ``scale * (clean + noise) + offset`` with the
scale log-uniform in [1e-2, 1e3] (positive series get no offset), so raw units differ by
orders of magnitude and cannot drive the clustering.

Missing history: each continuous feature starts at its own row (about 30 % at row 0, most
within the first 35 % of rows, about 10 % up to half the rows in); before that it is NaN,
after it fully observed (no interior gaps). Dummies and targets are complete.

Targets: ``forward_returns`` = small linear combination of four standardised clean
signals observed at the same row (known at the close of that date, so they predict the
*next* return) + large Student-t noise (R^2 ~ 1 %); ``risk_free_rate`` a slow positive
series ~1e-4; ``market_forward_excess_returns`` = forward_returns - risk_free_rate.

Everything is drawn from ``numpy.random.default_rng((seed, i))`` per column i, so a column
depends only on (seed, its index) and the panel is bit-identical for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from mamba_denoiser.vocabulary import ID_COL

FEATURE_FAMILIES: dict[str, int] = {"D": 9, "E": 20, "I": 9, "M": 18, "P": 13, "S": 12, "V": 13}

EXPECTED_TYPE: dict[str, str] = {
    "ou_fast": "mean_reverting",
    "ou_slow": "mean_reverting",
    "trend": "trending",
    "random_walk": "random_walk",
    "jump_regime": "random_walk",
    "sv_returns": "mean_reverting",
    "vol_positive": "mean_reverting",
}

# Feature -> planted process: (letter, first, last, process), ranges inclusive.
_ASSIGNMENT: tuple[tuple[str, int, int, str], ...] = (
    ("D", 1, 9, "dummy"),
    ("E", 1, 7, "trend"),
    ("E", 8, 13, "ou_slow"),
    ("E", 14, 20, "random_walk"),
    ("I", 1, 5, "random_walk"),
    ("I", 6, 9, "ou_slow"),
    ("M", 1, 7, "sv_returns"),
    ("M", 8, 13, "ou_fast"),
    ("M", 14, 18, "jump_regime"),
    ("P", 1, 5, "trend"),
    ("P", 6, 10, "jump_regime"),
    ("P", 11, 13, "ou_slow"),
    ("S", 1, 6, "ou_fast"),
    ("S", 7, 9, "sv_returns"),
    ("S", 10, 12, "vol_positive"),
    ("V", 1, 10, "vol_positive"),
    ("V", 11, 13, "sv_returns"),
)

# Noise ratio range r (see module docstring for the reference scale of each family).
_NOISE_RATIO: dict[str, tuple[float, float]] = {
    "ou_fast": (0.2, 0.5),
    "ou_slow": (0.1, 0.3),
    "trend": (0.15, 0.45),
    "random_walk": (0.15, 0.5),
    "jump_regime": (0.15, 0.5),
    "sv_returns": (0.15, 0.4),
    "vol_positive": (0.05, 0.15),
}
_HEAVY_TAIL_PROB = 0.35
_POSITIVE = {"vol_positive"}
_VOL_BURST = (0.03, 2.0)  # vol_positive: probability and mean size of upward bursts
# Clean signals the forward return loads on (all start at row 0) and their weights.
_RETURN_DRIVERS = {"M8": 1.0, "S1": -0.8, "E8": 0.6, "V1": -0.7}


GENERATOR_VERSION = 1  # bump when the generator's output changes: cached CSVs are remade
NOISE_DISTS: tuple[str, ...] = (
    "mixed",
    "gaussian",
    "student_t",
    "outliers",
    "jumps",
    "factors",
)
_STUDENT_DF = (4, 5, 6)
# noise_dist="outliers": this share of cells carries an extra +-_OUTLIER_SIZE x the Gaussian
# core's sd (the sum rescaled to unit variance, so noise_std keeps its meaning).
_OUTLIER_PROB, _OUTLIER_SIZE = 0.05, 10.0
# noise_dist="jumps": jump rate per row and size range (in noise sds, random sign) of the
# jumps added to the innovations of these families (a jump in an OU level then decays).
_JUMP_RATE, _JUMP_SIZE = 0.02, (5.0, 10.0)
# noise_dist="factors": one latent factor per family, of the family's dynamics (AR(1) phi
# for the OU levels and the trend velocity; white increments for random walks), and each
# feature's common share of variance (OU: of its level; random walk, trend: of its moves).
_FACTOR_PHI = {"ou_fast": 0.45, "ou_slow": 0.94, "random_walk": None, "trend": 0.93}
_FACTOR_SHARE = (0.6, 0.9)
_JUMP_FAMILIES = ("ou_fast", "ou_slow", "random_walk", "trend")


@dataclass
class SyntheticPanel:
    """A synthetic panel and its ground truth.

    Attributes:
        frame: the noisy panel in the Kaggle schema (date_id, 94 features, 3 targets).
        clean: date_id and the 94 feature columns without observation noise; NaN exactly
            where ``frame`` is NaN. Dummies are identical to ``frame``.
        process: feature -> planted process label (``'dummy'`` for D*).
        noise_std: continuous feature -> std of the observation-noise distribution, in the
            feature's native units (for Student-t noise its std, i.e. the t scale times
            sqrt(df / (df - 2)), not the scale).
        expected_type: process label -> the cluster type the clustering should assign.
        noise_df: continuous feature -> degrees of freedom of its Student-t noise, or None
            for Gaussian noise.
        noise_scale, noise_dist: the noise knobs the panel was made with.
        params: continuous feature -> its planted parameters (evaluation/headroom.py
            builds exact state-space models from them): ``process``; ``scale`` and
            ``offset`` (native = scale * x + offset); ``start`` (first observed row);
            ``ref_scale`` and ``noise_sd`` (the noise std before scaling, so
            noise_std = scale * noise_sd); the own dynamics (``phi`` for ou_*, trend,
            sv_returns, vol_positive; ``drift`` for trend; ``h_std`` for sv_returns and
            vol_positive; ``mean_stay`` and ``jump_rate`` for jump_regime); with
            noise_dist="factors" and a factor family: ``share`` (c), ``loading`` (signed
            sqrt(c)), ``factor_phi`` (None: white) and for random_walk / trend the realised
            ``moves_mean`` / ``moves_std`` the own part was standardised with.
    """

    frame: pd.DataFrame
    clean: pd.DataFrame
    process: dict[str, str]
    noise_std: dict[str, float]
    expected_type: dict[str, str]
    noise_df: dict[str, int | None] = field(default_factory=dict)
    noise_scale: float = 1.0
    noise_dist: str = "mixed"
    params: dict[str, dict] = field(default_factory=dict)

    @property
    def feature_columns(self) -> list[str]:
        return [c for c in self.clean.columns if c != ID_COL]

    @property
    def continuous_columns(self) -> list[str]:
        return [c for c, p in self.process.items() if p != "dummy"]


def feature_names() -> list[str]:
    """D1..D9, E1..E20, I1..I9, M1..M18, P1..P13, S1..S12, V1..V13 (Kaggle order)."""
    return [f"{letter}{i}" for letter, n in FEATURE_FAMILIES.items() for i in range(1, n + 1)]


def planted_process() -> dict[str, str]:
    """Feature -> planted process label, in column order."""
    out = {}
    for letter, first, last, proc in _ASSIGNMENT:
        for i in range(first, last + 1):
            out[f"{letter}{i}"] = proc
    return {name: out[name] for name in feature_names()}


def make_synthetic_panel(
    n_rows: int = 9000,
    seed: int = 0,
    *,
    noise_scale: float = 1.0,
    noise_dist: str = "mixed",
) -> SyntheticPanel:
    """Generate the seeded synthetic panel (see the module docstring for the recipe).

    Args:
        n_rows: number of rows (dates), at least 200.
        seed: the panel's seed.
        noise_scale: multiplies every feature's noise-to-signal ratio (1.0 = the default
            panel; 0 gives noise-free features).
        noise_dist: ``"mixed"`` (default: Gaussian or Student-t per feature),
            ``"gaussian"`` or ``"student_t"`` for every continuous feature, or one of the
            non-Gaussian scenarios ``"outliers"`` / ``"jumps"`` (module docstring).

    Deterministic: the same arguments give a bit-identical frame. Vectorised numpy
    (AR recursions via scipy.signal.lfilter); ~0.1 s for the default size.
    """
    if n_rows < 200:
        raise ValueError(f"n_rows={n_rows}: need at least 200 rows for a meaningful panel")
    noise_scale = float(noise_scale)
    if not (np.isfinite(noise_scale) and noise_scale >= 0):
        raise ValueError(f"noise_scale={noise_scale}: must be a finite number >= 0 (1.0 = default)")
    if noise_dist not in NOISE_DISTS:
        raise ValueError(f"noise_dist={noise_dist!r}: expected one of {NOISE_DISTS}")
    process = planted_process()
    names = list(process)
    noisy_cols: dict[str, np.ndarray] = {}
    clean_cols: dict[str, np.ndarray] = {}
    noise_std: dict[str, float] = {}
    noise_df: dict[str, int | None] = {}
    params: dict[str, dict] = {}
    factors: dict[str, np.ndarray] = {}  # noise_dist="factors": family -> unit factor
    for i, name in enumerate(names):
        rng = np.random.default_rng((seed, i))
        proc = process[name]
        if proc == "dummy":
            values = _dummy(rng, n_rows, ternary=int(name[1:]) >= 7)
            noisy_cols[name] = clean_cols[name] = values
            continue
        clean, ref_scale, propagate, own = _GENERATORS[proc](rng, n_rows)
        lo, hi = _NOISE_RATIO[proc]
        sd = noise_scale * rng.uniform(lo, hi) * ref_scale
        # The default draw always happens, so the main stream (and with it the units,
        # offset and start row below) is the same whatever the noise knobs.
        unit, df = _unit_noise(rng, n_rows, heavy=proc not in _POSITIVE)
        if noise_dist != "mixed":
            unit, df = _unit_noise_of(np.random.default_rng((seed, i, 1)), n_rows, noise_dist)
        if noise_dist == "jumps" and proc in _JUMP_FAMILIES:
            clean = clean + propagate(_jumps(np.random.default_rng((seed, i, 2)), n_rows, sd))
        if noise_dist == "factors" and proc in _FACTOR_PHI:
            fac = factors.setdefault(proc, _factor(seed, proc, n_rows))
            clean, loading = _with_factor(
                np.random.default_rng((seed, i, 3)), clean, ref_scale, fac, proc
            )
            own.update(loading, factor_phi=_FACTOR_PHI[proc])
        noise = sd * unit
        scale = 10.0 ** rng.uniform(-2.0, 3.0)
        offset = 0.0 if proc in _POSITIVE else scale * rng.uniform(-5.0, 5.0) * ref_scale
        start = 0 if name in _RETURN_DRIVERS else _start_row(rng, n_rows)
        observed = np.arange(n_rows) >= start
        clean_cols[name] = np.where(observed, scale * clean + offset, np.nan)
        noisy_cols[name] = np.where(observed, scale * (clean + noise) + offset, np.nan)
        noise_std[name] = float(scale * sd)
        noise_df[name] = df
        params[name] = {
            "process": proc,
            "scale": float(scale),
            "offset": float(offset),
            "start": int(start),
            "ref_scale": float(ref_scale),
            "noise_sd": float(sd),
            **own,
        }

    targets = _targets(np.random.default_rng((seed, len(names))), n_rows, clean_cols)
    date_id = np.arange(n_rows, dtype=np.int64)
    frame = pd.DataFrame({ID_COL: date_id, **noisy_cols, **targets})
    clean = pd.DataFrame({ID_COL: date_id, **clean_cols})
    expected = {p: EXPECTED_TYPE[p] for p in dict.fromkeys(process.values()) if p != "dummy"}
    return SyntheticPanel(
        frame=frame,
        clean=clean,
        process=process,
        noise_std=noise_std,
        expected_type=expected,
        noise_df=noise_df,
        noise_scale=noise_scale,
        noise_dist=noise_dist,
        params=params,
    )


def write_default_csv(path: str | Path, **knobs) -> Path:
    """Write ``make_synthetic_panel(**knobs).frame`` to ``path`` (CSV, no index); knobs:
    n_rows, seed, noise_scale, noise_dist."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_synthetic_panel(**knobs).frame.to_csv(path, index=False)
    return path


# --- building blocks -------------------------------------------------------------------


def _ar1(rng: np.random.Generator, n: int, phi: float, shocks: np.ndarray | None = None):
    """Stationary AR(1) with unit innovations: the first shock is scaled to the stationary
    std, so no burn-in is needed."""
    e = rng.standard_normal(n) if shocks is None else shocks.copy()
    e[0] /= np.sqrt(1.0 - phi * phi)
    return lfilter([1.0], [1.0, -phi], e)


# Each generator returns (clean, reference scale, propagate, params): propagate maps extra
# innovations (noise_dist="jumps") to their effect on the level, or is None; params are
# the planted own-dynamics parameters (SyntheticPanel.params).


def _ar1_filter(phi: float):
    return lambda shocks: lfilter([1.0], [1.0, -phi], shocks)


def _ou_fast(rng, n):
    phi = rng.uniform(0.3, 0.6)
    return _ar1(rng, n, phi), 1.0 / np.sqrt(1 - phi * phi), _ar1_filter(phi), {"phi": phi}


def _ou_slow(rng, n):
    phi = rng.uniform(0.9, 0.97)
    return _ar1(rng, n, phi), 1.0 / np.sqrt(1 - phi * phi), _ar1_filter(phi), {"phi": phi}


def _trend(rng, n):
    # Momentum: the *velocity* is persistent, so moves continue (variance ratio >> 1).
    phi = rng.uniform(0.90, 0.96)
    v = _ar1(rng, n, phi)
    v_std = 1.0 / np.sqrt(1 - phi * phi)
    drift = rng.uniform(-0.05, 0.05) * v_std
    return np.cumsum(v + drift), v_std, np.cumsum, {"phi": phi, "drift": float(drift)}


def _random_walk(rng, n):
    return np.cumsum(rng.standard_normal(n)), 1.0, np.cumsum, {}


def _jump_regime(rng, n):
    # Volatility regimes: alternating calm (1) / stressed (3) spells of geometric length.
    mean_stay = rng.uniform(150, 400)
    spells = rng.geometric(1.0 / mean_stay, size=n // 10 + 10)
    regime = np.repeat(np.arange(spells.size) % 2, spells)[:n]
    if rng.random() < 0.5:
        regime = 1 - regime
    sigma = np.where(regime == 1, 3.0, 1.0)
    u = rng.random(n)  # drawn before the rate, as the generator always has
    rate = rng.uniform(0.004, 0.01)
    jumps = (u < rate) * rng.normal(0.0, 8.0, n)
    params = {"mean_stay": float(mean_stay), "jump_rate": float(rate)}
    return np.cumsum(sigma * rng.standard_normal(n) + jumps), 1.0, None, params


def _sv_returns(rng, n):
    phi = rng.uniform(0.97, 0.99)
    h_std = rng.uniform(0.6, 0.8)
    h = h_std * np.sqrt(1 - phi * phi) * _ar1(rng, n, phi)
    x = np.exp(h - h_std**2) * rng.standard_normal(n)  # exp(-h_std^2): unit-ish variance
    return x, float(x.std()), None, {"phi": phi, "h_std": h_std}


def _vol_positive(rng, n):
    phi = rng.uniform(0.95, 0.98)
    h_std = rng.uniform(0.4, 0.6)
    # Right-skewed shocks (Gaussian + rare exponential bursts, recentred): spikes up,
    # slow decay, like an implied-volatility index.
    p, size = _VOL_BURST
    burst = (rng.random(n) < p) * rng.exponential(size, n)
    shocks = rng.standard_normal(n) + burst - p * size
    shocks /= np.sqrt(1.0 + p * 2 * size**2 - (p * size) ** 2)
    h = h_std * np.sqrt(1 - phi * phi) * _ar1(rng, n, phi, shocks)
    x = 1.0 + np.exp(h)
    return x, float(x.std()), None, {"phi": phi, "h_std": h_std}


_GENERATORS = {
    "ou_fast": _ou_fast,
    "ou_slow": _ou_slow,
    "trend": _trend,
    "random_walk": _random_walk,
    "jump_regime": _jump_regime,
    "sv_returns": _sv_returns,
    "vol_positive": _vol_positive,
}


def _unit_noise(rng: np.random.Generator, n: int, *, heavy: bool) -> tuple[np.ndarray, int | None]:
    """The default ("mixed") unit-variance noise and its Student-t df (None: Gaussian):
    Gaussian, or (where ``heavy``, with prob. _HEAVY_TAIL_PROB) Student-t."""
    if heavy and rng.random() < _HEAVY_TAIL_PROB:
        df = int(rng.choice(list(_STUDENT_DF)))
        return rng.standard_t(df, n) * np.sqrt((df - 2) / df), df
    return rng.standard_normal(n), None


def _unit_noise_of(rng: np.random.Generator, n: int, dist: str) -> tuple[np.ndarray, int | None]:
    """Unit-variance noise of one named distribution: 'gaussian' (also for 'jumps', whose
    non-Gaussian part is in the signal), 'outliers' (Gaussian core plus rare large
    outliers, rescaled to unit variance) or 'student_t'."""
    if dist in ("gaussian", "jumps", "factors"):
        return rng.standard_normal(n), None
    if dist == "outliers":
        core = rng.standard_normal(n)
        hit = rng.random(n) < _OUTLIER_PROB
        sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
        unit = core + hit * sign * _OUTLIER_SIZE
        return unit / np.sqrt(1.0 + _OUTLIER_PROB * _OUTLIER_SIZE**2), None
    df = int(rng.choice(list(_STUDENT_DF)))
    return rng.standard_t(df, n) * np.sqrt((df - 2) / df), df


def _factor(seed: int, proc: str, n: int) -> np.ndarray:
    """A family's latent factor with unit variance: its level's (OU) or its moves' (random
    walk: white; trend: the AR(1) velocity). Its own stream, one per family."""
    rng = np.random.default_rng((seed, 10_000 + list(_FACTOR_PHI).index(proc)))
    phi = _FACTOR_PHI[proc]
    if phi is None:
        return rng.standard_normal(n)
    return _ar1(rng, n, phi) * np.sqrt(1 - phi * phi)


def _with_factor(rng, clean: np.ndarray, ref_scale: float, factor: np.ndarray, proc: str):
    """The clean signal with a share c ~ U(_FACTOR_SHARE) of its variance (OU: level;
    random walk, trend: moves) from the family factor, with a random sign; the rest is the
    feature's own signal, so its reference scale and dynamics family are kept.
    Returns (clean, planted): share, loading and for random walk / trend the realised
    mean and std of the moves the own part is standardised with."""
    c = rng.uniform(*_FACTOR_SHARE)
    load = np.sqrt(c) * rng.choice([-1.0, 1.0])
    planted = {"share": float(c), "loading": float(load)}
    if proc in ("ou_fast", "ou_slow"):
        return ref_scale * (load * factor + np.sqrt(1 - c) * clean / ref_scale), planted
    moves = np.diff(clean, prepend=0.0)  # random walk: e_t; trend: v_t + drift
    drift = moves.mean()
    own = (moves - drift) / moves.std()
    planted.update(moves_mean=float(drift), moves_std=float(moves.std()))
    return np.cumsum(ref_scale * (load * factor + np.sqrt(1 - c) * own) + drift), planted


def _jumps(rng: np.random.Generator, n: int, sd: float) -> np.ndarray:
    """Compound-Bernoulli jumps: rate _JUMP_RATE, size U(_JUMP_SIZE) noise sds, random sign."""
    hit = rng.random(n) < _JUMP_RATE
    size = rng.uniform(*_JUMP_SIZE, n) * np.where(rng.random(n) < 0.5, -1.0, 1.0)
    return hit * size * sd


def _start_row(rng: np.random.Generator, n: int) -> int:
    """First observed row: a realistic spread of history lengths (see module docstring)."""
    u = rng.random()
    if u < 0.3:
        return 0
    if u < 0.9:
        return int(rng.integers(1, int(0.35 * n)))
    return int(rng.integers(int(0.35 * n), int(0.5 * n)))


def _dummy(rng: np.random.Generator, n: int, *, ternary: bool) -> np.ndarray:
    """Markov dummy: spells of geometric length (mean 5-200 rows) in random states."""
    states = np.array([-1.0, 0.0, 1.0]) if ternary else np.array([0.0, 1.0])
    mean_stay = 10.0 ** rng.uniform(np.log10(5), np.log10(200))
    spells = rng.geometric(1.0 / mean_stay, size=n)
    idx = np.repeat(np.arange(spells.size), spells)[:n]
    return states[rng.integers(0, states.size, size=spells.size)][idx]


def _targets(
    rng: np.random.Generator, n: int, clean_cols: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    signal = np.zeros(n)
    for name, w in _RETURN_DRIVERS.items():
        z = clean_cols[name]
        signal += w * (z - z.mean()) / z.std()
    signal /= np.sqrt(sum(w * w for w in _RETURN_DRIVERS.values()))
    df = 5
    noise = rng.standard_t(df, n) * np.sqrt((df - 2) / df)
    forward = 3e-4 + 0.01 * (0.1 * signal + noise)  # weak: R^2 ~ 1 %
    # Slow, strictly positive short rate around 1e-4 per day.
    rf = 1e-4 * np.exp(0.5 * np.sqrt(1 - 0.999**2) * _ar1(rng, n, 0.999))
    return {
        "forward_returns": forward,
        "risk_free_rate": rf,
        "market_forward_excess_returns": forward - rf,
    }
