"""Scores for denoised series and for forecasts / positions built on them.

All functions take numpy arrays (or anything ``np.asarray`` accepts), ignore rows where
an input is NaN, and reduce along axis 0: a (T,) input gives a float, a (T, F) input a
(F,) array (one score per column) where noted.

Denoising quality (needs the clean truth, i.e. synthetic data):
    mse(estimate, truth, rows=None)
    snr_gain_db(noisy, denoised, clean, rows=None)    10 log10(MSE(noisy) / MSE(denoised))
    cross_correlation(output, reference, max_lag=20, on="levels") -> (max_lag + 1,)
    lag(output, reference, max_lag=20, on="levels")   argmax of the above, in rows
    gain_difference(noisy, a, b, clean, groups, rows)  mean SNR gain of a minus b per
        group of columns, with its block-bootstrap standard error over the rows

Forecasts and strategies:
    information_coefficient(pred, target, periods=None, method="pearson") -> ICResult
    r2(pred, target, benchmark="mean"), hit_rate(pred, target)
    sharpe(excess_returns, periods_per_year=252)
    adjusted_sharpe(position, forward_returns, risk_free_rate) -> AdjustedSharpe
        the Kaggle "Hull Tactical - Market Prediction" volatility-adjusted Sharpe.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

TRADING_DAYS = 252
MIN_POSITION, MAX_POSITION = 0.0, 2.0  # the competition's allowed allocation range


def _rows(a: np.ndarray, rows) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a if rows is None else a[rows]


def mse(estimate: np.ndarray, truth: np.ndarray, *, rows=None):
    """Mean squared error over rows where both are finite; per column for 2-D input.

    rows: optional slice / index array / boolean mask along axis 0.
    """
    e, t = _rows(estimate, rows), _rows(truth, rows)
    if e.shape != t.shape:
        raise ValueError(f"shapes differ: estimate {e.shape} vs truth {t.shape}")
    sq = (e - t) ** 2
    keep = np.isfinite(sq)
    count = keep.sum(axis=0)
    total = np.where(keep, sq, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return float(out) if out.ndim == 0 else out


def snr_gain_db(noisy: np.ndarray, denoised: np.ndarray, clean: np.ndarray, *, rows=None):
    """SNR gain of ``denoised`` over ``noisy`` against ``clean``, in dB.

    10 * log10(MSE(noisy, clean) / MSE(denoised, clean)), both MSEs over the same rows
    (those where all three are finite). > 0: the denoiser is closer to the truth than
    the raw series; 0: no change; e.g. +3 dB halves the error. Per column for 2-D input.
    """
    n, d, c = _rows(noisy, rows), _rows(denoised, rows), _rows(clean, rows)
    if not n.shape == d.shape == c.shape:
        raise ValueError(f"shapes differ: noisy {n.shape}, denoised {d.shape}, clean {c.shape}")
    keep = np.isfinite(n) & np.isfinite(d) & np.isfinite(c)
    n, d, c = (np.where(keep, a, np.nan) for a in (n, d, c))
    with np.errstate(invalid="ignore", divide="ignore"):
        return 10.0 * np.log10(mse(n, c) / mse(d, c))


# Block bootstrap over rows: 50-row blocks carry a filter error's autocorrelation; the
# same resampled blocks for every column and output (paired); a fixed seed.
BOOT_BLOCK, N_BOOT = 50, 400


def gain_difference(
    noisy: np.ndarray,  # (T, F)
    a: np.ndarray,  # (T, F) one output
    b: np.ndarray,  # (T, F) another
    clean: np.ndarray,  # (T, F)
    groups: np.ndarray,  # (F,) group label per column
    *,
    rows=None,
    block: int = BOOT_BLOCK,
    n_boot: int = N_BOOT,
) -> pd.DataFrame:
    """Per group: the mean over its columns of snr_gain(a) − snr_gain(b) (dB) and its
    standard error, from a paired block bootstrap of the rows (every column's squared
    errors resampled by the same blocks, so the dependence between columns is kept).
    Index: the groups; columns ``diff``, ``se``."""
    n, x, y, c = (np.asarray(_rows(v, rows), np.float64) for v in (noisy, a, b, clean))
    keep = np.isfinite(n) & np.isfinite(x) & np.isfinite(y) & np.isfinite(c)
    sq = [np.where(keep, (v - c) ** 2, 0.0) for v in (n, x, y)]  # 3 x (T, F)
    nb = max(len(n) // block, 1)
    cut = nb * block
    sums = [s[:cut].reshape(nb, -1, s.shape[1]).sum(1) for s in sq]  # 3 x (nb, F)
    idx = np.vstack([np.arange(nb), np.random.default_rng(0).integers(0, nb, (n_boot, nb))])
    with np.errstate(divide="ignore", invalid="ignore"):
        tot = [s[idx].sum(1) for s in sums]  # 3 x (1 + n_boot, F)
        for t, s in zip(tot, sq):
            t[0] = s.sum(0)  # row 0: the sample itself, every row
        diff = 10 * np.log10(tot[2] / tot[1])  # gain(a) − gain(b) = 10 log10(SSE_b / SSE_a)
    groups = np.asarray(groups)
    out = {}
    for g in dict.fromkeys(groups.tolist()):
        d = diff[:, groups == g]
        d = d[:, np.isfinite(d[0])]
        mean = d.mean(1) if d.shape[1] else np.full(len(d), np.nan)
        out[g] = (mean[0], float(np.nanstd(mean[1:])) if nb > 1 else np.inf)
    return pd.DataFrame.from_dict(out, orient="index", columns=["diff", "se"])


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation over pairs where both are finite (NaN if < 3 pairs / no spread)."""
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3:
        return np.nan
    a, b = a[keep] - a[keep].mean(), b[keep] - b[keep].mean()
    den = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / den) if den > 0 else np.nan


