"""Feature clustering: 11 noise-robust statistics per feature (stats.py), K choice,
k-means, small-cluster merging and typing (grouping.py), and the clusters.json contract
(artifact.py).

The public names below are imported lazily, so ``mamba_denoiser.clustering.artifact``
(needed by train.py / denoise.py) does not pull in statsmodels and scikit-learn.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "STAT_COLUMNS": "stats",
    "compute_feature_stats": "stats",
    "ClusteringResult": "grouping",
    "cluster_features": "grouping",
    "standardise_stats": "grouping",
    "merge_small_clusters": "grouping",
    "CRITERIA": "grouping",
    "type_cluster": "grouping",
    "STRATEGY": "grouping",
    "STRATEGY_DESCRIPTION": "grouping",
    "CLUSTER_TYPES": "grouping",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
