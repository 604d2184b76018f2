"""Group features by their statistics: standardise, choose K, k-means, merge, type each group.

Pipeline (docs/design.md "Statistics and grouping"):

1. ``standardise_stats``: a fixed, documented transform of the skewed statistics (see
   ``TRANSFORMS``), then z-scoring of every column (sklearn ``StandardScaler``). Without
   the transform a single feature with kurtosis 300 or an ADF p-value of 1e-40 vs 1e-3
   would decide the geometry.
2. For each candidate K: sklearn ``KMeans`` with ``n_init`` restarts and
   ``random_state=seed``, then ``merge_small_clusters``: a cluster with fewer than
   ``min_size`` features (default 3) joins the cluster whose centre is nearest to its own
   (smallest first, repeated until none is left), because a model per one or two features
   has too little data to train and its "group statistics" are one feature's noise. The
   merges are reported (clusters.json ``merges``).
3. K: fixed if ``k`` is given, otherwise chosen over [k_min, k_max] by ``criterion``:

   ==========  ==========================================================================
   criterion   rule
   ==========  ==========================================================================
   silhouette  the K with the largest mean silhouette of the merged partition (default).
   stability   the largest K every cluster of which k-means reproduces on bootstrap
               resamples of the features: mean Jaccard of each cluster with its best
               match >= ``stability_threshold`` over ``n_bootstrap`` resamples; if no K
               passes, the most stable one. 0.8 sits between Hennig's "stable" (0.75)
               and "highly stable" (0.85) levels (fpc::clusterboot); at 0.75 large K
               that split a group passed now and then by chance. It asks what training
               needs: groups that do not depend on which features the panel happens to
               hold.
   gap         the smallest K with Gap(K) >= Gap(K+1) - s(K+1) (Tibshirani et al. 2001;
               uniform references in the box aligned with the data's principal axes).
   elbow       the K of the inertia curve farthest below the chord joining its ends.
   ==========  ==========================================================================

   A K on either end of the range is logged as a warning: the best K may lie outside.
   On the built-in panel (``benchmarks/cluster.py``, seeds 0-2) silhouette and stability
   find the planted K = 7 at the default noise (ARI 1.00); at 3x noise both tend to merge
   the fast and slow AR families (K = 6, ARI ~0.8; gap splits instead, ARI ~0.9); at 10x
   only the dynamics survive the noise and every criterion stays below ARI 0.45.
4. Labels renumbered by first appearance in the feature order (equal inputs, equal
   labels); ``type_cluster`` on each group's raw statistics (rule in its docstring) and the
   guidance strategy of that type (``STRATEGY``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from mamba_denoiser.clustering.comovement import with_comovement
from mamba_denoiser.clustering.stats import STAT_COLUMNS
from mamba_denoiser.vocabulary import (  # noqa: F401  (re-exported: clustering.STRATEGY_...)
    CLUSTER_TYPES,
    STRATEGY,
    STRATEGY_DESCRIPTION,
)

log = logging.getLogger(__name__)

CRITERIA = ("silhouette", "stability", "gap", "elbow")

# Type-rule thresholds (see type_cluster).
HURST_MEAN_REVERTING = 0.40
ADF_ALPHA = 0.01
ADF_STATIONARY = 0.05  # mean_reverting needs at least this much evidence of stationarity
VR_MEAN_REVERTING = 0.8
HURST_TRENDING = 0.60
VR_TRENDING = 1.5

STABILITY_THRESHOLD = 0.8  # mean bootstrap Jaccard per cluster (Hennig 2007: 0.75 / 0.85)

# Per-statistic transform applied before z-scoring, and why.
TRANSFORMS: dict[str, str] = {
    # p-values of stationary series span 1e-40..1e-3: only "how clearly rejected" up to
    # 1e-6 matters, on a log scale; random-walk p-values are ~uniform on [0, 1].
    "adf_pvalue": "log10(clip(p, 1e-6, 1))",
    # Heavy tails and jumps give kurtosis from ~0 to several hundred, and a few rare
    # large moves dominate the sample skewness.
    "skewness": "sign(s) log1p(|s|)",
    "kurtosis": "sign(k) log1p(|k|)",
    # Ratios: symmetric on a log scale (VR = 0.1 and 10 are equally far from 1).
    "variance_ratio": "log(VR)",
    "vol_mean": "log(vol_mean)",
    "vol_dispersion": "log(vol_dispersion)",
}


@dataclass
class ClusteringResult:
    """Outcome of ``cluster_features``.

    Attributes:
        features: feature names, in the order of the statistics table.
        labels: cluster id per feature, 0..k-1, numbered by first appearance.
        k: number of clusters (after merging small ones).
        criterion: how K was chosen ('silhouette', 'stability', 'gap', 'elbow' or 'fixed').
        selection: one dict per candidate K: k (k-means clusters), k_merged (clusters left
            after merging), silhouette (of the merged partition; None where undefined),
            inertia (of k-means), and gap, gap_se / stability where computed; floats
            rounded to 10 significant digits so equal runs give byte-identical JSON.
        types: cluster id -> 'mean_reverting' | 'trending' | 'random_walk'.
        strategies: cluster id -> guidance strategy ('tv' | 'fourier' | 'balanced').
        centroids: (k, n_stats) cluster means in the standardised space.
        standardized: (n_features, n_stats) the standardised statistics k-means saw
            (``standardise_stats(stats)``), e.g. for a 2-D feature map.
        stat_columns: the statistics used, columns of ``centroids``.
        seed, n_init: the k-means settings used.
        k_kmeans: the k-means K chosen (or fixed) before merging.
        min_size: the smallest cluster size allowed.
        merges: one dict per merge: features (moved), into (final cluster id), reason.
        k_range: (k_min, k_max) actually searched; None for a fixed k.
        at_boundary: the chosen K sits on an end of k_range (a warning was logged).
    """

    features: list[str]
    labels: np.ndarray
    k: int
    criterion: str
    selection: list[dict]
    types: dict[int, str]
    strategies: dict[int, str]
    centroids: np.ndarray
    standardized: np.ndarray
    stat_columns: list[str] = field(default_factory=lambda: list(STAT_COLUMNS))
    seed: int = 0
    n_init: int = 20
    k_kmeans: int | None = None
    min_size: int = 1
    merges: list[dict] = field(default_factory=list)
    k_range: tuple[int, int] | None = None
    at_boundary: bool = False

    def members(self) -> dict[int, list[str]]:
        """Cluster id -> its features, in feature order."""
        return {
            c: [f for f, lab in zip(self.features, self.labels) if lab == c] for c in range(self.k)
        }


def standardise_stats(stats: pd.DataFrame) -> np.ndarray:
    """Transform (``TRANSFORMS``) and z-score the statistics table: (n_features, n_stats).

    A column that is constant across features is set to 0 (it carries no grouping
    information, and z-scoring would divide by zero).
    """
    _check_stats(stats)
    z = stats.astype(np.float64).copy()
    if "adf_pvalue" in z:
        z["adf_pvalue"] = np.log10(np.clip(z["adf_pvalue"], 1e-6, 1.0))
    for col in ("skewness", "kurtosis"):
        if col in z:
            z[col] = np.sign(z[col]) * np.log1p(np.abs(z[col]))
    for col in ("variance_ratio", "vol_mean", "vol_dispersion"):
        if col in z:
            z[col] = np.log(np.maximum(z[col], 1e-12))
    values = z.to_numpy()
    if values.shape[0] < 2:
        return np.zeros_like(values)
    scaled = StandardScaler().fit_transform(values)
    scaled[:, values.std(axis=0) <= 1e-12] = 0.0
    return scaled


def cluster_features(
    stats: pd.DataFrame,
    *,
    k: int | None = None,
    k_min: int = 2,
    k_max: int = 12,
    criterion: str = "silhouette",
    n_init: int = 20,
    seed: int = 0,
    min_size: int = 3,
    gap_references: int = 10,
    n_bootstrap: int = 20,
    stability_threshold: float = STABILITY_THRESHOLD,
    comovement: bool = True,
    loadings: np.ndarray | None = None,
) -> ClusteringResult:
    """Cluster features (rows of ``stats``) into K statistically homogeneous groups.

    Args:
        stats: features x statistics (``compute_feature_stats`` output), finite values.
        k: fixed number of k-means clusters; None chooses it by ``criterion``. Small
            clusters are merged either way, so the result may have fewer.
        k_min, k_max: candidate range when choosing; k_max is capped at n_features - 1
            (the silhouette needs at least one cluster with two members).
        criterion: 'silhouette' (default), 'stability', 'gap' or 'elbow' (see the
            module docstring).
        n_init: k-means restarts (the best inertia is kept).
        seed: random_state of k-means (and of the gap references and bootstrap resamples).
        min_size: clusters with fewer features join their nearest cluster (1: never).
        gap_references: number of uniform reference data sets for 'gap'.
        n_bootstrap: resamples of the features for 'stability'.
        stability_threshold: mean Jaccard every cluster needs for 'stability'.
        comovement: append the features' common-factor loadings (``loadings``, from
            comovement.factor_loadings; none given or none found: the statistics alone).
        loadings: (n_features, r) |loadings| on the panel's common factors.

    Raises:
        ValueError: unknown criterion, non-finite statistics, too few features, k out
            of range, an empty candidate range, or min_size / n_bootstrap < 1.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion={criterion!r}: expected one of {CRITERIA}")
    if int(min_size) < 1:
        raise ValueError(f"min_size={min_size}: must be >= 1 (1 keeps every cluster)")
    if int(n_bootstrap) < 1:
        raise ValueError(f"n_bootstrap={n_bootstrap}: must be >= 1")
    # k-means on ~100 points: worker threads only add start-up cost, and on a shared
    # machine an oversubscribed OpenMP pool makes it ~20x slower. One thread is also
    # trivially reproducible.
    with threadpool_limits(limits=1):
        return _cluster_features(
            stats,
            k=k,
            k_min=k_min,
            k_max=k_max,
            criterion=criterion,
            n_init=n_init,
            seed=seed,
            min_size=int(min_size),
            gap_references=gap_references,
            n_bootstrap=int(n_bootstrap),
            stability_threshold=float(stability_threshold),
            loadings=loadings if comovement else None,
        )


