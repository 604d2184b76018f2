"""clusters.json: the contract between cluster.py and train.py / denoise.py / evaluate.py.

Schema and checks: docs/design.md "clusters.json".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mamba_denoiser.errors import ClustersError
from mamba_denoiser.io import existing_file
from mamba_denoiser.vocabulary import CLUSTER_TYPES, STRATEGY_DESCRIPTION

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ClusterSpec:
    id: int
    type: str
    strategy: str
    features: tuple[str, ...]

    @property
    def name(self) -> str:
        """Hydra option name (group options must be strings): c0, c1, ..."""
        return f"c{self.id}"


@dataclass(frozen=True)
class Clusters:
    path: Path
    doc: dict[str, Any]
    clusters: tuple[ClusterSpec, ...]

    def get(self, key: int | str) -> ClusterSpec:
        for c in self.clusters:
            if key in (c.id, c.name, str(c.id)):
                return c
        names = ", ".join(c.name for c in self.clusters)
        raise ClustersError(f"{self.path}: no cluster {key!r}; it defines {names}")

    @property
    def source(self) -> dict[str, Any]:
        return self.doc["source"]


def _round(x: float, digits: int = 10) -> float | None:
    """Fixed significant digits keep the JSON byte-identical across equal runs and readable."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return None
    return float(f"{float(x):.{digits}g}")


def build_document(
    *,
    source: dict[str, Any],
    targets: list[str],
    stats,  # pd.DataFrame: features x statistics
    result,  # grouping.ClusteringResult
    passthrough: dict[str, str],
    config: dict[str, Any],
) -> dict[str, Any]:
    features = list(stats.index)
    clusters = [
        {
            "id": cid,
            "name": f"c{cid}",
            "type": result.types[cid],
            "strategy": result.strategies[cid],
            "strategy_description": STRATEGY_DESCRIPTION[result.strategies[cid]],
            "n_features": len(members),
            "features": members,
        }
        for cid, members in result.members().items()
    ]
    return {
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "targets": list(targets),
        "config": config,
        "statistics": {
            "columns": list(stats.columns),
            "features": {f: {c: _round(stats.loc[f, c]) for c in stats.columns} for f in features},
        },
        "selection": {
            "criterion": result.criterion,
            "k": int(result.k),
            "k_kmeans": int(result.k_kmeans or result.k),  # before merging small clusters
            "k_range": list(result.k_range) if result.k_range else None,  # None: fixed k
            "at_boundary": bool(result.at_boundary),
            "min_size": int(result.min_size),
            "curve": list(result.selection),  # already rounded by grouping
        },
        "clusters": clusters,
        # Clusters smaller than min_size that were folded into their nearest cluster.
        "merges": list(result.merges),
        "excluded": dict(passthrough),
    }


def load_clusters(path: str | Path) -> Clusters:
    path = existing_file(
        path,
        ClustersError,
        missing="clusters file not found. Run `python cluster.py` first, or pass "
        "clusters=/path/to/clusters.json.",
        directory=f"is a directory; pass the file, clusters={Path(path) / 'clusters.json'}",
    )
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ClustersError(
            f"{path}: not valid JSON ({e}); pass the clusters.json written by cluster.py, or "
            "re-run cluster.py"
        ) from e
    except OSError as e:
        raise ClustersError(
            f"{path}: cannot be read ({e.strerror or e}); check clusters=..."
        ) from e
    if not isinstance(doc, dict):
        raise ClustersError(
            f"{path}: not a clusters.json (a JSON {type(doc).__name__}, not an object); pass "
            "the clusters.json written by cluster.py"
        )
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ClustersError(
            f"{path}: schema_version {doc.get('schema_version')!r}, this version reads "
            f"{SCHEMA_VERSION}; re-run cluster.py"
        )
    specs = []
    for c in doc.get("clusters") or []:
        if not isinstance(c, dict):
            raise ClustersError(
                f"{path}: a cluster entry is not an object ({c!r:.60}); re-run cluster.py"
            )
        if c.get("type") not in CLUSTER_TYPES:
            raise ClustersError(f"{path}: cluster {c.get('id')} has unknown type {c.get('type')!r}")
        if not c.get("features"):
            raise ClustersError(f"{path}: cluster {c.get('id')} has no features")
        try:
            specs.append(ClusterSpec(int(c["id"]), c["type"], c["strategy"], tuple(c["features"])))
        except (KeyError, TypeError, ValueError) as e:
            raise ClustersError(
                f"{path}: cluster {c.get('id')!r} is malformed ({type(e).__name__}: {e}); "
                "re-run cluster.py"
            ) from e
    if not specs:
        raise ClustersError(f"{path}: defines no clusters; re-run cluster.py")
    return Clusters(path=path, doc=doc, clusters=tuple(specs))


def find_latest_clusters(root: str | Path = "outputs/cluster") -> Path:
    """The newest clusters.json under `root` (run directories are named by start time)."""
    root = Path(root)
    found = sorted(root.glob("*/clusters.json"))
    if not found:
        raise ClustersError(
            f"no clusters.json under {root}/. Run `python cluster.py` first, or pass "
            "clusters=/path/to/clusters.json."
        )
    return found[-1]