def cross_correlation(
    output: np.ndarray, reference: np.ndarray, *, max_lag: int = 20, on: str = "levels"
) -> np.ndarray:
    """corr(output_t, reference_{t-k}) for k = 0..max_lag; (max_lag + 1,).

    on="levels" compares the series, on="changes" their first differences.
    """
    o, r = np.asarray(output, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if o.ndim != 1 or o.shape != r.shape:
        raise ValueError(f"need two 1-D series of equal length, got {o.shape}, {r.shape}")
    if on == "changes":
        o, r = np.diff(o), np.diff(r)
    elif on != "levels":
        raise ValueError(f"on={on!r}: use 'levels' or 'changes'")
    if max_lag < 0 or max_lag >= len(o) - 2:
        raise ValueError(f"max_lag={max_lag} must be in [0, {len(o) - 3}]")
    return np.array([_corr(o[k:], r[: len(r) - k]) for k in range(max_lag + 1)])


def lag(output: np.ndarray, reference: np.ndarray, *, max_lag: int = 20, on: str = "levels") -> int:
    """Delay of ``output`` behind ``reference`` in rows: argmax_k corr(output_t, ref_{t-k}).

    k in 0..max_lag. Use the clean series as reference when it exists, else the raw one.
    on="levels" (default) measures how far a smoother trails the signal: for a random
    walk it lands near the median delay of the filter's weights (an EMA of weight a:
    about ln 2 / a rows). on="changes" finds where the impulse response peaks, which is 0
    for any EMA or Kalman filter (their weight is largest on the newest row) and shows
    only a pure delay (e.g. output_t = reference_{t-5} gives 5 in both modes).
    """
    cc = cross_correlation(output, reference, max_lag=max_lag, on=on)
    if np.all(np.isnan(cc)):
        raise ValueError("no finite cross-correlation: too few overlapping rows")
    return int(np.nanargmax(cc))


@dataclass(frozen=True)
class ICResult:
    """Information coefficient per period and its summary.

    per_period: (P,) correlation in each period (in order of first appearance);
    mean: their mean; t_stat: mean / (std / sqrt(P)), ddof=1 (NaN when P < 2).
    """

    per_period: np.ndarray
    mean: float
    t_stat: float

    @property
    def n_periods(self) -> int:
        return int(np.isfinite(self.per_period).sum())


def information_coefficient(
    pred: np.ndarray, target: np.ndarray, *, periods=None, method: str = "pearson"
) -> ICResult:
    """Correlation of predictions with realised targets, per period, with a t-stat.

    pred, target: (T,). periods: (T,) labels (e.g. walk-forward fold, or row // 252 for
    years); None = one period. method: "pearson" (IC) or "spearman" (rank IC). Periods
    with fewer than 3 finite pairs give NaN and are left out of the summary.
    """
    p, y = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if p.ndim != 1 or p.shape != y.shape:
        raise ValueError(f"need two 1-D arrays of equal length, got {p.shape}, {y.shape}")
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method={method!r}: use 'pearson' or 'spearman'")
    labels = np.zeros(len(p)) if periods is None else np.asarray(periods)
    if labels.shape != p.shape:
        raise ValueError(f"periods has shape {labels.shape}, expected {p.shape}")
    keep = np.isfinite(p) & np.isfinite(y)
    if method == "spearman":  # rank within each period, over the finite pairs only
        frame = pd.DataFrame({"p": p[keep], "y": y[keep], "g": labels[keep]})
        ranked = frame.groupby("g", sort=False)[["p", "y"]].rank()
        p, y = np.full(len(p), np.nan), np.full(len(y), np.nan)
        p[keep], y[keep] = ranked["p"].to_numpy(), ranked["y"].to_numpy()
    uniq = pd.unique(labels)
    ics = np.array([_corr(p[labels == g], y[labels == g]) for g in uniq])
    good = ics[np.isfinite(ics)]
    mean = float(good.mean()) if len(good) else np.nan
    t_stat = np.nan
    if len(good) >= 2:
        sd = good.std(ddof=1)
        t_stat = float(mean / (sd / np.sqrt(len(good)))) if sd > 0 else np.nan
    return ICResult(per_period=ics, mean=mean, t_stat=t_stat)


def r2(pred: np.ndarray, target: np.ndarray, *, benchmark: str = "mean") -> float:
    """Out-of-sample R^2 = 1 - sum (y - pred)^2 / sum (y - b)^2 over finite pairs.

    benchmark "mean": b = mean of y over the scored rows (sklearn's r2_score; a benchmark
    that peeks at the test mean, so the score is conservative); "zero": b = 0 (Gu, Kelly
    and Xiu's choice for returns, whose historical mean is a poor forecast).
    """
    p, y = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    keep = np.isfinite(p) & np.isfinite(y)
    if keep.sum() < 2:
        return np.nan
    p, y = p[keep], y[keep]
    if benchmark == "mean":
        base = y - y.mean()
    elif benchmark == "zero":
        base = y
    else:
        raise ValueError(f"benchmark={benchmark!r}: use 'mean' or 'zero'")
    den = float(base @ base)
    return 1.0 - float((y - p) @ (y - p)) / den if den > 0 else np.nan


def hit_rate(pred: np.ndarray, target: np.ndarray) -> float:
    """Share of rows where sign(pred) == sign(target), over finite rows with target != 0.

    A zero prediction counts as a miss (it calls no direction).
    """
    p, y = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    keep = np.isfinite(p) & np.isfinite(y) & (y != 0)
    if not keep.any():
        return np.nan
    return float(np.mean(np.sign(p[keep]) == np.sign(y[keep])))


def sharpe(excess_returns: np.ndarray, *, periods_per_year: int = TRADING_DAYS) -> float:
    """Annualised Sharpe ratio: mean / std (ddof=1) * sqrt(periods_per_year), NaN-aware."""
    r = np.asarray(excess_returns, dtype=np.float64)
    r = r[np.isfinite(r)]
    if len(r) < 2:
        return np.nan
    sd = r.std(ddof=1)
    return float(r.mean() / sd * np.sqrt(periods_per_year)) if sd > 0 else np.nan


@dataclass(frozen=True)
class AdjustedSharpe:
    """The competition score and its parts (volatilities annualised, in percent)."""

    score: float
    sharpe: float
    vol_penalty: float
    return_penalty: float
    strategy_vol: float
    market_vol: float
    strategy_mean_excess: float  # geometric mean daily excess return
    market_mean_excess: float


def adjusted_sharpe(
    position: np.ndarray, forward_returns: np.ndarray, risk_free_rate: np.ndarray
) -> AdjustedSharpe:
    """Kaggle "Hull Tactical - Market Prediction" volatility-adjusted Sharpe.

    Follows the competition's public metric code:
        strategy = rf * (1 - position) + position * forward_returns
        mean excess = geometric mean of (1 + strategy - rf), minus 1 (market alike)
        sharpe = mean excess / std(strategy) * sqrt(252)   (std of the returns, ddof=1)
        vol penalty = 1 + max(0, strategy_vol / market_vol - 1.2)
        return penalty = 1 + max(0, (market mean excess - strategy mean excess)
                                     * 100 * 252) ** 2 / 100
        score = min(sharpe / (vol penalty * return penalty), 1e6)
    Positions must lie in [0, 2]; every input must be finite (ValueError otherwise),
    as must the strategy and market volatilities be non-zero.
    """
    pos = np.asarray(position, dtype=np.float64)
    fwd = np.asarray(forward_returns, dtype=np.float64)
    rf = np.asarray(risk_free_rate, dtype=np.float64)
    if not pos.ndim == fwd.ndim == rf.ndim == 1 or not len(pos) == len(fwd) == len(rf):
        raise ValueError(f"need 1-D inputs of one length, got {pos.shape}, {fwd.shape}, {rf.shape}")
    if len(pos) < 2:
        raise ValueError("need at least 2 rows")
    for name, a in (("position", pos), ("forward_returns", fwd), ("risk_free_rate", rf)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} has {int((~np.isfinite(a)).sum())} non-finite values")
    if pos.max() > MAX_POSITION or pos.min() < MIN_POSITION:
        raise ValueError(
            f"positions span [{pos.min():.4g}, {pos.max():.4g}], "
            f"allowed [{MIN_POSITION}, {MAX_POSITION}]"
        )
    strategy = rf * (1.0 - pos) + pos * fwd
    n = len(pos)
    strategy_mean = float(np.prod(1.0 + (strategy - rf)) ** (1.0 / n) - 1.0)
    market_mean = float(np.prod(1.0 + (fwd - rf)) ** (1.0 / n) - 1.0)
    strategy_sd, market_sd = float(strategy.std(ddof=1)), float(fwd.std(ddof=1))
    if strategy_sd == 0 or market_sd == 0:
        raise ValueError(f"zero volatility: strategy {strategy_sd}, market {market_sd}")
    raw = strategy_mean / strategy_sd * np.sqrt(TRADING_DAYS)
    strategy_vol = strategy_sd * np.sqrt(TRADING_DAYS) * 100.0
    market_vol = market_sd * np.sqrt(TRADING_DAYS) * 100.0
    vol_penalty = 1.0 + max(0.0, strategy_vol / market_vol - 1.2)
    gap = max(0.0, (market_mean - strategy_mean) * 100.0 * TRADING_DAYS)
    return_penalty = 1.0 + gap**2 / 100.0
    score = min(float(raw / (vol_penalty * return_penalty)), 1_000_000.0)
    return AdjustedSharpe(
        score=score,
        sharpe=float(raw),
        vol_penalty=float(vol_penalty),
        return_penalty=float(return_penalty),
        strategy_vol=float(strategy_vol),
        market_vol=float(market_vol),
        strategy_mean_excess=strategy_mean,
        market_mean_excess=market_mean,
    )