def _cluster_features(
    stats,
    *,
    k,
    k_min,
    k_max,
    criterion,
    n_init,
    seed,
    min_size,
    gap_references,
    n_bootstrap,
    stability_threshold,
    loadings,
):
    X = standardise_stats(stats)
    if loadings is not None:
        X = with_comovement(X, np.asarray(loadings, dtype=np.float64))
    n = X.shape[0]
    features = [str(f) for f in stats.index]

    def partition(kk: int) -> tuple[KMeans, np.ndarray, list[tuple[np.ndarray, int]]]:
        model = KMeans(n_clusters=kk, n_init=n_init, random_state=seed).fit(X)
        labels, merges = merge_small_clusters(X, model.labels_, min_size)
        return model, labels, merges

    k_range, at_boundary = None, False
    if k is not None:
        if not 1 <= int(k) <= n:
            raise ValueError(f"k={k} must be between 1 and the number of features ({n})")
        chosen, used = int(k), "fixed"
        parts = {chosen: partition(chosen)}
        selection = [_score_row(X, *parts[chosen][:2])]
    else:
        if n < 3:
            raise ValueError(
                f"only {n} features: choosing K needs at least 3; pass a fixed k instead"
            )
        hi = min(k_max, n - 1)
        if k_min < 2 or k_min > hi:
            raise ValueError(
                f"candidate range k_min={k_min}..k_max={k_max} is empty for {n} features "
                f"(need 2 <= k_min <= min(k_max, n_features - 1) = {hi})"
            )
        parts = {kk: partition(kk) for kk in range(k_min, hi + 1)}
        selection = [_score_row(X, m, lab) for m, lab, _ in parts.values()]
        if criterion == "gap":
            _add_gap(X, selection, n_refs=gap_references, n_init=n_init, seed=seed)
        if criterion == "stability":
            _add_stability(X, selection, parts, n_boot=n_bootstrap, n_init=n_init, seed=seed)
        chosen, used = _choose(selection, criterion, stability_threshold), criterion
        k_range = (int(k_min), int(hi))
        at_boundary = hi > k_min and chosen in k_range
        if at_boundary:
            end = "k_min" if chosen == k_min else "k_max" if hi == k_max else "n_features - 1"
            log.warning(
                "K=%d chosen by %s sits on the %s end of the candidate range %d..%d: the "
                "best K may lie outside it. Widen the range (clustering.k_min / "
                "clustering.k_max), try another clustering.criterion, or fix clustering.k.",
                chosen,
                criterion,
                end,
                k_min,
                hi,
            )

    _, raw_labels, raw_merges = parts[chosen]
    labels = _relabel(raw_labels)
    n_clusters = int(labels.max()) + 1
    centroids = np.stack([X[labels == c].mean(axis=0) for c in range(n_clusters)])
    merges = [
        {
            "features": [features[i] for i in idx],
            "into": int(labels[idx[0]]),
            "reason": f"{idx.size} feature(s), fewer than min_size={min_size}",
        }
        for idx, _ in raw_merges
    ]
    for m in merges:
        log.info(
            "Merged small cluster %s into cluster %d (%s)", m["features"], m["into"], m["reason"]
        )
    types = {c: type_cluster(stats.iloc[np.flatnonzero(labels == c)]) for c in range(n_clusters)}
    return ClusteringResult(
        features=features,
        labels=labels,
        k=n_clusters,
        criterion=used,
        selection=selection,
        types=types,
        strategies={c: STRATEGY[t] for c, t in types.items()},
        centroids=centroids,
        standardized=X,
        stat_columns=[str(c) for c in stats.columns],
        seed=seed,
        n_init=n_init,
        k_kmeans=chosen,
        min_size=min_size,
        merges=merges,
        k_range=k_range,
        at_boundary=at_boundary,
    )


