"""Group features by their statistics: standardise, choose K, k-means, type each group.

Pipeline (DESIGN.md §6):

1. ``standardise_stats``: a fixed, documented transform of the skewed statistics (see
   ``TRANSFORMS``), then z-scoring of every column (sklearn ``StandardScaler``). Without
   the transform a single feature with kurtosis 300 or an ADF p-value of 1e-40 vs 1e-3
   would decide the geometry.
2. K: fixed if ``k`` is given, otherwise chosen over [k_min, k_max] by ``criterion``:
   ``silhouette`` (default: the K with the largest mean silhouette), ``elbow`` (the K of
   the inertia curve farthest below the chord joining its ends, in normalised units) or
   ``gap`` (Tibshirani et al. 2001: the smallest K with Gap(K) >= Gap(K+1) - s(K+1),
   uniform references in the box aligned with the data's principal axes). On the
   reference synthetic panel silhouette finds the planted K = 7; elbow tends to stop
   early (K = 5) and gap to split further (K = 8-12): they are offered, not preferred.
3. sklearn ``KMeans`` with ``n_init`` restarts and ``random_state=seed``; labels are then
   renumbered by first appearance in the feature order, so equal inputs give equal labels.
4. ``type_cluster`` on each group's raw statistics (rule in its docstring) and the
   guidance strategy of that type (``STRATEGY``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from mamba_denoiser.clustering.stats import STAT_COLUMNS

CLUSTER_TYPES = ("mean_reverting", "trending", "random_walk")
STRATEGY: dict[str, str] = {
    "mean_reverting": "tv",
    "trending": "fourier",
    "random_walk": "balanced",
}
STRATEGY_DESCRIPTION: dict[str, str] = {
    "tv": "mean-reverting: total-variation guidance loss, weight 2x",
    "fourier": "trending: Fourier high-frequency energy guidance loss, weight 2x",
    "balanced": "random walk: TV and Fourier guidance, 1x each",
}
CRITERIA = ("silhouette", "elbow", "gap")

# Type-rule thresholds (see type_cluster).
ADF_ALPHA = 0.05
HURST_MEAN_REVERTING = 0.35
HURST_TRENDING = 0.6
VR_TRENDING = 1.5

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
        k: number of clusters.
        criterion: how k was chosen ('silhouette', 'elbow', 'gap' or 'fixed').
        selection: one dict per candidate K: k, silhouette (None where undefined, e.g.
            a fixed k of 1), inertia (and gap, gap_se for 'gap'); floats rounded to 10
            significant digits so equal runs give byte-identical JSON.
        types: cluster id -> 'mean_reverting' | 'trending' | 'random_walk'.
        strategies: cluster id -> guidance strategy ('tv' | 'fourier' | 'balanced').
        centroids: (k, n_stats) k-means centres in the standardised space.
        standardized: (n_features, n_stats) the standardised statistics k-means saw
            (``standardise_stats(stats)``), e.g. for a 2-D feature map.
        stat_columns: the statistics used, columns of ``centroids``.
        seed, n_init: the k-means settings used.
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
    gap_references: int = 10,
) -> ClusteringResult:
    """Cluster features (rows of ``stats``) into K statistically homogeneous groups.

    Args:
        stats: features x statistics (``compute_feature_stats`` output), finite values.
        k: fixed number of clusters; None chooses it by ``criterion``.
        k_min, k_max: candidate range when choosing; k_max is capped at n_features - 1
            (the silhouette needs at least one cluster with two members).
        criterion: 'silhouette' (default), 'elbow' or 'gap' (see the module docstring).
        n_init: k-means restarts (the best inertia is kept).
        seed: random_state of k-means (and of the gap references).
        gap_references: number of uniform reference data sets for 'gap'.

    Raises:
        ValueError: unknown criterion, non-finite statistics, too few features, k out
            of range, or an empty candidate range.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion={criterion!r}: expected one of {CRITERIA}")
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
            gap_references=gap_references,
        )


