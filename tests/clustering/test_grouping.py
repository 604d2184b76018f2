"""K choice, k-means grouping, relabelling, typing and determinism."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from mamba_denoiser.clustering.artifact import build_document
from mamba_denoiser.clustering.grouping import (
    STRATEGY,
    STRATEGY_DESCRIPTION,
    ClusteringResult,
    cluster_features,
    standardise_stats,
    type_cluster,
)
from mamba_denoiser.clustering.stats import STAT_COLUMNS, compute_feature_stats
from mamba_denoiser.data.synthetic import make_synthetic_panel

# Typical raw statistics of three kinds of series (order of STAT_COLUMNS).
CENTRES = {
    "mean_reverting": [0.1, 1e-12, 0.5, 0.0, 0.1, 1.0, 0.17, 0.2, -0.3, 0.0, 0.0],
    "random_walk": [0.5, 0.5, 0.999, 0.0, 2.0, 1.2, 0.45, 1.0, 0.0, 0.2, 2.4],
    "trending": [1.0, 0.6, 1.0, 0.0, 0.0, 0.7, 0.25, 6.0, 0.7, 0.3, 2.4],
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


@pytest.mark.parametrize("criterion", ["silhouette", "elbow", "gap"])
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
    res = cluster_features(stats, k=5)
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


def test_deterministic_including_json():
    stats, _ = blobs(order="shuffled", seed=1)
    a = cluster_features(stats, seed=7)
    b = cluster_features(stats.copy(), seed=7)
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
    shifted["acf1"] = 10 * shifted["acf1"] + 3
    np.testing.assert_allclose(standardise_stats(shifted), z, atol=1e-10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k": 31}, "between 1 and the number of features"),
        ({"k": 0}, "between 1 and the number of features"),
        ({"k_min": 9, "k_max": 4}, "empty"),
        ({"k_min": 1}, "empty"),
        ({"criterion": "bic"}, "criterion"),
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
    assert cluster_features(stats.iloc[:2], k=2).k == 2  # a fixed k still works
    bad = stats.copy()
    bad.iloc[4, 2] = np.nan
    with pytest.raises(ValueError, match="F4"):
        cluster_features(bad)


def test_k_max_is_capped_at_n_minus_one():
    stats, _ = blobs(n_per=2)  # 6 features
    res = cluster_features(stats, k_max=12)
    assert max(row["k"] for row in res.selection) == 5


def _rows(**cols) -> pd.DataFrame:
    return pd.DataFrame(cols)


@pytest.mark.parametrize(
    "adf, hurst, vr, expected",
    [
        ([1e-20, 1e-9, 0.01], [0.1, 0.3, 0.45], [0.2, 0.5, 0.9], "mean_reverting"),  # ADF
        ([0.3, 0.5, 0.7], [0.2, 0.3, 0.32], [0.5, 0.6, 0.7], "mean_reverting"),  # low Hurst
        ([0.3, 0.5, 0.7], [0.45, 0.5, 0.52], [0.8, 1.0, 1.1], "random_walk"),
        ([0.3, 0.5, 0.7], [0.9, 1.0, 1.1], [4.0, 6.0, 7.0], "trending"),
        ([0.3, 0.5, 0.7], [0.5, 0.5, 0.55], [3.0, 4.0, 5.0], "random_walk"),  # VR alone
        ([0.3, 0.5, 0.7], [0.9, 1.0, 1.1], [1.0, 1.2, 1.4], "random_walk"),  # Hurst alone
        # The median decides: one stationary-looking member does not flip a walk group.
        ([1e-9, 0.5, 0.7], [0.45, 0.5, 0.52], [0.8, 1.0, 1.1], "random_walk"),
    ],
)
def test_type_rule(adf, hurst, vr, expected):
    rows = _rows(adf_pvalue=adf, hurst=hurst, variance_ratio=vr)
    assert type_cluster(rows) == expected


def test_type_rule_needs_its_columns():
    with pytest.raises(ValueError, match="lacks"):
        type_cluster(_rows(hurst=[0.5]))
    with pytest.raises(ValueError, match="no features"):
        type_cluster(_rows(adf_pvalue=[], hurst=[], variance_ratio=[]))


def test_result_type():
    stats, _ = blobs()
    assert isinstance(cluster_features(stats), ClusteringResult)


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
