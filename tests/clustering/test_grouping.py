"""K choice, k-means grouping, small-cluster merging, relabelling, typing, determinism."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from mamba_denoiser.clustering.artifact import build_document
from mamba_denoiser.clustering.grouping import (
    CRITERIA,
    STRATEGY,
    STRATEGY_DESCRIPTION,
    ClusteringResult,
    cluster_features,
    merge_small_clusters,
    standardise_stats,
    type_cluster,
)
from mamba_denoiser.clustering.stats import STAT_COLUMNS, compute_feature_stats
from mamba_denoiser.data.synthetic import EXPECTED_TYPE, make_synthetic_panel

# Typical raw statistics of three kinds of series (order of STAT_COLUMNS: hurst,
# adf_pvalue, acf_kday, skewness, kurtosis, vol_mean, vol_dispersion, variance_ratio,
# noise_share, vol_clustering, log_half_life).
CENTRES = {
    "mean_reverting": [0.1, 1e-12, -0.45, 0.0, 0.1, 1.0, 0.17, 0.2, 0.3, 0.0, 0.0],
    "random_walk": [0.5, 0.5, 0.01, 0.0, 2.0, 1.2, 0.45, 1.0, 0.05, 0.2, 2.4],
    "trending": [0.77, 0.6, 0.5, 0.0, 0.0, 0.8, 0.25, 4.0, -0.7, 0.3, 2.4],
}


def blobs(n_per: int = 10, seed: int = 0, order: str = "grouped"):
    """Well-separated statistic blobs; returns (stats, true kind per feature)."""
    rng = np.random.default_rng(seed)
    rows, kinds = [], []
    for kind, centre in CENTRES.items():
        for _ in range(n_per):
            c = np.array(centre)
            jitter = 1 + 0.03 * rng.standard_normal(c.size)  # multiplicative: keeps signs
            rows.append(c * jitter + 0.01 * rng.standard_normal(c.size) * (c == 0))
            kinds.append(kind)
    stats = pd.DataFrame(rows, columns=list(STAT_COLUMNS))
    stats["adf_pvalue"] = stats["adf_pvalue"].clip(1e-15, 1.0)
    stats.index = [f"F{i}" for i in range(len(stats))]
    if order == "shuffled":
        perm = rng.permutation(len(stats))
        stats, kinds = stats.iloc[perm], [kinds[i] for i in perm]
    return stats, kinds


@pytest.mark.parametrize("criterion", CRITERIA)
def test_recovers_well_separated_blobs(criterion):
    stats, kinds = blobs(order="shuffled")
    res = cluster_features(stats, criterion=criterion, k_max=8)
    assert res.k == 3 and res.criterion == criterion
    assert adjusted_rand_score(kinds, res.labels) == 1.0
    for c, feats in res.members().items():
        truth = {kinds[list(stats.index).index(f)] for f in feats}
        assert truth == {res.types[c]}
        assert res.strategies[c] == STRATEGY[res.types[c]]
    assert [row["k"] for row in res.selection] == list(range(2, 9))


def test_fixed_k_is_honoured():
    stats, _ = blobs()
    res = cluster_features(stats, k=5, min_size=1)
    assert res.k == 5 and res.criterion == "fixed"
    assert sorted(set(res.labels.tolist())) == [0, 1, 2, 3, 4]
    assert res.centroids.shape == (5, len(STAT_COLUMNS))
    assert res.standardized.shape == stats.shape
    assert len(res.selection) == 1 and res.selection[0]["k"] == 5


def test_labels_numbered_by_first_appearance():
    stats, _ = blobs(order="shuffled", seed=3)
    labels = cluster_features(stats).labels
    first = [int(labels[np.flatnonzero(labels == c)[0]] == c) for c in range(labels.max() + 1)]
    assert all(first)
    firsts = [np.flatnonzero(labels == c)[0] for c in range(labels.max() + 1)]
    assert firsts == sorted(firsts) and labels[0] == 0


@pytest.mark.slow
@pytest.mark.parametrize("criterion", ["silhouette", "stability"])
def test_deterministic_including_json(criterion):
    stats, _ = blobs(order="shuffled", seed=1)
    a = cluster_features(stats, seed=7, criterion=criterion)
    b = cluster_features(stats.copy(), seed=7, criterion=criterion)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.selection == b.selection
    doc_a, doc_b = (
        build_document(source={}, targets=[], stats=stats, result=r, passthrough={}, config={})
        for r in (a, b)
    )
    assert json.dumps(doc_a) == json.dumps(doc_b)


def test_clusters_document_is_json_ready():
    stats, _ = blobs()
    result = cluster_features(stats)
    d = build_document(source={}, targets=[], stats=stats, result=result, passthrough={}, config={})
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text)["selection"]["k"] == 3
    assert [c["features"] for c in d["clusters"]] == list(result.members().values())
    for c in d["clusters"]:
        assert c["strategy_description"] == STRATEGY_DESCRIPTION[c["strategy"]]


def test_scale_free_units_cannot_matter():
    # Standardisation is per statistic, so a monotone rescaling of a column's spread
    # leaves the z-scores unchanged.
    stats, _ = blobs()
    z = standardise_stats(stats)
    assert z.shape == stats.shape
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    shifted = stats.copy()
    shifted["acf_kday"] = 10 * shifted["acf_kday"] + 3
    np.testing.assert_allclose(standardise_stats(shifted), z, atol=1e-10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k": 31}, "between 1 and the number of features"),
        ({"k": 0}, "between 1 and the number of features"),
        ({"k_min": 9, "k_max": 4}, "empty"),
        ({"k_min": 1}, "empty"),
        ({"criterion": "bic"}, "criterion"),
        ({"min_size": 0}, "min_size"),
        ({"n_bootstrap": 0}, "n_bootstrap"),
    ],
)
def test_bad_arguments(kwargs, match):
    stats, _ = blobs()
    with pytest.raises(ValueError, match=match):
        cluster_features(stats, **kwargs)


def test_too_few_features_and_bad_stats():
    stats, _ = blobs()
    with pytest.raises(ValueError, match="at least 3"):
        cluster_features(stats.iloc[:2])
    assert cluster_features(stats.iloc[:2], k=2, min_size=1).k == 2  # a fixed k still works
    bad = stats.copy()
    bad.iloc[4, 2] = np.nan
    with pytest.raises(ValueError, match="F4"):
        cluster_features(bad)


def test_k_max_is_capped_at_n_minus_one():
    stats, _ = blobs(n_per=2)  # 6 features
    res = cluster_features(stats, k_max=12, min_size=1)
    assert max(row["k"] for row in res.selection) == 5


def _rows(**cols) -> pd.DataFrame:
    return pd.DataFrame(cols)


@pytest.mark.parametrize(
    "adf, hurst, vr, expected",
    [
        # Variogram flattens within 60 rows and the unit root is rejected: mean reverting.
        ([1e-20, 1e-9, 0.01], [0.0, 0.1, 0.3], [0.07, 0.2, 0.4], "mean_reverting"),
        # A flat variogram without stationarity evidence is what heavy noise on a trend
        # or walk looks like (test_a_noisy_integrated_walk_...): not mean reverting.
        ([0.3, 0.5, 0.7], [0.2, 0.3, 0.38], [0.3, 0.4, 0.5], "random_walk"),
        # Hurst just above 0.40, but the unit root is clearly rejected and 60-row moves
        # are clearly damped: slow reversion.
        ([1e-5, 1e-4, 1e-3], [0.41, 0.43, 0.45], [0.5, 0.6, 0.7], "mean_reverting"),
        ([0.3, 0.5, 0.7], [0.45, 0.5, 0.52], [0.8, 1.0, 1.1], "random_walk"),
        # A noisy random walk whose ADF happens to reject (the old rule's failure mode)
        # stays a random walk: its variogram says so.
        ([1e-4, 1e-3, 0.02], [0.47, 0.49, 0.52], [0.85, 0.95, 1.1], "random_walk"),
        ([0.3, 0.5, 0.7], [0.7, 0.77, 0.8], [3.0, 4.0, 5.0], "trending"),
        ([0.3, 0.5, 0.7], [0.5, 0.5, 0.55], [3.0, 4.0, 5.0], "random_walk"),  # VR alone
        ([0.3, 0.5, 0.7], [0.9, 1.0, 1.1], [1.0, 1.2, 1.4], "random_walk"),  # Hurst alone
        # The median decides: one stationary-looking member does not flip a walk group.
        ([1e-9, 0.5, 0.7], [0.1, 0.5, 0.52], [0.1, 1.0, 1.1], "random_walk"),
    ],
)
def test_type_rule(adf, hurst, vr, expected):
    rows = _rows(adf_pvalue=adf, hurst=hurst, variance_ratio=vr)
    assert type_cluster(rows) == expected


def _ar1(phi: float, n: int, rng) -> np.ndarray:
    from scipy.signal import lfilter

    e = rng.standard_normal(n)
    e[0] /= np.sqrt(1 - phi * phi)
    return lfilter([1.0], [1.0, -phi], e)


def _clean_examples(n: int, rng) -> dict[str, tuple[np.ndarray, float, str]]:
    """name -> (clean series, reference scale of its noise, expected type)."""
    walk = np.cumsum(rng.standard_normal(n))
    trend = np.cumsum(_ar1(0.93, n, rng))
    h = 0.7 * np.sqrt(1 - 0.98**2) * _ar1(0.98, n, rng)
    sv = np.exp(h) * rng.standard_normal(n)
    regime = np.where((np.arange(n) // 300) % 2 == 0, 1.0, 3.0)
    jumps = (rng.random(n) < 0.008) * rng.normal(0, 8, n)
    fast, slow = _ar1(0.5, n, rng), _ar1(0.95, n, rng)
    return {
        "white_noise": (rng.standard_normal(n), 1.0, "mean_reverting"),
        "ar_fast": (fast, fast.std(), "mean_reverting"),
        "ar_slow": (slow, slow.std(), "mean_reverting"),
        "stoch_vol": (sv, sv.std(), "mean_reverting"),
        "random_walk": (walk, 1.0, "random_walk"),
        "jump_regime_walk": (
            np.cumsum(regime * rng.standard_normal(n) + jumps),
            2.0,
            "random_walk",
        ),
        "trend": (trend, np.diff(trend).std(), "trending"),
    }


@pytest.mark.parametrize("noise_ratio", [0.0, 1.0, 3.0])
@pytest.mark.parametrize("dist", ["gaussian", "student_t"])
def test_type_rule_on_clean_examples_under_noise(noise_ratio, dist):
    """Each kind of series, alone, observed under white noise of 0, 1 and 3 times its
    reference scale (level std for stationary ones, daily move for walks and trends)."""
    rng = np.random.default_rng(11)
    n = 4000
    series, expected = {}, {}
    for name, (x, ref, kind) in _clean_examples(n, rng).items():
        unit = rng.standard_normal(n) if dist == "gaussian" else rng.standard_t(4, n) / np.sqrt(2)
        series[name] = x + noise_ratio * ref * unit
        expected[name] = kind
    stats = compute_feature_stats(series)
    typed = {name: type_cluster(stats.loc[[name]]) for name in series}
    assert typed == expected


def test_a_noisy_integrated_walk_is_not_typed_mean_reverting():
    """An integrated random walk under noise 3x its 60-row moves: its variogram is flat over
    5..60 rows (hurst ~0.1-0.2), which alone used to type it mean_reverting; the ADF cannot
    reject its unit root, so it must not be. With less noise it is trending."""
    rng = np.random.default_rng(3)
    n = 4200
    series, noise = {}, {}
    for k in range(5):
        x = np.cumsum(np.cumsum(rng.standard_normal(n)))
        move60 = np.std(x[60:] - x[:-60])
        for ratio in (0.3, 3.0):
            series[f"irw{k}_{ratio}"] = x + ratio * move60 * rng.standard_normal(n)
            noise[f"irw{k}_{ratio}"] = ratio
    stats = compute_feature_stats(series)
    heavy = [f for f in series if noise[f] == 3.0]
    light = [f for f in series if noise[f] == 0.3]
    assert stats.loc[heavy, "hurst"].median() < 0.40  # the trap the rule must not fall in
    assert stats.loc[heavy, "adf_pvalue"].median() > 0.05
    assert type_cluster(stats.loc[heavy]) == "random_walk"
    assert type_cluster(stats.loc[light]) == "trending"


@pytest.mark.slow
@pytest.mark.parametrize(
    "noise_scale, noise_dist",
    [
        (1.0, "mixed"),
        (3.0, "gaussian"),
        (3.0, "student_t"),
        (10.0, "gaussian"),
        (10.0, "student_t"),
        (5.0, "outliers"),
        (5.0, "jumps"),
    ],
)
def test_type_rule_on_the_built_in_families_at_every_noise_level(noise_scale, noise_dist):
    """Every planted family, typed from its features' train-split statistics, gets its
    EXPECTED_TYPE, from the default noise up to 10x."""
    sp = make_synthetic_panel(6000, seed=1, noise_scale=noise_scale, noise_dist=noise_dist)
    n_train = int(0.7 * 6000)
    series = {}
    for f in sp.continuous_columns:
        v = sp.frame[f].to_numpy()[:n_train]
        series[f] = v[~np.isnan(v)]
    stats = compute_feature_stats(series)
    family = pd.Series({f: sp.process[f] for f in stats.index})
    for fam, members in family.groupby(family).groups.items():
        assert type_cluster(stats.loc[members]) == EXPECTED_TYPE[fam], fam


def test_type_rule_needs_its_columns():
    with pytest.raises(ValueError, match="lacks"):
        type_cluster(_rows(hurst=[0.5]))
    with pytest.raises(ValueError, match="no features"):
        type_cluster(_rows(adf_pvalue=[], hurst=[], variance_ratio=[]))


def test_result_type():
    stats, _ = blobs()
    assert isinstance(cluster_features(stats), ClusteringResult)


@pytest.mark.slow
def test_recovers_planted_families_on_default_synthetic_panel():
    """The acceptance check: train-split statistics of the default panel give K = 7,
    the planted families (ARI >= 0.9) and the expected type per family."""
    sp = make_synthetic_panel(9000, seed=0)
    n_train = int(0.7 * 9000)
    feats = sp.continuous_columns
    series = {}
    for f in feats:
        v = sp.frame[f].to_numpy()[:n_train]
        series[f] = v[~np.isnan(v)]
    res = cluster_features(compute_feature_stats(series))
    truth = [sp.process[f] for f in feats]
    assert res.k == 7
    assert adjusted_rand_score(truth, res.labels) >= 0.9
    for c, members in res.members().items():
        family = pd.Series([sp.process[f] for f in members]).mode()[0]
        assert res.types[c] == sp.expected_type[family], (c, family)


# --- small clusters, K at the boundary ---------------------------------------------------


def test_merge_small_clusters_joins_the_nearest_cluster():
    X = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2], [6.0], [20.0]])
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 3])
    merged, merges = merge_small_clusters(X, labels, min_size=3)
    # 6.0 is nearer 10.1 than 0.1; 20.0 joins the 10s (mean now ~9.1).
    np.testing.assert_array_equal(merged, [0, 0, 0, 1, 1, 1, 1, 1])
    assert [(idx.tolist(), into) for idx, into in merges] == [([6], 1), ([7], 1)]
    same, none = merge_small_clusters(X, labels, min_size=1)
    np.testing.assert_array_equal(same, labels)
    assert none == []


def test_merge_small_clusters_chains_until_none_is_small():
    X = np.array([[0.0], [0.1], [0.2], [5.0], [6.0], [20.0], [20.1], [20.2]])
    merged, merges = merge_small_clusters(X, np.array([0, 0, 0, 1, 2, 3, 3, 3]), min_size=3)
    # 5.0 joins 6.0 (nearest); that pair is still too small and joins the 0s (mean 0.1
    # is 5.4 away, the 20s 14.6).
    np.testing.assert_array_equal(merged, [0, 0, 0, 0, 0, 3, 3, 3])
    assert [into for _, into in merges] == [2, 0]
    one, _ = merge_small_clusters(X[:2], np.array([0, 1]), min_size=3)
    assert np.unique(one).size == 1  # stops at a single cluster


def outlier_stats():
    """Three blobs of 10 plus one feature far from all of them."""
    stats, kinds = blobs(seed=4)
    odd = stats.iloc[[0]].copy()
    odd.index = ["ODD"]
    odd["kurtosis"] = 400.0
    odd["vol_mean"] = 9.0
    odd["skewness"] = -30.0
    return pd.concat([stats, odd]), kinds


@pytest.mark.parametrize("criterion", CRITERIA)
def test_no_cluster_below_min_size(criterion):
    stats, kinds = outlier_stats()
    res = cluster_features(stats, criterion=criterion, k_max=8, min_size=3)
    sizes = [len(m) for m in res.members().values()]
    assert min(sizes) >= 3 and sum(sizes) == len(stats)
    assert adjusted_rand_score(kinds, res.labels[:-1]) == 1.0


def test_fixed_k_merges_and_reports_the_merge():
    stats, _ = outlier_stats()
    kept = cluster_features(stats, k=4, min_size=1)
    assert sorted(len(m) for m in kept.members().values()) == [1, 10, 10, 10]
    res = cluster_features(stats, k=4, min_size=3)
    assert res.k == 3 and res.k_kmeans == 4 and res.min_size == 3
    assert res.merges == [
        {
            "features": ["ODD"],
            "into": int(res.labels[-1]),
            "reason": "1 feature(s), fewer than min_size=3",
        }
    ]
    assert res.centroids.shape == (3, len(STAT_COLUMNS))
    doc = build_document(source={}, targets=[], stats=stats, result=res, passthrough={}, config={})
    assert doc["merges"] == res.merges and doc["selection"]["k_kmeans"] == 4
    assert len(doc["clusters"]) == 3 and "ODD" in doc["clusters"][res.labels[-1]]["features"]


def test_k_on_the_boundary_is_a_warning(caplog):
    stats, _ = blobs(seed=2)  # three blobs
    with caplog.at_level(logging.WARNING, logger="mamba_denoiser.clustering.grouping"):
        res = cluster_features(stats, k_min=3, k_max=6)
    assert res.k == 3 and res.at_boundary and res.k_range == (3, 6)
    assert any("k_min" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mamba_denoiser.clustering.grouping"):
        res = cluster_features(stats, k_min=2, k_max=2)
    assert res.k == 2 and not res.at_boundary  # a one-point range has no boundary to hit
    with caplog.at_level(logging.WARNING, logger="mamba_denoiser.clustering.grouping"):
        res = cluster_features(stats, k_min=2, k_max=8)
    assert res.k == 3 and not res.at_boundary and not caplog.records


def test_k_max_boundary_is_named(caplog):
    stats, _ = blobs(seed=2)
    with caplog.at_level(logging.WARNING, logger="mamba_denoiser.clustering.grouping"):
        res = cluster_features(stats, k_min=2, k_max=3, criterion="stability")
    assert res.k == 3 and res.at_boundary
    assert any("k_max" in r.getMessage() for r in caplog.records)


def test_stability_rows_and_choice():
    stats, kinds = blobs(order="shuffled", seed=5)
    res = cluster_features(stats, criterion="stability", k_max=7, n_bootstrap=10)
    assert res.k == 3
    stab = {row["k"]: row["stability"] for row in res.selection}
    assert set(stab) == set(range(2, 8))
    assert stab[3] >= 0.75 and all(0.0 <= v <= 1.0 for v in stab.values())
    # Splitting a tight blob in two is not reproducible under resampling.
    assert stab[6] < 0.75
