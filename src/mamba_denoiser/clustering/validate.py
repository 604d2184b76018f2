"""clusters.json against the data it is used with: refuse what would break the contract.

train.py and denoise.py trust clusters.json for membership and type, so they check it
first: a target listed as a feature would train on the target (honesty rule 2), a
feature in two clusters would be denoised twice, and a passthrough column is not ours to
change.
"""

from __future__ import annotations

from collections import Counter

from mamba_denoiser.clustering.artifact import Clusters, ClustersError
from mamba_denoiser.data.panel import Panel


def check_clusters_against_panel(clusters: Clusters, panel: Panel) -> None:
    """Raise ClustersError naming the file, cluster and column when a cluster feature is
    not a continuous column of `panel` or appears in more than one cluster."""
    where = f"{clusters.path}"
    counts = Counter(f for c in clusters.clusters for f in c.features)
    dup = sorted(f for f, n in counts.items() if n > 1)
    if dup:
        owners = {f: [c.name for c in clusters.clusters if f in c.features] for f in dup[:5]}
        raise ClustersError(
            f"{where}: features listed in more than one cluster: {owners}. Each feature "
            "belongs to one cluster; fix the file or re-run cluster.py."
        )
    for c in clusters.clusters:
        for f in c.features:
            if f == panel.id_col:
                why = "is the id column"
            elif f in panel.targets:
                why = "is a target (targets are never model inputs nor denoised)"
            elif f in panel.passthrough:
                why = f"is a passthrough column ({panel.passthrough[f]})"
            elif f not in panel.frame.columns:
                why = f"is not a column of {panel.source}"
            elif f not in panel.continuous:
                why = "is not a continuous feature of the data"
            else:
                continue
            raise ClustersError(
                f"{where}: cluster {c.name} lists {f!r}, which {why}. Re-run cluster.py on "
                "this data, or remove it from the cluster."
            )