def type_cluster(stats_rows: pd.DataFrame) -> str:
    """Type of a group of features from the *medians* of its raw statistics.

    The statistics are those of ``stats.py``: ``hurst`` and ``variance_ratio`` come from
    the noise-free variogram over 5..60 rows, so white observation noise does not move
    them (a random walk stays at 0.5 and 1 at any noise level).

    ====  =========================================================  ===============
    step  condition (medians over the group)                         type
    ====  =========================================================  ===============
    1     hurst < 0.40 (HURST_MEAN_REVERTING): the signal's          mean_reverting
          variogram flattens within 60 rows, i.e. the level
          reverts on the model's window, and adf_pvalue < 0.05
          (ADF_STATIONARY): the unit root is rejected
    1'    or adf_pvalue < 0.01 (ADF_ALPHA) and variance_ratio < 0.8  mean_reverting
          (VR_MEAN_REVERTING): unit root clearly rejected and
          60-row moves clearly smaller than 5-row moves predict
          (slow reversion with hurst just above 0.40)
    2     hurst > 0.60 (HURST_TRENDING) and variance_ratio > 1.5     trending
          (VR_TRENDING): moves continue, 60-row moves far larger
          than 5-row moves predict
    3     otherwise (hurst ~0.5, VR ~1: increments uncorrelated      random_walk
          beyond the noise; ADF p-values spread over [0, 1])
    ====  =========================================================  ===============

    Measured on the built-in families (train split, noise_scale 1-10, Gaussian and
    Student-t noise; medians): random walks and jump/regime walks hurst 0.49, VR 0.9-1.0;
    trends 0.77, VR ~4.2; AR(1) phi 0.9-0.97 0.24-0.29; VIX-like 0.31-0.33; white-noise
    levels (fast AR, stochastic-volatility returns) ~0. The ADF is not the primary test:
    it rejects for ~5 % of random walks by design, and its power fades on short series.
    But a low hurst alone is no evidence of reversion: under observation noise as large
    as its 60-row moves, an integrated random walk's noise-free variogram stays at its
    floor over 5..60 rows (hurst ~0.1-0.2, VR ~0.2) while the ADF cannot reject a unit root
    (p 0.2-1). Step 1 therefore also needs the ADF; such a group falls through to
    random_walk (its trend shows only over hundreds of rows, beyond these statistics).
    """
    if len(stats_rows) == 0:
        raise ValueError("type_cluster: the group has no features")
    missing = {"adf_pvalue", "hurst", "variance_ratio"} - set(stats_rows.columns)
    if missing:
        raise ValueError(f"type_cluster: statistics table lacks columns {sorted(missing)}")
    med = stats_rows[["adf_pvalue", "hurst", "variance_ratio"]].median()
    stationary = med["adf_pvalue"] < ADF_STATIONARY
    if (med["hurst"] < HURST_MEAN_REVERTING and stationary) or (
        med["adf_pvalue"] < ADF_ALPHA and med["variance_ratio"] < VR_MEAN_REVERTING
    ):
        return "mean_reverting"
    if med["hurst"] > HURST_TRENDING and med["variance_ratio"] > VR_TRENDING:
        return "trending"
    return "random_walk"


