"""cluster.py's work: statistics on the train split -> K groups -> clusters.json + plots."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mamba_denoiser.clustering.artifact import build_document
from mamba_denoiser.clustering.grouping import cluster_features
from mamba_denoiser.clustering.stats import compute_feature_stats
from mamba_denoiser.data.panel import Panel, PanelError
from mamba_denoiser.io import atomic_write_csv, atomic_write_json

log = logging.getLogger(__name__)


# The clustering options clusters.json records, in its order: rolling_window is
# compute_feature_stats' option, the others cluster_features' (defaults live there).
CONFIG_KEYS = (
    "k",
    "k_min",
    "k_max",
    "criterion",
    "n_init",
    "seed",
    "rolling_window",
    "min_size",
    "n_bootstrap",
    "stability_threshold",
    "comovement",
)


def grouping_defaults() -> dict[str, Any]:
    """cluster_features' keyword defaults for the recorded options."""
    params = inspect.signature(cluster_features).parameters
    return {k: params[k].default for k in CONFIG_KEYS if k in params}


def run_clustering(
    panel: Panel,
    out_dir: str | Path,
    *,
    rolling_window: int = 20,
    plots: bool = True,
    **grouping: Any,  # cluster_features' options among CONFIG_KEYS (k, criterion, ...)
) -> dict[str, Any]:
    """Cluster `panel.continuous` on observed train-split values; write artifacts to out_dir.

    Writes clusters.json, feature_stats.csv and (if `plots`) k_selection.png,
    feature_map.png, cluster_examples.png. Returns the clusters.json document.
    Interior gaps (if any) are skipped: statistics see the observed values in order.
    Only train-split rows are read (honesty rule 1): validation and test rows cannot
    change the statistics, the groups or their types. The keyword arguments are the
    `clustering` config keys (conf/cluster.yaml); see `cluster_features` for their meaning.
    """
    defaults = grouping_defaults()
    unknown = sorted(set(grouping) - set(defaults))
    if unknown:  # only the recorded options: clusters.json must say how it was made
        raise TypeError(f"run_clustering() got unexpected keyword arguments {unknown}")
    options = {**defaults, **grouping}
    if len(panel.continuous) < 2:
        raise PanelError(
            f"{panel.source}: {len(panel.continuous)} continuous feature(s); clustering needs "
            f"at least 2 (passthrough: {panel.passthrough})"
        )
    out_dir = Path(out_dir)
    series = {f: panel.observed(f, "train") for f in panel.continuous}
    log.info("Computing %d statistics for %d features", 11, len(series))
    stats = compute_feature_stats(series, rolling_window=rolling_window)
    loadings = None
    if options.get("comovement", True):
        from mamba_denoiser.clustering.comovement import factor_loadings

        train = panel.part("train")[list(stats.index)].to_numpy(dtype=np.float64)
        loadings = factor_loadings(train, stats["adf_pvalue"].to_numpy())
        log.info("Comovement: %d common factor(s) on the train rows", loadings.shape[1])
    result = cluster_features(stats, **options, loadings=loadings)
    recorded = {**options, "rolling_window": rolling_window}
    doc = build_document(
        source=panel.summary(),
        targets=panel.targets,
        stats=stats,
        result=result,
        passthrough=panel.passthrough,
        config={k: recorded[k] for k in CONFIG_KEYS},
    )
    if loadings is not None:
        doc["comovement"] = {"factors": int(loadings.shape[1])}
    # Everything is computed before anything is written: bad input leaves no partial output.
    atomic_write_csv(out_dir / "feature_stats.csv", stats.rename_axis("feature"), index=True)
    if plots:
        from mamba_denoiser import plots as P

        # The curve's x axis is the k-means K, so mark the k-means K chosen (before merging).
        P.plot_k_selection(
            doc["selection"]["curve"],
            result.criterion,
            result.k_kmeans or result.k,
            out_dir / "k_selection.png",
        )
        z = getattr(result, "standardized", None)
        if z is None:
            z = (stats - stats.mean()) / (stats.std(ddof=0) + 1e-12)
        P.plot_feature_map(
            np.asarray(z, dtype=float),
            np.asarray(result.labels),
            list(stats.index),
            result.types,
            out_dir / "feature_map.png",
        )
        P.plot_cluster_examples(
            panel.frame, doc["clusters"], panel.id_col, out_dir / "cluster_examples.png"
        )
    atomic_write_json(out_dir / "clusters.json", doc)
    return doc


def cluster_table(doc: dict[str, Any]):
    """(title, cells): Cluster | Features (count and %) | Type | Strategy, as text, for
    tables.console_tables (cluster_job prints it)."""
    import pandas as pd

    n = sum(c["n_features"] for c in doc["clusters"])
    title = (
        f"{len(doc['clusters'])} clusters of {n} continuous features "
        f"(K by {doc['selection']['criterion']})"
    )
    rows = []
    for c in doc["clusters"]:
        head = ", ".join(c["features"][:6]) + (" ..." if c["n_features"] > 6 else "")
        rows.append(
            {
                "Cluster": c["name"],
                "Features": f"{c['n_features']} ({100 * c['n_features'] / n:.0f}%): {head}",
                "Type": c["type"],
                "Strategy": c["strategy_description"],
            }
        )
    return title, pd.DataFrame(rows, columns=["Cluster", "Features", "Type", "Strategy"])