def _cluster_features(stats, *, k, k_min, k_max, criterion, n_init, seed, gap_references):
    X = standardise_stats(stats)
    n = X.shape[0]
    features = [str(f) for f in stats.index]

    def fit(kk: int) -> KMeans:
        return KMeans(n_clusters=kk, n_init=n_init, random_state=seed).fit(X)

    if k is not None:
        if not 1 <= int(k) <= n:
            raise ValueError(f"k={k} must be between 1 and the number of features ({n})")
        k = int(k)
        model = fit(k)
        selection = [_score_row(X, model)]
        chosen, used = k, "fixed"
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
        models = {kk: fit(kk) for kk in range(k_min, hi + 1)}
        selection = [_score_row(X, m) for m in models.values()]
        if criterion == "gap":
            _add_gap(X, selection, n_refs=gap_references, n_init=n_init, seed=seed)
        chosen = _choose(selection, criterion)
        model, used = models[chosen], criterion

    labels, centroids = _relabel(model.labels_, model.cluster_centers_)
    types = {c: type_cluster(stats.iloc[np.flatnonzero(labels == c)]) for c in range(chosen)}
    return ClusteringResult(
        features=features,
        labels=labels,
        k=chosen,
        criterion=used,
        selection=selection,
        types=types,
        strategies={c: STRATEGY[t] for c, t in types.items()},
        centroids=centroids,
        standardized=X,
        stat_columns=[str(c) for c in stats.columns],
        seed=seed,
        n_init=n_init,
    )


def type_cluster(stats_rows: pd.DataFrame) -> str:
    """Type of a group of features from the *medians* of its raw statistics.

    Rule, in order:
      1. ``mean_reverting`` if median ADF p-value < ADF_ALPHA (0.05): the unit root is
         rejected; or median Hurst < HURST_MEAN_REVERTING (0.35): clearly anti-persistent
         increments even where the ADF lacks power (short or very persistent series).
      2. ``trending`` if median variance ratio > VR_TRENDING (1.5) and median Hurst >
         HURST_TRENDING (0.6): q-step moves are much larger than q one-step moves, i.e.
         the increments are persistent.
      3. ``random_walk`` otherwise (unit root not rejected, increments ~uncorrelated).
    """
    if len(stats_rows) == 0:
        raise ValueError("type_cluster: the group has no features")
    missing = {"adf_pvalue", "hurst", "variance_ratio"} - set(stats_rows.columns)
    if missing:
        raise ValueError(f"type_cluster: statistics table lacks columns {sorted(missing)}")
    med = stats_rows[["adf_pvalue", "hurst", "variance_ratio"]].median()
    if med["adf_pvalue"] < ADF_ALPHA or med["hurst"] < HURST_MEAN_REVERTING:
        return "mean_reverting"
    if med["variance_ratio"] > VR_TRENDING and med["hurst"] > HURST_TRENDING:
        return "trending"
    return "random_walk"


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


def _score_row(X: np.ndarray, model: KMeans) -> dict:
    kk = int(model.n_clusters)
    n_labels = np.unique(model.labels_).size
    sil = (
        _round(silhouette_score(X, model.labels_))
        if 2 <= n_labels <= X.shape[0] - 1
        else None  # undefined: JSON null rather than NaN
    )
    return {"k": kk, "silhouette": sil, "inertia": _round(model.inertia_)}


def _choose(selection: list[dict], criterion: str) -> int:
    ks = np.array([row["k"] for row in selection])
    if criterion == "silhouette":
        sil = np.array([np.nan if r["silhouette"] is None else r["silhouette"] for r in selection])
        if np.isnan(sil).all():
            raise ValueError("silhouette undefined for every candidate K (duplicate features?)")
        return int(ks[int(np.nanargmax(sil))])  # ties: the smaller K (first max)
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


def _add_gap(X: np.ndarray, selection: list[dict], *, n_refs: int, n_init: int, seed: int):
    """Gap statistic per candidate K (adds 'gap' and 'gap_se' to each selection row).

    References are uniform over the box aligned with the data's principal axes
    (Tibshirani et al.'s variant (b)), so elongated clusters are compared with equally
    elongated structure-free data, not with a cube.
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


def _relabel(labels: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber clusters by first appearance in the feature order (deterministic ids)."""
    order = list(dict.fromkeys(int(v) for v in labels))
    mapping = {old: new for new, old in enumerate(order)}
    new_labels = np.array([mapping[int(v)] for v in labels], dtype=np.int64)
    return new_labels, centers[order]