def merge_small_clusters(
    X: np.ndarray, labels: np.ndarray, min_size: int
) -> tuple[np.ndarray, list[tuple[np.ndarray, int]]]:
    """Merge clusters with fewer than ``min_size`` members into their nearest cluster.

    The smallest cluster (ties: the lowest label) joins the cluster whose mean (in ``X``)
    is nearest to its own mean; repeated until every cluster has ``min_size`` members or
    one cluster is left. Returns the new labels (not renumbered) and, per merge, the
    indices of the moved rows and the label they joined. Deterministic.
    """
    labels = np.asarray(labels).copy()
    merges: list[tuple[np.ndarray, int]] = []
    while True:
        ids, counts = np.unique(labels, return_counts=True)
        if ids.size <= 1 or counts.min() >= min_size:
            return labels, merges
        small = ids[np.lexsort((ids, counts))[0]]  # smallest count, then lowest id
        moved = np.flatnonzero(labels == small)
        others = ids[ids != small]
        centres = np.stack([X[labels == o].mean(axis=0) for o in others])
        dist = ((centres - X[moved].mean(axis=0)) ** 2).sum(axis=1)
        target = int(others[int(np.argmin(dist))])
        labels[moved] = target
        merges.append((moved, target))


# --- helpers ---------------------------------------------------------------------------


