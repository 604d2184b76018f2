"""Comovement: which features share a latent factor, as extra clustering coordinates.

The 11 per-feature statistics (stats.py) describe each series alone, so features driven by
one common factor but with different dynamics or noise land in different groups, and a
group's denoiser never sees the factor they share. Here, on the TRAIN rows only:

1. each feature becomes a stationary series: its level where the ADF test rejects a unit
   root (p < ``ADF_STATIONARY``), else its increments; then prewhitened by its own AR(``AR_LAGS``)
   fit, so that rows are close to independent (smooth series correlate by chance far
   beyond the Marchenko–Pastur edge, which assumes independent rows: measured, one
   spurious "factor" on the built-in panel without prewhitening, none with it);
2. C = the pairwise correlation matrix of those series (pairwise-complete rows, so a late
   start costs only its own pairs), shrunk to 0 where a pair shares < ``MIN_PAIR`` rows;
3. factors = the eigenvalues of C above the Marchenko–Pastur edge (1 + √(F/n))² times
   ``EDGE_MARGIN``: what independent series would not produce by chance;
4. each feature's coordinates = |loading| on those factors, √λ·|v| (the sign of a
   loading is arbitrary: a feature that moves against the factor still shares it).

A panel without common factors gets no coordinate at all, so its grouping is exactly the
one of the statistics alone (the built-in default panel: none, measured). With
factors, the loadings are appended to the standardised statistics before k-means, scaled
so that one factor weighs as much as ``WEIGHT`` statistics.
"""

from __future__ import annotations

import numpy as np

ADF_STATIONARY = 0.05
AR_LAGS = 5
MIN_PAIR = 100  # rows a pair must share to have a correlation at all
EDGE_MARGIN = 1.5  # eigenvalues this far above the Marchenko–Pastur edge are factors
WEIGHT = 3.0  # one factor's coordinate, after z-scoring, counts as this many statistics


def stationary_panel(train: np.ndarray, adf_pvalues: np.ndarray) -> np.ndarray:
    """(n, F) train rows (NaN missing), (F,) ADF p-values -> (n, F) standardised levels or
    increments (step 1 of the module docstring), NaN where missing."""
    x = np.asarray(train, dtype=np.float64)
    diff = np.vstack([np.full((1, x.shape[1]), np.nan), np.diff(x, axis=0)])
    z = np.where(np.asarray(adf_pvalues)[None, :] < ADF_STATIONARY, x, diff)
    z = np.column_stack([_prewhitened(z[:, j]) for j in range(z.shape[1])])
    mu, sd = np.nanmean(z, axis=0), np.nanstd(z, axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return (z - mu) / sd


def _prewhitened(x: np.ndarray, lags: int = AR_LAGS) -> np.ndarray:
    """(n,) -> (n,) residuals of an AR(lags) least-squares fit (NaN where a lag is
    missing); a series too short to fit stays as it is."""
    n = len(x)
    design = np.column_stack([np.ones(n)] + [np.roll(x, k) for k in range(1, lags + 1)])
    design[:lags] = np.nan
    ok = np.isfinite(x) & np.isfinite(design).all(axis=1)
    if ok.sum() < 10 * (lags + 1):
        return x
    beta, *_ = np.linalg.lstsq(design[ok], x[ok], rcond=None)
    out = np.full(n, np.nan)
    out[ok] = x[ok] - design[ok] @ beta
    return out


def pairwise_correlation(z: np.ndarray) -> tuple[np.ndarray, int]:
    """(n, F) -> (C (F, F), median rows per pair): pairwise-complete correlations (0 for
    pairs sharing < MIN_PAIR rows, 1 on the diagonal), vectorised as matrix products."""
    ok = np.isfinite(z).astype(np.float64)
    v = np.where(ok > 0, z, 0.0)
    n = ok.T @ ok  # rows shared
    sx = v.T @ ok  # Σ x over the rows a pair shares (row feature, column partner)
    sxx = (v * v).T @ ok
    sxy = v.T @ v
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy / n - (sx / n) * (sx.T / n)
        var_i = sxx / n - (sx / n) ** 2
        c = cov / np.sqrt(var_i * var_i.T)
    c = np.where((n >= MIN_PAIR) & np.isfinite(c), c, 0.0)
    np.fill_diagonal(c, 1.0)
    off = n[~np.eye(len(n), dtype=bool)]
    return np.clip(c, -1.0, 1.0), int(np.median(off)) if off.size else 0


def factor_loadings(train: np.ndarray, adf_pvalues: np.ndarray) -> np.ndarray:
    """(n, F) train rows, (F,) ADF p-values -> (F, r) |loadings| on the r factors above the
    Marchenko–Pastur edge (r = 0: no common factor)."""
    n_f = train.shape[1]
    if n_f < 3:
        return np.zeros((n_f, 0))
    c, n_rows = pairwise_correlation(stationary_panel(train, adf_pvalues))
    if n_rows < MIN_PAIR:
        return np.zeros((n_f, 0))
    lam, vec = np.linalg.eigh(c)  # ascending
    edge = (1 + np.sqrt(n_f / n_rows)) ** 2 * EDGE_MARGIN
    keep = lam > edge
    return np.abs(vec[:, keep] * np.sqrt(lam[keep]))[:, ::-1]  # strongest first


def with_comovement(x_stats: np.ndarray, loadings: np.ndarray) -> np.ndarray:
    """(F, s) standardised statistics, (F, r) loadings -> (F, s + r) k-means input."""
    if loadings.shape[1] == 0:
        return x_stats
    sd = loadings.std(axis=0)
    z = (loadings - loadings.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    return np.hstack([x_stats, np.sqrt(WEIGHT) * z])
