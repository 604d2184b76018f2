"""Comovement coordinates: common factors found on the train rows, none for independent
series (the grouping is then exactly the statistics'), and features sharing a factor
grouped together where their statistics alone cannot tell them apart."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from mamba_denoiser.clustering.comovement import factor_loadings
from mamba_denoiser.clustering.grouping import cluster_features
from mamba_denoiser.clustering.stats import compute_feature_stats


def _ar1(rng, n, phi):
    x = np.zeros(n)
    e = rng.standard_normal(n)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


def _panel(n=3000, n_per=6, share=0.7, seed=0, factors=True):
    """2 x n_per features of the same dynamics (AR(1) 0.9 plus noise); with ``factors``,
    each half loads (random sign) on its own AR(1) factor with ``share`` of its level's
    variance. A late start for some, as real features have."""
    rng = np.random.default_rng(seed)
    cols = {}
    for g in range(2):
        f = _ar1(rng, n, 0.9)
        for i in range(n_per):
            own = _ar1(rng, n, 0.9)
            s = (
                rng.choice([-1, 1]) * np.sqrt(share) * f + np.sqrt(1 - share) * own
                if factors
                else own
            )
            y = s + 0.5 * rng.standard_normal(n)
            if i % 3 == 0:
                y[: 300 * (1 + i)] = np.nan
            cols[f"g{g}_{i}"] = y
    return pd.DataFrame(cols)


def _stats(frame):
    return compute_feature_stats(
        {c: frame[c].dropna().to_numpy() for c in frame}, rolling_window=20
    )


def test_no_factor_in_independent_series_leaves_the_grouping_alone():
    frame = _panel(factors=False)
    stats = _stats(frame)
    loadings = factor_loadings(frame.to_numpy(), stats["adf_pvalue"].to_numpy())
    assert loadings.shape == (12, 0)
    a = cluster_features(stats, loadings=loadings)
    b = cluster_features(stats, comovement=False)
    assert (a.labels == b.labels).all()


def test_features_sharing_a_factor_share_a_cluster():
    frame = _panel()
    stats = _stats(frame)
    loadings = factor_loadings(frame.to_numpy(), stats["adf_pvalue"].to_numpy())
    assert loadings.shape[1] == 2  # the two planted factors, nothing more
    res = cluster_features(stats, loadings=loadings, k=2)
    lab = dict(zip(res.features, res.labels))
    same = [lab[a] == lab[b] for a, b in itertools.combinations(lab, 2) if a[:2] == b[:2]]
    cross = [lab[a] == lab[b] for a, b in itertools.combinations(lab, 2) if a[:2] != b[:2]]
    assert np.mean(same) >= 0.9 and np.mean(cross) <= 0.1
    # the statistics alone do not separate them (same dynamics): the factor does
    alone = cluster_features(stats, comovement=False, k=2)
    lab0 = dict(zip(alone.features, alone.labels))
    assert (
        np.mean([lab0[a] == lab0[b] for a, b in itertools.combinations(lab0, 2) if a[:2] == b[:2]])
        < 0.9
    )