def _check_stats(stats: pd.DataFrame) -> None:
    if not isinstance(stats, pd.DataFrame):
        raise TypeError("stats must be a pandas DataFrame (features x statistics)")
    if stats.shape[0] == 0 or stats.shape[1] == 0:
        raise ValueError("stats is empty: nothing to cluster")
    if not stats.index.is_unique:
        raise ValueError("stats has duplicate feature names in its index")
    values = stats.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(values)):
        bad = stats.index[~np.isfinite(values).all(axis=1)].tolist()
        raise ValueError(f"non-finite statistics for features {bad}; recompute or exclude them")


def _round(x: float, digits: int = 10) -> float:
    return float(f"{float(x):.{digits}g}")


def _score_row(X: np.ndarray, model: KMeans, labels: np.ndarray) -> dict:
    n_labels = np.unique(labels).size
    sil = (
        _round(silhouette_score(X, labels))
        if 2 <= n_labels <= X.shape[0] - 1
        else None  # undefined: JSON null rather than NaN
    )
    return {
        "k": int(model.n_clusters),
        "k_merged": int(n_labels),
        "silhouette": sil,
        "inertia": _round(model.inertia_),
    }


def _choose(selection: list[dict], criterion: str, stability_threshold: float) -> int:
    ks = np.array([row["k"] for row in selection])
    if criterion == "silhouette":
        sil = np.array([np.nan if r["silhouette"] is None else r["silhouette"] for r in selection])
        if np.isnan(sil).all():
            raise ValueError("silhouette undefined for every candidate K (duplicate features?)")
        return int(ks[int(np.nanargmax(sil))])  # ties: the smaller K (first max)
    if criterion == "stability":
        stab = np.array([row["stability"] for row in selection])
        passing = np.flatnonzero(stab >= stability_threshold)
        if passing.size:
            return int(ks[passing[-1]])  # the finest partition that is still stable
        return int(ks[int(np.argmax(stab))])
    if criterion == "elbow":
        if ks.size < 3:
            return int(ks[0])
        inertia = np.array([row["inertia"] for row in selection])
        x = (ks - ks[0]) / (ks[-1] - ks[0])
        span = inertia[0] - inertia[-1]
        y = (inertia - inertia[-1]) / span if span > 0 else np.zeros_like(inertia)
        # Distance below the chord from (0, 1) to (1, 0): largest at the knee.
        return int(ks[int(np.argmax(1.0 - x - y))])
    gap = np.array([row["gap"] for row in selection])
    se = np.array([row["gap_se"] for row in selection])
    for i in range(ks.size - 1):
        if gap[i] >= gap[i + 1] - se[i + 1]:
            return int(ks[i])
    return int(ks[-1])


