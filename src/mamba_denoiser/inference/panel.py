"""Every cluster of a panel through its model: the loop denoise.py and evaluate.py share."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger("mamba_denoiser")


class Block:
    """(T, F) float64 feature values with their names, read like a DataFrame's columns by
    ``denoise_panel`` (``block[names].to_numpy()``) without pandas' per-call cost: the
    Python API serves a held history this way, one row longer at each update."""

    def __init__(self, values: np.ndarray, names: list[str]):
        self.values, self._col = values, {n: i for i, n in enumerate(names)}

    def __getitem__(self, names: list[str]) -> Block:
        return Block(self.values[:, [self._col[n] for n in names]], list(names))

    def to_numpy(self, dtype=np.float64) -> np.ndarray:
        return np.asarray(self.values, dtype=dtype)


@dataclass
class PanelResult:
    clusters: dict[int, Any]  # cluster id -> ClusterResult
    features: list[str]  # every denoised-cluster feature, in cluster order
    mean: dict[str, np.ndarray] = field(default_factory=dict)  # feature -> (T,)
    lower: dict[str, np.ndarray] = field(default_factory=dict)
    upper: dict[str, np.ndarray] = field(default_factory=dict)
    alone: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # family -> feature

    def stack(self, key: str = "mean", names: list[str] | None = None) -> np.ndarray:
        cols = getattr(self, key)
        return np.column_stack([cols[f] for f in (names or self.features)])

    @property
    def n_changed(self) -> int:
        return sum(
            v["denoised"] for r in self.clusters.values() for v in r.info["features"].values()
        )

    @property
    def seconds(self) -> float:
        return float(sum(r.info["seconds"] for r in self.clusters.values()))


def denoise_panel(
    models: dict[int, Any],
    frame: pd.DataFrame,
    bounds: dict[str, tuple[int, int]],
    *,
    sigma: dict[str, float] | None = None,  # feature -> native σ (overrides)
    gate: bool = True,
    replay: dict[int, dict] | None = None,  # cluster id -> info["decisions"]
    quiet: bool = False,
    **kw,
) -> PanelResult:
    """Each cluster's features of ``frame`` through ``inference.denoise_cluster``.

    kw go to denoise_cluster (mode, sampler, sampler_kw, candidates, gate_margin_db,
    seed, batch_windows, bands, alone). ``gate``: SURE on the validation rows of
    ``bounds``. Fitting reads the train (σ, Kalman fits) and validation (gate) rows only.
    """
    from mamba_denoiser import inference  # late: tests may patch inference.denoise_cluster
    from mamba_denoiser.progress import bar

    res = PanelResult(clusters={}, features=[f for m in models.values() for f in m.features])
    with bar("Denoising clusters", len(models), show=not quiet) as clusters:
        for cid, m in models.items():
            _one_cluster(inference, res, cid, m, frame, bounds, sigma, gate, replay, quiet, kw)
            clusters.advance()
    return res


def _one_cluster(inference, res, cid, m, frame, bounds, sigma, gate, replay, quiet, kw) -> None:
    """One cluster through ``inference.denoise_cluster``, into ``res``; its windows
    advance a bar of their own (not when ``quiet``)."""
    from mamba_denoiser.progress import bar

    raw = frame[m.features].to_numpy(dtype=np.float64)  # a DataFrame or a Block
    given = None
    if sigma:
        given = np.array([float(sigma.get(f, np.nan)) for f in m.features])
    if not quiet:
        log.info(
            "Denoising %s (%s, %d features, %s model)",
            m.name,
            m.cluster["type"],
            len(m.features),
            m.direction,
        )
    with bar(f"{m.name}: windows", show=not quiet) as windows:
        r = inference.denoise_cluster(
            m,
            raw,
            train=bounds["train"],
            sigma=given,
            gate_rows=bounds["val"] if gate else None,
            replay=(replay or {}).get(cid),
            progress=windows,  # run_windows' (done, total) callback; does nothing when off
            **kw,
        )
    res.clusters[cid] = r
    for i, f in enumerate(m.features):
        res.mean[f] = r.mean[:, i]
        if r.lower is not None:
            res.lower[f], res.upper[f] = r.lower[:, i], r.upper[:, i]
    for fam, arr in (r.alone or {}).items():
        for i, f in enumerate(m.features):
            res.alone.setdefault(fam, {})[f] = arr[:, i]
    if not quiet:
        n_ok = sum(v["denoised"] for v in r.info["features"].values())
        chosen = pd.Series([v["chosen"] for v in r.info["features"].values()])
        log.info(
            "  %s: %d/%d features changed (%s), %.1fs",
            m.name,
            n_ok,
            len(m.features),
            ", ".join(f"{k} {v}" for k, v in chosen.value_counts().items()),
            r.info["seconds"],
        )
