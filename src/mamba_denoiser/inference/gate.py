"""SURE on validation rows: the per-feature choice among candidates, or raw.

For a denoiser d(y) of y = s + n, n white with variance σ², independent of s, Stein's
unbiased risk estimate of its error against the clean signal is

    SURE = mean((d - y)²) + 2σ² · mean(∂d_t/∂y_t) - σ²,

and leaving the data alone has risk σ². The gain in dB is 10·log10(σ² / SURE). The
divergence ∂d_t/∂y_t is exact where a candidate has it in closed form, and otherwise
estimated with a Hutchinson probe b = ±1: ∂d_t/∂y_t ≈ b_t (d_t(y + δb) - d_t(y)) / δ
(the cross terms average out over rows).
"""

from __future__ import annotations

import numpy as np


def probe_divergence(d: np.ndarray, d_probe: np.ndarray, probe: np.ndarray, delta) -> np.ndarray:
    """(N, F) per-row Hutchinson estimates of ∂d_t/∂y_t from a run on y + δ·probe."""
    return probe * (d_probe - d) / delta


def sure_gain_db(y: np.ndarray, d: np.ndarray, div: np.ndarray, sigma) -> np.ndarray:
    """(F,) SURE gain over raw, in dB, from rows (N, F) of y, d(y) and ∂d_t/∂y_t.

    Rows where any of them is missing are skipped; NaN where a column has no such row or
    σ is not finite and positive."""
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (y.shape[1],))
    ok = np.isfinite(y) & np.isfinite(d) & np.isfinite(div)
    n = ok.sum(0)
    mse = np.where(ok, (d - y) ** 2, 0.0).sum(0) / np.maximum(n, 1)
    mean_div = np.where(ok, div, 0.0).sum(0) / np.maximum(n, 1)
    s2 = sigma**2
    sure = mse + 2 * s2 * mean_div - s2
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = 10 * np.log10(s2 / np.maximum(sure, 1e-3 * s2))
    return np.where((n > 0) & np.isfinite(sigma) & (sigma > 0), gain, np.nan)


def choose(gains: np.ndarray, margin_db: float) -> np.ndarray:
    """(K, F) SURE gains of K candidates -> (F,) index of the best, or -1 (stay raw) where
    no candidate's estimated gain exceeds ``margin_db``."""
    scored = np.where(np.isnan(gains), -np.inf, gains)
    best = scored.max(axis=0) if len(scored) else np.full(gains.shape[1], -np.inf)
    idx = scored.argmax(axis=0) if len(scored) else np.zeros(gains.shape[1], int)
    return np.where(best > margin_db, idx, -1)