def _add_stability(X: np.ndarray, selection: list[dict], parts: dict, *, n_boot, n_init, seed):
    """Bootstrap stability per candidate K (adds 'stability' to each selection row).

    The same ``n_boot`` resamples of the features (with replacement) serve every K. On
    each, k-means with K clusters is refitted; every cluster of the reference (merged)
    partition is compared, on the resampled features, with its best-matching bootstrap
    cluster by Jaccard similarity |A & B| / |A | B|. A cluster's stability is its mean
    Jaccard over the resamples that contain it; the row's 'stability' is the smallest
    over clusters (a partition is as stable as its least stable group).
    """
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    samples = [rng.choice(n, size=n, replace=True) for _ in range(n_boot)]
    boot_init = max(1, n_init // 4)
    for row in selection:
        kk = row["k"]
        ref = parts[kk][1]
        ref_ids = np.unique(ref)
        total = np.zeros(ref_ids.size)
        seen = np.zeros(ref_ids.size)
        for b, idx in enumerate(samples):
            uniq = np.unique(idx)
            km = KMeans(n_clusters=min(kk, uniq.size), n_init=boot_init, random_state=seed + 1 + b)
            boot = km.fit(X[idx]).predict(X[uniq])
            # Contingency of reference clusters (rows) x bootstrap clusters (columns).
            r = np.searchsorted(ref_ids, ref[uniq])
            table = np.zeros((ref_ids.size, int(boot.max()) + 1))
            np.add.at(table, (r, boot), 1.0)
            size_a = table.sum(axis=1, keepdims=True)
            size_b = table.sum(axis=0, keepdims=True)
            with np.errstate(invalid="ignore", divide="ignore"):
                jac = np.where(table > 0, table / (size_a + size_b - table), 0.0).max(axis=1)
            present = size_a[:, 0] > 0
            total[present] += jac[present]
            seen[present] += 1
        per_cluster = np.where(seen > 0, total / np.maximum(seen, 1), 0.0)
        row["stability"] = _round(per_cluster.min())


def _add_gap(X: np.ndarray, selection: list[dict], *, n_refs: int, n_init: int, seed: int):
    """Gap statistic per candidate K (adds 'gap' and 'gap_se' to each selection row).

    References are uniform over the box aligned with the data's principal axes
    (Tibshirani et al.'s variant (b)), so elongated clusters are compared with equally
    elongated structure-free data, not with a cube. Uses the k-means inertia (before any
    merging): the gap compares k-means fits.
    """
    rng = np.random.default_rng(seed)
    mean = X.mean(axis=0)
    _, _, vt = np.linalg.svd(X - mean, full_matrices=False)
    Z = (X - mean) @ vt.T
    lo, hi = Z.min(axis=0), Z.max(axis=0)
    refs = [rng.uniform(lo, hi, size=Z.shape) @ vt + mean for _ in range(n_refs)]
    for row in selection:
        kk = row["k"]
        ref_log_w = np.array(
            [
                np.log(
                    KMeans(n_clusters=kk, n_init=max(1, n_init // 4), random_state=seed)
                    .fit(r)
                    .inertia_
                )
                for r in refs
            ]
        )
        row["gap"] = _round(ref_log_w.mean() - np.log(row["inertia"]))
        row["gap_se"] = _round(ref_log_w.std() * np.sqrt(1.0 + 1.0 / n_refs))


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters 0..k-1 by first appearance in the feature order (deterministic)."""
    order = list(dict.fromkeys(int(v) for v in labels))
    mapping = {old: new for new, old in enumerate(order)}
    return np.array([mapping[int(v)] for v in labels], dtype=np.int64)
