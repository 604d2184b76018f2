"""Shared test helpers: the small panel, composing real configs, tiny trained sweeps.

Imported by the test modules (``from tests.helpers import ...``); pytest fixtures that
wrap them live in conftest.py and in the modules that need them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict


def make_small_panel(n_rows: int = 600, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(frame, clean): a small wide panel (two AR(1), two random walks, a dummy, a late
    starter, targets) and the clean values of its four noisy features (NaN where the frame
    is NaN), from the same draws."""
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((n_rows, 4))
    ar = np.zeros((n_rows, 2))
    for t in range(1, n_rows):  # tiny fixture; clarity over speed
        ar[t] = np.array([0.5, 0.8]) * ar[t - 1] + e[t, :2]
    rw = np.cumsum(e[:, 2:], axis=0)
    dummy = rng.integers(0, 2, n_rows).astype(float)
    noise = {
        "E1": 0.3 * rng.standard_normal(n_rows),
        "E2": 0.3 * rng.standard_normal(n_rows),
        "M1": 0.5 * rng.standard_normal(n_rows),
        "M2": 0.5 * rng.standard_normal(n_rows),
    }
    clean = pd.DataFrame(
        {
            "date_id": np.arange(n_rows),
            "E1": ar[:, 0],
            "E2": ar[:, 1],
            "M1": rw[:, 0],
            "M2": rw[:, 1],
        }
    )
    frame = pd.DataFrame(
        {
            "date_id": np.arange(n_rows),
            "D1": dummy,
            **{f: clean[f] + noise[f] for f in noise},
            "forward_returns": 0.01 * rng.standard_normal(n_rows),
            "risk_free_rate": np.full(n_rows, 1e-4),
            "market_forward_excess_returns": 0.01 * rng.standard_normal(n_rows),
        }
    )
    frame.loc[: n_rows // 5, "M2"] = np.nan  # leading missing history
    clean.loc[: n_rows // 5, "M2"] = np.nan
    return frame, clean


def make_small_frame(n_rows: int = 600, seed: int = 0) -> pd.DataFrame:
    """The noisy frame of make_small_panel."""
    return make_small_panel(n_rows, seed)[0]


ROOT = Path(__file__).resolve().parents[1]
WINDOW = 16
CLUSTERS = [("mean_reverting", "tv", ["E1", "E2"]), ("random_walk", "balanced", ["M1", "M2"])]


def compose_config(config: str, overrides: list[str], out: Path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


def data_overrides(csv: Path) -> list[str]:
    return ["data=csv", f"data.path={csv}", f"data.window_size={WINDOW}", "data.anchor_len=4"]


def write_clusters(csv: Path, root: Path, clusters=None) -> Path:
    """clusters.json under root/cluster/ over `csv`: the statistics of a real clustering run,
    then hand-assigned clusters ``[(type, strategy, features), ...]`` (default CLUSTERS)."""
    from mamba_denoiser.clustering.run import run_clustering
    from mamba_denoiser.data.panel import load_panel

    doc = run_clustering(load_panel(csv, window_size=WINDOW), root / "cluster", k=2, plots=False)
    doc["clusters"] = [
        {
            "id": i,
            "name": f"c{i}",
            "type": t,
            "strategy": s,
            "strategy_description": "",
            "n_features": len(f),
            "features": f,
        }
        for i, (t, s, f) in enumerate(CLUSTERS if clusters is None else clusters)
    ]
    path = root / "cluster" / "clusters.json"
    path.write_text(json.dumps(doc))
    return path


SMOKE_TRAIN = (
    "experiment=smoke",
    "trainer.accelerator=cpu",
    "logger=csv",
    "trainer.max_epochs=1",
    "validate_at_init=false",
)


def train_cluster(clusters: Path, cid: int, out: Path, *overrides: str) -> None:
    """train.py's job for cluster ``cid`` of a clusters.json, a tiny one-epoch budget
    (SMOKE_TRAIN), into the run folder ``out``."""
    from mamba_denoiser.train_job import register_cluster_options, run_train

    ov = [*overrides, f"clusters={clusters}", f"cluster=c{cid}", *SMOKE_TRAIN]
    register_cluster_options(ov)
    run_train(compose_config("train", ov, out))


def train_sweep(root: Path, directions=("causal", "bidirectional")) -> dict:
    """A small CSV, its clusters.json (CLUSTERS) and tiny checkpoints of every cluster per
    direction under root/<direction>/<id>_c<id>/ (test_denoise's `trained`)."""
    csv = root / "train.csv"
    make_small_frame(n_rows=600).to_csv(csv, index=False)
    clusters = write_clusters(csv, root)
    for direction in directions:
        for cid in range(len(CLUSTERS)):
            out = root / direction / f"{cid}_c{cid}"
            train_cluster(clusters, cid, out, *data_overrides(csv), f"model.direction={direction}")
    return {"root": root, "csv": csv, "clusters": clusters}


def denoise(trained, out: Path, *overrides, csv: Path | None = None, direction="causal"):
    """run_denoise on a `train_sweep` with the real conf/denoise.yaml, gate off."""
    from mamba_denoiser.denoise_job import run_denoise

    ov = [
        *data_overrides(csv or trained["csv"]),
        f"clusters={trained['clusters']}",
        f"checkpoints={trained['root'] / direction}",
        "plots=false",
        "gate=false",  # the tiny test models would be gated off; the gate has its own test
        *overrides,
    ]
    return run_denoise(compose_config("denoise", ov, out))
